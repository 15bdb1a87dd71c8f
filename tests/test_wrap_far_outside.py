"""WRAP-mode quantization of values far outside the representable range, against exact integer arithmetic.

Wrapping keeps the low ``b`` bits of the integer code. Computed as ``codes - floor((codes - lo) / span) * span``,
the subtraction ``codes - lo`` is rounded in floating point once ``codes`` exceeds 2**24 steps (float32, Keras) or
2**53 steps (float64): a code of ``2**25 + 4`` wrapped to ``-4`` in a format whose codes are ``-2..1``. The oracle
here rounds and wraps with Python integers, and every comparison is ``np.array_equal``.
"""

import keras
import numpy as np
import pytest
from exact_fixed import reference  # tests/exact_fixed.py

from hgq.fixed_point import ROUND_MODES, quantize, quantize_tensor
from hgq.quantizer import ActivationQuantizer

FORMATS = [(1, 1, 0), (1, 2, 1), (0, 3, 2), (1, 0, 3), (0, 1, -1), (1, 5, -2), (1, 12, 8), (0, 20, 4)]


def _wrap_reference(x: float, k: int, i: int, f: int, mode: str) -> float:
    """ap_fixed<k+i+f, k+i, mode, AP_WRAP> (or ap_ufixed) of ``x``, computed with Python integers."""
    return reference(x, k, i, f, mode, 'WRAP')


def _far_values(rng: np.random.Generator, dtype, max_exponent: int, n: int = 400) -> np.ndarray:
    """Values of every mantissa pattern between 2**20 and 2**max_exponent in magnitude, both signs; a few exact
    powers of two and their odd neighbours."""
    mantissa_bits = np.finfo(dtype).nmant + 1
    mantissas = rng.integers(2 ** (mantissa_bits - 1), 2**mantissa_bits, size=n, dtype=np.int64)
    exponents = rng.integers(20, max_exponent, size=n) - mantissa_bits
    values = np.ldexp(mantissas.astype(np.float64), exponents) * rng.choice([-1.0, 1.0], size=n)
    edges = [2.0**25, 2.0**25 + 4, -(2.0**25 + 4), 2.0**24 + 2, 2.0**60 + 2.0**37]
    return np.concatenate([values, edges]).astype(dtype)


@pytest.mark.parametrize('round_mode', ROUND_MODES)
def test_keras_wrap_far_outside_the_range_is_exact(round_mode):
    rng = np.random.default_rng(24)
    x = _far_values(rng, np.float32, 100)
    for k, i, f in FORMATS:
        got = keras.ops.convert_to_numpy(
            quantize_tensor(keras.ops.convert_to_tensor(x), float(k), float(i), float(f), round_mode, 'WRAP')
        )
        want = np.array([_wrap_reference(float(v), k, i, f, round_mode) for v in x], dtype=np.float32)
        assert np.array_equal(got, want), (k, i, f, x[got != want][:5], got[got != want][:5])


@pytest.mark.parametrize('round_mode', ['RND', 'TRN', 'RND_CONV'])
def test_numpy_wrap_far_outside_the_range_is_exact(round_mode):
    rng = np.random.default_rng(53)
    x = np.concatenate([_far_values(rng, np.float64, 200), [2.0**55 + 8, -(2.0**55 + 8)]])
    for k, i, f in FORMATS:
        want = np.array([_wrap_reference(float(v), k, i, f, round_mode) for v in x])
        assert np.array_equal(quantize(x, k, i, f, round_mode, 'WRAP'), want), (k, i, f)


def test_wrap_activation_quantizer_at_inference_far_outside_its_range():
    """The layer path: a calibrated-looking WRAP quantizer fed values 2**20 to 2**60 times its range."""
    rng = np.random.default_rng(7)
    x = _far_values(rng, np.float32, 60, n=241).reshape(-1, 3)
    quantizer = ActivationQuantizer(f_init=2.0, round_mode='RND', overflow_mode='WRAP')
    quantizer.build((None, 3))
    quantizer.f.assign(np.array([0.0, 2.0, 5.0], np.float32))
    quantizer.set_range(np.array([-2.0, 0.0, -4.0], np.float32), np.array([1.5, 3.0, 7.75], np.float32))
    k, i, f = quantizer.kif()
    got = keras.ops.convert_to_numpy(quantizer(x, training=False))
    want = np.array(
        [[_wrap_reference(float(v), int(k[c]), int(i[c]), int(f[c]), 'RND') for c, v in enumerate(row)] for row in x],
        dtype=np.float32,
    )
    assert np.array_equal(got, want)
