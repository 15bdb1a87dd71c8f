"""Effective bit operations (EBOPs): the hardware cost that HGQ trades against accuracy."""

from __future__ import annotations

from collections.abc import Iterator

import keras
from keras import ops

from hgq.layers.base import HLayer

__all__ = ['h_layers', 'ebops', 'layer_ebops']


def h_layers(model: keras.Model) -> Iterator[HLayer]:
    """The H-layers of ``model`` in order, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, HLayer):
            yield layer
        elif isinstance(layer, keras.Model):
            yield from h_layers(layer)


def layer_ebops(model: keras.Model, exact: bool = True) -> dict[str, float]:
    """EBOPs of every H-layer that has multipliers, by layer name.

    Parameters
    ----------
    model : keras.Model
        A built model.
    exact : bool
        ``True``: weight bits counted from the quantized values and activation bits from the tracked ranges
        (exact after :func:`hgq.calibrate`). ``False``: the differentiable training-time estimate.
    """
    if not model.built:
        raise ValueError(f'model {model.name!r} is not built; call it on data or give it an Input first')
    values = {}
    for layer in h_layers(model):
        value = layer.exact_ebops() if exact else float(ops.convert_to_numpy(layer.ebops()))
        if value or layer.weight_quantizers:
            values[layer.name] = value
    return values


def ebops(model: keras.Model, exact: bool = True) -> float:
    """Total EBOPs of a model: for every multiplication ``a * w`` in hardware, ``bits(a) * bits(w)``.

    Examples
    --------
    >>> import keras, hgq
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDense(5)])
    >>> hgq.ebops(model) > 0
    True
    """
    return float(sum(layer_ebops(model, exact).values()))
