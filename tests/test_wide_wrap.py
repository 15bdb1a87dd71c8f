"""WRAP in words wider than float32's significand: codes inside the range are kept exactly.

``hgq.calibrate`` observes a model with every WRAP range opened to ``+-2**20`` (28-bit words at ``f = 6``). Wrapping
a negative code there by ``codes + 2**b`` dropped its low bits in float32, so layers after the first one observed
coarsened values, got too few integer bits, and the calibrated model wrapped on its own calibration data.
"""

import keras
import numpy as np
import pytest

import hgq
from hgq.fixed_point import quantize, quantize_tensor
from hgq.layers import HDense, HQuantize


@pytest.mark.parametrize('i', [17, 21, 25, 30])
@pytest.mark.parametrize('f', [3, 6, 10])
@pytest.mark.parametrize('k', [0, 1])
def test_float32_wrap_matches_the_float64_reference_in_wide_words(k, i, f):
    rng = np.random.default_rng(1000 * k + 10 * i + f)
    inside = rng.uniform(-(2.0**i), 2.0**i, 4000) * rng.choice([1e-6, 1e-3, 1.0], 4000)
    if not k:  # a small negative value wraps to nearly 2**i, which float32 cannot hold in words this wide
        inside = np.abs(inside)
    outside = rng.uniform(2.0**i, 2.0 ** (i + 3), 1000) * rng.choice([-1.0, 1.0], 1000)
    edges = np.array([2.0**i, -(2.0**i), 2.0**i - 2.0**-f, -(2.0**i) - 2.0**-f, 2.0**-f, 0.0, -(2.0**-f) * k])
    x = np.concatenate([inside, outside, edges]).astype(np.float32)
    got = keras.ops.convert_to_numpy(quantize_tensor(x, float(k), float(i), float(f), 'RND', 'WRAP'))
    want = quantize(x.astype(np.float64), k, i, f, 'RND', 'WRAP')
    assert np.array_equal(got.astype(np.float64), want)


def test_calibration_observes_exact_negative_values_after_the_first_layer():
    model = keras.Sequential([keras.Input((1,)), HQuantize(name='first'), HDense(1, name='dense')])
    dense = model.get_layer('dense')
    dense.kernel.assign(np.ones((1, 1), np.float32))
    dense.bias.assign(np.zeros(1, np.float32))
    x = np.array([[-0.3], [0.1]], np.float32)
    hgq.calibrate(model, x)
    first = model.get_layer('first')(x).numpy()
    assert first.ravel().tolist() == [-0.296875, 0.09375]  # -0.3 and 0.1 at f = 6
    assert dense.input_quantizer.vmin.numpy().tolist() == [-0.296875]
    k, i, _ = dense.input_quantizer.kif()
    assert k.tolist() == [1] and i.tolist() == [-1]  # -0.296875 needs i = -1, not -2
    assert np.array_equal(model.predict(x, verbose=0), first)  # nothing wraps on the calibration data
