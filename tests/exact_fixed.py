"""Exact ``ap_fixed`` casts in Python integer and Fraction arithmetic: the reference the property and wrap tests
compare ``hgq.fixed_point`` and the quantizers against."""

from fractions import Fraction
from math import floor


def round_code(y: Fraction, mode: str) -> int:
    """Integer code of the scaled value ``y`` under an ap_fixed rounding mode."""
    low = floor(y)
    rest = y - low
    if mode == 'TRN':
        return low
    if mode == 'TRN_ZERO':
        return low if y >= 0 or rest == 0 else low + 1
    if rest != Fraction(1, 2):
        return low + (rest > Fraction(1, 2))
    up = {
        'RND': True,
        'RND_ZERO': y < 0,
        'RND_INF': y > 0,
        'RND_MIN_INF': False,
        'RND_CONV': low % 2 == 1,
    }[mode]
    return low + up


def reference(x: float, k: int, i: int, f: int, round_mode: str, overflow_mode: str) -> float:
    """ap_fixed cast of one value, in exact integer arithmetic."""
    b = k + i + f
    if b <= 0:
        return 0.0
    code = round_code(Fraction(x) * Fraction(2) ** f, round_mode)
    lo, hi = -k * 2 ** (b - k), 2 ** (b - k) - 1
    if overflow_mode == 'WRAP':
        code = (code - lo) % 2**b + lo
    else:
        if overflow_mode == 'SAT_SYM' and k:
            lo = -max(hi, 1)  # ap_fixed: symmetric range; a 1-bit signed word keeps its one code -1
        code = min(max(code, lo), hi)
    return float(Fraction(code) / Fraction(2) ** f)
