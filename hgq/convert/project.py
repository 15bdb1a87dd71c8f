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

import contextlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import hls4ml
import keras
from hls4ml.converters.keras_v3 import layer_handlers

from hgq._version import __version__
from hgq.calibrate import wrap_quantizers
from hgq.conversion import META_FILE, ConversionError, ConversionSettings, read_meta
from hgq.convert.registry import register
from hgq.ebops import layer_ebops
from hgq.exactness import float32_problems
from hgq.fileio import make_writable_dir, write_text_atomic
from hgq.layers.base import HLayer
from hgq.layers.pooling import HPooling

__all__ = [
    'META_FILE',
    'ConversionError',
    'ConversionSettings',
    'to_hls',
    'check_calibrated',
    'uncalibrated_quantizers',
    'check_supported',
    'check_output_dir',
    'read_meta',
]

# Plain Keras layers that only move values (or drop nothing at inference): allowed between H-layers.
PASS_THROUGH = (keras.layers.InputLayer, keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout)


def uncalibrated_quantizers(model: keras.Model) -> list[str]:
    """Names of the WRAP-mode quantizers not calibrated by :func:`hgq.calibrate`, or trained since."""
    return [q.name for q in wrap_quantizers(model) if float(keras.ops.convert_to_numpy(q.calibrated)) != 1.0]


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
        if not isinstance(layer, (HLayer, *PASS_THROUGH)):
            raise ConversionError(
                f'layer {layer.name!r} of class {key} is not an H-layer and changes values: hls4ml would compute it '
                'in its own fixed-point types, not bit-exactly; use the H-layer equivalent (e.g. HActivation for '
                'Activation). Plain layers allowed between H-layers: InputLayer, Flatten, Reshape, Dropout'
            )
        problem = _stream_problem(layer) if io_type == 'io_stream' else None
        if problem:
            raise ConversionError(f'layer {layer.name!r} of class {key} cannot be converted with io_stream: {problem}')


def _hls_config(strategy: str, user: dict[str, Any] | None) -> dict[str, Any]:
    config = {'Model': {'Precision': 'ap_fixed<16,6>', 'ReuseFactor': 1, 'Strategy': strategy}}
    for key, value in (user or {}).items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def _write_meta(model: keras.Model, output_dir: Path, settings: ConversionSettings, calibrated: bool) -> None:
    per_layer = layer_ebops(model)
    meta = {
        'model': model.name,
        'ebops': float(sum(per_layer.values())),
        'layer_ebops': per_layer,
        'calibrated': calibrated,
        'hgq_version': __version__,
        **settings.to_dict(),
    }
    write_text_atomic(output_dir / META_FILE, json.dumps(meta, indent=2) + '\n')


def _existing_project(output_dir: Path) -> str | None:
    """The project name of an hls4ml project in ``output_dir`` (from ``hgq_meta.json`` or ``project.tcl``)."""
    meta = output_dir / META_FILE
    if meta.is_file():
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            name = json.loads(meta.read_text()).get('project_name')
            if isinstance(name, str):
                return name
    script = output_dir / 'project.tcl'
    if script.is_file():
        found = re.search(r'^set project_name "?(\w+)"?', script.read_text(errors='replace'), flags=re.MULTILINE)
        return found.group(1) if found else '?'
    return None


def check_output_dir(output_dir: str | Path, project_name: str, overwrite: bool = False) -> Path:
    """Make sure ``output_dir`` can receive the project ``project_name``; return it as a ``Path``.

    A directory holding an hls4ml project of another name is refused (the two projects' files would mix)
    unless ``overwrite``, which deletes that directory's content first. Rewriting a project of the same name
    in place is allowed. A path blocked by a file or not writable is refused.

    Raises
    ------
    ConversionError
        Naming the directory and the problem.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f'output directory {output_dir} is a file, not a directory')
    existing = _existing_project(output_dir) if output_dir.is_dir() else None
    if existing is not None and existing != project_name:
        if not overwrite:
            raise ConversionError(
                f'output directory {output_dir} holds the hls4ml project {existing!r}; writing {project_name!r} '
                "into it would mix the two projects' files: choose another directory, or pass overwrite=True "
                '(hgq convert --overwrite) to delete its content first'
            )
        shutil.rmtree(output_dir)
    try:
        make_writable_dir(output_dir)
    except OSError as err:
        raise ConversionError(f'output directory {output_dir} is not writable: {err.strerror or err}') from None
    return output_dir


def to_hls(
    model: keras.Model,
    output_dir: str | Path,
    settings: ConversionSettings | None = None,
    *,
    allow_uncalibrated: bool = False,
    overwrite: bool = False,
    write: bool = True,
    **kwargs: Any,
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
        A directory holding a project of another name is refused unless ``overwrite``.
    settings : ConversionSettings, optional
        Backend, part, clock period, io_type, strategy and project name (:class:`hgq.conversion.ConversionSettings`,
        whose defaults apply to what is not given).
    allow_uncalibrated : bool
        Convert even if WRAP-mode quantizers were not calibrated (their ranges may not hold the data).
    overwrite : bool
        Delete the content of ``output_dir`` first if it holds an hls4ml project of another name.
    write : bool
        Write the project files now (``compile()`` writes them anyway).
    **kwargs
        Settings by name (``backend='Vivado'``, ``io_type='io_stream'``...; they replace those of ``settings``);
        anything else goes to ``hls4ml.converters.convert_from_keras_model`` (an ``hls_config`` dict is merged
        over ours).

    Returns
    -------
    hls4ml.model.ModelGraph
        Call ``compile()`` then ``predict(x)`` for the C simulation, or ``build()`` with Vivado/Vitis installed.

    Raises
    ------
    ConversionError
        For a bad setting, an uncalibrated model, an unsupported layer or an unusable output directory, before
        anything is written.

    Examples
    --------
    >>> hls_model = hgq.to_hls(model, 'prj/', io_type='io_stream', clock_period=4)  # doctest: +SKIP
    """
    register()
    named = {key: kwargs.pop(key) for key in ConversionSettings.field_names() if key in kwargs}
    settings = replace(settings or ConversionSettings(), **named)
    if not model.built:
        raise ConversionError(f'model {model.name!r} is not built; give it an Input or call it on data first')
    if not hasattr(model, 'inputs'):
        raise ConversionError(
            f'model {model.name!r} is a subclassed keras.Model: hls4ml converts functional and Sequential models '
            'only; build the same layers into keras.Model(inputs, outputs) to convert them'
        )
    check_supported(model, settings.io_type)
    if not allow_uncalibrated:
        check_calibrated(model)
    inexact = float32_problems(model)
    if inexact:
        listed = '; '.join(inexact)
        raise ConversionError(f'model {model.name!r} cannot be bit-exact (Keras computes in float32): {listed}')
    output_dir = check_output_dir(output_dir, settings.project_name, overwrite)
    hls_config = _hls_config(settings.strategy, kwargs.pop('hls_config', None))
    hls_model = hls4ml.converters.convert_from_keras_model(
        model,
        output_dir=str(output_dir),
        project_name=settings.project_name,
        backend=settings.backend,
        part=settings.part,
        clock_period=settings.clock_period,
        io_type=settings.io_type,
        hls_config=hls_config,
        bit_exact=True,
        allow_v2_fallback=False,
        allow_da_fallback=False,
        **kwargs,
    )
    if write:
        try:
            hls_model.write()
        except OSError as err:
            raise ConversionError(f'could not write the project into {output_dir}: {err}') from None
    _write_meta(model, output_dir, settings, calibrated=not uncalibrated_quantizers(model))
    return hls_model
