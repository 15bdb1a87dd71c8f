"""Edge cases of :mod:`hgq.fixed_point` that the mutation run showed unpinned: zero groups, per-element signs and
the messages of the errors."""

import warnings

import keras
import numpy as np
import pytest

from hgq.fixed_point import fixed_type_string, float32_exact, minimal_kif, quantize, quantize_tensor


@pytest.mark.parametrize('axis', [None, 0])
def test_all_zero_values_get_the_empty_format(axis):
    """Zeros need no bits: ``(0, 0, 0)``, not just some format of width 0."""
    k, i, f = minimal_kif(np.zeros(3), axis=axis)
    assert np.all(k == 0) and np.all(i == 0) and np.all(f == 0)


def test_all_zero_group_next_to_nonzero_groups():
    v = np.array([[0.0, 0.0], [0.75, -2.0], [0.0, 3.0]])
    k, i, f = minimal_kif(v, axis=1)
    assert (k.tolist(), i.tolist(), f.tolist()) == ([0, 1, 0], [0, 1, 2], [0, 2, 0])


def test_sign_bit_is_per_element_without_axis():
    k, i, f = minimal_kif([-1.0, 0.0, 0.5, 1.0, -0.25])
    assert k.tolist() == [1, 0, 0, 0, 1]
    assert i.tolist() == [0, 0, 0, 1, -2]
    assert f.tolist() == [0, 0, 1, 0, 2]


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_minimal_kif_rejects_non_finite_values_by_name(bad):
    with pytest.raises(ValueError, match='^minimal_kif needs finite values$'):
        minimal_kif([1.0, bad])


def test_fixed_type_string_names_a_bad_sign_bit():
    with pytest.raises(ValueError, match=r'^k \(sign bit\) must be 0 or 1, got 2$'):
        fixed_type_string(2, 3, 4)
    with pytest.raises(ValueError, match=r"round_mode must be one of .*got 'ROUND'"):
        fixed_type_string(1, 3, 4, 'ROUND')
    with pytest.raises(ValueError, match=r"overflow_mode must be one of .*got 'CLIP'"):
        fixed_type_string(1, 3, 4, 'RND', 'CLIP')


def test_float32_exact_of_zeros_huge_and_non_finite_bounds_warns_nothing():
    """Always-zero values are exact at any ``f`` (even ``-inf``); huge or non-finite bounds are not, silently."""
    max_abs = np.array([0.0, 0.0, 1e308, np.inf, np.nan, 2.0**128, 1.0])
    f = np.array([-np.inf, 500.0, 100.0, -np.inf, 0.0, -110.0, 25.0])
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        result = float32_exact(max_abs, f)
    assert result.tolist() == [True, True, False, False, False, False, False]
    assert float32_exact(1.0, 23).item() and float32_exact([[1.0], [2.0]], [0, 23]).shape == (2, 2)


@pytest.mark.parametrize('f', [-20, 0, 30, 102])
def test_float32_exact_at_its_bounds(f):
    """Exactly 24 significant bits and the smallest normal step ``2**-126`` are still exact; one more is not."""
    assert float32_exact(2.0**24 * 2.0**-f, f).item()
    assert not float32_exact((2.0**24 + 1) * 2.0**-f, f).item()
    assert float32_exact(2.0**-102, 126).item()  # 2**24 steps of 2**-126
    assert not float32_exact(2.0**-103, 127).item()


def _both_paths(x, k, i, f, round_mode, overflow_mode):
    """``quantize`` (numpy, float64) and ``quantize_tensor`` (Keras, float32) of the same values."""
    values = keras.ops.convert_to_tensor(np.asarray(x, 'float32'))
    tensor = quantize_tensor(values, float(k), float(i), float(f), round_mode, overflow_mode)
    return quantize(x, k, i, f, round_mode, overflow_mode), np.asarray(keras.ops.convert_to_numpy(tensor), np.float64)


def test_sat_sym_saturates_a_signed_word_to_minus_its_largest_code():
    """ap_fixed<3,3,AP_TRN,AP_SAT_SYM> holds -3..3 (SAT: -4..3); a 1-bit signed word saturates to -1 (0b1)."""
    for result in _both_paths([-10.0, -4.0, 10.0], 1, 2, 0, 'TRN', 'SAT_SYM'):
        assert np.array_equal(result, [-3.0, -3.0, 3.0])
    for result in _both_paths([-10.0, -4.0, 10.0], 1, 2, 0, 'TRN', 'SAT'):
        assert np.array_equal(result, [-4.0, -4.0, 3.0])
    for result in _both_paths([-5.0, 5.0], 1, 0, 0, 'TRN', 'SAT_SYM'):
        assert np.array_equal(result, [-1.0, 0.0])


def test_wrap_sends_the_code_one_past_the_largest_to_the_smallest():
    """ap_fixed<3,3> WRAP: 4 -> -4, -5 -> 3, 12 -> -4 (codes mod 8 in -4..3); ap_ufixed<3,3>: 8 -> 0, -1 -> 7."""
    for result in _both_paths([4.0, 3.0, -4.0, -5.0, 12.0], 1, 2, 0, 'TRN', 'WRAP'):
        assert np.array_equal(result, [-4.0, 3.0, -4.0, 3.0, -4.0])
    for result in _both_paths([8.0, 7.0, -1.0, 0.0], 0, 3, 0, 'TRN', 'WRAP'):
        assert np.array_equal(result, [0.0, 7.0, 7.0, 0.0])


def test_round_fn_replaces_the_rounding_of_the_scaled_values():
    """``quantize_tensor(..., round_fn=floor)`` truncates although the mode says RND: 0.75 * 2 = 1.5 -> 1 (RND: 2)."""
    x = keras.ops.convert_to_tensor([0.75, -0.75])
    rounded = keras.ops.convert_to_numpy(quantize_tensor(x, 1.0, 2.0, 1.0, 'RND', 'SAT'))
    floored = keras.ops.convert_to_numpy(quantize_tensor(x, 1.0, 2.0, 1.0, 'RND', 'SAT', round_fn=keras.ops.floor))
    assert rounded.tolist() == [1.0, -0.5] and floored.tolist() == [0.5, -1.0]


def test_quantize_tensor_runs_inside_a_compiled_model():
    """Every step of ``quantize_tensor`` is a Keras op: it traces into a graph (``predict``), numpy would not."""
    x = np.array([[0.3, -1.7, 2.5, 9.0]], 'float32')
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: quantize_tensor(t, 1.0, 2.0, 1.0))])
    assert np.array_equal(model.predict(x, verbose=0), quantize(x, 1, 2, 1).astype('float32'))
