"""What :func:`hgq.calibrate` promises: no calibration value overflows anywhere, every WRAP activation uses the fewest
integer bits that hold its values, and the returned EBOPs are the model's exact EBOPs."""

import keras
import numpy as np
import pytest

import hgq
from hgq.ebops import h_layers
from hgq.fixed_point import quantize
from hgq.layers import HConv1D, HDense, HMultiply, HQuantize


def _quantizer_inputs(model, x):
    """``(quantizer, values)`` for every WRAP input quantizer, with the float values that reach it."""
    pairs = []
    for layer in h_layers(model):
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        for quantizer, tensor in zip(layer.activation_quantizers, inputs, strict=True):
            if quantizer.tracks_range:
                pairs.append((quantizer, tensor))
    probe = keras.Model(model.inputs, [t for _, t in pairs])
    values = probe.predict(x, verbose=0)
    values = values if isinstance(values, list) else [values]
    return [(q, v.astype(np.float64)) for (q, _), v in zip(pairs, values, strict=True)]


def _assert_exact_and_minimal(quantizer, values):
    """No value wraps, and for each bitwidth variable (element, channel or tensor) holding a nonzero value, one
    integer bit fewer would make one of its values overflow; the sign bit is set exactly where a value is negative."""
    k, i, f = quantizer.kif()
    rm = quantizer.round_mode
    wrapped = quantize(values, k, i, f, rm, 'WRAP')
    assert np.array_equal(wrapped, quantize(values, k, i, f, rm, 'SAT')), f'{quantizer.name}: a value overflows'
    rounded = quantize(values, 1, 60, f, rm, 'SAT')  # rounded only
    var_shape = tuple(quantizer.f.shape)
    for var_index in np.ndindex(*var_shape):
        group = tuple(slice(None) if n == 1 else j for j, n in zip(var_index, var_shape, strict=True))
        sample = rounded[(slice(None), *group)]
        one = tuple(0 if n == 1 else j for j, n in zip(var_index, var_shape, strict=True))
        kj, ij, fj = k[one], i[one], f[one]
        assert kj == int(np.any(sample < 0)), f'{quantizer.name}{var_index}: sign bit'
        if np.any(sample):
            lo, hi = -kj * 2.0 ** (ij - 1), 2.0 ** (ij - 1) - 2.0**-fj
            assert np.any((sample < lo) | (sample > hi)), f'{quantizer.name}{var_index}: fewer integer bits do'


@pytest.mark.parametrize('granularity', ['element', 'channel', 'tensor'])
def test_no_value_overflows_and_integer_bits_are_minimal(granularity):
    rng = np.random.default_rng(11)
    spec = {'granularity': granularity}
    model = keras.Sequential(
        [
            keras.Input((6, 3)),
            HQuantize(input_quantizer=spec),
            HConv1D(4, 2, input_quantizer=spec, activation='relu'),
            HDense(3, input_quantizer=spec),
        ]
    )
    x = (rng.normal(size=(50, 6, 3)) * [0.2, 3.0, 40.0]).astype('float32')
    x[:, :, 0] = np.abs(x[:, :, 0])
    result = hgq.calibrate(model, x)
    assert result == hgq.ebops(model)
    for quantizer, values in _quantizer_inputs(model, x):
        assert float(quantizer.calibrated.numpy()) == 1.0
        _assert_exact_and_minimal(quantizer, values)


def test_both_inputs_of_a_merge_layer_are_calibrated():
    rng = np.random.default_rng(12)
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], HMultiply()([a, b]))
    xa, xb = (rng.normal(size=(40, 4)) * s for s in (1.0, 100.0))
    hgq.calibrate(model, [xa.astype('float32'), xb.astype('float32')])
    for quantizer, values in _quantizer_inputs(model, [xa.astype('float32'), xb.astype('float32')]):
        _assert_exact_and_minimal(quantizer, values)
    ia, ib = (q.kif()[1] for q in model.layers[-1].activation_quantizers)
    assert np.all(ib > ia)


def test_saturating_quantizers_keep_their_learned_bits():
    model = keras.Sequential([keras.Input((3,)), HQuantize(input_quantizer={'overflow_mode': 'SAT', 'i_init': 2.0})])
    before = model.layers[0].input_quantizer.kif()
    hgq.calibrate(model, 1000 * np.ones((4, 3), 'float32'))
    assert all(np.array_equal(u, v) for u, v in zip(before, model.layers[0].input_quantizer.kif(), strict=True))
