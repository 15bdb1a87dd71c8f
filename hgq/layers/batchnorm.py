"""Batch normalization with quantized parameters: fused into Dense/Conv H-layers, or standalone.

Keras calls the learned shift of a batch normalization ``beta``; here it is ``offset``, because ``beta`` is the
weight of the EBOPs penalty of every H-layer.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.layers.base import HLayer, QuantizerSpec, make_quantizer, serialize_quantizer
from hgq.layers.conv import HConv1D, HConv2D
from hgq.layers.dense import HDense
from hgq.quantizer import ActivationQuantizer, WeightQuantizer

__all__ = ['HBatchNormalization', 'HDenseBatchNorm', 'HConv1DBatchNorm', 'HConv2DBatchNorm']


class _BatchNormStatistics:
    """Mixin of H-layers: ``gamma``, ``offset`` and moving statistics of a normalization over the last axis.

    :meth:`normalization` gives the per-channel ``factor`` and ``shift`` such that the normalized value is
    ``y * factor + shift``, from batch statistics while training (updating the moving ones with ``momentum``)
    and from the moving statistics otherwise.
    """

    def _init_batchnorm(
        self,
        momentum: float,
        epsilon: float,
        center: bool,
        scale: bool,
        gamma_initializer: Any,
        offset_initializer: Any,
        moving_mean_initializer: Any,
        moving_variance_initializer: Any,
        gamma_regularizer: Any,
        offset_regularizer: Any,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f'{self.name}: momentum must be in [0, 1), got {momentum}')
        if not epsilon > 0:
            raise ValueError(f'{self.name}: epsilon must be > 0, got {epsilon}')
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.offset_initializer = keras.initializers.get(offset_initializer)
        self.moving_mean_initializer = keras.initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(moving_variance_initializer)
        self.gamma_regularizer = keras.regularizers.get(gamma_regularizer)
        self.offset_regularizer = keras.regularizers.get(offset_regularizer)

    def _build_batchnorm(self, channels: int) -> None:
        shape = (channels,)
        if self.scale:
            self.gamma = self.add_weight(
                name='gamma', shape=shape, initializer=self.gamma_initializer, regularizer=self.gamma_regularizer
            )
        if self.center:
            self.offset = self.add_weight(
                name='offset', shape=shape, initializer=self.offset_initializer, regularizer=self.offset_regularizer
            )
        self.moving_mean = self.add_weight(
            name='moving_mean', shape=shape, initializer=self.moving_mean_initializer, trainable=False
        )
        self.moving_variance = self.add_weight(
            name='moving_variance', shape=shape, initializer=self.moving_variance_initializer, trainable=False
        )

    def normalization(self, y: Any = None, training: bool | None = None) -> tuple[Any, Any]:
        """Per-channel ``(factor, shift)``: batch statistics of ``y`` while training, moving statistics otherwise.

        As in Keras, a frozen layer (``trainable=False``) uses and keeps its moving statistics even while training.
        """
        if training and self.trainable and y is not None:
            mean, variance = ops.moments(y, axes=tuple(range(len(y.shape) - 1)))
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        factor = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            factor = factor * self.gamma
        shift = -mean * factor
        if self.center:
            shift = shift + self.offset
        return factor, shift

    def _batchnorm_config(self) -> dict[str, Any]:
        return dict(
            momentum=self.momentum,
            epsilon=self.epsilon,
            center=self.center,
            scale=self.scale,
            gamma_initializer=keras.initializers.serialize(self.gamma_initializer),
            offset_initializer=keras.initializers.serialize(self.offset_initializer),
            moving_mean_initializer=keras.initializers.serialize(self.moving_mean_initializer),
            moving_variance_initializer=keras.initializers.serialize(self.moving_variance_initializer),
            gamma_regularizer=keras.regularizers.serialize(self.gamma_regularizer),
            offset_regularizer=keras.regularizers.serialize(self.offset_regularizer),
        )


_BIAS_ARGS = ('use_bias', 'bias_initializer', 'bias_regularizer')


class _FusedBatchNorm(_BatchNormStatistics):
    """Mixin that fuses a batch normalization into a Dense/Conv H-layer (put it first among the bases).

    The normalization ``factor`` multiplies the kernel and the ``shift`` becomes the bias; the fused kernel and bias
    are then quantized, so ``qkernel``/``qbias`` describe a plain Dense/Conv layer in hardware. There is no bias
    before normalization (the mean subtraction would cancel it).
    """

    def __init__(
        self,
        *args: Any,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        gamma_initializer: Any = 'ones',
        offset_initializer: Any = 'zeros',
        moving_mean_initializer: Any = 'zeros',
        moving_variance_initializer: Any = 'ones',
        gamma_regularizer: Any = None,
        offset_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        given = [key for key in _BIAS_ARGS if key in kwargs]
        if given:
            raise TypeError(
                f'{type(self).__name__}: {given} are not arguments of a fused batch-norm layer; it has no bias before '
                'normalization and always exports the fused shift as its bias (quantized by bias_quantizer)'
            )
        super().__init__(*args, use_bias=True, **kwargs)
        self._init_batchnorm(
            momentum,
            epsilon,
            center,
            scale,
            gamma_initializer,
            offset_initializer,
            moving_mean_initializer,
            moving_variance_initializer,
            gamma_regularizer,
            offset_regularizer,
        )

    def build_bias(self) -> None:
        self._build_batchnorm(self.units_out)

    def float_kernel_and_bias(self, x: Any = None, training: bool | None = None) -> tuple[Any, Any]:
        """Fused kernel and bias: with the statistics of ``op(x, kernel)`` while training, moving ones otherwise."""
        y = self.apply_kernel(x, self.kernel) if training and self.trainable and x is not None else None
        factor, shift = self.normalization(y, training)
        return self.kernel * factor, shift

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        for key in _BIAS_ARGS:
            config.pop(key)
        config.update(self._batchnorm_config())
        return config


@keras.saving.register_keras_serializable(package='hgq')
class HDenseBatchNorm(_FusedBatchNorm, HDense):
    """``HDense`` followed by a batch normalization, fused: one quantized kernel and bias in hardware.

    Parameters
    ----------
    units, activation, kernel_quantizer, bias_quantizer, input_quantizer, beta, kernel_initializer, kernel_regularizer
        As in :class:`~hgq.layers.HDense`; ``bias_quantizer`` quantizes the fused bias. ``activation`` is applied
        after the normalization.
    momentum, epsilon, center, scale
        As in ``keras.layers.BatchNormalization``.
    gamma_initializer, offset_initializer, moving_mean_initializer, moving_variance_initializer
        Initializers of the scale ``gamma``, the shift ``offset`` (Keras: ``beta``) and the moving statistics.
    gamma_regularizer, offset_regularizer
        Regularizers of ``gamma`` and ``offset``.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HQuantize, HDenseBatchNorm
    >>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDenseBatchNorm(8, activation='relu')])
    >>> tuple(model.layers[-1].qbias.shape)
    (8,)
    """


@keras.saving.register_keras_serializable(package='hgq')
class HConv1DBatchNorm(_FusedBatchNorm, HConv1D):
    """``HConv1D`` followed by a batch normalization, fused (see :class:`HDenseBatchNorm`).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HConv1DBatchNorm
    >>> model = keras.Sequential([keras.Input((16, 2)), HConv1DBatchNorm(4, 3, activation='relu')])
    """


@keras.saving.register_keras_serializable(package='hgq')
class HConv2DBatchNorm(_FusedBatchNorm, HConv2D):
    """``HConv2D`` followed by a batch normalization, fused (see :class:`HDenseBatchNorm`).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HConv2DBatchNorm
    >>> model = keras.Sequential([keras.Input((8, 8, 1)), HConv2DBatchNorm(4, 3, activation='relu')])
    """


@keras.saving.register_keras_serializable(package='hgq')
class HBatchNormalization(_BatchNormStatistics, HLayer):
    """Standalone batch normalization over the last axis: ``q(x) * qscale + qoffset``, one multiplier per element.

    While training, ``scale = gamma / sqrt(var + epsilon)`` and ``offset - mean * scale`` use batch statistics
    (the moving statistics are updated with ``momentum``); at inference they use the moving statistics. Both are
    quantized by their own :class:`~hgq.quantizer.WeightQuantizer`. EBOPs are ``sum(bits(x) * bits(qscale))``
    over all input elements.

    Parameters
    ----------
    axis : int
        Normalized axis; only the last one (-1) is supported.
    momentum, epsilon, center, scale
        As in ``keras.layers.BatchNormalization``.
    scale_quantizer, offset_quantizer : WeightQuantizer, dict or None
        Quantizers of the per-channel scale and offset.
    input_quantizer : ActivationQuantizer, dict or None
        Quantizer of the input (per element by default).
    beta : float
        Initial weight of this layer's EBOPs in the loss.
    gamma_initializer, offset_initializer, moving_mean_initializer, moving_variance_initializer
        Initializers of ``gamma``, ``offset`` (Keras: ``beta``) and the moving statistics.
    gamma_regularizer, offset_regularizer
        Regularizers of ``gamma`` and ``offset``.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HBatchNormalization
    >>> model = keras.Sequential([keras.Input((6,)), HBatchNormalization()])
    >>> tuple(model.layers[-1].qscale.shape)
    (6,)
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        scale_quantizer: QuantizerSpec = None,
        offset_quantizer: QuantizerSpec = None,
        gamma_initializer: Any = 'ones',
        offset_initializer: Any = 'zeros',
        moving_mean_initializer: Any = 'zeros',
        moving_variance_initializer: Any = 'ones',
        gamma_regularizer: Any = None,
        offset_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(axis, int):
            raise ValueError(f'{self.name}: axis must be an int (the last axis), got {axis!r}')
        self.axis = axis
        self._init_batchnorm(
            momentum,
            epsilon,
            center,
            scale,
            gamma_initializer,
            offset_initializer,
            moving_mean_initializer,
            moving_variance_initializer,
            gamma_regularizer,
            offset_regularizer,
        )
        self.scale_quantizer = make_quantizer(scale_quantizer, WeightQuantizer, f'{self.name}_sq')
        self.offset_quantizer = make_quantizer(offset_quantizer, WeightQuantizer, f'{self.name}_oq', f_init=8.0)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        rank = len(input_shape)
        if rank < 2 or self.axis % rank != rank - 1:
            raise ValueError(
                f'{self.name}: only the last axis can be normalized (axis=-1), got axis={self.axis} for inputs of '
                f'shape {tuple(input_shape)}'
            )
        if input_shape[-1] is None:
            raise ValueError(f'{self.name}: the last input axis needs a fixed size, got {tuple(input_shape)}')
        channels = int(input_shape[-1])
        self.input_quantizer.build(input_shape)
        self._build_batchnorm(channels)
        self.scale_quantizer.build((channels,))
        self.scale_quantizer.fit_initial_bits(lambda: self.normalization()[0])
        self.offset_quantizer.build((channels,))
        super().build(input_shape)

    @property
    def weight_quantizers(self) -> list[WeightQuantizer]:
        return [self.scale_quantizer, self.offset_quantizer]

    @property
    def qscale(self) -> Any:
        """The quantized per-channel scale (moving statistics), as exported to hardware."""
        return self.scale_quantizer(self.normalization()[0])

    @property
    def qoffset(self) -> Any:
        """The quantized per-channel offset (moving statistics), as exported to hardware."""
        return self.offset_quantizer(self.normalization()[1])

    def quantized_weights(self) -> dict[str, tuple[np.ndarray, WeightQuantizer]]:
        return self.exported(scale=(self.qscale, self.scale_quantizer), offset=(self.qoffset, self.offset_quantizer))

    def call(self, x: Any, training: bool | None = None) -> Any:
        xq = self.input_quantizer(x, training=training)
        factor, shift = self.normalization(xq, training)
        y = xq * self.scale_quantizer(factor) + self.offset_quantizer(shift)
        if training:
            self.add_loss(self.beta * self.scale_ebops(factor))
        return y

    @property
    def priced_quantizers(self) -> list[ActivationQuantizer]:
        return [self.input_quantizer]

    def scale_ebops(self, factor: Any) -> Any:
        """Differentiable EBOPs with a given float scale: one multiplier per input element."""
        return ops.sum(self.input_quantizer.bits() * self.scale_quantizer.bits(factor))

    def ebops(self) -> Any:
        return self.scale_ebops(self.normalization()[0])

    def exact_ebops(self) -> float:
        scale_bits = self.scale_quantizer.exact_bits(self.normalization()[0]).astype(np.float64)
        return float(np.sum(self.input_bits_exact() * scale_bits))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            axis=self.axis,
            scale_quantizer=serialize_quantizer(self.scale_quantizer),
            offset_quantizer=serialize_quantizer(self.offset_quantizer),
            **self._batchnorm_config(),
        )
        return config
