"""Inference outputs equal float64 numpy computations from the exported quantities, bit for bit.

The converter hands hardware the input formats (``kif()`` of each activation quantizer), ``qkernel``/``qbias``
(fused ones for the batch-norm variants) and ``qscale``/``qoffset``; these tests recompute every layer from exactly
those, with an independent numpy convolution, and require ``np.array_equal``. Conv EBOPs are checked against a
brute-force count over output positions.
"""

import itertools

import keras
import numpy as np
import pytest

import hgq
from hgq.fixed_point import quantize
from hgq.layers import (
    HAdd,
    HAveragePooling1D,
    HAveragePooling2D,
    HBatchNormalization,
    HConcatenate,
    HConv1D,
    HConv1DBatchNorm,
    HConv2D,
    HConv2DBatchNorm,
    HDense,
    HDenseBatchNorm,
    HGlobalAveragePooling1D,
    HGlobalAveragePooling2D,
    HMaxPooling1D,
    HMaxPooling2D,
    HMultiply,
    HSubtract,
)
from hgq.quantizer import effective_bits

# Also run under the JAX and PyTorch backends (README, Development).
pytestmark = pytest.mark.backends


def _np(tensor) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float64)


def _quantized_input(quantizer, x: np.ndarray) -> np.ndarray:
    k, i, f = quantizer.kif()
    return quantize(x, k, i, f, quantizer.round_mode, quantizer.overflow_mode)


def _pads(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    if padding == 'valid':
        return 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _windows(x: np.ndarray, window: tuple[int, ...], strides: tuple[int, ...], padding: str, fill: float):
    """Yield ``(output index, window of x)`` for a channels-last batch ``x`` (Keras padding rules)."""
    pads = [_pads(n, k, s, padding) for n, k, s in zip(x.shape[1:-1], window, strides, strict=True)]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=fill)
    out = [(n + sum(p) - k) // s + 1 for n, p, k, s in zip(x.shape[1:-1], pads, window, strides, strict=True)]
    for pos in itertools.product(*map(range, out)):
        index = tuple(slice(p * s, p * s + k) for p, s, k in zip(pos, strides, window, strict=True))
        yield pos, xp[(slice(None), *index)]


def numpy_conv(x: np.ndarray, kernel: np.ndarray, strides: tuple[int, ...], padding: str) -> np.ndarray:
    """Channels-last convolution (cross-correlation) of a batch, brute force over output positions."""
    rank = kernel.ndim - 2
    results = {
        pos: np.tensordot(w, kernel, axes=rank + 1)
        for pos, w in _windows(x, kernel.shape[:rank], strides, padding, 0.0)
    }
    shape = tuple(max(p[a] for p in results) + 1 for a in range(rank))
    y = np.zeros((x.shape[0], *shape, kernel.shape[-1]))
    for pos, value in results.items():
        y[(slice(None), *pos)] = value
    return y


def _randomize(model, seed: int = 0) -> None:
    """Give biases, batch-norm parameters and statistics non-trivial values (they start at 0 or 1)."""
    rng = np.random.default_rng(seed)
    for v in model.variables:
        name = v.path.rsplit('/', 1)[-1]
        if name in ('bias', 'offset', 'moving_mean'):
            v.assign(rng.normal(size=v.shape))
        elif name in ('gamma', 'moving_variance'):
            v.assign(rng.uniform(0.3, 3.0, size=v.shape))
        elif name == 'f':
            v.assign(v + rng.uniform(-2.0, 2.0, size=v.shape).round())


def _calibrated(layer, shapes, seed=0, n=64, scales=None):
    inputs = [keras.Input(s) for s in shapes]
    inputs = inputs if len(inputs) > 1 else inputs[0]
    model = keras.Model(inputs, layer(inputs))
    _randomize(model, seed)
    rng = np.random.default_rng(seed)
    scales = scales or [2.0] * len(shapes)
    xs = [(rng.normal(size=(n, *s)) * c).astype('float32') for s, c in zip(shapes, scales, strict=True)]
    hgq.calibrate(model, xs if len(xs) > 1 else xs[0])
    # Fresh data of a wider range: some values wrap around, as they would in hardware.
    test = [(rng.normal(size=(n, *s)) * c * 1.5).astype('float32') for s, c in zip(shapes, scales, strict=True)]
    return model, test


KERNEL_LAYERS = {
    'dense': (lambda: HDense(5, activation='relu'), (7,)),
    'dense_3d': (lambda: HDense(4, kernel_quantizer={'granularity': 'channel'}), (3, 6)),
    'conv1d_same_strided': (lambda: HConv1D(3, 3, strides=2, padding='same', activation='relu'), (9, 2)),
    'conv2d_valid': (lambda: HConv2D(4, (3, 2), strides=(2, 1)), (7, 6, 3)),
    'conv2d_same_channel': (
        lambda: HConv2D(3, 3, padding='same', input_quantizer={'granularity': 'channel'}),
        (5, 5, 2),
    ),
    'conv2d_sat_rnd_conv': (
        lambda: HConv2D(2, 2, input_quantizer={'overflow_mode': 'SAT', 'round_mode': 'RND_CONV', 'i_init': 1.0}),
        (4, 4, 2),
    ),
    'dense_batchnorm': (lambda: HDenseBatchNorm(4, activation='relu'), (6,)),
    'conv1d_batchnorm': (lambda: HConv1DBatchNorm(3, 2), (6, 2)),
    'conv2d_batchnorm': (lambda: HConv2DBatchNorm(3, 3, padding='same', activation='relu'), (4, 5, 2)),
}


@pytest.mark.parametrize('name', KERNEL_LAYERS)
def test_kernel_layers_compute_exactly_with_the_exported_kernel_and_bias(name):
    make, shape = KERNEL_LAYERS[name]
    layer = make()
    model, (x,) = _calibrated(layer, [shape])
    xq = _quantized_input(layer.input_quantizer, x)
    kernel, bias = _np(layer.qkernel), _np(layer.qbias)
    if isinstance(layer, HDense):
        expected = xq @ kernel
    else:
        expected = numpy_conv(xq, kernel, layer.strides, layer.padding)
    expected = expected + bias
    if layer.activation == 'relu':
        expected = np.maximum(expected, 0.0)
    y = _np(model(x))
    assert np.any(xq != x) and np.any(y != 0)
    assert np.array_equal(y, expected)


@pytest.mark.parametrize('pf', [1, 2, 4, -1])
@pytest.mark.parametrize('padding', ['valid', 'same'])
def test_conv_ebops_are_bit_products_per_output_position_times_parallelization(padding, pf):
    layer = HConv2D(3, (3, 2), strides=(1, 2), padding=padding, parallelization_factor=pf)
    _calibrated(layer, [(4, 8, 2)])
    k, i, f = layer.input_quantizer.kif()
    bits_in = np.maximum(k + i + f, 0).astype(np.float64)[None]
    bits_kernel = effective_bits(_np(layer.qkernel)).astype(np.float64)
    per_position = numpy_conv(bits_in, bits_kernel, layer.strides, padding)[0].sum(axis=-1)
    n_positions = per_position.size
    assert n_positions == layer.n_output_positions == (4 if padding == 'same' else 2) * 4
    factor = n_positions if pf == -1 else pf
    assert layer.exact_ebops() == pytest.approx(per_position.sum() * factor / n_positions, rel=1e-12)


def test_batchnorm_computes_exactly_with_the_exported_scale_and_offset():
    layer = HBatchNormalization()
    model, (x,) = _calibrated(layer, [(3, 4)])
    xq = _quantized_input(layer.input_quantizer, x)
    expected = xq * _np(layer.qscale) + _np(layer.qoffset)
    assert np.array_equal(_np(model(x)), expected)
    bits = np.maximum(sum(layer.input_quantizer.kif()), 0)
    assert layer.exact_ebops() == float(np.sum(bits * effective_bits(_np(layer.qscale))))


def test_fused_batchnorm_exports_the_moving_statistics_fold():
    layer = HConv2DBatchNorm(3, 2, kernel_quantizer={'f_init': 30.0}, bias_quantizer={'f_init': 30.0})
    inputs = keras.Input((4, 4, 2))
    # Not calibrated: weights with 30 fractional bits are beyond what float32 computes exactly (calibrate refuses).
    _randomize(keras.Model(inputs, layer(inputs)))
    std = np.sqrt(_np(layer.moving_variance) + layer.epsilon)
    factor = _np(layer.gamma) / std
    step = 2.0**-30  # the weights are quantized to 30 fractional bits: up to one step apart from the float fold
    np.testing.assert_allclose(_np(layer.qkernel), _np(layer.kernel) * factor, rtol=1e-6, atol=step)
    np.testing.assert_allclose(
        _np(layer.qbias), _np(layer.offset) - _np(layer.moving_mean) * factor, rtol=1e-6, atol=step
    )


MERGE_LAYERS = {
    'add': (HAdd, np.add),
    'subtract': (HSubtract, np.subtract),
    'multiply': (HMultiply, np.multiply),
}


@pytest.mark.parametrize('name', MERGE_LAYERS)
def test_merge_layers_compute_exactly_with_each_input_format(name):
    cls, fn = MERGE_LAYERS[name]
    layer = cls(input_quantizer={'granularity': 'channel'})
    model, (a, b) = _calibrated(layer, [(3, 4), (3, 4)], scales=[2.0, 20.0])
    qa, qb = (_quantized_input(q, v) for q, v in zip(layer.activation_quantizers, (a, b), strict=True))
    assert not np.array_equal(*(q.kif()[1] for q in layer.activation_quantizers))
    assert np.array_equal(_np(model([a, b])), fn(qa, qb))
    if name == 'multiply':
        bits = [np.maximum(sum(q.kif()), 0) for q in layer.activation_quantizers]
        assert layer.exact_ebops() == float(np.sum(bits[0] * bits[1])) > 0


def test_concatenate_computes_exactly_with_each_input_format():
    layer = HConcatenate(axis=1)
    model, (a, b) = _calibrated(layer, [(2, 3), (4, 3)])
    qa, qb = (_quantized_input(q, v) for q, v in zip(layer.activation_quantizers, (a, b), strict=True))
    assert np.array_equal(_np(model([a, b])), np.concatenate([qa, qb], axis=1))


POOLING_LAYERS = {
    'max1d': (lambda: HMaxPooling1D(3, strides=2), (9, 2)),
    'max2d_same': (lambda: HMaxPooling2D(3, strides=2, padding='same'), (5, 6, 2)),
    'average1d': (lambda: HAveragePooling1D(4, strides=2), (10, 2)),
    'average2d': (lambda: HAveragePooling2D((2, 2)), (4, 6, 3)),
    'average2d_strided': (lambda: HAveragePooling2D((1, 4), strides=(2, 1)), (5, 6, 1)),
}


@pytest.mark.parametrize('name', POOLING_LAYERS)
def test_pooling_layers_compute_exactly(name):
    make, shape = POOLING_LAYERS[name]
    layer = make()
    model, (x,) = _calibrated(layer, [shape])
    xq = _quantized_input(layer.input_quantizer, x)
    y = _np(model(x))
    axes = tuple(range(1, layer.rank + 1))
    fill = -np.inf if layer.mode == 'max' else 0.0
    reduce = np.max if layer.mode == 'max' else np.mean
    for pos, window in _windows(xq, layer.pool_size, layer.strides, layer.padding, fill):
        assert np.array_equal(y[(slice(None), *pos)], reduce(window, axis=axes)), pos


@pytest.mark.parametrize('cls, shape', [(HGlobalAveragePooling1D, (16, 3)), (HGlobalAveragePooling2D, (4, 2, 2))])
def test_global_average_pooling_computes_exactly(cls, shape):
    layer = cls()
    model, (x,) = _calibrated(layer, [shape])
    xq = _quantized_input(layer.input_quantizer, x)
    assert np.array_equal(_np(model(x)), xq.mean(axis=tuple(range(1, len(shape)))))
