"""``HKernelLayer``: what Dense and Conv H-layers share (kernel, bias, their quantizers and the EBOPs pattern)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.backend import float64_scope
from hgq.layers.base import HLayer, QuantizerSpec, make_quantizer, serialize_quantizer
from hgq.quantizer import ActivationQuantizer, WeightQuantizer

__all__ = ['HKernelLayer', 'check_activation', 'INTERNAL_ACTIVATIONS']

INTERNAL_ACTIVATIONS = ('linear', 'relu')


def check_activation(layer_name: str, activation: Any) -> str:
    """Return the name of an activation that an H-layer computes exactly inside (``linear`` or ``relu``).

    Examples
    --------
    >>> check_activation('dense', None)
    'linear'
    """
    name = 'linear' if activation is None else activation
    if name not in INTERNAL_ACTIVATIONS:
        raise ValueError(
            f'{layer_name}: activation must be one of {INTERNAL_ACTIVATIONS} (got {activation!r}); '
            'put other functions in a separate HActivation layer, which makes them bit-exact lookup tables'
        )
    return name


class HKernelLayer(HLayer):
    """Base of H-layers computing ``activation(op(q(x), q(kernel)) + q(bias))`` with a linear ``op``.

    Subclasses define the kernel shape (:meth:`kernel_shape`), the operation (:meth:`apply_kernel`, a matmul or a
    convolution, linear in both arguments) and how many output positions share one multiplier array
    (:meth:`ebops_scale`). EBOPs are then ``sum(op(bits_in, bits_kernel)) * ebops_scale``: every product
    ``x * w`` that the hardware instantiates costs ``bits(x) * bits(w)``.

    Attributes read by the converter: ``input_quantizer``, ``qkernel``, ``qbias`` (``None`` without bias),
    ``activation`` and ``use_bias``.

    Parameters
    ----------
    activation : {'linear', 'relu', None}
        Applied to the output; other functions go in an ``HActivation`` layer.
    use_bias : bool
        Whether to add a (quantized) bias.
    kernel_quantizer, bias_quantizer : WeightQuantizer, dict or None
        Quantizers of the kernel (per weight by default; ``{'granularity': 'channel'}`` gives one bitwidth per
        output channel) and of the bias.
    kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer
        As in ``keras.layers.Dense``.
    **kwargs
        ``beta``, ``input_quantizer`` (see :class:`~hgq.layers.HLayer`) and ``keras.layers.Layer`` arguments.
    """

    def __init__(
        self,
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
        self.activation = check_activation(self.name, activation)
        self.use_bias = bool(use_bias)
        self.kernel_quantizer = make_quantizer(kernel_quantizer, WeightQuantizer, f'{self.name}_kq')
        self.bias_quantizer = make_quantizer(bias_quantizer, WeightQuantizer, f'{self.name}_bq', f_init=8.0)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)

    # -- to be defined by subclasses -------------------------------------------------------------------------------

    def kernel_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int, ...]:
        """Shape of the kernel for inputs of ``input_shape`` (batch axis included); validates the shape."""
        raise NotImplementedError

    def apply_kernel(self, x: Any, kernel: Any) -> Any:
        """The linear operation of the layer (a matmul or a convolution) on a batch ``x``."""
        raise NotImplementedError

    def ebops_scale(self) -> float:
        """Factor applied to the summed bit products: 1, or the share of output positions that own multipliers."""
        return 1.0

    # -- weights -----------------------------------------------------------------------------------------------------

    @property
    def units_out(self) -> int:
        """Size of the output channel axis (last kernel axis)."""
        return int(self.kernel.shape[-1])

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        kernel_shape = self.kernel_shape(tuple(input_shape))
        self.input_quantizer.build(input_shape)
        self.kernel = self.add_weight(
            name='kernel', shape=kernel_shape, initializer=self.kernel_initializer, regularizer=self.kernel_regularizer
        )
        self.build_bias()
        self.kernel_quantizer.build(kernel_shape)
        self.kernel_quantizer.fit_initial_bits(lambda: self.float_kernel_and_bias()[0])
        if self.use_bias:
            self.bias_quantizer.build((self.units_out,))
        super().build(input_shape)

    def build_bias(self) -> None:
        """Create the bias variable (or whatever else defines the float bias; see the batch-norm variants)."""
        if self.use_bias:
            self.bias = self.add_weight(
                name='bias',
                shape=(self.units_out,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )

    def float_kernel_and_bias(self, x: Any = None, training: bool | None = None) -> tuple[Any, Any]:
        """The kernel and bias before quantization (bias ``None`` without bias).

        ``x`` (the quantized input batch) and ``training`` are used by the batch-norm variants, whose kernel and
        bias depend on batch statistics while training.
        """
        return self.kernel, (self.bias if self.use_bias else None)

    @property
    def priced_quantizers(self) -> list[ActivationQuantizer]:
        return [self.input_quantizer]

    @property
    def weight_quantizers(self) -> list[WeightQuantizer]:
        return [self.kernel_quantizer, self.bias_quantizer] if self.use_bias else [self.kernel_quantizer]

    @property
    def qkernel(self) -> Any:
        """The quantized kernel, as exported to hardware."""
        return self.kernel_quantizer(self.float_kernel_and_bias()[0])

    @property
    def qbias(self) -> Any:
        """The quantized bias, as exported to hardware (``None`` without bias)."""
        bias = self.float_kernel_and_bias()[1]
        return None if bias is None else self.bias_quantizer(bias)

    def quantized_weights(self) -> dict[str, tuple[np.ndarray, WeightQuantizer]]:
        weights = {'kernel': (self.qkernel, self.kernel_quantizer)}
        if self.use_bias:
            weights['bias'] = (self.qbias, self.bias_quantizer)
        return self.exported(**weights)

    # -- computation -------------------------------------------------------------------------------------------------

    def call(self, x: Any, training: bool | None = None) -> Any:
        xq = self.input_quantizer(x, training=training)
        kernel, bias = self.float_kernel_and_bias(xq, training)
        qkernel = self.kernel_quantizer(kernel)
        y = self.apply_kernel(xq, qkernel)
        if bias is not None:
            y = y + self.bias_quantizer(bias)
        if self.activation == 'relu':
            y = ops.relu(y)
        if training:
            self.add_loss(self.beta * self.kernel_ebops(kernel, qkernel))
        return y

    def kernel_ebops(self, kernel: Any, qkernel: Any = None) -> Any:
        """Differentiable EBOPs of this layer with a given float kernel (``qkernel``: that kernel, quantized)."""
        bits_in = ops.expand_dims(self.input_quantizer.bits(), 0)
        quantizer = self.kernel_quantizer
        bits_kernel = quantizer.bits(kernel) if qkernel is None else quantizer.bits_of(qkernel)
        return ops.sum(self.apply_kernel(bits_in, bits_kernel)) * self.ebops_scale()

    def ebops(self) -> Any:
        return self.kernel_ebops(self.float_kernel_and_bias()[0])

    def exact_ebops(self) -> float:
        bits_in = self.input_bits_exact().astype(np.float64)[None]
        bits_kernel = self.kernel_quantizer.exact_bits(self.float_kernel_and_bias()[0]).astype(np.float64)
        with float64_scope():
            products = ops.convert_to_numpy(self.apply_kernel(bits_in, bits_kernel))
        return float(np.sum(products, dtype=np.float64) * self.ebops_scale())

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
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
