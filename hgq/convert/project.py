"""``to_hls``: convert a calibrated H-layer model into an hls4ml project, bit-exact.

Examples
--------
>>> import numpy as np, keras, hgq
>>> from hgq.layers import HQuantize, HDense
>>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDense(5)])
>>> _ = hgq.calibrate(model, np.random.rand(256, 16).astype('float32'))
>>> hls_model = hgq.to_hls(model, 'prj/', backend='Vitis', io_type='io_parallel')  # doctest: +SKIP
>>> hls_model.compile()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import hls4ml
import keras
from hls4ml.converters.keras_v3 import layer_handlers

from hgq.ebops import h_layers, layer_ebops
from hgq.layers.base import HLayer
from hgq.layers.pooling import HPooling
from hgq.quantizer import ActivationQuantizer

__all__ = [
    'BACKENDS',
    'IO_TYPES',
    'STRATEGIES',
    'META_FILE',
    'ConversionError',
    'to_hls',
    'check_calibrated',
    'uncalibrated_quantizers',
    'check_supported',
    'check_settings',
    'read_meta',
]

BACKENDS = ('Vivado', 'Vitis')
IO_TYPES = ('io_parallel', 'io_stream')
STRATEGIES = ('Latency', 'Resource', 'distributed_arithmetic')
META_FILE = 'hgq_meta.json'
# Xilinx part names: 'xc' + family/device, then '-'-separated package, speed grade and temperature fields,
# e.g. xcvu13p-flga2577-2-e, xcu250-figd2104-2L-e, xc7z020clg400-1.
PART_PATTERN = re.compile(r'^xc[a-z0-9]+(-[a-z0-9]+)*$', re.IGNORECASE)


class ConversionError(ValueError):
    """A model or a setting that cannot be converted bit-exactly; the message says what and how to fix it."""


def _canonical(value: str, choices: tuple[str, ...], what: str) -> str:
    for choice in choices:
        if isinstance(value, str) and value.lower() == choice.lower():
            return choice
    raise ConversionError(f'{what} must be one of {choices}, got {value!r}')


def check_settings(
    backend: str, part: str, clock_period: float, io_type: str, strategy: str, project_name: str
) -> dict[str, Any]:
    """Validate the conversion settings; return them with canonical spelling (``'vitis'`` -> ``'Vitis'``).

    Examples
    --------
    >>> check_settings('vitis', 'xcvu13p-flga2577-2-e', 5, 'io_parallel', 'latency', 'myproject')['backend']
    'Vitis'
    """
    settings = {
        'backend': _canonical(backend, BACKENDS, 'backend'),
        'io_type': _canonical(io_type, IO_TYPES, 'io_type'),
        'strategy': _canonical(strategy, STRATEGIES, 'strategy'),
    }
    if not isinstance(part, str) or not PART_PATTERN.match(part):
        raise ConversionError(
            f'part must be a Xilinx part name such as xcvu13p-flga2577-2-e or xc7z020clg400-1, got {part!r}'
        )
    if isinstance(clock_period, bool) or not isinstance(clock_period, int | float) or not clock_period > 0:
        raise ConversionError(f'clock_period must be a positive number of ns, got {clock_period!r}')
    if not isinstance(project_name, str) or not project_name.isidentifier():
        raise ConversionError(f'project_name must be a C identifier (letters, digits, _), got {project_name!r}')
    if settings['strategy'] == 'distributed_arithmetic' and find_spec('da4ml') is None:
        raise ConversionError("strategy='distributed_arithmetic' needs the da4ml package: pip install 'hgq-fpga[da]'")
    return {**settings, 'part': part, 'clock_period': clock_period, 'project_name': project_name}


def _wrap_quantizers(model: keras.Model) -> Iterator[ActivationQuantizer]:
    for layer in h_layers(model):
        for quantizer in layer.activation_quantizers:
            if quantizer.tracks_range:
                yield quantizer


def uncalibrated_quantizers(model: keras.Model) -> list[str]:
    """Names of the WRAP-mode quantizers not calibrated by :func:`hgq.calibrate`, or trained since."""
    return [q.name for q in _wrap_quantizers(model) if float(keras.ops.convert_to_numpy(q.calibrated)) != 1.0]


def check_calibrated(model: keras.Model) -> None:
    """Raise :class:`ConversionError` unless every WRAP-mode quantizer was calibrated and not trained since.

    WRAP-mode quantizers take their integer bits from the tracked range, which is exact only after
    :func:`hgq.calibrate`; training moves the range again.
    """
    stale = uncalibrated_quantizers(model)
    if stale:
        listed = ', '.join(stale[:5]) + (f' and {len(stale) - 5} more' if len(stale) > 5 else '')
        raise ConversionError(
            f'model {model.name!r} is not calibrated, or was trained after calibration (WRAP quantizers {listed}): '
            'run hgq.calibrate(model, data) on representative data first, or pass allow_uncalibrated=True'
        )


def _stream_problem(layer: keras.Layer) -> str | None:
    if isinstance(layer, HPooling) and (layer.padding != 'valid' or tuple(layer.strides) != tuple(layer.pool_size)):
        return (
            f"hls4ml's streaming pooling needs padding='valid' and strides equal to pool_size, got "
            f'padding={layer.padding!r}, pool_size={tuple(layer.pool_size)}, strides={tuple(layer.strides)}; '
            "change the layer or use io_type='io_parallel'"
        )
    return None


def check_supported(model: keras.Model, io_type: str = 'io_parallel') -> None:
    """Raise :class:`ConversionError` naming the first layer that cannot be converted with ``io_type``."""
    for layer in model.layers:
        cls = type(layer)
        key = f'{cls.__module__}.{cls.__name__}'
        if key not in layer_handlers and cls.__name__ not in layer_handlers:
            raise ConversionError(
                f'layer {layer.name!r} of class {key} cannot be converted: hls4ml has no handler for it. '
                'Use H-layers (hgq.layers) and plain Flatten/Reshape/Dropout between them'
            )
        if layer.weights and not isinstance(layer, HLayer):
            raise ConversionError(
                f'layer {layer.name!r} of class {key} has weights but is not an H-layer: its float weights and '
                'unquantized output would not be bit-exact in fixed point; use the H-layer equivalent (hgq.layers)'
            )
        problem = _stream_problem(layer) if io_type == 'io_stream' else None
        if problem:
            raise ConversionError(f'layer {layer.name!r} of class {key} cannot be converted with io_stream: {problem}')


def _hls_config(strategy: str, user: dict[str, Any] | None) -> dict[str, Any]:
    config = {'Model': {'Precision': 'ap_fixed<16,6>', 'ReuseFactor': 1, 'Strategy': strategy}}
    for key, value in (user or {}).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def read_meta(output_dir: str | Path) -> dict[str, Any] | None:
    """The ``hgq_meta.json`` that :func:`to_hls` wrote into a project directory, or ``None``."""
    path = Path(output_dir) / META_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _write_meta(model: keras.Model, output_dir: str, settings: dict[str, Any], calibrated: bool) -> None:
    from hgq import __version__

    per_layer = layer_ebops(model)
    meta = {
        'model': model.name,
        'ebops': float(sum(per_layer.values())),
        'layer_ebops': per_layer,
        'calibrated': calibrated,
        'hgq_version': __version__,
        **settings,
    }
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / META_FILE).write_text(json.dumps(meta, indent=2) + '\n')


def to_hls(
    model: keras.Model,
    output_dir: str | Path,
    backend: str = 'Vitis',
    part: str = 'xcvu13p-flga2577-2-e',
    clock_period: float = 5,
    io_type: str = 'io_parallel',
    strategy: str = 'Latency',
    project_name: str = 'myproject',
    allow_uncalibrated: bool = False,
    write: bool = True,
    **hls4ml_kwargs: Any,
) -> Any:
    """Convert an H-layer model to an hls4ml ``ModelGraph`` that computes exactly what the model computes.

    hls4ml's ``bit_exact`` flow derives every fixed-point type from the quantizers and the quantized weights;
    no layer falls back to another parser (an unsupported layer is an error).

    Parameters
    ----------
    model : keras.Model
        A built model of H-layers (plain ``Flatten``/``Reshape``/``Dropout`` may sit between them), calibrated
        with :func:`hgq.calibrate`.
    output_dir : str or Path
        Project directory; ``hgq_meta.json`` (EBOPs and settings, read by ``hgq report``) is written there.
    backend : {'Vitis', 'Vivado'}
        hls4ml backend.
    part : str
        Xilinx FPGA part, e.g. ``'xcvu13p-flga2577-2-e'``.
    clock_period : float
        Target clock period in ns.
    io_type : {'io_parallel', 'io_stream'}
        Whole tensors per call, or streams of packed channels (CNNs; quantizers per channel or per tensor).
    strategy : {'Latency', 'Resource', 'distributed_arithmetic'}
        hls4ml strategy of every layer; ``distributed_arithmetic`` (da4ml) builds shift-add logic.
    project_name : str
        Name of the top function and HLS project.
    allow_uncalibrated : bool
        Convert even if WRAP-mode quantizers were not calibrated (their ranges may not hold the data).
    write : bool
        Write the project files now (``compile()`` writes them anyway).
    **hls4ml_kwargs
        Passed to ``hls4ml.converters.convert_from_keras_model``; an ``hls_config`` dict is merged over ours.

    Returns
    -------
    hls4ml.model.ModelGraph
        Call ``compile()`` then ``predict(x)`` for the C simulation, or ``build()`` with Vivado/Vitis installed.

    Raises
    ------
    ConversionError
        For a bad setting, an uncalibrated model or an unsupported layer.
    """
    settings = check_settings(backend, part, clock_period, io_type, strategy, project_name)
    if not model.built:
        raise ConversionError(f'model {model.name!r} is not built; give it an Input or call it on data first')
    check_supported(model, settings['io_type'])
    if not allow_uncalibrated:
        check_calibrated(model)
    hls_config = _hls_config(settings['strategy'], hls4ml_kwargs.pop('hls_config', None))
    hls_model = hls4ml.converters.convert_from_keras_model(
        model,
        output_dir=str(output_dir),
        project_name=settings['project_name'],
        backend=settings['backend'],
        part=settings['part'],
        clock_period=settings['clock_period'],
        io_type=settings['io_type'],
        hls_config=hls_config,
        bit_exact=True,
        allow_v2_fallback=False,
        allow_da_fallback=False,
        **hls4ml_kwargs,
    )
    if write:
        hls_model.write()
    _write_meta(model, str(output_dir), settings, calibrated=not uncalibrated_quantizers(model))
    return hls_model
