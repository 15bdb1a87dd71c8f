"""The training-time (differentiable) EBOPs equal the exact EBOPs where the two must agree.

The differentiable EBOPs are the regularizer that training minimizes; the exact EBOPs are what users are told.
They must agree whenever the bit maps are integers and the ranges are calibrated: fractional bits at integers,
WRAP ranges set by :func:`hgq.calibrate`, every nonzero quantized weight with its lowest set bit at ``2**-f`` (an
odd integer code, so its MSB-to-LSB span is ``msb + 1 + f``), and table outputs whose formats are tight. These
tests build such states for every H-layer type and granularity and compare both with ``==``, and compare the
exact EBOPs with a count written here from the chosen codes (``bits(x) * bits(w)`` per hardware multiplication).
"""

import math
import zlib

import keras
import numpy as np
import pytest

import hgq
from hgq.layers import (
    HActivation,
    HAdd,
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
    HMaxPooling1D,
    HMultiply,
    HQuantize,
    HSoftmax,
    HSubtract,
)

# Also run under the JAX and PyTorch backends (README, Development).
pytestmark = pytest.mark.backends

GRANULARITIES = ('element', 'channel', 'tensor')
REL_TOL = 2.0**-20
MAX_CODE = 15  # odd codes up to 15: weights of 1 to 4 significant bits


def _odd_codes(rng, shape, zero_share=0.2):
    """Integer codes that are odd (lowest set bit at position 0) or zero, with random signs."""
    codes = rng.integers(0, (MAX_CODE + 1) // 2, size=shape) * 2 + 1
    codes = codes * rng.choice([-1, 1], size=shape)
    return np.where(rng.random(shape) < zero_share, 0, codes).astype(np.int64)


def _code_bits(codes):
    """Significant bits of odd integer codes (0 for zero), counted with Python integers."""
    return np.vectorize(lambda c: abs(int(c)).bit_length(), otypes=[np.int64])(codes)


def _set_weight_codes(quantizer, shape, rng, f_range=(-1, 3)):
    """Give ``quantizer`` random integer ``f`` and return float weights with odd codes at those ``f``, and the
    weights' significant bits."""
    f = rng.integers(f_range[0], f_range[1] + 1, size=quantizer.f.shape).astype(np.float32)
    quantizer.f.assign(f)
    codes = _odd_codes(rng, shape)
    values = codes * 2.0 ** -np.broadcast_to(f, shape)
    return values.astype(np.float32), _code_bits(codes)


def _set_input_bits(layer, rng, quantizers=None):
    for q in quantizers or layer.activation_quantizers:
        q.f.assign(rng.integers(0, 4, size=q.f.shape).astype(np.float32))


def _input_data(rng, shape, n=64):
    """Calibration data with features of different scales and signs, and one all-zero feature (0 bits)."""
    x = rng.normal(size=(n, *shape)) * 2.0 ** rng.integers(-2, 4, size=shape)
    x = np.where(rng.random(shape) < 0.3, np.abs(x), x)
    x.reshape(n, -1)[:, 0] = 0.0
    return x.astype(np.float32)


def _input_bits(quantizer):
    k, i, f = quantizer.kif()
    return np.maximum(k + i + f, 0).astype(np.float64)


def _assert_agree(model, layer):
    """Equal up to float32 rounding (the differentiable sum runs in float32, the exact one in float64; a scale
    ``parallelization_factor / positions`` such as 1/7 is inexact): one bit more or less anywhere is far outside."""
    differentiable = float(keras.ops.convert_to_numpy(layer.ebops()))
    exact = layer.exact_ebops()
    assert math.isclose(differentiable, exact, rel_tol=REL_TOL), (
        f'{layer.name}: differentiable {differentiable} != exact {exact}'
    )
    assert math.isclose(hgq.ebops(model, exact=False), hgq.ebops(model, exact=True), rel_tol=REL_TOL)
    return exact


def _same_padding(size, kernel, stride):
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_reference(bits_in, bits_w, strides, padding):
    """Summed ``bits(x) * bits(w)`` over every output position and kernel tap that meets a real input."""
    rank = bits_in.ndim - 1
    if padding == 'same':
        pads = [_same_padding(bits_in.shape[a], bits_w.shape[a], strides[a]) for a in range(rank)]
        bits_in = np.pad(bits_in, [*pads, (0, 0)])
    out = [(bits_in.shape[a] - bits_w.shape[a]) // strides[a] + 1 for a in range(rank)]
    total = 0.0
    for position in np.ndindex(*out):
        window = tuple(slice(p * s, p * s + k) for p, s, k in zip(position, strides, bits_w.shape, strict=False))
        total += np.sum(bits_in[window][..., None] * bits_w)
    return total, math.prod(out)


def _fused_batchnorm_to_unit_factor(layer):
    """Moving statistics with ``factor = gamma / sqrt(var + eps)`` within float32 rounding of 1."""
    layer.gamma.assign(np.ones(layer.gamma.shape, np.float32))
    layer.moving_variance.assign(np.full(layer.moving_variance.shape, 1.0 - layer.epsilon, np.float32))
    layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))


KERNEL_CASES = {
    'dense': (lambda g: HDense(5, **g), (6,)),
    'dense_3d_input': (lambda g: HDense(3, **g), (2, 4)),
    'conv1d_valid': (lambda g: HConv1D(3, 3, **g), (9, 2)),
    'conv1d_same_stride2_pf3': (
        lambda g: HConv1D(2, 3, strides=2, padding='same', parallelization_factor=3, **g),
        (11, 2),
    ),
    'conv1d_all_parallel': (lambda g: HConv1D(2, 2, parallelization_factor=-1, **g), (7, 3)),
    'conv2d_valid': (lambda g: HConv2D(3, (2, 3), **g), (5, 6, 2)),
    'conv2d_same_pf2': (
        lambda g: HConv2D(2, 3, padding='same', strides=(1, 2), parallelization_factor=2, **g),
        (4, 5, 2),
    ),
    'dense_batchnorm': (lambda g: HDenseBatchNorm(4, **g), (5,)),
    'conv1d_batchnorm': (lambda g: HConv1DBatchNorm(2, 3, parallelization_factor=2, **g), (6, 2)),
    'conv2d_batchnorm': (lambda g: HConv2DBatchNorm(2, 2, **g), (4, 4, 2)),
}


# Every pair of granularities for one dense and one convolution; the same granularity for input and kernel elsewhere.
KERNEL_PARAMS = [
    (case, gi, gk)
    for case in KERNEL_CASES
    for gi in GRANULARITIES
    for gk in GRANULARITIES
    if gi == gk or case in ('dense', 'conv2d_same_pf2')
]


@pytest.mark.parametrize('case, input_granularity, kernel_granularity', KERNEL_PARAMS)
def test_kernel_layers(case, input_granularity, kernel_granularity):
    make, shape = KERNEL_CASES[case]
    rng = np.random.default_rng(zlib.crc32(f'{case}-{input_granularity}-{kernel_granularity}'.encode()))
    layer = make(
        {'input_quantizer': {'granularity': input_granularity}, 'kernel_quantizer': {'granularity': kernel_granularity}}
    )
    model = keras.Sequential([keras.Input(shape), layer])
    kernel, bits_w = _set_weight_codes(layer.kernel_quantizer, tuple(layer.kernel.shape), rng)
    layer.kernel.assign(kernel)
    if hasattr(layer, 'moving_variance'):
        _fused_batchnorm_to_unit_factor(layer)
    assert np.array_equal(layer.kernel_quantizer.exact_bits(layer.float_kernel_and_bias()[0]), bits_w)
    _set_input_bits(layer, rng)
    hgq.calibrate(model, _input_data(rng, shape))
    exact = _assert_agree(model, layer)

    bits_in = _input_bits(layer.input_quantizer)
    if isinstance(layer, HDense):
        expected = float(np.sum(bits_in[..., :, None] * bits_w))
    else:
        total, positions = _conv_reference(bits_in, bits_w.astype(np.float64), layer.strides, layer.padding)
        pf = layer.parallelization_factor
        expected = total if pf == -1 else total * pf / positions
    assert math.isclose(exact, expected, rel_tol=1e-12) and exact > 0


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_batch_normalization(granularity):
    rng = np.random.default_rng(3)
    layer = HBatchNormalization(
        input_quantizer={'granularity': granularity}, scale_quantizer={'granularity': granularity}
    )
    model = keras.Sequential([keras.Input((3, 4)), layer])
    gamma, bits_scale = _set_weight_codes(layer.scale_quantizer, (4,), rng)
    layer.gamma.assign(gamma)
    layer.moving_variance.assign(np.full(4, 1.0 - layer.epsilon, np.float32))
    _set_input_bits(layer, rng)
    hgq.calibrate(model, _input_data(rng, (3, 4)))
    exact = _assert_agree(model, layer)
    assert exact == float(np.sum(_input_bits(layer.input_quantizer) * bits_scale)) > 0


@pytest.mark.parametrize('granularity', GRANULARITIES)
def test_multiply(granularity):
    rng = np.random.default_rng(4)
    a, b = keras.Input((3, 4)), keras.Input((3, 4))
    layer = HMultiply(input_quantizer={'granularity': granularity})
    model = keras.Model([a, b], layer([a, b]))
    _set_input_bits(layer, rng)
    hgq.calibrate(model, [_input_data(rng, (3, 4)), _input_data(rng, (3, 4))])
    exact = _assert_agree(model, layer)
    bits_a, bits_b = (_input_bits(q) for q in layer.activation_quantizers)
    assert exact == float(np.sum(bits_a * bits_b)) > 0


@pytest.mark.parametrize(
    'activation, output',
    [
        ('tanh', {'i_init': 0.0, 'f_init': 6.0}),  # [-1, 1): tanh reaches both ends over [-8, 8)
        ('sigmoid', {'i_init': 0.0, 'f_init': 7.0, 'signed': False}),
        ('tanh', {'i_init': 0.0, 'f_init': 3.0, 'overflow_mode': 'SAT_SYM'}),
    ],
)
def test_activation_table_with_a_tight_output_format(activation, output):
    layer = HActivation(activation, output_quantizer=output)
    model = keras.Sequential([keras.Input((5,)), layer])
    exact = _assert_agree(model, layer)
    k, i, f = layer.table_format()
    assert exact == 5 * (1 + 0 + output['f_init'] - (0 if output.get('signed', True) else 1)) * 2.0 ** (k + i + f - 6)


@pytest.mark.parametrize('settings', [{}, {'exp_quantizer': {'f_init': 5.0}, 'sum_quantizer': {'i_init': 3.0}}])
def test_softmax(settings):
    layer = HSoftmax(**settings)
    model = keras.Sequential([keras.Input((2, 6)), layer])
    exact = _assert_agree(model, layer)
    exp_table, inv_table = layer.tables()
    w_e, w_r = (_input_bits(q).max() for q in (layer.exp_quantizer, layer.inv_quantizer))
    b_d, b_s = (math.log2(len(t)) for t in (exp_table, inv_table))
    lut = 12 * w_e * 2.0 ** max(b_d - 6, 0) + 2 * w_r * 2.0 ** max(b_s - 6, 0)
    assert exact == 12 * w_e * w_r + lut


@pytest.mark.parametrize(
    'make, inputs',
    [
        (lambda: HQuantize(), 1),
        (lambda: HActivation('relu'), 1),
        (lambda: HAdd(), 2),
        (lambda: HSubtract(), 2),
        (lambda: HConcatenate(), 2),
        (lambda: HMaxPooling1D(2), 1),
        (lambda: HGlobalAveragePooling1D(), 1),
    ],
)
def test_layers_without_multipliers_cost_nothing_either_way(make, inputs):
    layer = make()
    tensors = [keras.Input((4, 2)) for _ in range(inputs)]
    model = keras.Model(tensors, layer(tensors if inputs > 1 else tensors[0]))
    rng = np.random.default_rng(5)
    hgq.calibrate(model, [_input_data(rng, (4, 2)) for _ in range(inputs)])
    assert float(keras.ops.convert_to_numpy(layer.ebops())) == layer.exact_ebops() == 0.0
    assert layer.name not in hgq.layer_ebops(model)


def test_average_pooling_costs_nothing():
    layer = HAveragePooling2D(2)
    model = keras.Sequential([keras.Input((4, 4, 2)), layer])
    assert float(keras.ops.convert_to_numpy(layer.ebops())) == layer.exact_ebops() == 0.0
    assert hgq.ebops(model) == 0.0


def test_model_total_is_the_sum_of_its_layers():
    """A model mixing layer types: both totals agree and equal the sum of the per-layer values."""
    rng = np.random.default_rng(6)
    conv = HConv1D(3, 3, parallelization_factor=2, input_quantizer={'granularity': 'channel'})  # 8 positions
    dense = HDense(4, kernel_quantizer={'granularity': 'channel'})
    model = keras.Sequential([keras.Input((10, 2)), conv, HActivation('relu'), dense, keras.layers.Flatten()])
    for layer in (conv, dense):
        kernel, _ = _set_weight_codes(layer.kernel_quantizer, tuple(layer.kernel.shape), rng)
        layer.kernel.assign(kernel)
        _set_input_bits(layer, rng)
    hgq.calibrate(model, _input_data(rng, (10, 2)))
    per_layer = hgq.layer_ebops(model)
    assert set(per_layer) == {conv.name, dense.name}
    differentiable = hgq.layer_ebops(model, exact=False)
    assert all(math.isclose(differentiable[name], value, rel_tol=REL_TOL) for name, value in per_layer.items())
    assert hgq.ebops(model) == sum(per_layer.values()) == conv.exact_ebops() + dense.exact_ebops()


def test_differentiable_weight_bits_match_the_exact_bits_per_weight():
    """Per weight, not only summed: ``msb + 1 + f`` for odd codes, 0 for zeros, at every granularity."""
    rng = np.random.default_rng(7)
    for granularity in GRANULARITIES:
        q = hgq.quantizer.WeightQuantizer(granularity=granularity)
        q.build((6, 5))
        w, bits = _set_weight_codes(q, (6, 5), rng, f_range=(-3, 6))
        assert np.array_equal(keras.ops.convert_to_numpy(q.bits(w)), bits.astype(np.float32))
        assert np.array_equal(q.exact_bits(w), bits)
