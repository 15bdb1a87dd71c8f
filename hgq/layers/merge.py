"""Merge H-layers: ``HAdd``, ``HSubtract``, ``HMultiply``, ``HConcatenate``; every input has its own quantizer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.layers.base import HLayer
from hgq.quantizer import ActivationQuantizer

__all__ = ['HMerge', 'HAdd', 'HSubtract', 'HMultiply', 'HConcatenate']

Shape = tuple[int | None, ...]


class HMerge(HLayer):
    """Base of the merge H-layers: quantizes each input with its own :class:`~hgq.quantizer.ActivationQuantizer`.

    ``input_quantizer`` configures the quantizer of every input; each input gets its own copy (own bitwidths,
    own tracked range). ``activation_quantizers`` lists them in input order; ``input_quantizer`` is the first.
    Subclasses define :meth:`merge` and, where it has multipliers, :meth:`ebops`.
    """

    min_inputs = 2
    max_inputs: int | None = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.other_input_quantizers: list[ActivationQuantizer] = []

    def _input_shapes(self, input_shape: Any) -> list[Shape]:
        """The per-input shapes, checked for count; raises a ``ValueError`` naming the layer."""
        if not isinstance(input_shape, list | tuple) or not all(isinstance(s, list | tuple) for s in input_shape):
            raise ValueError(f'{self.name}: expected a list of input tensors, got one input of shape {input_shape}')
        shapes = [tuple(s) for s in input_shape]
        upper = self.max_inputs if self.max_inputs is not None else len(shapes)
        if not self.min_inputs <= len(shapes) <= upper:
            expected = self.min_inputs if self.max_inputs == self.min_inputs else f'at least {self.min_inputs}'
            raise ValueError(f'{self.name}: expected {expected} inputs, got {len(shapes)}')
        self.check_shapes(shapes)
        return shapes

    def check_shapes(self, shapes: list[Shape]) -> None:
        """Raise a ``ValueError`` unless the inputs can be merged (default: identical shapes)."""
        if any(s[1:] != shapes[0][1:] for s in shapes):
            raise ValueError(f'{self.name}: all inputs must have the same shape, got {shapes}')

    def build(self, input_shape: Sequence[Shape]) -> None:
        shapes = self._input_shapes(input_shape)
        self.input_quantizer.build(shapes[0])
        template = self.input_quantizer.get_config()
        self.other_input_quantizers = [
            ActivationQuantizer.from_config({**template, 'name': f'{self.name}_iq{n}'}) for n in range(1, len(shapes))
        ]
        for quantizer, shape in zip(self.other_input_quantizers, shapes[1:], strict=True):
            quantizer.build(shape)
        super().build(input_shape)

    @property
    def activation_quantizers(self) -> list[ActivationQuantizer]:
        return [self.input_quantizer, *self.other_input_quantizers]

    def merge(self, inputs: list[Any]) -> Any:
        """Combine the quantized inputs."""
        raise NotImplementedError

    def call(self, inputs: Sequence[Any], training: bool | None = None) -> Any:
        if not isinstance(inputs, list | tuple) or len(inputs) != len(self.activation_quantizers):
            raise ValueError(f'{self.name}: expected a list of {len(self.activation_quantizers)} inputs')
        quantized = [q(x, training=training) for q, x in zip(self.activation_quantizers, inputs, strict=True)]
        y = self.merge(quantized)
        self.add_ebops_loss(training)
        return y

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        return tuple(input_shape[0])


@keras.saving.register_keras_serializable(package='hgq')
class HAdd(HMerge):
    """Sum of two or more inputs of the same shape, each quantized with its own bitwidths (no multipliers).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HAdd
    >>> a, b = keras.Input((4,)), keras.Input((4,))
    >>> model = keras.Model([a, b], HAdd()([a, b]))
    """

    def merge(self, inputs: list[Any]) -> Any:
        y = inputs[0]
        for x in inputs[1:]:
            y = y + x
        return y


@keras.saving.register_keras_serializable(package='hgq')
class HSubtract(HMerge):
    """Difference ``a - b`` of two inputs of the same shape, each quantized with its own bitwidths.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HSubtract
    >>> a, b = keras.Input((4,)), keras.Input((4,))
    >>> model = keras.Model([a, b], HSubtract()([a, b]))
    """

    max_inputs = 2

    def merge(self, inputs: list[Any]) -> Any:
        return inputs[0] - inputs[1]


@keras.saving.register_keras_serializable(package='hgq')
class HMultiply(HMerge):
    """Element-wise product ``a * b`` of two inputs of the same shape; EBOPs ``sum(bits(a) * bits(b))``.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HMultiply
    >>> a, b = keras.Input((4,)), keras.Input((4,))
    >>> model = keras.Model([a, b], HMultiply(beta=1e-6)([a, b]))
    """

    max_inputs = 2

    def merge(self, inputs: list[Any]) -> Any:
        return inputs[0] * inputs[1]

    @property
    def priced_quantizers(self) -> list[ActivationQuantizer]:
        return self.activation_quantizers

    def ebops(self) -> Any:
        return ops.sum(self.input_quantizer.bits() * self.other_input_quantizers[0].bits())

    def exact_ebops(self) -> float:
        a, b = (self.input_bits_exact(q) for q in self.activation_quantizers)
        return float(np.sum(a * b))


@keras.saving.register_keras_serializable(package='hgq')
class HConcatenate(HMerge):
    """Concatenation of two or more inputs along ``axis``, each quantized with its own bitwidths.

    Parameters
    ----------
    axis : int
        Concatenation axis of the batched tensors (not the batch axis); the last one by default.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HConcatenate
    >>> a, b = keras.Input((4,)), keras.Input((3,))
    >>> keras.Model([a, b], HConcatenate()([a, b])).output_shape
    (None, 7)
    """

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(axis, int):
            raise ValueError(f'{self.name}: axis must be an int, got {axis!r}')
        self.axis = axis

    def _axis(self, rank: int) -> int:
        axis = self.axis % rank if -rank <= self.axis < rank else None
        if axis is None or axis == 0:
            raise ValueError(f'{self.name}: axis {self.axis} is not a non-batch axis of inputs of rank {rank}')
        return axis

    def check_shapes(self, shapes: list[Shape]) -> None:
        if any(len(s) != len(shapes[0]) for s in shapes):
            raise ValueError(f'{self.name}: all inputs must have the same rank, got {shapes}')
        axis = self._axis(len(shapes[0]))
        if any(s[1:axis] + s[axis + 1 :] != shapes[0][1:axis] + shapes[0][axis + 1 :] for s in shapes):
            raise ValueError(
                f'{self.name}: inputs must have the same shape except along axis {self.axis}, got {shapes}'
            )

    def merge(self, inputs: list[Any]) -> Any:
        return ops.concatenate(inputs, axis=self.axis)

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        shapes = [tuple(s) for s in input_shape]
        axis = self._axis(len(shapes[0]))
        sizes = [s[axis] for s in shapes]
        size = None if any(n is None for n in sizes) else sum(sizes)
        return (*shapes[0][:axis], size, *shapes[0][axis + 1 :])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(axis=self.axis)
        return config
