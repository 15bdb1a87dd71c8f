"""Whether Keras's float32 arithmetic computes a model exactly, as the firmware computes it in fixed point.

Keras evaluates H-layers in float32. A quantized value is exact there only if its format has at most 24 significant
bits (``i + f <= 24``), and a sum of products only if every partial sum is: the largest possible magnitude, in
steps of the finest term, must fit in 24 bits (the rule is :func:`hgq.fixed_point.float32_exact`). The firmware is
exact either way (hls4ml sizes every accumulator), so a model outside these limits computes different numbers in
Keras and on the chip. :func:`hgq.calibrate` refuses such a model; the converter can call
:func:`check_float32_exact`.

Checked: every activation quantizer's format; the accumulators of Dense/Conv layers (bias included, batch-norm
fusions too), of ``HBatchNormalization``, ``HMultiply``, ``HAdd``/``HSubtract`` and average pooling. Bounds are
worst cases over all inputs the formats allow (not over a data set), so a refusal holds for any data.

Examples
--------
>>> import keras, hgq
>>> from hgq.layers import HQuantize, HDense
>>> model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])
>>> float32_problems(model)
[]
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.ebops import h_layers
from hgq.fixed_point import FLOAT32_SIGNIFICAND_BITS, float32_exact, minimal_kif
from hgq.layers.base import HLayer
from hgq.quantizer import ActivationQuantizer

__all__ = ['InexactError', 'float32_problems', 'check_float32_exact']


class InexactError(ValueError):
    """A model whose float32 computation in Keras would differ from the fixed-point firmware."""


def _np(value: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(value), dtype=np.float64)


def _input_range(quantizer: ActivationQuantizer) -> tuple[np.ndarray, np.ndarray]:
    """Largest magnitude (``2**i``) and fractional bits of every element; 0 and ``-inf`` where always zero."""
    k, i, f = quantizer.kif()
    live = k + i + f > 0
    return np.where(live, np.exp2(i), 0.0), np.where(live, f, -np.inf)


def _lsb_bits(values: np.ndarray) -> np.ndarray:
    """Fractional bits of the lowest set bit of each value; ``-inf`` for zeros."""
    _, _, f = minimal_kif(values)
    return np.where(values != 0, f, -np.inf)


def _needed_bits(bound: np.ndarray, f: np.ndarray) -> int:
    with np.errstate(over='ignore', invalid='ignore', divide='ignore'):
        codes = np.where(bound > 0, bound * np.exp2(np.where(bound > 0, f, 0.0)), 1.0)
    return int(math.ceil(np.log2(np.max(codes))))


def _sum_problem(layer: HLayer, what: str, bound: Any, f: Any) -> list[str]:
    bound, f = np.broadcast_arrays(np.asarray(bound, dtype=np.float64), np.asarray(f, dtype=np.float64))
    if np.all(float32_exact(bound, f)):
        return []
    return [
        f'{layer.name}: {what} needs up to {_needed_bits(bound, f)} significant bits, more than the '
        f'{FLOAT32_SIGNIFICAND_BITS} float32 (Keras) holds exactly; use fewer fractional bits in its inputs or weights'
    ]


def _format_problems(layer: HLayer) -> list[str]:
    problems = []
    for quantizer in layer.quantizers:
        if not isinstance(quantizer, ActivationQuantizer) or not quantizer.built:
            continue
        k, i, f = quantizer.kif()
        bad = (k + i + f > 0) & ~float32_exact(np.exp2(i), f)
        if np.any(bad):
            problems.append(
                f'{layer.name}: quantizer {quantizer.name} has formats of up to {int(np.max((i + f)[bad]))} '
                f'significant bits (i + f), more than the {FLOAT32_SIGNIFICAND_BITS} float32 (Keras) holds exactly'
            )
    return problems


def _kernel_problems(layer: Any) -> list[str]:
    max_in, f_in = _input_range(layer.input_quantizer)
    kernel = _np(layer.qkernel)
    bound = _np(layer.apply_kernel(max_in[None], np.abs(kernel)))[0]
    channels_in, channels_out = kernel.shape[-2], kernel.shape[-1]
    # Finest step of any product feeding each output channel (input steps taken per input channel).
    f_channel = np.max(f_in.reshape(-1, channels_in), axis=0)
    f_terms = f_channel[None, :, None] + _lsb_bits(kernel).reshape(-1, channels_in, channels_out)
    f_out = np.max(f_terms, axis=(0, 1))
    if layer.qbias is not None:
        bias = _np(layer.qbias)
        bound = bound + np.abs(bias)
        f_out = np.maximum(f_out, _lsb_bits(bias))
    return _sum_problem(layer, 'the sum of products', bound, f_out)


def _batchnorm_problems(layer: Any) -> list[str]:
    max_in, f_in = _input_range(layer.input_quantizer)
    scale, offset = _np(layer.qscale), _np(layer.qoffset)
    bound = max_in * np.abs(scale) + np.abs(offset)
    return _sum_problem(layer, 'x * scale + offset', bound, np.maximum(f_in + _lsb_bits(scale), _lsb_bits(offset)))


def _merge_problems(layer: Any) -> list[str]:
    ranges = [_input_range(q) for q in layer.activation_quantizers]
    if layer.__class__.__name__ == 'HMultiply':
        (max_a, f_a), (max_b, f_b) = ranges
        return _sum_problem(layer, 'the product', max_a * max_b, f_a + f_b)
    bound = sum(max_abs for max_abs, _ in ranges)
    return _sum_problem(layer, 'the sum', bound, np.max([f for _, f in ranges], axis=0))


def _pooling_problems(layer: Any, window: int) -> list[str]:
    max_in, f_in = _input_range(layer.input_quantizer)
    return _sum_problem(layer, f'the sum over a window of {window}', window * np.max(max_in), np.max(f_in))


def _arithmetic_problems(layer: HLayer) -> list[str]:
    from hgq.layers import HAdd, HBatchNormalization, HMultiply, HSubtract
    from hgq.layers.kernel import HKernelLayer
    from hgq.layers.pooling import HGlobalAveragePooling, HPooling

    if isinstance(layer, HKernelLayer):
        return _kernel_problems(layer)
    if isinstance(layer, HBatchNormalization):
        return _batchnorm_problems(layer)
    if isinstance(layer, HAdd | HSubtract | HMultiply):
        return _merge_problems(layer)
    if isinstance(layer, HPooling) and layer.mode == 'average':
        return _pooling_problems(layer, math.prod(layer.pool_size))
    if isinstance(layer, HGlobalAveragePooling):
        return _pooling_problems(layer, math.prod(layer.input_quantizer.shape[:-1]))
    return []


def float32_problems(model: keras.Model) -> list[str]:
    """Every place where Keras's float32 arithmetic would not compute ``model`` exactly, one line each.

    Parameters
    ----------
    model : keras.Model
        A built model of H-layers (functional, Sequential or subclassed). The check uses the current integer bits:
        run it after :func:`hgq.calibrate` (which runs it itself).

    Returns
    -------
    list of str
        Empty when the model is exact; otherwise lines naming the layer, what overflows float32 and by how much.
    """
    problems = []
    for layer in h_layers(model):
        if layer.built:
            problems += _format_problems(layer) + _arithmetic_problems(layer)
    return problems


def check_float32_exact(model: keras.Model) -> None:
    """Raise :class:`InexactError` unless Keras computes ``model`` exactly in float32 (see :func:`float32_problems`).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2, kernel_quantizer={'f_init': 30})])
    >>> check_float32_exact(model)  # doctest: +ELLIPSIS +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ...
    hgq.exactness.InexactError: model ... h_dense...: the sum of products needs up to 35 significant bits, ...
    """
    problems = float32_problems(model)
    if problems:
        raise InexactError(
            f'model {model.name!r} cannot be bit-exact: Keras computes in float32, which holds '
            f'{FLOAT32_SIGNIFICAND_BITS} significant bits exactly; '
            + '; '.join(problems)
            + '. Narrow these formats: train with beta > 0 (EBOPs pressure removes unneeded bits) or start from fewer'
            ' fractional bits (f_init of the quantizers named)'
        )
