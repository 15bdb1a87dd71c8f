"""``HDense``: a fully connected layer with per-weight and per-input bitwidths."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.layers.base import HLayer, QuantizerSpec, make_quantizer, serialize_quantizer
from hgq.quantizer import WeightQuantizer

__all__ = ['HDense', 'check_activation']

INTERNAL_ACTIVATIONS = ('linear', 'relu')


def check_activation(layer_name: str, activation: Any) -> str:
    """Return the name of an activation that an H-layer computes exactly inside (``linear`` or ``relu``)."""
    name = 'linear' if activation is None else activation
    if name not in INTERNAL_ACTIVATIONS:
        raise ValueError(
            f'{layer_name}: activation must be one of {INTERNAL_ACTIVATIONS} (got {activation!r}); '
            'put other functions in a separate HActivation layer, which makes them bit-exact lookup tables'
        )
    return name


@keras.saving.register_keras_serializable(package='hgq')
class HDense(HLayer):
    """Dense layer whose input and kernel are quantized with learned bitwidths.

    Parameters
    ----------
    units : int
        Output features.
    activation : {'linear', 'relu', None}
        Applied to the output; other functions go in an ``HActivation`` layer.
    use_bias : bool
        Whether to add a (quantized) bias.
    kernel_quantizer, bias_quantizer : WeightQuantizer, dict or None
        Quantizers of the kernel (per weight by default) and bias.
    beta : float
        Initial weight of this layer's EBOPs in the loss.
    input_quantizer : ActivationQuantizer, dict or None
        Quantizer of the input (per element by default).
    kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        As in ``keras.layers.Dense``.

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HQuantize, HDense
    >>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDense(64, activation='relu', beta=1e-6)])
    """

    def __init__(
        self,
        units: int,
        activation: str | None = None,
        use_bias: bool = True,
        kernel_quantizer: QuantizerSpec = None,
        bias_quantizer: QuantizerSpec = None,
        kernel_initializer: Any = 'glorot_uniform',
        bias_initializer: Any = 'zeros',
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f'{self.name}: units must be a positive integer, got {units}')
        self.units = int(units)
        self.activation = check_activation(self.name, activation)
        self.use_bias = bool(use_bias)
        self.kernel_quantizer = make_quantizer(kernel_quantizer, WeightQuantizer, f'{self.name}_kq')
        self.bias_quantizer = make_quantizer(bias_quantizer, WeightQuantizer, f'{self.name}_bq', f_init=8.0)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] is None:
            raise ValueError(f'{self.name}: the last input axis needs a fixed size, got {input_shape}')
        self.input_quantizer.build(input_shape)
        kernel_shape = (int(input_shape[-1]), self.units)
        self.kernel = self.add_weight(
            name='kernel', shape=kernel_shape, initializer=self.kernel_initializer, regularizer=self.kernel_regularizer
        )
        self.kernel_quantizer.build(kernel_shape)
        self.kernel_quantizer.fit_initial_bits(self.kernel)
        if self.use_bias:
            self.bias = self.add_weight(
                name='bias', shape=(self.units,), initializer=self.bias_initializer, regularizer=self.bias_regularizer
            )
            self.bias_quantizer.build((self.units,))
        super().build(input_shape)

    @property
    def weight_quantizers(self) -> list[WeightQuantizer]:
        return [self.kernel_quantizer, self.bias_quantizer] if self.use_bias else [self.kernel_quantizer]

    @property
    def qkernel(self) -> Any:
        """The quantized kernel, as exported to hardware."""
        return self.kernel_quantizer(self.kernel)

    @property
    def qbias(self) -> Any:
        """The quantized bias (``None`` without bias)."""
        return self.bias_quantizer(self.bias) if self.use_bias else None

    def call(self, x: Any, training: bool | None = None) -> Any:
        y = ops.matmul(self.input_quantizer(x, training=training), self.qkernel)
        if self.use_bias:
            y = y + self.qbias
        if self.activation == 'relu':
            y = ops.relu(y)
        self.add_ebops_loss(training)
        return y

    def ebops(self) -> Any:
        bits_in = ops.reshape(self.input_quantizer.bits(), (-1, self.kernel.shape[0]))
        return ops.sum(ops.matmul(bits_in, self.kernel_quantizer.bits(self.kernel)))

    def exact_ebops(self) -> float:
        bits_in = self.input_bits_exact().reshape(-1, self.kernel.shape[0])
        return float(np.sum(bits_in @ self.kernel_quantizer.exact_bits(self.kernel)))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            units=self.units,
            activation=self.activation,
            use_bias=self.use_bias,
            kernel_quantizer=serialize_quantizer(self.kernel_quantizer),
            bias_quantizer=serialize_quantizer(self.bias_quantizer),
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        )
        return config
