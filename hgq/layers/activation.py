"""``HActivation``: element-wise activations that convert bit-exactly, as ``relu`` or as a lookup table.

``relu`` is exact in fixed point: the layer quantizes its input and applies ``relu``. Every other function
(``'tanh'``, ``'sigmoid'``, ``'gelu'``, a user callable) becomes a lookup table over every code of its quantized
input, with a quantized output. The table input format is one ``(k, i, f)`` for the whole tensor (the input
quantizer has ``tensor`` granularity), so the table has ``2**(k + i + f)`` entries.

At inference (``training`` false or ``None``) the layer computes the table and looks every input up in it, so
its output is ``table[code(x)]`` exactly; hardware holds the same table (exported with :meth:`HActivation.table`).
Table entries are computed in float64 before quantization, so that the last-bit differences between function
implementations (eager or compiled, CPU or GPU) practically never move an entry across a rounding boundary.
While training, the function is applied directly, with straight-through gradients through both quantizers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.backend import float64_scope
from hgq.layers.base import HLayer, QuantizerSpec, make_quantizer, serialize_quantizer, with_defaults
from hgq.lut import (
    MAX_TABLE_SIZE,
    check_tensor_quantizer,
    code_offset,
    lut_cost,
    quantize_with,
    scalar_ki_f,
    scalar_kif,
    table_width,
    take_codes,
)
from hgq.quantizer import ActivationQuantizer

__all__ = ['HActivation']

LUT_INPUT_DEFAULTS = {'granularity': 'tensor', 'overflow_mode': 'SAT', 'i_init': 3.0, 'f_init': 5.0}
LUT_OUTPUT_DEFAULTS = {'granularity': 'tensor', 'overflow_mode': 'SAT', 'i_init': 1.0, 'f_init': 8.0}


def _get_function(layer_name: str, activation: Any) -> Callable[[Any], Any]:
    if activation is None:
        raise ValueError(f"{layer_name}: activation is required (a name such as 'tanh', or a callable)")
    try:
        fn = keras.activations.get(activation)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f'{layer_name}: unknown activation {activation!r}; give a keras.activations name or a callable '
            f'taking and returning keras tensors ({err})'
        ) from None
    if fn in (keras.activations.softmax, keras.activations.log_softmax):
        raise ValueError(f'{layer_name}: {activation!r} is not element-wise; use hgq.layers.HSoftmax')
    return fn


@keras.saving.register_keras_serializable(package='hgq')
class HActivation(HLayer):
    """Element-wise activation on a quantized input, converted bit-exactly to HLS.

    ``'relu'`` is applied exactly after the input quantizer (per element by default). Any other function is a
    lookup table over every code of its input format, whose entries are the function values quantized by the
    output quantizer: ``y = table[code(x)]``, in Keras and in hardware alike.

    Parameters
    ----------
    activation : str or callable
        ``'relu'``, a ``keras.activations`` name (``'tanh'``, ``'sigmoid'``, ``'gelu'``, ...), or a function
        taking and returning keras tensors (register it with ``keras.saving.register_keras_serializable`` so the
        model can be saved).
    input_quantizer : ActivationQuantizer, dict or None
        Quantizer of the input. For lookup tables it needs ``granularity='tensor'`` (one format, one table); the
        default is ``{'granularity': 'tensor', 'overflow_mode': 'SAT', 'i_init': 3, 'f_init': 5}`` (a 512-entry
        table over ``[-8, 8)``). For ``relu`` the default is per element, WRAP mode.
    output_quantizer : ActivationQuantizer, dict or None
        Quantizer of the table entries (lookup tables only): ``tensor`` granularity, SAT or SAT_SYM mode;
        default ``{'granularity': 'tensor', 'overflow_mode': 'SAT', 'i_init': 1, 'f_init': 8}``.
    max_table_size : int
        Largest allowed table (entries). The table is recomputed at every inference call over this many codes.
        A larger input format is an error at conversion; Keras then applies the function directly (as while
        calibrating, when :func:`hgq.calibrate` opens WRAP ranges).
    beta : float
        Weight of the layer's cost in the loss: the LUT-equivalent size of its tables (see :func:`hgq.lut.lut_cost`).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HQuantize, HDense, HActivation
    >>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDense(8), HActivation('tanh'), HDense(5)])
    >>> model.layers[2].table().shape
    (512,)
    """

    def __init__(
        self,
        activation: str | Callable[[Any], Any],
        output_quantizer: QuantizerSpec = None,
        max_table_size: int = MAX_TABLE_SIZE,
        input_quantizer: QuantizerSpec = None,
        **kwargs: Any,
    ) -> None:
        fn = _get_function(kwargs.get('name') or type(self).__name__, activation)
        is_lut = fn is not keras.activations.relu
        if is_lut:
            input_quantizer = with_defaults(input_quantizer, LUT_INPUT_DEFAULTS)
        super().__init__(input_quantizer=input_quantizer, **kwargs)
        self.activation = activation if is_lut else 'relu'
        self.fn = fn
        self.output_quantizer = None
        if not is_lut and output_quantizer is not None:
            raise ValueError(f'{self.name}: relu is exact and takes no output_quantizer')
        if is_lut:
            self.output_quantizer = make_quantizer(
                with_defaults(output_quantizer, LUT_OUTPUT_DEFAULTS), ActivationQuantizer, f'{self.name}_oq'
            )
            check_tensor_quantizer(self.name, 'input quantizer', self.input_quantizer, saturating=False)
            check_tensor_quantizer(self.name, 'output quantizer', self.output_quantizer, saturating=True)
        if int(max_table_size) < 1:
            raise ValueError(f'{self.name}: max_table_size must be a positive integer, got {max_table_size}')
        self.max_table_size = int(max_table_size)

    @property
    def is_lut(self) -> bool:
        """True when the activation is a lookup table (anything but ``relu``)."""
        return self.activation != 'relu'

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        self.input_quantizer.build(input_shape)
        if self.output_quantizer is not None:
            self.output_quantizer.build(input_shape)
        super().build(input_shape)

    @property
    def quantizers(self) -> list[ActivationQuantizer]:
        extra = [self.output_quantizer] if self.output_quantizer is not None else []
        return [*super().quantizers, *extra]

    def call(self, x: Any, training: bool | None = None) -> Any:
        xq = self.input_quantizer(x, training=training)
        if not self.is_lut:
            y = ops.relu(xq)
        elif training:
            y = self.output_quantizer(self.fn(xq), training=True)
        else:
            y = self._lookup(xq)
        self.add_ebops_loss(training)
        return y

    def _table_tensor(self) -> tuple[Any, Any, Any, Any]:
        """The table over ``max_table_size`` codes from the smallest one, its offset, size and scale ``2**f``."""
        k, i, f = scalar_ki_f(self.input_quantizer)
        offset = code_offset(k, i, f)
        size = ops.where(k + i + f > 0, 2.0 ** (k + i + f), 1.0)
        scale = 2.0**f
        with float64_scope():
            codes = ops.cast(offset, 'float64') + ops.arange(self.max_table_size, dtype='float64')
            values = self.fn(codes / ops.cast(scale, 'float64'))
            table = ops.cast(quantize_with(self.output_quantizer, values), self.compute_dtype)
        return table, offset, size, scale

    def _lookup(self, xq: Any) -> Any:
        table, offset, size, scale = self._table_tensor()
        y = take_codes(table, ops.round(xq * scale) - offset)
        direct = quantize_with(self.output_quantizer, self.fn(xq))
        return ops.where(size <= self.max_table_size, y, direct)

    def table_format(self) -> tuple[int, int, int]:
        """Integer ``(k, i, f)`` of the table input; ``(0, 0, 0)`` when the input is pruned (one entry)."""
        self._check_built()
        return scalar_kif(self.input_quantizer)

    def table(self) -> np.ndarray:
        """The lookup table as float64, entry ``j`` for input code ``offset + j`` (the smallest code first).

        Exactly the values the layer outputs at inference. Raises ``ValueError`` when the input format has more
        than ``max_table_size`` codes.
        """
        if not self.is_lut:
            raise ValueError(f'{self.name}: relu has no lookup table')
        k, i, f = self.table_format()
        size = 2 ** (k + i + f)
        if size > self.max_table_size:
            raise ValueError(
                f'{self.name}: the input format (k={k}, i={i}, f={f}) needs a table of {size} entries, more than '
                f'max_table_size={self.max_table_size}; lower the input bits or raise max_table_size'
            )
        table = self._table_tensor()[0]
        return np.asarray(ops.convert_to_numpy(table), dtype=np.float64)[:size]

    def _check_built(self) -> None:
        if not self.built:
            raise ValueError(f'{self.name}: the layer is not built; build or call the model first')

    @property
    def priced_quantizers(self) -> list[ActivationQuantizer]:
        return [self.input_quantizer] if self.is_lut else []

    def ebops(self) -> Any:
        if not self.is_lut:
            return ops.convert_to_tensor(0.0)
        n = float(np.prod(self.input_quantizer.shape))
        bits_in = ops.max(self.input_quantizer.bits())
        bits_out = ops.max(self.output_quantizer.bits())
        return lut_cost(n, bits_in, bits_out, xp=ops)

    def exact_ebops(self) -> float:
        if not self.is_lut:
            return 0.0
        k, i, f = self.table_format()
        n = float(np.prod(self.input_quantizer.shape))
        return float(lut_cost(n, k + i + f, table_width(self.table())))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        activation = self.activation
        if not isinstance(activation, str | dict):
            activation = keras.saving.serialize_keras_object(activation)
        config.update(activation=activation, max_table_size=self.max_table_size)
        if self.output_quantizer is not None:
            config.update(output_quantizer=serialize_quantizer(self.output_quantizer))
        return config
