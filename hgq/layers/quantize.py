"""``HQuantize``: a standalone learnable quantizer layer."""

from __future__ import annotations

from typing import Any

import keras

from hgq.layers.base import HLayer

__all__ = ['HQuantize']


@keras.saving.register_keras_serializable(package='hgq')
class HQuantize(HLayer):
    """Quantize a tensor with learned per-element (or per-channel / per-tensor) bitwidths.

    Place it after ``keras.Input`` to learn the bits of the model inputs, or anywhere to fix the format of an
    intermediate tensor. It has no multipliers, so it adds no EBOPs itself, but each of its bits costs ``beta``
    in the loss (see :meth:`~hgq.layers.HLayer.bits_cost`), so that its widths shrink to what the layers it
    feeds need. A first ``HDense`` or ``HConv`` layer quantizes its own input, so ``HQuantize`` is not needed
    in front of it.

    Parameters
    ----------
    input_quantizer : ActivationQuantizer, dict or None
        The quantizer; a dict holds its arguments, e.g. ``{'granularity': 'channel', 'overflow_mode': 'SAT'}``.
    beta : float
        Initial weight of the bits of this quantizer in the loss.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDense(5)])
    """

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.input_quantizer.build(input_shape)
        super().build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        q = self.input_quantizer(x, training=training)
        self.add_ebops_loss(training)
        return q

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)
