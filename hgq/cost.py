"""Hardware-cost estimate in LUTs: EBOPs plus the terms EBOPs leaves out, fitted against yosys.

EBOPs count ``bits(a) * bits(w)`` per multiplication. In distributed arithmetic (what ``hgq.synth`` and hls4ml's
``distributed_arithmetic`` strategy build) every multiplication by a constant becomes shifted additions, and the
LUTs also pay for what EBOPs ignore: one adder input per non-zero weight (as wide as the activation), the growth of
the partial sums by the width of the weight, and the requantization (rounding, ``relu``, wrap/saturation) of every
activation. :func:`cost_terms` counts these from the model, the same way as EBOPs (kernel layers through their own
linear operation, so convolutions count every output position, as the fully parallel logic does):

=================  ======================================================================================
term               per kernel layer (``nz``: 1 where the quantized weight or the activation is non-zero)
=================  ======================================================================================
``ebops``          ``sum op(bits(a), bits(w))`` (all output positions; other H-layers: their EBOPs)
``adder_bits``     ``sum op(bits(a), nz(w))``: width of the addends, one per non-zero weight
``weight_bits``    ``sum op(nz(a), bits(w))``: growth of the partial sums by the weights' spans
``act_bits``       ``sum bits(a)`` over every activation quantizer but the model input's: requantization
=================  ======================================================================================

:data:`LUT_COEFFICIENTS` (fitted by ``benchmarks/fit_cost.py`` on trained models synthesized with yosys, no
intercept) turn the terms into LUTs: :func:`lut_estimate`. :func:`lut_cost` is the same sum on the differentiable
bit maps, usable as a training penalty (:class:`LUTPenalty`).

Examples
--------
>>> import hgq.cost
>>> hgq.cost.lut_estimate(model)                 # doctest: +SKIP
5123.0
>>> hgq.cost.cost_terms(model)                   # doctest: +SKIP
{'ebops': 4100.0, 'adder_bits': 2210.0, 'weight_bits': 1830.0, 'act_bits': 120.0}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.ebops import all_layers, h_layers
from hgq.layers.base import HLayer
from hgq.layers.kernel import HKernelLayer

__all__ = ['COST_TERMS', 'LUT_COEFFICIENTS', 'cost_terms', 'lut_estimate', 'lut_cost', 'LUTPenalty', 'LUTLogger']

COST_TERMS = ('ebops', 'adder_bits', 'weight_bits', 'act_bits')

#: LUTs per unit of each term: fitted by ``benchmarks/fit_cost.py`` against yosys ``synth_xilinx -family xcup``
#: (see benchmarks/README.md for the models and the errors).
LUT_COEFFICIENTS: dict[str, float] = {'ebops': 0.3521, 'adder_bits': 0.2817, 'weight_bits': 1.0899, 'act_bits': 0.0}


def _input_quantizers(model: keras.Model) -> set[int]:
    """Ids of the quantizers that read a model input directly (their formatting happens outside the logic)."""
    inputs = {id(t) for t in getattr(model, 'inputs', None) or []}
    ids = set()
    for layer in h_layers(model):
        try:
            tensors = layer.input if isinstance(layer.input, list | tuple) else [layer.input]
        except (AttributeError, ValueError):  # a layer of a subclassed model: no symbolic input
            continue
        for q, t in zip(layer.activation_quantizers, tensors, strict=False):
            if id(t) in inputs:
                ids.add(id(q))
    if isinstance(model, keras.Sequential):
        first = next(iter(h_layers(model)), None)
        if first is not None:
            ids.add(id(first.activation_quantizers[0]))
    return ids


def _kernel_terms(layer: HKernelLayer, exact: bool) -> dict[str, Any]:
    kernel = layer.float_kernel_and_bias()[0]
    if exact:
        bits_in = layer.input_bits_exact().astype(np.float64)[None]
        bits_w = layer.kernel_quantizer.exact_bits(kernel).astype(np.float64)
    else:
        bits_in = ops.expand_dims(layer.input_quantizer.bits(), 0)
        bits_w = layer.kernel_quantizer.bits(kernel)
    # 1 where non-zero: exact on integer bit counts; the straight-through rounding passes gradients to bits >= 0
    nz_in, nz_w = ops.clip(bits_in, 0.0, 1.0), ops.clip(bits_w, 0.0, 1.0)
    return {
        'ebops': ops.sum(layer.apply_kernel(bits_in, bits_w)),
        'adder_bits': ops.sum(layer.apply_kernel(bits_in, nz_w)),
        'weight_bits': ops.sum(layer.apply_kernel(nz_in, bits_w)),
    }


def _terms(model: keras.Model, exact: bool) -> dict[str, Any]:
    if not model.built:
        raise ValueError(f'model {model.name!r} is not built; call it on data or give it an Input first')
    totals: dict[str, Any] = dict.fromkeys(COST_TERMS, 0.0)
    skip = _input_quantizers(model)
    for layer in all_layers(model):
        if not isinstance(layer, HLayer):
            continue
        if isinstance(layer, HKernelLayer):
            for name, value in _kernel_terms(layer, exact).items():
                totals[name] = totals[name] + value
        else:
            totals['ebops'] = totals['ebops'] + (layer.exact_ebops() if exact else layer.ebops())
        for q in layer.activation_quantizers:
            if id(q) not in skip:
                bits = layer.input_bits_exact(q).astype(np.float64) if exact else q.bits()
                totals['act_bits'] = totals['act_bits'] + ops.sum(bits)
    return totals


def cost_terms(model: keras.Model) -> dict[str, float]:
    """The cost terms of a built model (see the module docstring), from the quantized weights and exact bits.

    Exact after :func:`hgq.calibrate`, like :func:`hgq.ebops`.

    Examples
    --------
    >>> sorted(cost_terms(model))                # doctest: +SKIP
    ['act_bits', 'adder_bits', 'ebops', 'weight_bits']
    """
    return {name: float(ops.convert_to_numpy(value)) for name, value in _terms(model, exact=True).items()}


def _coefficients(coefficients: Mapping[str, float] | None) -> Mapping[str, float]:
    coefficients = LUT_COEFFICIENTS if coefficients is None else coefficients
    unknown = set(coefficients) - set(COST_TERMS)
    if unknown:
        raise ValueError(f'unknown cost terms {sorted(unknown)}; expected some of {COST_TERMS}')
    return coefficients


def lut_estimate(model: keras.Model, coefficients: Mapping[str, float] | None = None) -> float:
    """Estimated LUTs of the model's fully parallel logic: ``sum(coefficient * term)``, no intercept.

    Parameters
    ----------
    model : keras.Model
        A built (and, for exact numbers, calibrated) model of H-layers.
    coefficients : mapping, optional
        LUTs per unit of each term; default :data:`LUT_COEFFICIENTS`.

    Examples
    --------
    >>> lut_estimate(model)                      # doctest: +SKIP
    5123.0
    """
    terms = cost_terms(model)
    return float(sum(c * terms[name] for name, c in _coefficients(coefficients).items()))


def lut_cost(model: keras.Model, coefficients: Mapping[str, float] | None = None) -> Any:
    """:func:`lut_estimate` on the differentiable bit maps (a scalar tensor), for use in a training loss."""
    terms = _terms(model, exact=False)
    total = 0.0
    for name, c in _coefficients(coefficients).items():
        if c:
            total = total + c * terms[name]
    return ops.convert_to_tensor(total)


class LUTPenalty(keras.losses.Loss):
    """A loss plus ``weight * lut_cost(model)``: train against estimated LUTs instead of (or besides) EBOPs.

    Parameters
    ----------
    loss : keras.losses.Loss or str
        The task loss.
    model : keras.Model
        The model being trained (its bit maps enter the penalty).
    weight : float
        LUTs are multiplied by this (like ``beta`` for EBOPs; set the layers' ``beta=0`` to use only this penalty).
    coefficients : mapping, optional
        LUTs per unit of each cost term; default :data:`LUT_COEFFICIENTS`.

    Examples
    --------
    >>> loss = LUTPenalty(keras.losses.SparseCategoricalCrossentropy(from_logits=True), model, 1e-5)  # doctest: +SKIP
    >>> model.compile('adam', loss)              # doctest: +SKIP
    """

    def __init__(
        self,
        loss: Any,
        model: keras.Model,
        weight: float,
        coefficients: Mapping[str, float] | None = None,
        name: str = 'lut_penalty',
    ) -> None:
        super().__init__(name=name)
        if weight < 0:
            raise ValueError(f'LUTPenalty: weight must be >= 0, got {weight}')
        self.loss = keras.losses.get(loss)
        self.model = model
        self.weight = float(weight)
        self.coefficients = dict(_coefficients(coefficients))

    def call(self, y_true: Any, y_pred: Any) -> Any:
        task = self.loss(y_true, y_pred)
        return task + self.weight * ops.cast(lut_cost(self.model, self.coefficients), task.dtype)


class LUTLogger(keras.callbacks.Callback):
    """Log :func:`lut_estimate` as ``lut_estimate`` at the end of every epoch, next to ``ebops``.

    Examples
    --------
    >>> import hgq.cost
    >>> callbacks = [hgq.callbacks.EBOPsLogger(), hgq.cost.LUTLogger()]
    >>> # model.fit(x, y, callbacks=callbacks) -> history.history['lut_estimate']
    """

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs['lut_estimate'] = lut_estimate(self.model)
