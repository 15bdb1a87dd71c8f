"""Pooling H-layers (channels last): max, average and global average pooling of a quantized input.

Average pooling is exact in fixed point only when it divides by a power of two (a shift), so pool sizes (and, for
global pooling, the number of positions) must be powers of two, and padding must be ``'valid'`` (with ``'same'``
Keras divides border windows by the number of unpadded elements). Pooling has no multipliers: 0 EBOPs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from hgq.layers.base import HLayer
from hgq.layers.conv import PADDINGS, conv_output_size, normalize_tuple

__all__ = [
    'HPooling',
    'HGlobalAveragePooling',
    'HMaxPooling1D',
    'HMaxPooling2D',
    'HAveragePooling1D',
    'HAveragePooling2D',
    'HGlobalAveragePooling1D',
    'HGlobalAveragePooling2D',
]

Shape = tuple[int | None, ...]


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _check_input(layer: HLayer, rank: int, input_shape: Shape) -> None:
    if len(input_shape) != rank + 2:
        raise ValueError(
            f'{layer.name}: expected inputs of rank {rank + 2} (batch, {rank} spatial axes, channels), '
            f'got shape {tuple(input_shape)}'
        )
    if any(s is None for s in input_shape[1:]):
        raise ValueError(f'{layer.name}: every axis but the batch axis needs a fixed size, got {tuple(input_shape)}')


def _check_data_format(layer: HLayer, data_format: str | None) -> None:
    if data_format not in (None, 'channels_last'):
        raise ValueError(f"{layer.name}: only data_format='channels_last' is supported, got {data_format!r}")


class HPooling(HLayer):
    """Base of the windowed pooling H-layers; ``rank`` spatial axes, ``mode`` ``'max'`` or ``'average'``.

    Parameters
    ----------
    pool_size : int or tuple of int
        Window size.
    strides : int, tuple of int or None
        Window step; ``None`` means ``pool_size``.
    padding : {'valid', 'same'}
        As in Keras (average pooling: ``'valid'`` only).
    data_format : {'channels_last', None}
        Only channels last is supported.
    input_quantizer : ActivationQuantizer, dict or None
        Quantizer of the input (per element by default).
    """

    rank = 0
    mode = ''

    def __init__(
        self,
        pool_size: int | Sequence[int] = 2,
        strides: int | Sequence[int] | None = None,
        padding: str = 'valid',
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_data_format(self, data_format)
        if padding not in PADDINGS:
            raise ValueError(f'{self.name}: padding must be one of {PADDINGS}, got {padding!r}')
        self.pool_size = normalize_tuple(self.name, 'pool_size', pool_size, self.rank)
        self.strides = normalize_tuple(self.name, 'strides', self.pool_size if strides is None else strides, self.rank)
        self.padding = padding
        if self.mode == 'average':
            if not _is_power_of_two(math.prod(self.pool_size)):
                raise ValueError(
                    f'{self.name}: average pooling is exact in fixed point only for a power-of-two window; '
                    f'pool_size {self.pool_size} has {math.prod(self.pool_size)} elements'
                )
            if padding != 'valid':
                raise ValueError(
                    f"{self.name}: average pooling supports padding='valid' only (border windows of 'same' padding "
                    'divide by a number of elements that is not a power of two)'
                )

    def build(self, input_shape: Shape) -> None:
        self.compute_output_shape(input_shape)
        self.input_quantizer.build(input_shape)
        super().build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        xq = self.input_quantizer(x, training=training)
        pool = ops.max_pool if self.mode == 'max' else ops.average_pool
        y = pool(xq, self.pool_size, self.strides, self.padding, data_format='channels_last')
        self.add_ebops_loss(training)
        return y

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _check_input(self, self.rank, input_shape)
        spatial = input_shape[1:-1]
        out = tuple(map(conv_output_size, spatial, self.pool_size, self.strides, (self.padding,) * self.rank))
        if min(out) <= 0:
            raise ValueError(f'{self.name}: pool_size {self.pool_size} is larger than the input {tuple(spatial)}')
        return (input_shape[0], *out, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(pool_size=self.pool_size, strides=self.strides, padding=self.padding, data_format='channels_last')
        return config


@keras.saving.register_keras_serializable(package='hgq')
class HMaxPooling1D(HPooling):
    """1D max pooling of a quantized input (see :class:`HPooling` for the parameters).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HMaxPooling1D
    >>> keras.Sequential([keras.Input((8, 2)), HMaxPooling1D(2)]).output_shape
    (None, 4, 2)
    """

    rank, mode = 1, 'max'


@keras.saving.register_keras_serializable(package='hgq')
class HMaxPooling2D(HPooling):
    """2D max pooling of a quantized input (see :class:`HPooling` for the parameters).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HMaxPooling2D
    >>> keras.Sequential([keras.Input((8, 8, 2)), HMaxPooling2D((2, 2))]).output_shape
    (None, 4, 4, 2)
    """

    rank, mode = 2, 'max'


@keras.saving.register_keras_serializable(package='hgq')
class HAveragePooling1D(HPooling):
    """1D average pooling of a quantized input over a power-of-two window (exact: a shift).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HAveragePooling1D
    >>> keras.Sequential([keras.Input((8, 2)), HAveragePooling1D(4)]).output_shape
    (None, 2, 2)
    """

    rank, mode = 1, 'average'


@keras.saving.register_keras_serializable(package='hgq')
class HAveragePooling2D(HPooling):
    """2D average pooling of a quantized input over a power-of-two window (exact: a shift).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HAveragePooling2D
    >>> keras.Sequential([keras.Input((8, 8, 2)), HAveragePooling2D((2, 2))]).output_shape
    (None, 4, 4, 2)
    """

    rank, mode = 2, 'average'


class HGlobalAveragePooling(HLayer):
    """Base of global average pooling over ``rank`` spatial axes; the number of positions must be a power of two.

    Parameters
    ----------
    data_format : {'channels_last', None}
        Only channels last is supported.
    keepdims : bool
        Keep the spatial axes (with size 1), as in Keras.
    input_quantizer : ActivationQuantizer, dict or None
        Quantizer of the input (per element by default).
    """

    rank = 0

    def __init__(self, data_format: str | None = None, keepdims: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_data_format(self, data_format)
        self.keepdims = bool(keepdims)

    def build(self, input_shape: Shape) -> None:
        self.compute_output_shape(input_shape)
        positions = math.prod(input_shape[1:-1])
        if not _is_power_of_two(positions):
            raise ValueError(
                f'{self.name}: global average pooling is exact in fixed point only over a power-of-two number of '
                f'positions; inputs of shape {tuple(input_shape)} have {positions}'
            )
        self.input_quantizer.build(input_shape)
        super().build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        xq = self.input_quantizer(x, training=training)
        y = ops.mean(xq, axis=tuple(range(1, self.rank + 1)), keepdims=self.keepdims)
        self.add_ebops_loss(training)
        return y

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _check_input(self, self.rank, input_shape)
        if self.keepdims:
            return (input_shape[0], *(1,) * self.rank, input_shape[-1])
        return (input_shape[0], input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(data_format='channels_last', keepdims=self.keepdims)
        return config


@keras.saving.register_keras_serializable(package='hgq')
class HGlobalAveragePooling1D(HGlobalAveragePooling):
    """Mean over the steps of a quantized ``(batch, steps, channels)`` input; steps must be a power of two.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HGlobalAveragePooling1D
    >>> keras.Sequential([keras.Input((8, 3)), HGlobalAveragePooling1D()]).output_shape
    (None, 3)
    """

    rank = 1


@keras.saving.register_keras_serializable(package='hgq')
class HGlobalAveragePooling2D(HGlobalAveragePooling):
    """Mean over the positions of a quantized ``(batch, h, w, channels)`` input; ``h * w`` must be a power of two.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HGlobalAveragePooling2D
    >>> keras.Sequential([keras.Input((4, 4, 3)), HGlobalAveragePooling2D()]).output_shape
    (None, 3)
    """

    rank = 2
