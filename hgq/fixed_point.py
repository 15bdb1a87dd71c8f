"""Stateless fixed-point arithmetic, following the rules of Xilinx ``ap_fixed``.

A fixed-point number has a sign bit ``k`` (0 or 1), ``i`` integer bits (excluding the sign) and ``f``
fractional bits. Its width is ``b = k + i + f``, its step ``2**-f`` and its range ``[-k * 2**i, 2**i - 2**-f]``.
``i`` and ``f`` may be negative; ``b <= 0`` means the number is always exactly zero.

One implementation of the rules serves both numpy arrays (the reference, :func:`quantize`) and Keras tensors
(:func:`quantize_tensor`, used inside layers): the rules are written once against an array namespace.

Examples
--------
>>> from hgq.fixed_point import quantize
>>> quantize([0.3, 1.7, -2.5], k=1, i=1, f=1, round_mode='RND', overflow_mode='WRAP').tolist()
[0.5, 1.5, 1.5]
>>> quantize([0.3, 1.7, -2.5], k=1, i=1, f=1, round_mode='RND', overflow_mode='SAT').tolist()
[0.5, 1.5, -2.0]
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np

ROUND_MODES = ('TRN', 'TRN_ZERO', 'RND', 'RND_ZERO', 'RND_INF', 'RND_MIN_INF', 'RND_CONV')
OVERFLOW_MODES = ('WRAP', 'SAT', 'SAT_SYM')

__all__ = [
    'ROUND_MODES',
    'OVERFLOW_MODES',
    'quantize',
    'quantize_tensor',
    'round_codes',
    'minimal_kif',
    'fixed_type_string',
    'check_modes',
    'FLOAT32_SIGNIFICAND_BITS',
    'float32_exact',
]

# Keras computes in float32: 24 significant bits. The smallest step it keeps is 2**-126 (TensorFlow flushes
# subnormal numbers to zero), the largest magnitude just below 2**128.
FLOAT32_SIGNIFICAND_BITS = 24
FLOAT32_MIN_EXPONENT = -126
FLOAT32_MAX_EXPONENT = 128


def check_modes(round_mode: str, overflow_mode: str) -> None:
    """Raise ``ValueError`` unless ``round_mode`` and ``overflow_mode`` are ap_fixed mode names we support."""
    if round_mode not in ROUND_MODES:
        raise ValueError(f'round_mode must be one of {ROUND_MODES}, got {round_mode!r}')
    if overflow_mode not in OVERFLOW_MODES:
        raise ValueError(f'overflow_mode must be one of {OVERFLOW_MODES}, got {overflow_mode!r}')


def float32_exact(max_abs: Any, f: Any) -> np.ndarray:
    """Whether float32 holds exactly every multiple of ``2**-f`` whose magnitude is at most ``max_abs``.

    This is the condition under which Keras's float32 arithmetic computes what the fixed-point firmware computes:
    a value ``m * 2**-f`` is exact in float32 iff ``|m| <= 2**24`` (24 significant bits), ``2**-f`` is not below
    the smallest normal float32 (``f <= 126``) and the value is below float32's largest magnitude (``2**128``).
    A fixed-point format ``(k, i, f)`` holds magnitudes up to ``2**i``, so it is exact iff ``i + f <= 24``
    (``float32_exact(2.0**i, f)``), whatever ``k``. A sum of products (an accumulator) is exact iff every partial
    sum is: ``max_abs`` is then the largest possible sum of magnitudes and ``f`` the finest step of any term.

    Parameters
    ----------
    max_abs : array_like
        Largest magnitude of the values (0 for values that are always zero).
    f : array_like
        Fractional bits of their common step ``2**-f`` (``-inf`` for values that are always zero).

    Returns
    -------
    numpy.ndarray of bool
        Broadcast shape of the inputs; ``False`` also for non-finite ``max_abs``.

    Examples
    --------
    >>> float32_exact(2.0**8, 16).item(), float32_exact(2.0**8, 17).item()   # formats with i + f = 24 and 25
    (True, False)
    >>> float32_exact(0.0, 40).item()   # always zero
    True
    """
    max_abs = np.asarray(max_abs, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    zero = max_abs == 0
    with np.errstate(over='ignore', invalid='ignore'):
        codes = max_abs * np.exp2(np.where(zero, 0.0, f))
        fits = (codes <= 2.0**FLOAT32_SIGNIFICAND_BITS) & (f <= -FLOAT32_MIN_EXPONENT)
        fits &= max_abs < 2.0**FLOAT32_MAX_EXPONENT
    return np.asarray(zero | fits)


def round_codes(y: Any, round_mode: str, xp: Any = np) -> Any:
    """Round ``y`` (a value already scaled by ``2**f``) to integer codes with an ap_fixed rounding mode.

    Parameters
    ----------
    y : array
        Scaled values ``x * 2**f``.
    round_mode : str
        One of :data:`ROUND_MODES`: ``TRN`` (towards -inf), ``TRN_ZERO`` (towards 0), ``RND`` (ties towards +inf),
        ``RND_ZERO`` (ties towards 0), ``RND_INF`` (ties away from 0), ``RND_MIN_INF`` (ties towards -inf),
        ``RND_CONV`` (ties to even).
    xp : module
        ``numpy`` or ``keras.ops``.
    """
    if round_mode == 'TRN':
        return xp.floor(y)
    if round_mode == 'TRN_ZERO':
        return xp.where(y < 0, xp.ceil(y), xp.floor(y))
    # Round half to even is exact in floating point (``floor(y + 0.5)`` is not: ``y + 0.5`` can round up, e.g.
    # for ``y = 0.5 - 2**-54``). ``y - nearest`` is exact too, so ties are found exactly and then re-rounded.
    nearest = xp.round(y)
    if round_mode == 'RND_CONV':
        return nearest
    tie = xp.abs(y - nearest) == 0.5
    if round_mode == 'RND':
        return xp.where(tie, xp.ceil(y), nearest)
    if round_mode == 'RND_MIN_INF':
        return xp.where(tie, xp.floor(y), nearest)
    if round_mode == 'RND_ZERO':
        return xp.where(tie, xp.where(y < 0, xp.ceil(y), xp.floor(y)), nearest)
    if round_mode == 'RND_INF':
        return xp.where(tie, xp.where(y < 0, xp.floor(y), xp.ceil(y)), nearest)
    raise ValueError(f'round_mode must be one of {ROUND_MODES}, got {round_mode!r}')


def _code_bounds(k: Any, b: Any, overflow_mode: str, xp: Any) -> tuple[Any, Any]:
    """Smallest and largest integer code of a ``b``-bit word with sign bit ``k`` under an overflow mode."""
    half = 2.0 ** (b - k)  # 2**(b-1) codes per sign when signed, 2**b when unsigned
    lo = -k * half
    hi = half - 1
    if overflow_mode == 'SAT_SYM':
        # ap_fixed saturates a signed word to 0b10...01 = -hi; for b == 1 that is 0b1 = -1 (as SAT does).
        lo = xp.where(k > 0, -xp.maximum(hi, 1.0), lo)
    return lo, hi


def _apply_overflow(codes: Any, k: Any, b: Any, overflow_mode: str, xp: Any) -> Any:
    lo, hi = _code_bounds(k, b, overflow_mode, xp)
    if overflow_mode == 'WRAP':
        # ``codes mod span`` first: each step is exact in floating point, however far ``codes`` lies outside the
        # range (``codes - lo`` is not once ``codes`` exceeds 2**24 steps in float32, 2**53 in float64). Codes in
        # the range are kept as they are: for a negative one ``codes + span`` drops low bits once the word is wider
        # than the float's significand (hgq.calibrate observes through such wide formats). ``top``, one past the
        # largest code, is a power of two and exact where ``hi`` is not.
        span = 2.0**b
        top = lo + span
        low_bits = codes - xp.floor(codes / span) * span
        wrapped = xp.where(low_bits >= top, low_bits - span, low_bits)
        return xp.where(codes >= lo, xp.where(codes < top, codes, wrapped), wrapped)
    return xp.minimum(xp.maximum(codes, lo), hi)


def _quantize(
    x: Any,
    k: Any,
    i: Any,
    f: Any,
    round_mode: str,
    overflow_mode: str,
    xp: Any,
    round_fn: Callable[[Any], Any] | None = None,
) -> Any:
    check_modes(round_mode, overflow_mode)
    b = k + i + f
    scale = 2.0**f
    codes = round_codes(x * scale, round_mode, xp) if round_fn is None else round_fn(x * scale)
    codes = _apply_overflow(codes, k, xp.maximum(b, 0), overflow_mode, xp)
    # ``+ 0.0`` turns -0.0 (from ceil of small negatives) into +0.0: ap_fixed has no negative zero. A zero-width
    # format gives 0 even for an infinite ``x`` (``0 * x`` would be NaN: a reciprocal table's entry for 0).
    return xp.where(b > 0, codes / scale, 0.0) + 0.0


def quantize(
    x: Any,
    k: Any,
    i: Any,
    f: Any,
    round_mode: str = 'RND',
    overflow_mode: str = 'WRAP',
) -> np.ndarray:
    """Quantize ``x`` to the fixed-point format ``(k, i, f)`` exactly as an ``ap_fixed`` cast does.

    ``k``, ``i`` and ``f`` broadcast against ``x``. Rounding happens on ``x * 2**f``; overflow is then handled
    on the integer code (wrap-around in two's complement, or saturation). Elements whose width
    ``k + i + f <= 0`` become exactly 0.

    Parameters
    ----------
    x : array_like
        Values to quantize (computed in float64).
    k, i, f : array_like of int
        Sign bit (0/1), integer bits (excluding sign) and fractional bits.
    round_mode : str
        One of :data:`ROUND_MODES`; ``RND`` rounds half up, as ``AP_RND``.
    overflow_mode : str
        One of :data:`OVERFLOW_MODES`.

    Returns
    -------
    numpy.ndarray
        Quantized values, float64, broadcast shape of all inputs.

    Examples
    --------
    >>> quantize(0.75, 0, 0, 1, 'TRN', 'SAT')  # ap_ufixed<1, 0, AP_TRN, AP_SAT>
    array(0.5)
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (x, k, i, f)]
    x64, k64, i64, f64 = np.broadcast_arrays(*arrays)
    if np.any((k64 != 0) & (k64 != 1)):
        raise ValueError('k (sign bit) must be 0 or 1')
    return np.asarray(_quantize(x64, k64, i64, f64, round_mode, overflow_mode, np))


def _keras_namespace() -> SimpleNamespace:
    from keras import ops

    return SimpleNamespace(
        floor=ops.floor,
        ceil=ops.ceil,
        where=ops.where,
        maximum=ops.maximum,
        minimum=ops.minimum,
        round=ops.round,
        abs=ops.abs,
    )


def quantize_tensor(
    x: Any,
    k: Any,
    i: Any,
    f: Any,
    round_mode: str = 'RND',
    overflow_mode: str = 'WRAP',
    round_fn: Callable[[Any], Any] | None = None,
) -> Any:
    """:func:`quantize` on Keras tensors, with the same rules (used inside layers).

    Parameters
    ----------
    x, k, i, f : tensor
        Float tensors that broadcast together; ``k, i, f`` hold integer values.
    round_mode, overflow_mode : str
        As in :func:`quantize`.
    round_fn : callable, optional
        Replaces the rounding of the scaled values, for example with a straight-through version.

    Examples
    --------
    >>> import keras
    >>> x = keras.ops.convert_to_tensor([0.3, 1.7, -2.5])
    >>> keras.ops.convert_to_numpy(quantize_tensor(x, 1.0, 1.0, 1.0)).tolist()
    [0.5, 1.5, 1.5]
    """
    return _quantize(x, k, i, f, round_mode, overflow_mode, _keras_namespace(), round_fn)


def minimal_kif(values: Any, axis: int | tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The smallest ``(k, i, f)`` that represents every given value exactly.

    Parameters
    ----------
    values : array_like
        Values that are exact binary fractions (finite float64).
    axis : int or tuple of int, optional
        Axes reduced over (values along them share one format). ``None`` gives one format per element.

    Returns
    -------
    k, i, f : numpy.ndarray of int
        Sign bit, integer bits and fractional bits. All-zero groups give ``k + i + f == 0``.

    Examples
    --------
    >>> minimal_kif([0.75, -2.0], axis=0)
    (array(1), array(1), array(2))
    """
    v = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError('minimal_kif needs finite values')
    mag = np.abs(v)
    nonzero = mag > 0
    # Fractional bits: position of the lowest set bit.
    f = np.where(nonzero, _lowest_bit_fraction(mag), -np.iinfo(np.int32).max)
    f = np.max(f, axis=axis) if axis is not None else f
    k = np.any(v < 0, axis=axis) if axis is not None else (v < 0)
    k = np.asarray(k, dtype=np.int64)
    vmax = np.max(v, axis=axis) if axis is not None else v
    vmin = np.min(v, axis=axis) if axis is not None else v
    all_zero = f == -np.iinfo(np.int32).max
    f = np.where(all_zero, 0, f)
    i = _integer_bits(vmin, vmax, f)
    i = np.where(all_zero, -f - k, i)
    return k, i.astype(np.int64), f.astype(np.int64)


def _lowest_bit_fraction(mag: np.ndarray) -> np.ndarray:
    """For positive exact binary fractions, the number of fractional bits needed (may be negative)."""
    mantissa, exp = np.frexp(mag)
    # mantissa * 2**53 is an integer; count its trailing zeros.
    m_int = (mantissa * 2.0**53).astype(np.int64)
    tz = np.zeros(m_int.shape, dtype=np.int64)
    m = np.where(m_int == 0, 1, m_int)
    for _ in range(64):
        even = (m & 1) == 0
        if not np.any(even):
            break
        tz += even
        m = np.where(even, m >> 1, m)
    return 53 - tz - exp


def _integer_bits(vmin: Any, vmax: Any, f: Any) -> np.ndarray:
    """Integer bits (excluding sign) so that ``[vmin, vmax]`` fits with step ``2**-f``.

    Exact (no ``log2``): ``vmax`` is a multiple of ``2**-f``, so ``vmax <= 2**i - 2**-f`` iff ``vmax < 2**i``, whose
    smallest ``i`` is the exponent ``e`` of ``vmax = m * 2**e`` (``0.5 <= m < 1``); ``-vmin <= 2**i`` needs ``e``, or
    ``e - 1`` when ``-vmin`` is a power of two.
    """
    vmax = np.maximum(np.asarray(vmax, dtype=np.float64), 0.0)
    vmin = np.minimum(np.asarray(vmin, dtype=np.float64), 0.0)
    _, e_pos = np.frexp(vmax)
    m_neg, e_neg = np.frexp(-vmin)
    i_pos = np.where(vmax > 0, e_pos, -np.asarray(f, dtype=np.int64))
    i_neg = np.where(vmin < 0, e_neg - (m_neg == 0.5), np.iinfo(np.int32).min)
    return np.maximum(i_pos, i_neg).astype(np.int64)


def fixed_type_string(k: int, i: int, f: int, round_mode: str = 'TRN', overflow_mode: str = 'WRAP') -> str:
    """The ``ap_fixed``/``ap_ufixed`` type string of format ``(k, i, f)``.

    Default modes (``TRN``/``WRAP``) are left out, as HLS code usually writes them.

    Examples
    --------
    >>> fixed_type_string(1, 3, 4)
    'ap_fixed<8,4>'
    >>> fixed_type_string(0, 2, 3, 'RND', 'SAT')
    'ap_ufixed<5,2,AP_RND,AP_SAT>'
    """
    check_modes(round_mode, overflow_mode)
    k, i, f = int(k), int(i), int(f)
    if k not in (0, 1):
        raise ValueError(f'k (sign bit) must be 0 or 1, got {k}')
    width = k + i + f
    if width <= 0:
        raise ValueError(f'format (k={k}, i={i}, f={f}) has width {width} <= 0: the value is constant zero')
    name = 'ap_fixed' if k else 'ap_ufixed'
    modes = '' if (round_mode, overflow_mode) == ('TRN', 'WRAP') else f',AP_{round_mode},AP_{overflow_mode}'
    return f'{name}<{width},{k + i}{modes}>'
