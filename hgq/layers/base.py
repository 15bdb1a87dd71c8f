"""Common machinery of the H-layers: input quantizers, the ``beta`` variable and the EBOPs penalty."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.quantizer import ActivationQuantizer, WeightQuantizer

__all__ = ['HLayer', 'make_quantizer', 'serialize_quantizer', 'with_defaults']

QuantizerSpec = ActivationQuantizer | WeightQuantizer | dict[str, Any] | None


def make_quantizer(spec: QuantizerSpec, default_cls: type, name: str, **defaults: Any):
    """Build a quantizer from an instance, keyword dict, serialized dict, or ``None`` (all defaults).

    Parameters
    ----------
    spec : quantizer, dict or None
        A quantizer instance is used as is; a dict holds constructor arguments (``{'granularity': 'channel'}``)
        or a serialized quantizer (keys ``class_name`` and ``config``).
    default_cls : type
        ``ActivationQuantizer`` or ``WeightQuantizer``.
    name : str
        Name given to a newly built quantizer.
    **defaults
        Constructor defaults that ``spec`` may override.
    """
    if isinstance(spec, default_cls):
        return spec
    if spec is None:
        return default_cls(name=name, **defaults)
    if isinstance(spec, dict):
        if 'class_name' in spec and 'config' in spec:
            quantizer = keras.saving.deserialize_keras_object(spec)
            if not isinstance(quantizer, default_cls):
                raise TypeError(f'{name}: expected a {default_cls.__name__}, got {type(quantizer).__name__}')
            return quantizer
        try:
            return default_cls(**{'name': name, **defaults, **spec})
        except TypeError as err:
            raise TypeError(f'{name}: invalid {default_cls.__name__} settings {spec}: {err}') from None
    raise TypeError(f'{name}: expected a {default_cls.__name__}, a dict of its arguments or None, got {spec!r}')


def with_defaults(spec: QuantizerSpec, defaults: dict[str, Any]) -> QuantizerSpec:
    """Constructor defaults for a quantizer spec given as ``None`` or as a dict of arguments."""
    if spec is None:
        return dict(defaults)
    if isinstance(spec, dict) and not ('class_name' in spec and 'config' in spec):
        return {**defaults, **spec}
    return spec


def serialize_quantizer(quantizer: ActivationQuantizer | WeightQuantizer) -> dict[str, Any]:
    """Serialize a quantizer without its build state: the owning layer builds it with the right shape."""
    config = keras.saving.serialize_keras_object(quantizer)
    config.pop('build_config', None)
    return config


class HLayer(keras.layers.Layer):
    """Base of all H-layers: owns input quantizers and adds ``beta * EBOPs`` to the loss while training.

    Subclasses build their quantizers in ``build`` and implement :meth:`ebops` (differentiable, from the current
    bit maps) and :meth:`exact_ebops` (bits counted from quantized values, as reported to users).

    Parameters
    ----------
    beta : float
        Initial weight of this layer's EBOPs in the loss. Stored in a non-trainable variable so callbacks can
        schedule it; 0 turns the penalty off. The beta callbacks (:class:`hgq.callbacks.BetaSchedule`,
        :class:`hgq.callbacks.BetaTarget`) set the same value in every H-layer at each epoch, replacing this one:
        per-layer values hold only without them.
    input_quantizer : ActivationQuantizer, dict or None
        Quantizer of the layer input (per element by default); a dict holds its constructor arguments.
    """

    def __init__(self, beta: float = 0.0, input_quantizer: QuantizerSpec = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if beta < 0:
            raise ValueError(f'{self.name}: beta must be >= 0, got {beta}')
        self.beta_init = float(beta)
        self.input_quantizer = make_quantizer(input_quantizer, ActivationQuantizer, f'{self.name}_iq')

    def build(self, input_shape: Sequence[int | None]) -> None:
        self.beta = self.add_weight(
            name='beta', shape=(), initializer=keras.initializers.Constant(self.beta_init), trainable=False
        )
        super().build(input_shape)

    def ebops(self) -> Any:
        """Differentiable EBOPs of this layer from its current bit maps (0 for layers without multipliers)."""
        return ops.convert_to_tensor(0.0)

    def exact_ebops(self) -> float:
        """EBOPs with weight bits counted from the quantized values (exact after :func:`hgq.calibrate`)."""
        return 0.0

    def input_bits_exact(self, quantizer: ActivationQuantizer | None = None) -> np.ndarray:
        """Integer width ``max(k + i + f, 0)`` of every input element, as the hardware uses it."""
        k, i, f = (quantizer or self.input_quantizer).kif()
        return np.maximum(k + i + f, 0)

    def add_ebops_loss(self, training: bool | None) -> None:
        """Add ``beta * (EBOPs + bits_cost)`` to the layer losses during training (called at the end of ``call``)."""
        if training:
            self.add_loss(self.beta * (self.ebops() + self.bits_cost()))

    @property
    def priced_quantizers(self) -> list[ActivationQuantizer]:
        """The activation quantizers whose bits this layer's EBOPs count (the others pay :meth:`bits_cost`)."""
        return []

    def bits_cost(self) -> Any:
        """Differentiable sum of the widths of the activation quantizers that no EBOPs term of this layer counts.

        A tensor that feeds no multiplier here (the input of ``HQuantize``, of an addition, of a pooling layer)
        still costs wires, registers and adders in proportion to its width, so each of its bits costs 1 in the
        loss (times ``beta``), next to the ``bits(a) * bits(w)`` of every multiplication. No bitwidth is free:
        without this, the bits of ``HQuantize -> HDense`` in front of the first layer never shrink. Not part of
        :meth:`ebops` (which counts multiplications only).
        """
        priced = {id(q) for q in self.priced_quantizers}
        widths = [ops.sum(q.bits()) for q in self.activation_quantizers if id(q) not in priced]
        return sum(widths[1:], widths[0]) if widths else ops.convert_to_tensor(0.0)

    @property
    def activation_quantizers(self) -> list[ActivationQuantizer]:
        """The quantizers of this layer's inputs, one per input tensor."""
        return [self.input_quantizer]

    @property
    def weight_quantizers(self) -> list[WeightQuantizer]:
        """The quantizers of this layer's weights (kernel, bias, ...)."""
        return []

    def quantized_weights(self) -> dict[str, tuple[np.ndarray, WeightQuantizer]]:
        """The weights as exported to hardware: name -> (quantized values as float64, the quantizer of them).

        Names are those of the hardware layer (``'kernel'``, ``'bias'``, ``'scale'``, ``'offset'``); layers
        without weights return ``{}``. The converter and :func:`hgq.summary` read weights only through here.
        """
        return {}

    @staticmethod
    def exported(**weights: tuple[Any, WeightQuantizer]) -> dict[str, tuple[np.ndarray, WeightQuantizer]]:
        """``quantized_weights`` entries from tensors: each value converted to a float64 array."""
        return {
            name: (np.asarray(ops.convert_to_numpy(value), dtype=np.float64), quantizer)
            for name, (value, quantizer) in weights.items()
        }

    @property
    def quantizers(self) -> list[ActivationQuantizer | WeightQuantizer]:
        """All quantizers owned by this layer."""
        return [*self.activation_quantizers, *self.weight_quantizers]

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(beta=self.beta_init, input_quantizer=serialize_quantizer(self.input_quantizer))
        return config
