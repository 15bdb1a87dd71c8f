"""HGQ: High-Granularity Quantization for Keras with bit-exact conversion to FPGA firmware through hls4ml.

``import hgq`` loads the quantizers and the H-layers (registering them with Keras, so saved models load with
``keras.models.load_model``), :func:`calibrate`, :func:`ebops` and :func:`summary`. The converter
(:mod:`hgq.convert`, with hls4ml), :mod:`hgq.plot`, :mod:`hgq.callbacks` and :mod:`hgq.datasets` load on first
use: ``hgq.to_hls(...)`` or ``hgq.plot.pareto(...)`` import them then.

Examples
--------
>>> import keras, hgq
>>> from hgq.layers import HQuantize, HDense
>>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDense(64, activation='relu'), HDense(5)])
"""

from __future__ import annotations

import importlib
from typing import Any

from hgq import fixed_point, layers, quantizer
from hgq._version import __version__
from hgq.calibrate import calibrate
from hgq.ebops import ebops, layer_ebops
from hgq.from_keras import from_keras
from hgq.summary import summary

__all__ = ['fixed_point', 'quantizer', 'layers', 'convert', 'calibrate', 'ebops', 'layer_ebops', '__version__']
__all__ += ['callbacks', 'datasets', 'plot', 'summary']
__all__ += ['to_hls', 'synth']
__all__ += ['allocate', 'from_keras']

_LAZY_MODULES = ('allocate', 'callbacks', 'convert', 'datasets', 'plot')


def to_hls(model: Any, output_dir: Any, settings: Any = None, **kwargs: Any) -> Any:
    """Convert a calibrated H-layer model to an hls4ml project: :func:`hgq.convert.to_hls` (imports hls4ml).

    Examples
    --------
    >>> hls_model = hgq.to_hls(model, 'prj/', backend='Vitis', io_type='io_parallel')  # doctest: +SKIP
    """
    from hgq.convert import to_hls as convert_to_hls

    return convert_to_hls(model, output_dir, settings, **kwargs)


def synth(model: Any, out_dir: Any, check: Any = None, part_family: str = 'xcup', **kwargs: Any) -> dict[str, Any]:
    """Trace a calibrated model to Verilog, check it bit for bit and synthesize it with yosys: :func:`hgq.rtl.synth`.

    Imports da4ml on first use; writes ``out_dir/synth.json`` (LUTs, FFs, carry chains, DSPs, depth, EBOPs).

    Examples
    --------
    >>> result = hgq.synth(model, 'synth_out/')  # doctest: +SKIP
    """
    from hgq.rtl import synth as rtl_synth

    return rtl_synth(model, out_dir, check=check, part_family=part_family, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f'hgq.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES))
