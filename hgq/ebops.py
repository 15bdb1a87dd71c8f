"""Effective bit operations (EBOPs): the hardware cost that HGQ trades against accuracy."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import keras
import numpy as np
from keras import ops

from hgq.layers.base import HLayer

__all__ = ['all_layers', 'h_layers', 'ebops', 'layer_ebops', 'holds_finite_values']


def _sublayers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The layers a model lists, or those a plain layer holds in its attributes (directly or in lists/dicts)."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    found: dict[int, keras.layers.Layer] = {}
    for value in vars(layer).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else [value]
        found.update((id(item), item) for item in items if isinstance(item, keras.layers.Layer))
    return list(found.values())


def _holds_h_layers(layer: keras.layers.Layer) -> bool:
    return any(isinstance(inner, HLayer) or _holds_h_layers(inner) for inner in _sublayers(layer))


def all_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """The layers of ``model`` in order; nested models and custom layers holding H-layers replaced by their layers."""
    for layer in _sublayers(model):
        if isinstance(layer, keras.Model) or (not isinstance(layer, HLayer) and _holds_h_layers(layer)):
            yield from all_layers(layer)
        else:
            yield layer


def h_layers(model: keras.Model) -> Iterator[HLayer]:
    """The H-layers of ``model`` in order, descending into nested models."""
    return (layer for layer in all_layers(model) if isinstance(layer, HLayer))


def layer_ebops(model: keras.Model, exact: bool = True) -> dict[str, float]:
    """EBOPs of every H-layer that has multipliers, by layer name.

    Parameters
    ----------
    model : keras.Model
        A built model.
    exact : bool
        ``True``: weight bits counted from the quantized values and activation bits from the tracked ranges
        (exact after :func:`hgq.calibrate`). ``False``: the differentiable training-time estimate.

    A layer whose weights or bitwidths are not finite (a diverged training) gets ``nan``.
    """
    if not model.built:
        raise ValueError(f'model {model.name!r} is not built; call it on data or give it an Input first')
    values = {}
    for layer in h_layers(model):
        if not holds_finite_values(layer):
            values[layer.name] = math.nan
            continue
        value = layer.exact_ebops() if exact else float(ops.convert_to_numpy(layer.ebops()))
        if value or layer.weight_quantizers:
            values[layer.name] = value
    return values


def holds_finite_values(layer: keras.layers.Layer) -> bool:
    """Whether every weight and bitwidth variable of ``layer`` (quantizers included) is finite.

    Examples
    --------
    >>> from hgq.layers import HDense
    >>> layer = HDense(2)
    >>> layer.build((None, 3))
    >>> holds_finite_values(layer)
    True
    """
    return all(np.all(np.isfinite(ops.convert_to_numpy(weight))) for weight in layer.weights)


def ebops(model: keras.Model, exact: bool = True) -> float:
    """Total EBOPs of a model: for every multiplication ``a * w`` in hardware, ``bits(a) * bits(w)``.

    ``nan`` (with a warning naming the layers) when some weights or bitwidths are not finite, as after a
    diverged training: such a model has no hardware cost, and no checkpoint should be chosen for it.

    Examples
    --------
    >>> import keras, hgq
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDense(5)])
    >>> hgq.ebops(model) > 0
    True
    """
    values = layer_ebops(model, exact)
    broken = [name for name, value in values.items() if math.isnan(value)]
    if broken:
        warnings.warn(
            f'EBOPs of model {model.name!r} are nan: layers {broken} hold non-finite weights or bitwidths '
            '(training diverged?)',
            RuntimeWarning,
            stacklevel=2,
        )
    return float(sum(values.values()))
