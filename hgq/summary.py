"""``hgq.summary``: a per-layer table of parameters, bitwidths, pruning and EBOPs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from hgq.ebops import all_layers
from hgq.layers.base import HLayer
from hgq.quantizer import effective_bits

__all__ = ['summary', 'layer_rows', 'quantized_weight_bits']

COLUMNS = (
    ('layer', 'Layer (type)', 30),
    ('params', 'Params', 9),
    ('weight_bits', 'W bits mean/max', 16),
    ('input_bits', 'In bits mean/max', 17),
    ('pruned', 'Pruned', 8),
    ('ebops', 'EBOPs', 12),
)


def quantized_weight_bits(layer: HLayer) -> list[np.ndarray]:
    """Effective bits (MSB-to-LSB span of the quantized value, 0 when pruned) of every weight tensor of ``layer``.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HDense
    >>> layer = HDense(3)
    >>> layer.build((None, 4))
    >>> [b.shape for b in quantized_weight_bits(layer)]
    [(4, 3), (3,)]
    """
    return [effective_bits(values) for values, _ in layer.quantized_weights().values()]


def _mean_max(arrays: list[np.ndarray]) -> tuple[float, int] | None:
    if not arrays:
        return None
    flat = np.concatenate([np.ravel(a) for a in arrays])
    return (float(np.mean(flat)), int(np.max(flat))) if flat.size else None


def _h_row(layer: HLayer) -> dict[str, Any]:
    weight_bits = quantized_weight_bits(layer)
    input_bits = [layer.input_bits_exact(q) for q in layer.activation_quantizers]
    n_weights = sum(b.size for b in weight_bits)
    return {
        'weight_bits': _mean_max(weight_bits),
        'input_bits': _mean_max(input_bits),
        'pruned': float(sum(np.sum(b == 0) for b in weight_bits) / n_weights) if n_weights else None,
        'ebops': float(layer.exact_ebops()),
    }


def layer_rows(model: keras.Model) -> list[dict[str, Any]]:
    """One dict per layer (nested models flattened): ``name``, ``class``, ``params``, ``weight_bits`` and
    ``input_bits`` as ``(mean, max)`` or ``None``, ``pruned`` (fraction of weights quantized to 0) and ``ebops``.

    Weight bits are counted from the quantized values (a pruned weight has 0 bits and enters the mean); input
    bits are the widths ``k + i + f`` of the layer's input quantizers. Layers without quantizers get ``None``.
    """
    if not model.built:
        raise ValueError(f'summary: model {model.name!r} is not built; call it on data or give it an Input first')
    rows = []
    for layer in all_layers(model):
        row = {'name': layer.name, 'class': type(layer).__name__, 'params': int(layer.count_params())}
        empty = {'weight_bits': None, 'input_bits': None, 'pruned': None, 'ebops': None}
        row.update(_h_row(layer) if isinstance(layer, HLayer) else empty)
        rows.append(row)
    return rows


def _cell(key: str, row: dict[str, Any]) -> str:
    if key == 'layer':
        return f'{row["name"]} ({row["class"]})'
    value = row[key]
    if value is None:
        return '-'
    if key in ('weight_bits', 'input_bits'):
        return f'{value[0]:.2f} / {value[1]}'
    if key == 'pruned':
        return f'{100 * value:.1f}%'
    if key == 'ebops':
        return f'{value:,.0f}'
    return f'{value:,}'


def _line(cells: dict[str, str]) -> str:
    return ''.join(cells[key].ljust(w) if key == 'layer' else cells[key].rjust(w) for key, _, w in COLUMNS)


def format_rows(rows: list[dict[str, Any]], title: str = '') -> str:
    """The table of :func:`summary` as text."""
    width = sum(w for _, _, w in COLUMNS)
    lines = [f'HGQ summary of {title}' if title else 'HGQ summary', '=' * width]
    lines.append(_line({key: head for key, head, _ in COLUMNS}))
    lines.append('=' * width)
    lines.extend(_line({key: _cell(key, row) for key, _, _ in COLUMNS}) for row in rows)
    lines.append('=' * width)
    total_ebops = sum(r['ebops'] or 0.0 for r in rows)
    lines.append(f'Total params: {sum(r["params"] for r in rows):,}')
    lines.append(f'Total EBOPs: {total_ebops:,.0f}')
    return '\n'.join(lines)


def summary(model: keras.Model, print_fn: Callable[[str], Any] | None = print) -> list[dict[str, Any]]:
    """Print a per-layer table of parameters, weight and input bitwidths, pruning and EBOPs (with the total and
    the LUT estimate of :func:`hgq.cost.lut_estimate`); return its rows.

    Numbers are exact: bits are counted from the quantized weights and the tracked input ranges, so call
    :func:`hgq.calibrate` first for the bits the hardware will have.

    Parameters
    ----------
    model : keras.Model
        A built model with H-layers (other layers are listed with their parameter counts).
    print_fn : callable or None
        Where the table goes (default ``print``); ``None`` prints nothing.

    Returns
    -------
    list of dict
        One row per layer, see :func:`layer_rows`.

    Examples
    --------
    >>> import keras, hgq
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])
    >>> rows = hgq.summary(model, print_fn=None)
    >>> [r['class'] for r in rows]
    ['HQuantize', 'HDense']
    """
    rows = layer_rows(model)
    if print_fn is not None:
        from hgq.cost import lut_estimate

        print_fn(format_rows(rows, model.name))
        print_fn(f'Estimated LUTs (hgq.cost): {lut_estimate(model):,.0f}')
    return rows
