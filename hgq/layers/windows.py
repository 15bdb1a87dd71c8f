"""The sliding windows of convolution and pooling layers (channels last, Keras padding rules), in plain numpy.

One description of which input positions every output position reads, shared by the logic tracer
(:mod:`hgq.rtl.trace`) and the dead-logic analysis of the cost estimate (:mod:`hgq.cost`).

Examples
--------
>>> out_shape, windows = sliding_windows((4,), (3,), (1,), 'valid')
>>> out_shape, [positions for _, positions, _ in windows]
((2,), [[(0,), (1,), (2,)], [(1,), (2,), (3,)]])
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

from hgq.layers.conv import conv_output_size

__all__ = ['window_starts', 'sliding_windows']

Window = tuple[tuple[int, ...], list[tuple[int, ...]], list[int]]


def window_starts(size: int, kernel: int, stride: int, padding: str) -> list[int]:
    """First input index of every window along one axis (negative: the window starts in the padding).

    Examples
    --------
    >>> window_starts(5, 3, 2, 'same')
    [-1, 1, 3]
    """
    n_out = conv_output_size(size, kernel, stride, padding)
    pad_before = max((n_out - 1) * stride + kernel - size, 0) // 2 if padding == 'same' else 0
    return [o * stride - pad_before for o in range(n_out)]


def sliding_windows(
    spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int], padding: str
) -> tuple[tuple[int, ...], list[Window]]:
    """Output spatial shape and, per output position, the valid input positions and their flat kernel offsets.

    Parameters
    ----------
    spatial, kernel, strides : sequence of int
        Input size, window size and step along every spatial axis.
    padding : {'valid', 'same'}
        Keras padding (``same``: zeros before and after, the extra one after).

    Returns
    -------
    tuple
        ``(out_shape, [(out_position, input_positions, kernel_offsets), ...])``; positions in the padding are left
        out, so border windows of ``same`` padding are shorter.
    """
    starts = [window_starts(s, k, st, padding) for s, k, st in zip(spatial, kernel, strides, strict=True)]
    out_shape = tuple(len(s) for s in starts)
    result = []
    for out_pos in product(*(range(n) for n in out_shape)):
        positions, offsets = [], []
        for offset, delta in enumerate(product(*(range(k) for k in kernel))):
            pos = tuple(starts[a][out_pos[a]] + delta[a] for a in range(len(spatial)))
            if all(0 <= p < s for p, s in zip(pos, spatial, strict=True)):
                positions.append(pos)
                offsets.append(offset)
        result.append((out_pos, positions, offsets))
    return out_shape, result
