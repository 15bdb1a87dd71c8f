"""Lookup-table helpers shared by the table layers (``HActivation``, ``HSoftmax``) and their converter.

Stateless functions over ``tensor``-granularity quantizers: their scalar format, quantizing table entries with
them, indexing a table by input code, and the LUT cost of a table.

Examples
--------
>>> float(lut_cost(16, 8, 8))
512.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from hgq.fixed_point import minimal_kif, quantize_tensor
from hgq.quantizer import ActivationQuantizer

__all__ = [
    'MAX_TABLE_SIZE',
    'lut_cost',
    'table_width',
    'scalar_kif',
    'scalar_ki_f',
    'code_offset',
    'quantize_with',
    'take_codes',
    'check_tensor_quantizer',
]

MAX_TABLE_SIZE = 2**16


def lut_cost(n_tables: Any, bits_in: Any, bits_out: Any, xp: Any = np) -> Any:
    """LUT-equivalent cost of ``n_tables`` lookup tables of ``2**bits_in`` entries of ``bits_out`` bits.

    A 6-input LUT stores 64 one-bit entries, so one table costs about ``bits_out * 2**max(bits_in - 6, 0)``
    LUTs; the result is in EBOPs units (EBOPs track ``LUT + 55 * DSP``).

    Examples
    --------
    >>> float(lut_cost(16, 8, 8))
    512.0
    """
    return n_tables * bits_out * 2.0 ** xp.maximum(bits_in - 6.0, 0.0)


def table_width(table: np.ndarray) -> int:
    """Bits of the narrowest fixed-point format that holds every entry of ``table`` exactly.

    Examples
    --------
    >>> table_width(np.array([0.5, -0.25, 0.75]))
    3
    """
    k, i, f = minimal_kif(np.asarray(table, dtype=np.float64), axis=0)
    return max(int(k + i + f), 0)


def scalar_ki_f(quantizer: ActivationQuantizer) -> tuple[Any, Any, Any]:
    """Sign bit, integer bits and fractional bits of a ``tensor``-granularity quantizer, as scalar tensors.

    ``k`` and ``i`` carry the gradients of :meth:`ActivationQuantizer.ki`, ``f`` the straight-through gradient.
    """
    k, i = quantizer.ki()
    return ops.reshape(k, ()), ops.reshape(i, ()), ops.reshape(quantizer.f_int, ())


def scalar_kif(quantizer: ActivationQuantizer) -> tuple[int, int, int]:
    """Integer ``(k, i, f)`` of a ``tensor``-granularity quantizer (width ``<= 0`` gives ``(0, 0, 0)``)."""
    k, i, f = (int(np.ravel(a)[0]) for a in quantizer.kif())
    return (k, i, f) if k + i + f > 0 else (0, 0, 0)


def quantize_with(quantizer: ActivationQuantizer, x: Any) -> Any:
    """Quantize ``x`` with the current format of a ``tensor``-granularity quantizer, without calling it.

    No range tracking, no losses, no gradient to the bits: used to fill tables. ``x`` may be float64.
    """
    k, i, f = (ops.cast(a, x.dtype) for a in scalar_ki_f(quantizer))
    return quantize_tensor(x, k, i, f, quantizer.round_mode, quantizer.overflow_mode)


def take_codes(table: Any, index: Any) -> Any:
    """``table[index]`` for float indices; out-of-range indices are clipped and NaN indices give NaN."""
    invalid = ops.isnan(index)
    safe = ops.cast(ops.clip(ops.where(invalid, 0.0, index), 0, table.shape[0] - 1), 'int32')
    y = ops.take(table, safe)
    return ops.where(invalid, ops.cast(np.nan, y.dtype), y)


def code_offset(k: Any, i: Any, f: Any) -> Any:
    """Smallest integer code of format ``(k, i, f)``: ``-k * 2**(i + f)`` (0 when the width is ``<= 0``)."""
    return ops.where(k + i + f > 0, -k * 2.0 ** (i + f), 0.0)


def check_tensor_quantizer(layer_name: str, role: str, quantizer: ActivationQuantizer, saturating: bool) -> None:
    """Raise unless ``quantizer`` has ``tensor`` granularity (and a SAT overflow mode when ``saturating``)."""
    if quantizer.granularity != 'tensor':
        raise ValueError(
            f"{layer_name}: the {role} of a lookup table needs granularity='tensor' (one format for the "
            f'whole table), got {quantizer.granularity!r}'
        )
    if saturating and quantizer.overflow_mode not in ('SAT', 'SAT_SYM'):
        raise ValueError(
            f"{layer_name}: the {role} must saturate (overflow_mode 'SAT' or 'SAT_SYM'): its integer bits are "
            f'learned, since hgq.calibrate only calibrates layer inputs; got {quantizer.overflow_mode!r}'
        )
