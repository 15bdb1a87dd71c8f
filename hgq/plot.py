"""PNG plots of HGQ results: the Pareto front of accuracy versus EBOPs, and per-layer bitwidth histograms.

Figures are drawn with matplotlib's object interface and the Agg renderer, so plotting works without a display
and leaves pyplot's global state alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from hgq.callbacks import ParetoPoint, read_front
from hgq.ebops import h_layers
from hgq.fileio import write_atomic
from hgq.summary import quantized_weight_bits

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ['pareto', 'bits']

FrontLike = str | os.PathLike | Sequence[ParetoPoint] | Sequence[Mapping[str, float]]


def _front_values(front: FrontLike) -> list[Mapping[str, float]]:
    if isinstance(front, str | os.PathLike):
        front = read_front(front)
    return [p.values if isinstance(p, ParetoPoint) else p for p in front]


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda partial: fig.savefig(partial, format='png', dpi=120))
    return path


def pareto(
    front: FrontLike,
    path: str | os.PathLike,
    metric: str = 'val_accuracy',
    cost: str = 'ebops',
    history: Mapping[str, Sequence[float]] | None = None,
    marked: Sequence[Mapping[str, Any]] = (),
    title: str | None = None,
) -> Path:
    """Plot a Pareto front (``metric`` versus ``cost`` on a log axis) and save it as PNG.

    Parameters
    ----------
    front : directory, list of ParetoPoint, or list of dicts
        A :class:`hgq.callbacks.ParetoFront` directory, its points, or dicts with ``metric`` and ``cost`` keys.
    path : path
        The PNG file to write.
    metric, cost : str
        Keys of the y and x values.
    history : dict, optional
        ``History.history`` of the run: every epoch is drawn as a grey dot behind the front.
    marked : list of dicts
        Points to mark and label (e.g. converted models): ``cost``, ``metric`` and an optional ``label``.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        The written file.

    Examples
    --------
    >>> import hgq
    >>> front = [{'val_accuracy': 0.9, 'ebops': 1e3}, {'val_accuracy': 0.95, 'ebops': 4e3}]
    >>> hgq.plot.pareto(front, 'pareto.png')  # doctest: +SKIP
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    values = sorted(_front_values(front), key=lambda v: v[cost])
    fig = Figure(figsize=(6, 4), layout='constrained')
    ax = fig.add_subplot()
    if history and metric in history and cost in history:
        ax.scatter(history[cost], history[metric], s=8, color='0.75', label='epochs')
    if values:
        ax.step([v[cost] for v in values], [v[metric] for v in values], where='post', color='C0', alpha=0.5)
        ax.scatter([v[cost] for v in values], [v[metric] for v in values], s=18, color='C0', label='Pareto front')
    for point in marked:
        ax.scatter([point[cost]], [point[metric]], s=60, marker='*', color='C3', zorder=3)
        if point.get('label'):
            ax.annotate(str(point['label']), (point[cost], point[metric]), textcoords='offset points', xytext=(5, 5))
    ax.set_xscale('log')
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f'{v:,.0f}' if v >= 1 else f'{v:g}'))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel({'ebops': 'EBOPs', 'lut': 'LUTs (yosys)'}.get(cost, cost))
    ax.set_ylabel(metric)
    ax.grid(True, which='both', alpha=0.3)
    if values or history:
        ax.legend(loc='best', fontsize='small')
    ax.set_title(title or f'{metric} vs {cost}')
    return _save(fig, path)


def bits(model: keras.Model, path: str | os.PathLike, title: str | None = None) -> Path:
    """Histograms of weight bits and input-activation bits of every H-layer, saved as PNG.

    Bits are exact: weights are counted from their quantized values (pruned weights at 0 bits), inputs from the
    quantizers' ``k + i + f``; call :func:`hgq.calibrate` first for the hardware's bits.

    Examples
    --------
    >>> import keras, hgq
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])
    >>> hgq.plot.bits(model, 'bits.png')  # doctest: +SKIP
    """
    layers = list(h_layers(model))
    if not layers:
        raise ValueError(f'plot.bits: model {model.name!r} has no H-layers')
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 1.8 * len(layers) + 0.6), layout='constrained')
    axes = np.asarray(fig.subplots(len(layers), 2, squeeze=False))
    for row, layer in zip(axes, layers, strict=True):
        weight_bits = quantized_weight_bits(layer)
        input_bits = [layer.input_bits_exact(q) for q in layer.activation_quantizers]
        _histogram(row[0], weight_bits, f'{layer.name}: weights', 'C0')
        _histogram(row[1], input_bits, f'{layer.name}: inputs', 'C1')
    axes[-1, 0].set_xlabel('bits')
    axes[-1, 1].set_xlabel('bits')
    fig.suptitle(title or f'Bitwidths of {model.name}')
    return _save(fig, path)


def _histogram(ax: Any, arrays: list[np.ndarray], label: str, color: str) -> None:
    from matplotlib.ticker import MaxNLocator

    if not arrays:
        ax.text(0.5, 0.5, 'none', ha='center', va='center', transform=ax.transAxes)
        ax.set_title(label, fontsize='small')
        ax.set_yticks([])
        return
    flat = np.concatenate([np.ravel(a) for a in arrays]).astype(int)
    edges = np.arange(flat.min(), flat.max() + 2) - 0.5
    ax.hist(flat, bins=edges, color=color)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f'{label} (mean {flat.mean():.2f})', fontsize='small')
