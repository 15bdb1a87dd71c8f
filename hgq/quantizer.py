"""Trainable fixed-point quantizers: every element (or channel, or tensor) learns its own bitwidth.

Two quantizers share one learning rule (README, "The learning rule"):

- :class:`ActivationQuantizer` quantizes data flowing through the model. Fractional bits ``f`` are learned; integer
  bits ``i`` and the sign bit ``k`` are tracked from the data (``WRAP`` mode, exact after :func:`hgq.calibrate`)
  or learned (``SAT``/``SAT_SYM`` mode).
- :class:`WeightQuantizer` quantizes a kernel or bias. Fractional bits are learned; integer bits come from the
  quantized values, so a weight that rounds to zero costs nothing.

The forward pass always sees bitwidths rounded to integers. Gradients: straight-through on the rounding of
``x * 2**f`` only, which gives ``dq/dx = 1`` and ``dq/df = -ln2 * (q - x)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.fixed_point import (
    FLOAT32_SIGNIFICAND_BITS,
    OVERFLOW_MODES,
    ROUND_MODES,
    float32_exact,
    quantize_tensor,
    round_codes,
)

GRANULARITIES = ('element', 'channel', 'tensor')

__all__ = ['GRANULARITIES', 'ActivationQuantizer', 'WeightQuantizer', 'round_ste', 'bits_shape', 'effective_bits']


def round_ste(x: Any) -> Any:
    """Round half up in the forward pass, identity in the backward pass (straight-through estimator)."""
    return x + ops.stop_gradient(ops.floor(x + 0.5) - x)


def _round_codes_ste(round_mode: str):
    def round_fn(y: Any) -> Any:
        return y + ops.stop_gradient(round_codes(y, round_mode, ops) - y)

    return round_fn


def bits_shape(shape: Sequence[int], granularity: str, channel_axis: int = -1) -> tuple[int, ...]:
    """Shape of the bitwidth variables of a quantizer over tensors of ``shape`` (batch axis excluded).

    Examples
    --------
    >>> bits_shape((8, 8, 3), 'channel')
    (1, 1, 3)
    """
    shape = tuple(int(s) for s in shape)
    if granularity == 'element':
        return shape
    if granularity == 'tensor':
        return (1,) * len(shape)
    if granularity == 'channel':
        if not shape:
            raise ValueError('channel granularity needs a tensor with at least one axis')
        axis = channel_axis % len(shape)
        return tuple(s if a == axis else 1 for a, s in enumerate(shape))
    raise ValueError(f'granularity must be one of {GRANULARITIES}, got {granularity!r}')


def _reduce_axes(full_shape: Sequence[int], var_shape: Sequence[int], batch: bool) -> tuple[int, ...]:
    """Axes of a (batched) tensor that map onto one bitwidth variable element."""
    offset = 1 if batch else 0
    axes = tuple(a + offset for a, (s, v) in enumerate(zip(full_shape, var_shape, strict=True)) if v == 1 and s != 1)
    return ((0,) if batch else ()) + axes


class _FixedPointQuantizerBase(keras.layers.Layer):
    """Shared bookkeeping: granularity, rounding mode, bitwidth L1 and the integer view of ``f``."""

    def __init__(
        self,
        granularity: str = 'element',
        round_mode: str = 'RND',
        channel_axis: int = -1,
        bits_l1: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if granularity not in GRANULARITIES:
            raise ValueError(f'{self.name}: granularity must be one of {GRANULARITIES}, got {granularity!r}')
        if round_mode not in ROUND_MODES:
            raise ValueError(f'{self.name}: round_mode must be one of {ROUND_MODES}, got {round_mode!r}')
        if bits_l1 < 0:
            raise ValueError(f'{self.name}: bits_l1 must be >= 0, got {bits_l1}')
        self.granularity = granularity
        self.round_mode = round_mode
        self.channel_axis = int(channel_axis)
        self.bits_l1 = float(bits_l1)
        self.shape: tuple[int, ...] | None = None

    def _set_shape(self, shape: Sequence[int | None]) -> tuple[int, ...]:
        if any(s is None for s in shape):
            raise ValueError(f'{self.name}: every axis but the batch axis needs a fixed size, got {tuple(shape)}')
        self.shape = tuple(int(s) for s in shape)
        return bits_shape(self.shape, self.granularity, self.channel_axis)

    def _check_input(self, x: Any, batch: bool) -> None:
        got = tuple(x.shape[1:] if batch else x.shape)
        if self.shape is not None and len(got) != len(self.shape):
            raise ValueError(f'{self.name}: expected inputs of shape {self.shape}, got {got}')

    @property
    def f_int(self) -> Any:
        """Fractional bits rounded to integers (straight-through), shape of the bitwidth variables."""
        return round_ste(self.f)

    def _add_bits_l1(self, bits: Any) -> None:
        if self.bits_l1 > 0:
            self.add_loss(self.bits_l1 * ops.sum(bits))

    def _full(self, array: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(array), self.shape).copy()

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            granularity=self.granularity,
            round_mode=self.round_mode,
            channel_axis=self.channel_axis,
            bits_l1=self.bits_l1,
        )
        return config


@keras.saving.register_keras_serializable(package='hgq')
class ActivationQuantizer(_FixedPointQuantizerBase):
    """Quantizer of activations with a learned number of fractional bits per element, channel or tensor.

    Parameters
    ----------
    granularity : {'element', 'channel', 'tensor'}
        One bitwidth per element of the (per-sample) tensor, per channel (``channel_axis``), or one in total.
    f_init : float
        Initial fractional bits.
    overflow_mode : {'WRAP', 'SAT', 'SAT_SYM'}
        ``WRAP``: integer bits and sign are tracked from the data (the range shrinks slowly while training and
        is set exactly by :func:`hgq.calibrate`); values outside the range wrap around at inference, as in
        hardware. ``SAT``/``SAT_SYM``: integer bits are learned and values saturate.
    round_mode : str
        ap_fixed rounding mode, one of :data:`hgq.fixed_point.ROUND_MODES`.
    i_init : float
        Initial integer bits: the initial tracked range is ``[-2**i_init, 2**i_init]`` (WRAP) or the initial
        value of the learned integer bits (SAT).
    signed : bool
        Sign bit in SAT modes (WRAP mode takes the sign from the data).
    momentum : float
        WRAP mode: how slowly the tracked range shrinks towards the range of the current batch (per step).
    bits_l1 : float
        Weight of an L1 penalty on the bitwidths (added to the model's losses).
    f_trainable : bool
        Whether ``f`` is learned.

    Examples
    --------
    >>> import numpy as np
    >>> q = ActivationQuantizer(f_init=2, overflow_mode='SAT', i_init=1)
    >>> q(np.array([[0.3, 5.0, -0.6]], dtype='float32')).numpy().tolist()
    [[0.25, 1.75, -0.5]]
    """

    def __init__(
        self,
        granularity: str = 'element',
        f_init: float = 6.0,
        overflow_mode: str = 'WRAP',
        round_mode: str = 'RND',
        i_init: float = 4.0,
        signed: bool = True,
        momentum: float = 0.99,
        channel_axis: int = -1,
        bits_l1: float = 0.0,
        f_trainable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(granularity, round_mode, channel_axis, bits_l1, **kwargs)
        if overflow_mode not in OVERFLOW_MODES:
            raise ValueError(f'{self.name}: overflow_mode must be one of {OVERFLOW_MODES}, got {overflow_mode!r}')
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f'{self.name}: momentum must be in [0, 1), got {momentum}')
        self.f_init = float(f_init)
        self.overflow_mode = overflow_mode
        self.i_init = float(i_init)
        self.signed = bool(signed)
        self.momentum = float(momentum)
        self.f_trainable = bool(f_trainable)
        i0 = self.i_init
        if not float32_exact(np.exp2(i0), self.f_init):
            raise ValueError(
                f'{self.name}: the initial format (i_init={i0:g}, f_init={self.f_init:g}) has {i0 + self.f_init:g} '
                f'significant bits, more than the {FLOAT32_SIGNIFICAND_BITS} that float32 (Keras) holds exactly, so '
                f'Keras would differ from the firmware; keep i_init + f_init <= {FLOAT32_SIGNIFICAND_BITS}'
            )
        # Set by hgq.calibrate while it observes data: called with (quantizer, input) on every (eager) call.
        self.observer: Callable[[ActivationQuantizer, Any], None] | None = None

    @property
    def tracks_range(self) -> bool:
        """True in WRAP mode, where integer bits and sign come from the data."""
        return self.overflow_mode == 'WRAP'

    def build(self, input_shape: Sequence[int | None]) -> None:
        var_shape = self._set_shape(input_shape[1:])
        init = keras.initializers.Constant
        self.f = self.add_weight(name='f', shape=var_shape, initializer=init(self.f_init), trainable=self.f_trainable)
        if self.tracks_range:
            bound = 2.0**self.i_init
            self.vmin = self.add_weight(name='vmin', shape=var_shape, initializer=init(-bound), trainable=False)
            self.vmax = self.add_weight(name='vmax', shape=var_shape, initializer=init(bound), trainable=False)
            # 1 after hgq.calibrate set the range from data, 0 again once training moves it (stale calibration).
            self.calibrated = self.add_weight(name='calibrated', shape=(), initializer=init(0.0), trainable=False)
        else:
            self.i = self.add_weight(name='i', shape=var_shape, initializer=init(self.i_init), trainable=True)
        super().build(input_shape)

    def _tracked_ki(self, f_int: Any) -> tuple[Any, Any]:
        """Sign and integer bits that hold the tracked range ``[vmin, vmax]`` after rounding with ``f_int``."""
        scale = 2.0**f_int
        qmax = ops.maximum(round_codes(self.vmax * scale, self.round_mode, ops), 0.0) / scale
        qmin = ops.minimum(round_codes(self.vmin * scale, self.round_mode, ops), 0.0) / scale
        k = ops.cast(qmin < 0, self.f.dtype)
        i_pos = ops.ceil(ops.log2(qmax + 1.0 / scale))
        i_neg = ops.where(qmin < 0, ops.ceil(ops.log2(ops.maximum(-qmin, 1e-30))), i_pos)
        return k, ops.maximum(i_pos, i_neg)

    def ki(self) -> tuple[Any, Any]:
        """Sign bit and integer bits as tensors (shape of the bitwidth variables); no gradient in WRAP mode."""
        if self.tracks_range:
            k, i = self._tracked_ki(ops.floor(self.f + 0.5))
            return k, ops.stop_gradient(i)
        return ops.full_like(self.f, float(self.signed)), round_ste(self.i)

    def bits(self) -> Any:
        """Differentiable width ``relu(k + i + f)``, broadcast to the per-sample tensor shape."""
        k, i = self.ki()
        return ops.broadcast_to(ops.relu(k + i + self.f_int), self.shape)

    def kif(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integer ``(k, i, f)`` arrays of the per-sample tensor shape, as the hardware will use them."""
        k, i = self.ki()
        f = np.floor(ops.convert_to_numpy(self.f) + 0.5)
        k, i = ops.convert_to_numpy(k), ops.convert_to_numpy(i)
        return tuple(self._full(a).astype(np.int64) for a in (k, i, f))

    def call(self, x: Any, training: bool | None = None) -> Any:
        self._check_input(x, batch=True)
        if self.observer is not None:
            self.observer(self, x)
        f = self.f_int
        if self.tracks_range and training:
            self._track(x)
            scale = 2.0**f
            q = _round_codes_ste(self.round_mode)(x * scale) / scale
        else:
            k, i = self.ki()
            q = quantize_tensor(x, k, i, f, self.round_mode, self.overflow_mode, _round_codes_ste(self.round_mode))
        self._add_bits_l1(self.bits())
        return q

    def _track(self, x: Any) -> None:
        axes = _reduce_axes(self.shape, self.vmax.shape, batch=True)
        batch_max = ops.reshape(ops.max(x, axis=axes), self.vmax.shape)
        batch_min = ops.reshape(ops.min(x, axis=axes), self.vmin.shape)
        m = self.momentum
        self.vmax.assign(ops.maximum(batch_max, m * self.vmax + (1 - m) * batch_max))
        self.vmin.assign(ops.minimum(batch_min, m * self.vmin + (1 - m) * batch_min))
        self.calibrated.assign(0.0)

    def set_range(self, vmin: Any, vmax: Any) -> None:
        """Set the tracked range exactly (WRAP mode); used by :func:`hgq.calibrate`."""
        if not self.tracks_range:
            raise ValueError(f'{self.name}: set_range applies to WRAP mode only (overflow_mode={self.overflow_mode})')
        self.vmin.assign(ops.cast(ops.broadcast_to(vmin, self.vmin.shape), self.vmin.dtype))
        self.vmax.assign(ops.cast(ops.broadcast_to(vmax, self.vmax.shape), self.vmax.dtype))

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            f_init=self.f_init,
            overflow_mode=self.overflow_mode,
            i_init=self.i_init,
            signed=self.signed,
            momentum=self.momentum,
            f_trainable=self.f_trainable,
        )
        return config


@keras.saving.register_keras_serializable(package='hgq')
class WeightQuantizer(_FixedPointQuantizerBase):
    """Quantizer of a kernel or bias with a learned number of fractional bits per weight, channel or tensor.

    Weights are rounded, never overflowed: integer bits come from the quantized values. Effective bits of a
    weight are the span from its most to its least significant set bit (0 for a weight that rounds to zero).

    Parameters
    ----------
    granularity : {'element', 'channel', 'tensor'}
        One bitwidth per weight, per output channel (``channel_axis``), or one in total.
    f_init : float, optional
        Initial fractional bits. By default they are set from the initial weights by :meth:`fit_initial_bits`
        so that a typical weight keeps ``init_bits`` significant bits (never all rounded to zero).
    init_bits : float
        Significant bits of a weight of root-mean-square magnitude at initialisation.
    round_mode : str
        ap_fixed rounding mode, one of :data:`hgq.fixed_point.ROUND_MODES`.
    bits_l1 : float
        Weight of an L1 penalty on the bitwidths.
    f_trainable : bool
        Whether ``f`` is learned; ``False`` freezes the bitwidths (used by :mod:`hgq.allocate`); weights still train.

    Examples
    --------
    >>> import numpy as np
    >>> q = WeightQuantizer(f_init=2)
    >>> q.build((3,))
    >>> q(np.array([0.3, 1.0, -0.6], dtype='float32')).numpy().tolist()
    [0.25, 1.0, -0.5]
    """

    def __init__(
        self,
        granularity: str = 'element',
        f_init: float | None = None,
        init_bits: float = 4.0,
        round_mode: str = 'RND',
        channel_axis: int = -1,
        bits_l1: float = 0.0,
        f_trainable: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(granularity, round_mode, channel_axis, bits_l1, **kwargs)
        self.f_init = None if f_init is None else float(f_init)
        self.init_bits = float(init_bits)
        self.f_trainable = bool(f_trainable)

    def build(self, weight_shape: Sequence[int]) -> None:
        var_shape = self._set_shape(weight_shape)
        self._fit_source: Callable[[], Any] | None = None
        self.f = self.add_weight(name='f', shape=var_shape, initializer=self._initial_f, trainable=self.f_trainable)
        super().build(weight_shape)

    def _initial_f(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        # Eager builds call this at once (fit_initial_bits then assigns the fitted value). When Keras builds a model
        # by tracing it (subclassed models), variables are initialized after the trace, in creation order: the
        # weights first, then this, which then fits f to them.
        source, self._fit_source = self._fit_source, None
        if self.f_init is not None or source is None:
            return ops.full(shape, self.init_bits if self.f_init is None else self.f_init, dtype=dtype)
        return ops.cast(self._fitted_f(source(), shape), dtype)

    def _fitted_f(self, weights: Any, shape: tuple[int, ...]) -> Any:
        w = ops.cast(weights, 'float64')
        if self.granularity == 'channel':
            axes = _reduce_axes(self.shape, shape, batch=False)
        else:
            axes = tuple(range(len(self.shape)))
        rms = ops.sqrt(ops.mean(ops.square(w), axis=axes, keepdims=True)) if axes else ops.abs(w)
        rms = ops.where(rms > 0, rms, 1.0)
        return ops.broadcast_to(ops.ceil(self.init_bits - 1 - ops.log2(rms)), shape)

    def fit_initial_bits(self, weights: Any) -> None:
        """Set ``f`` so that weights of typical magnitude keep ``init_bits`` significant bits.

        The typical magnitude is the root mean square over the whole tensor (``element``/``tensor``) or over each
        channel (``channel``). Does nothing when ``f_init`` was given. ``weights`` may be a function returning them,
        which lets a model that Keras builds by tracing it (a subclassed model) fit ``f`` once the weights exist.
        """
        if self.f_init is not None:
            return
        if callable(weights) or isinstance(weights, keras.Variable):
            self._fit_source = weights if callable(weights) else lambda: weights
        value = weights() if callable(weights) else weights
        self.f.assign(ops.cast(self._fitted_f(value, tuple(self.f.shape)), self.f.dtype))

    def call(self, w: Any) -> Any:
        self._check_input(w, batch=False)
        f = self.f_int
        scale = 2.0**f
        return _round_codes_ste(self.round_mode)(w * scale) / scale

    def bits(self, w: Any) -> Any:
        """Differentiable effective bits of each weight: ``msb + 1 + f`` for nonzero quantized weights, else 0.

        The most significant bit position is taken from the quantized value without gradient; the gradient
        flows to ``f``.
        """
        q = self(w)
        nonzero = ops.not_equal(q, 0.0)
        msb = ops.stop_gradient(ops.floor(ops.log2(ops.where(nonzero, ops.abs(q), 1.0))))
        bits = ops.where(nonzero, ops.relu(msb + 1.0 + self.f_int), 0.0)
        self._add_bits_l1(bits)
        return bits

    def exact_bits(self, w: Any) -> np.ndarray:
        """Effective bits from the quantized values: MSB-to-LSB span of each ``|q|`` (0 where ``q == 0``)."""
        q = np.abs(np.asarray(ops.convert_to_numpy(self(w)), dtype=np.float64))
        return effective_bits(q)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(f_init=self.f_init, init_bits=self.init_bits, f_trainable=self.f_trainable)
        return config


def effective_bits(values: Any) -> np.ndarray:
    """MSB-to-LSB span of ``|values|`` for exact binary fractions; 0 for zeros.

    Examples
    --------
    >>> effective_bits([0.0, 1.0, 0.75, -6.0]).tolist()
    [0, 1, 2, 2]
    """
    mag = np.abs(np.asarray(values, dtype=np.float64))
    nonzero = mag > 0
    safe = np.where(nonzero, mag, 1.0)
    mantissa, exp = np.frexp(safe)
    codes = (mantissa * 2.0**53).astype(np.int64)
    lowest = codes & -codes  # lowest set bit of the mantissa
    span = 53 - np.log2(lowest.astype(np.float64)).astype(np.int64)
    return np.where(nonzero, span, 0).astype(np.int64)
