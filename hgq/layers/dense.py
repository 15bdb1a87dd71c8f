"""``HDense``: a fully connected layer with per-weight and per-input bitwidths."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from hgq.backend import exact_float32
from hgq.layers.kernel import HKernelLayer, check_activation

__all__ = ['HDense', 'check_activation']


@keras.saving.register_keras_serializable(package='hgq')
class HDense(HKernelLayer):
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

    def __init__(self, units: int, activation: str | None = None, use_bias: bool = True, **kwargs: Any) -> None:
        super().__init__(activation=activation, use_bias=use_bias, **kwargs)
        if int(units) <= 0:
            raise ValueError(f'{self.name}: units must be a positive integer, got {units}')
        self.units = int(units)

    def kernel_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int, ...]:
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f'{self.name}: the last input axis needs a fixed size, got {input_shape}')
        return (int(input_shape[-1]), self.units)

    def apply_kernel(self, x: Any, kernel: Any) -> Any:
        with exact_float32():
            return ops.matmul(x, kernel)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.units)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(units=self.units)
        return config
