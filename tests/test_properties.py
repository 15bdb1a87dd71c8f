"""Property-based checks of the fixed-point core and the quantizers (hypothesis, derandomized for CI).

The reference here is written independently with Python integers and ``fractions.Fraction``: the code of ``x``
is ``x * 2**f`` rounded by the mode's rule, then wrapped modulo ``2**b`` into ``[lo, hi]`` (WRAP) or clamped
(SAT, SAT_SYM). :func:`hgq.fixed_point.quantize` (numpy) and :func:`hgq.fixed_point.quantize_tensor`
(``keras.ops``) must both equal it exactly, for any ``k``, ``i``, ``f`` and modes. Example counts and
derandomization come from the hypothesis profile loaded in ``conftest.py``.
"""

from fractions import Fraction

import keras
import numpy as np
from exact_fixed import reference, round_code  # tests/exact_fixed.py
from hypothesis import given
from hypothesis import strategies as st

from hgq.fixed_point import (
    OVERFLOW_MODES,
    ROUND_MODES,
    fixed_type_string,
    float32_exact,
    minimal_kif,
    quantize,
    quantize_tensor,
)
from hgq.quantizer import ActivationQuantizer, WeightQuantizer, effective_bits

round_modes = st.sampled_from(ROUND_MODES)
overflow_modes = st.sampled_from(OVERFLOW_MODES)
signs = st.integers(0, 1)
int_bits = st.integers(-6, 14)
frac_bits = st.integers(-6, 14)


@st.composite
def formats(draw, max_width=30):
    """``(k, i, f)`` with width ``k + i + f <= max_width`` (widths <= 0 included: always zero)."""
    k, i, f = draw(signs), draw(int_bits), draw(frac_bits)
    return k, min(i, max_width - k - f), f


def values(f, max_exponent=40):
    """Finite float64 values around the format of ``f`` fractional bits: exact codes, ties, near-ties, anything."""
    code = st.integers(-(2**22), 2**22)
    return st.one_of(
        code.map(lambda c: c * 2.0**-f),  # exact values
        code.map(lambda c: (c + 0.5) * 2.0**-f),  # ties
        code.map(lambda c: np.nextafter((c + 0.5) * 2.0**-f, np.inf)),
        code.map(lambda c: np.nextafter((c + 0.5) * 2.0**-f, -np.inf)),
        st.floats(-(2.0**max_exponent), 2.0**max_exponent, allow_nan=False, allow_infinity=False),
    )


@st.composite
def format_and_values(draw, max_width=30, max_exponent=40):
    k, i, f = draw(formats(max_width))
    xs = draw(st.lists(values(f, max_exponent), min_size=1, max_size=40))
    return (k, i, f), np.array(xs, dtype=np.float64)


def _reference_array(x, k, i, f, round_mode, overflow_mode):
    return np.array([reference(float(v), k, i, f, round_mode, overflow_mode) for v in x])


def _same(a, b):
    """Bit-exact equality, including the sign of zero (ap_fixed has no negative zero)."""
    return np.array_equal(a, b) and np.array_equal(np.signbit(a), np.signbit(b))


@given(format_and_values(), round_modes, overflow_modes)
def test_quantize_equals_integer_reference(fmt_x, round_mode, overflow_mode):
    (k, i, f), x = fmt_x
    expected = _reference_array(x, k, i, f, round_mode, overflow_mode)
    assert _same(quantize(x, k, i, f, round_mode, overflow_mode), expected)


@given(format_and_values(), round_modes, overflow_modes)
def test_keras_path_equals_numpy_path_in_float64(fmt_x, round_mode, overflow_mode):
    (k, i, f), x = fmt_x
    expected = quantize(x, k, i, f, round_mode, overflow_mode)
    t = keras.ops.convert_to_tensor(x, dtype='float64')
    kif = [keras.ops.convert_to_tensor(float(v), dtype='float64') for v in (k, i, f)]
    got = keras.ops.convert_to_numpy(quantize_tensor(t, *kif, round_mode, overflow_mode))
    assert _same(got, expected)


@given(format_and_values(max_width=22, max_exponent=8), round_modes, overflow_modes)
def test_keras_path_equals_numpy_path_in_float32(fmt_x, round_mode, overflow_mode):
    """The layers' float32 path is exact while codes stay below 2**24."""
    (k, i, f), x = fmt_x
    x32 = x.astype(np.float32)
    x32 = x32[np.abs(x32.astype(np.float64) * 2.0**f) < 2.0**23]
    if not x32.size:
        return
    expected = quantize(x32.astype(np.float64), k, i, f, round_mode, overflow_mode)
    got = quantize_tensor(keras.ops.convert_to_tensor(x32), float(k), float(i), float(f), round_mode, overflow_mode)
    assert _same(keras.ops.convert_to_numpy(got).astype(np.float64), expected)


@given(st.lists(st.tuples(formats(), values(0, 12)), min_size=1, max_size=30), round_modes, overflow_modes)
def test_per_element_formats_equal_one_format_at_a_time(rows, round_mode, overflow_mode):
    k, i, f = (np.array([fmt[j] for fmt, _ in rows]) for j in range(3))
    x = np.array([v for _, v in rows])
    got = quantize(x, k, i, f, round_mode, overflow_mode)
    for j in range(len(rows)):
        assert _same(got[j : j + 1], quantize(x[j : j + 1], k[j], i[j], f[j], round_mode, overflow_mode))
    tensor = quantize_tensor(
        *(keras.ops.convert_to_tensor(a, 'float64') for a in (x, k, i, f)), round_mode, overflow_mode
    )
    assert _same(keras.ops.convert_to_numpy(tensor), got)


@given(format_and_values(), round_modes, overflow_modes)
def test_quantize_is_idempotent_and_in_range(fmt_x, round_mode, overflow_mode):
    (k, i, f), x = fmt_x
    q = quantize(x, k, i, f, round_mode, overflow_mode)
    assert _same(quantize(q, k, i, f, round_mode, overflow_mode), q)
    for other_round in ROUND_MODES:  # values of the format are fixed points of every mode
        assert _same(quantize(q, k, i, f, other_round, 'WRAP'), q)
    if k + i + f > 0:
        assert np.all(q >= -k * 2.0**i) and np.all(q <= 2.0**i - 2.0**-f)
        assert np.all(q * 2.0**f == np.round(q * 2.0**f))
    else:
        assert np.all(q == 0.0)


@given(format_and_values(), round_modes)
def test_wrap_is_modular_arithmetic_and_saturation_clamps(fmt_x, round_mode):
    (k, i, f), x = fmt_x
    b = k + i + f
    wrapped = quantize(x, k, i, f, round_mode, 'WRAP')
    wide = np.array([float(round_code(Fraction(v) * Fraction(2) ** f, round_mode) / Fraction(2) ** f) for v in x])
    saturated = quantize(x, k, i, f, round_mode, 'SAT')
    if b <= 0:
        assert np.all(wrapped == 0.0) and np.all(saturated == 0.0)
        return
    for w, r in zip(wrapped, wide, strict=True):
        assert (Fraction(float(w)) - Fraction(float(r))) * 2**f % 2**b == 0
    assert np.array_equal(saturated, np.clip(wide, -k * 2.0**i, 2.0**i - 2.0**-f))
    fits = (wide >= -k * 2.0**i) & (wide <= 2.0**i - 2.0**-f)
    assert np.array_equal(wrapped[fits], wide[fits]) and np.array_equal(saturated[fits], wide[fits])


@st.composite
def exact_values(draw):
    """Exact binary fractions ``c * 2**-f`` and the format ``(k, i, f)`` they were drawn in."""
    k, i, f = draw(formats(max_width=40))
    b = k + i + f
    if b <= 0:
        return (k, i, f), np.zeros(draw(st.integers(1, 5)))
    lo, hi = -k * 2 ** (b - k), 2 ** (b - k) - 1
    codes = draw(st.lists(st.integers(lo, hi), min_size=1, max_size=20))
    return (k, i, f), np.array(codes, dtype=np.float64) * 2.0**-f


@given(exact_values())
def test_minimal_kif_round_trips_and_is_minimal(fmt_values):
    (k, i, f), v = fmt_values
    km, im, fm = (int(a) for a in minimal_kif(v, axis=0))
    assert np.array_equal(quantize(v, km, im, fm, 'TRN', 'WRAP'), v)  # represents every value exactly
    assert km == int(np.any(v < 0))
    if not np.any(v):
        assert km + im + fm == 0
        return
    assert km <= k and fm <= f and km + im <= k + i  # never wider than the format the values came from
    assert not np.array_equal(quantize(v, km, im, fm - 1, 'TRN', 'WRAP'), v)  # one fractional bit fewer fails
    assert not np.array_equal(quantize(v, km, im - 1, fm, 'TRN', 'WRAP'), v)  # one integer bit fewer fails
    per_element = minimal_kif(v)  # per element: each format holds its own value
    assert np.array_equal(quantize(v, *per_element, 'TRN', 'WRAP'), v)
    assert np.array_equal(per_element[0], v < 0)


@given(formats(max_width=64), round_modes, overflow_modes)
def test_fixed_type_string_round_trips(fmt, round_mode, overflow_mode):
    k, i, f = fmt
    if k + i + f <= 0:
        return
    text = fixed_type_string(k, i, f, round_mode, overflow_mode)
    name, args = text[:-1].split('<')
    width, integer, *modes = args.split(',')
    assert name == ('ap_fixed' if k else 'ap_ufixed')
    assert (int(width), int(integer)) == (k + i + f, k + i)
    default = (round_mode, overflow_mode) == ('TRN', 'WRAP')
    assert modes == ([] if default else [f'AP_{round_mode}', f'AP_{overflow_mode}'])


@given(st.lists(st.tuples(st.integers(-(2**40), 2**40), st.integers(-30, 30)), min_size=1, max_size=30))
def test_effective_bits_is_the_span_of_set_bits(codes_and_f):
    values = np.array([c * 2.0**-f for c, f in codes_and_f])
    expected = [0 if c == 0 else (abs(c) >> ((abs(c) & -abs(c)).bit_length() - 1)).bit_length() for c, _ in codes_and_f]
    assert effective_bits(values).tolist() == expected


@given(
    st.sampled_from(['element', 'channel', 'tensor']),
    round_modes,
    st.lists(st.floats(-100, 100, width=32), min_size=6, max_size=6),
    st.integers(-3, 8),
)
def test_weight_quantizer_is_idempotent_and_rounds_as_quantize(granularity, round_mode, w, f):
    q = WeightQuantizer(granularity=granularity, f_init=float(f), round_mode=round_mode)
    q.build((2, 3))
    w = np.array(w, np.float32).reshape(2, 3)
    once = keras.ops.convert_to_numpy(q(w))
    assert np.array_equal(keras.ops.convert_to_numpy(q(once)), once)
    # weights never overflow: the widest format quantizes the same
    assert np.array_equal(once.astype(np.float64), quantize(w.astype(np.float64), 1, 40, f, round_mode, 'SAT'))


@given(
    st.sampled_from(['element', 'channel', 'tensor']),
    round_modes,
    st.sampled_from(['WRAP', 'SAT', 'SAT_SYM']),
    st.lists(st.floats(-20, 20, width=32), min_size=8, max_size=8),
    st.integers(-2, 6),
    st.integers(-1, 5),
)
def test_activation_quantizer_at_inference_is_quantize_with_its_kif(granularity, round_mode, overflow, x, f, i):
    q = ActivationQuantizer(granularity, f_init=float(f), overflow_mode=overflow, round_mode=round_mode, i_init=i)
    q.build((None, 2, 4))
    x = np.array(x, np.float32).reshape(1, 2, 4)
    k, i_bits, f_bits = q.kif()
    once = keras.ops.convert_to_numpy(q(x))
    assert _same(once[0].astype(np.float64), quantize(x[0].astype(np.float64), k, i_bits, f_bits, round_mode, overflow))
    assert _same(keras.ops.convert_to_numpy(q(once)), once)


@given(st.integers(-40, 140), st.integers(0, 2**26))
def test_float32_exact_follows_its_rule_and_is_right_when_it_says_so(f, n):
    """``float32_exact(n * 2**-f, f)``: true iff ``n <= 2**24`` and ``f <= 126`` (or always zero), and when true the
    largest multiples of the step up to the bound survive a round trip through float32."""
    max_abs = n * 2.0**-f
    expected = n == 0 or (n <= 2**24 and f <= 126)
    assert float32_exact(max_abs, f).item() is expected
    if expected and n:
        multiples = np.array([n, n - 1, max(n - 3, 0)], dtype=np.float64) * 2.0**-f
        assert np.array_equal(multiples.astype(np.float32).astype(np.float64), multiples)
    if n > 2**24 and f <= 126:  # a witness: an odd multiple beyond 24 significant bits
        witness = (2**24 + 1) * 2.0**-f
        assert witness <= max_abs and float(np.float32(witness)) != witness
