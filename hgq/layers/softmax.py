"""``HSoftmax``: a softmax built from quantized lookup tables that hardware reproduces bit for bit.

Along the last axis, with every step in fixed point::

    xq = input_quantizer(x)                  # the layer input
    d  = max(xq) - xq                        # exact, >= 0
    e  = exp_table[code(exp_input_q(d))]     # exp_table[c] = exp_q(exp(-c * 2**-f_d))
    s  = sum(e)                              # exact
    r  = inv_table[code(sum_q(s))]           # inv_table[c] = inv_q(2**f_s / c)
    y  = output_q(e * r)                     # one multiplication per element

The five internal quantizers (``exp_input``, ``exp``, ``sum``, ``inv`` and ``output``) are unsigned, saturating and
have ``tensor`` granularity, with learned integer and fractional bits. At inference the layer computes both tables
(in float64, then quantized) and looks values up in them, so its output equals the hardware's (the tables are
exported with :meth:`HSoftmax.tables`). While training, the same chain runs on the functions themselves with
straight-through gradients.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.backend import float64_scope
from hgq.layers.base import HLayer, QuantizerSpec, make_quantizer, serialize_quantizer, with_defaults
from hgq.lut import (
    MAX_TABLE_SIZE,
    check_tensor_quantizer,
    lut_cost,
    quantize_with,
    scalar_kif,
    table_width,
    take_codes,
)
from hgq.quantizer import ActivationQuantizer

__all__ = ['HSoftmax', 'SOFTMAX_QUANTIZERS']

_UNSIGNED_SAT = {'granularity': 'tensor', 'overflow_mode': 'SAT', 'signed': False}
SOFTMAX_QUANTIZERS = {
    'exp_input_quantizer': {**_UNSIGNED_SAT, 'i_init': 3.0, 'f_init': 4.0},
    'exp_quantizer': {**_UNSIGNED_SAT, 'i_init': 1.0, 'f_init': 8.0},
    'sum_quantizer': {**_UNSIGNED_SAT, 'i_init': 4.0, 'f_init': 4.0},
    'inv_quantizer': {**_UNSIGNED_SAT, 'i_init': 1.0, 'f_init': 8.0},
    'output_quantizer': {**_UNSIGNED_SAT, 'i_init': 1.0, 'f_init': 8.0},
}
INPUT_DEFAULTS = {'granularity': 'tensor', 'overflow_mode': 'SAT', 'i_init': 4.0, 'f_init': 6.0}


def _table_size(quantizer: ActivationQuantizer) -> int:
    k, i, f = scalar_kif(quantizer)
    return 2 ** (k + i + f)


@keras.saving.register_keras_serializable(package='hgq')
class HSoftmax(HLayer):
    """Softmax over the last axis from an exp table, an exact sum and a reciprocal table.

    Parameters
    ----------
    axis : int
        Must be ``-1`` (the last axis); other axes are not supported.
    exp_input_quantizer, exp_quantizer, sum_quantizer, inv_quantizer, output_quantizer : dict, quantizer or None
        The internal quantizers (see the module docstring): unsigned, ``tensor`` granularity, ``SAT``/``SAT_SYM``.
        A dict overrides the defaults of :data:`SOFTMAX_QUANTIZERS`, e.g. ``{'f_init': 6}``.
    input_quantizer : ActivationQuantizer, dict or None
        Quantizer of the input (default: ``tensor`` granularity, SAT mode, ``i_init=4``, ``f_init=6``).
    max_table_size : int
        Largest allowed table (entries), for both tables. Both are recomputed at every inference call over this
        many codes. A larger format is an error at conversion; Keras then computes the functions directly.
    beta : float
        Weight of the layer's EBOPs in the loss: ``bits(e) * bits(r)`` for each output multiplication, plus the
        LUT-equivalent size of the tables (:func:`hgq.lut.lut_cost`).

    Examples
    --------
    >>> import keras
    >>> from hgq.layers import HQuantize, HDense, HSoftmax
    >>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDense(5), HSoftmax()])
    >>> [t.shape for t in model.layers[-1].tables()]
    [(128,), (256,)]
    """

    def __init__(
        self,
        axis: int = -1,
        exp_input_quantizer: QuantizerSpec = None,
        exp_quantizer: QuantizerSpec = None,
        sum_quantizer: QuantizerSpec = None,
        inv_quantizer: QuantizerSpec = None,
        output_quantizer: QuantizerSpec = None,
        max_table_size: int = MAX_TABLE_SIZE,
        input_quantizer: QuantizerSpec = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(input_quantizer=with_defaults(input_quantizer, INPUT_DEFAULTS), **kwargs)
        if axis != -1:
            raise ValueError(f'{self.name}: only axis=-1 (the last axis) is supported, got axis={axis!r}')
        if int(max_table_size) < 1:
            raise ValueError(f'{self.name}: max_table_size must be a positive integer, got {max_table_size}')
        self.axis = -1
        self.max_table_size = int(max_table_size)
        given = (exp_input_quantizer, exp_quantizer, sum_quantizer, inv_quantizer, output_quantizer)
        specs = dict(zip(SOFTMAX_QUANTIZERS, given, strict=True))
        for role, spec in specs.items():
            name = f'{self.name}_{role.removesuffix("_quantizer")}_q'
            quantizer = make_quantizer(with_defaults(spec, SOFTMAX_QUANTIZERS[role]), ActivationQuantizer, name)
            check_tensor_quantizer(self.name, role.replace('_', ' '), quantizer, saturating=True)
            setattr(self, role, quantizer)

    @property
    def internal_quantizers(self) -> list[ActivationQuantizer]:
        """The exp-input, exp, sum, inverse and output quantizers, in that order."""
        return [getattr(self, role) for role in SOFTMAX_QUANTIZERS]

    @property
    def quantizers(self) -> list[ActivationQuantizer]:
        return [*super().quantizers, *self.internal_quantizers]

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f'{self.name}: expected inputs (batch, ..., n) with a fixed last axis, got {input_shape}')
        self.input_quantizer.build(input_shape)
        sum_shape = (*input_shape[:-1], 1)
        shapes = (input_shape, input_shape, sum_shape, sum_shape, input_shape)
        for quantizer, shape in zip(self.internal_quantizers, shapes, strict=True):
            quantizer.build(shape)
        super().build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        xq = self.input_quantizer(x, training=training)
        y = self._train_forward(xq) if training else self._exact_forward(xq)
        self.add_ebops_loss(training)
        return y

    def _train_forward(self, xq: Any) -> Any:
        d = ops.max(xq, axis=-1, keepdims=True) - xq
        e = self.exp_quantizer(ops.exp(-self.exp_input_quantizer(d, training=True)), training=True)
        s = self.sum_quantizer(ops.sum(e, axis=-1, keepdims=True), training=True)
        r = self.inv_quantizer(1.0 / ops.maximum(s, 2.0**-24), training=True)
        return self.output_quantizer(e * r, training=True)

    def _table_tensors(self) -> tuple[Any, Any]:
        """Exp and reciprocal tables over ``max_table_size`` codes (entry ``c`` for code ``c``)."""
        with float64_scope():
            codes = ops.arange(self.max_table_size, dtype='float64')
            d = codes * ops.cast(2.0 ** -ops.reshape(self.exp_input_quantizer.f_int, ()), 'float64')
            exp_table = quantize_with(self.exp_quantizer, ops.exp(-d))
            s = codes * ops.cast(2.0 ** -ops.reshape(self.sum_quantizer.f_int, ()), 'float64')
            inv_table = quantize_with(self.inv_quantizer, ops.divide(1.0, s))
            return ops.cast(exp_table, self.compute_dtype), ops.cast(inv_table, self.compute_dtype)

    def _fits(self) -> Any:
        """Whether both tables fit in ``max_table_size`` entries (a scalar boolean tensor)."""
        sizes = []
        for quantizer in (self.exp_input_quantizer, self.sum_quantizer):
            k, i = (ops.reshape(a, ()) for a in quantizer.ki())
            sizes.append(2.0 ** ops.maximum(k + i + ops.reshape(quantizer.f_int, ()), 0.0))
        return ops.logical_and(sizes[0] <= self.max_table_size, sizes[1] <= self.max_table_size)

    @staticmethod
    def _lookup(table: Any, quantizer: ActivationQuantizer, x64: Any) -> Any:
        """Quantize float64 ``x64`` (>= 0) with ``quantizer`` and read ``table`` at its code, as float64."""
        f = ops.cast(ops.reshape(quantizer.f_int, ()), 'float64')
        index = ops.round(quantize_with(quantizer, x64) * 2.0**f)
        return ops.cast(take_codes(table, index), 'float64')

    def _exact_forward(self, xq: Any) -> Any:
        """Inference: table lookups, with the sum and the products in float64 (exact)."""
        exp_table, inv_table = self._table_tensors()
        with float64_scope():
            x64 = ops.cast(xq, 'float64')
            d = ops.max(x64, axis=-1, keepdims=True) - x64
            e = self._lookup(exp_table, self.exp_input_quantizer, d)
            r = self._lookup(inv_table, self.sum_quantizer, ops.sum(e, axis=-1, keepdims=True))
            y = ops.cast(quantize_with(self.output_quantizer, e * r), self.compute_dtype)
        return ops.where(self._fits(), y, self._direct_forward(xq))

    def _direct_forward(self, xq: Any) -> Any:
        """The same chain on the functions themselves (used when a table would be too large)."""
        d = quantize_with(self.exp_input_quantizer, ops.max(xq, axis=-1, keepdims=True) - xq)
        e = quantize_with(self.exp_quantizer, ops.exp(-d))
        s = quantize_with(self.sum_quantizer, ops.sum(e, axis=-1, keepdims=True))
        r = quantize_with(self.inv_quantizer, 1.0 / s)
        return quantize_with(self.output_quantizer, e * r)

    def tables(self) -> tuple[np.ndarray, np.ndarray]:
        """The exp table (indexed by the code of ``max - x``) and the reciprocal table (by the code of the sum).

        Exactly the values the layer uses at inference, as float64. Raises ``ValueError`` when a table would
        have more than ``max_table_size`` entries.
        """
        if not self.built:
            raise ValueError(f'{self.name}: the layer is not built; build or call the model first')
        sizes = []
        for role in ('exp_input_quantizer', 'sum_quantizer'):
            size = _table_size(getattr(self, role))
            if size > self.max_table_size:
                raise ValueError(
                    f'{self.name}: the {role.replace("_", " ")} format {scalar_kif(getattr(self, role))} needs a '
                    f'table of {size} entries, more than max_table_size={self.max_table_size}; lower its bits or '
                    'raise max_table_size'
                )
            sizes.append(size)
        tables = (np.asarray(ops.convert_to_numpy(t), dtype=np.float64) for t in self._table_tensors())
        return tuple(t[:n] for t, n in zip(tables, sizes, strict=True))

    def ebops(self) -> Any:
        shape = self.input_quantizer.shape
        n_in, n_slices = float(np.prod(shape)), float(np.prod(shape[:-1]))
        bits = [ops.max(q.bits()) for q in self.internal_quantizers[:4]]
        b_d, b_e, b_s, b_r = bits
        tables = lut_cost(n_in, b_d, b_e, xp=ops) + lut_cost(n_slices, b_s, b_r, xp=ops)
        return n_in * b_e * b_r + tables

    def exact_ebops(self) -> float:
        shape = self.input_quantizer.shape
        n_in, n_slices = float(np.prod(shape)), float(np.prod(shape[:-1]))
        exp_table, inv_table = self.tables()
        w_e, w_r = table_width(exp_table), table_width(inv_table)
        b_d, b_s = (int(np.log2(len(t))) for t in (exp_table, inv_table))
        return float(n_in * w_e * w_r + lut_cost(n_in, b_d, w_e) + lut_cost(n_slices, b_s, w_r))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(axis=self.axis, max_table_size=self.max_table_size)
        config.update({role: serialize_quantizer(getattr(self, role)) for role in SOFTMAX_QUANTIZERS})
        return config
