"""``HConv1D``, ``HConv2D``: convolutions with per-weight and per-input bitwidths (channels last)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from hgq.backend import exact_float32
from hgq.layers.kernel import HKernelLayer

__all__ = ['HConv', 'HConv1D', 'HConv2D', 'conv_output_size', 'normalize_tuple']

PADDINGS = ('valid', 'same')


def normalize_tuple(layer_name: str, arg_name: str, value: int | Sequence[int], rank: int) -> tuple[int, ...]:
    """``value`` as a tuple of ``rank`` positive ints (an int is repeated), or a ``ValueError`` naming the layer.

    Examples
    --------
    >>> normalize_tuple('conv', 'strides', 2, 2)
    (2, 2)
    """
    values = (value,) * rank if isinstance(value, int) else tuple(value)
    if len(values) != rank or not all(isinstance(v, int) and v > 0 for v in values):
        raise ValueError(f'{layer_name}: {arg_name} must be a positive int or {rank} positive ints, got {value!r}')
    return values


def conv_output_size(size: int, kernel: int, stride: int, padding: str) -> int:
    """Output length along one spatial axis (Keras rules: ``same`` pads so that it is ``ceil(size / stride)``).

    Examples
    --------
    >>> conv_output_size(8, 3, 1, 'valid'), conv_output_size(8, 3, 2, 'same')
    (6, 4)
    """
    if padding == 'same':
        return -(-size // stride)
    return (size - kernel) // stride + 1


class HConv(HKernelLayer):
    """Base of the ``rank``-D H-convolutions; see :class:`HConv2D` for the arguments.

    EBOPs: the input bit map convolved with the kernel bit map gives, for every output position, the cost of its
    multiplications. ``parallelization_factor`` output positions are computed at once, each by its own multiplier
    array, so the EBOPs are the summed costs times ``parallelization_factor / n_output_positions``
    (``-1``: all positions in parallel, factor 1).
    """

    rank = 0

    def __init__(
        self,
        filters: int,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = 'valid',
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = 1,
        activation: str | None = None,
        use_bias: bool = True,
        parallelization_factor: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(activation=activation, use_bias=use_bias, **kwargs)
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(f'{self.name}: filters must be a positive int, got {filters!r}')
        if data_format not in (None, 'channels_last'):
            raise ValueError(f"{self.name}: only data_format='channels_last' is supported, got {data_format!r}")
        if padding not in PADDINGS:
            raise ValueError(f'{self.name}: padding must be one of {PADDINGS}, got {padding!r}')
        if normalize_tuple(self.name, 'dilation_rate', dilation_rate, self.rank) != (1,) * self.rank:
            raise ValueError(f'{self.name}: only dilation_rate=1 is supported, got {dilation_rate!r}')
        if not isinstance(parallelization_factor, int) or (parallelization_factor < 1 and parallelization_factor != -1):
            raise ValueError(
                f'{self.name}: parallelization_factor must be a positive int or -1 (all output positions), '
                f'got {parallelization_factor!r}'
            )
        self.filters = filters
        self.kernel_size = normalize_tuple(self.name, 'kernel_size', kernel_size, self.rank)
        self.strides = normalize_tuple(self.name, 'strides', strides, self.rank)
        self.padding = padding
        self.parallelization_factor = parallelization_factor

    def output_spatial_shape(self, input_shape: Sequence[int | None]) -> tuple[int, ...]:
        """Output sizes along the spatial axes for an input of ``input_shape`` (batch axis included)."""
        if len(input_shape) != self.rank + 2:
            raise ValueError(
                f'{self.name}: expected inputs of rank {self.rank + 2} (batch, {self.rank} spatial axes, channels), '
                f'got shape {tuple(input_shape)}'
            )
        spatial = input_shape[1:-1]
        if any(s is None for s in input_shape[1:]):
            raise ValueError(f'{self.name}: every axis but the batch axis needs a fixed size, got {tuple(input_shape)}')
        out = tuple(map(conv_output_size, spatial, self.kernel_size, self.strides, (self.padding,) * self.rank))
        if min(out) <= 0:
            raise ValueError(
                f'{self.name}: kernel_size {self.kernel_size} is larger than the input {tuple(spatial)} '
                "with padding='valid'"
            )
        return out

    @property
    def n_output_positions(self) -> int:
        """Number of output positions (product of the output spatial sizes); the layer must be built."""
        if self.input_quantizer.shape is None:
            raise ValueError(f'{self.name}: the layer is not built yet')
        return math.prod(self.output_spatial_shape((None, *self.input_quantizer.shape)))

    def kernel_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int, ...]:
        n_out = math.prod(self.output_spatial_shape(input_shape))
        pf = self.parallelization_factor
        if pf != -1 and n_out % pf:
            divisors = [d for d in range(1, n_out + 1) if n_out % d == 0]
            raise ValueError(
                f'{self.name}: parallelization_factor must divide the {n_out} output positions '
                f'(one of {divisors}, or -1), got {pf}'
            )
        return (*self.kernel_size, int(input_shape[-1]), self.filters)

    def apply_kernel(self, x: Any, kernel: Any) -> Any:
        with exact_float32():
            return ops.conv(x, kernel, strides=self.strides, padding=self.padding, data_format='channels_last')

    def ebops_scale(self) -> float:
        if self.parallelization_factor == -1:
            return 1.0
        return self.parallelization_factor / self.n_output_positions

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], *self.output_spatial_shape(input_shape), self.filters)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            data_format='channels_last',
            dilation_rate=(1,) * self.rank,
            parallelization_factor=self.parallelization_factor,
        )
        return config


@keras.saving.register_keras_serializable(package='hgq')
class HConv1D(HConv):
    """1D convolution (inputs ``(batch, steps, channels)``) with quantized input and kernel.

    Parameters are those of :class:`HConv2D`, with one spatial axis.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HConv1D
    >>> model = keras.Sequential([keras.Input((32, 2)), HConv1D(4, 3, activation='relu')])
    >>> model.output_shape
    (None, 30, 4)
    """

    rank = 1


@keras.saving.register_keras_serializable(package='hgq')
class HConv2D(HConv):
    """2D convolution (inputs ``(batch, height, width, channels)``) with quantized input and kernel.

    Parameters
    ----------
    filters : int
        Output channels.
    kernel_size, strides : int or tuple of int
        As in ``keras.layers.Conv2D``.
    padding : {'valid', 'same'}
        As in ``keras.layers.Conv2D``.
    data_format : {'channels_last', None}
        Only channels last is supported; ``None`` means channels last whatever ``keras.config.image_data_format()``.
    dilation_rate : 1
        Only 1 is supported.
    activation : {'linear', 'relu', None}
        Applied to the output; other functions go in an ``HActivation`` layer.
    use_bias : bool
        Whether to add a (quantized) bias.
    parallelization_factor : int
        Output positions computed in parallel, each with its own multiplier array: 1 (default) shares one array
        among all positions, ``-1`` gives every position its own. Must divide the number of output positions.
        Scales the EBOPs and is handed to hls4ml (io_parallel ``ParallelizationFactor``).
    kernel_quantizer, bias_quantizer : WeightQuantizer, dict or None
        Per weight by default; ``{'granularity': 'channel'}`` gives one bitwidth per output filter.
    input_quantizer : ActivationQuantizer, dict or None
        Per element by default; ``{'granularity': 'channel'}`` gives one bitwidth per input channel (needed for
        io_stream conversion).
    beta : float
        Initial weight of this layer's EBOPs in the loss.
    kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        As in ``keras.layers.Conv2D``.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HQuantize, HConv2D
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), HQuantize(), HConv2D(4, 3, activation='relu', beta=1e-6)])
    >>> model.output_shape
    (None, 6, 6, 4)
    """

    rank = 2
