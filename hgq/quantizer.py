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

import functools
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.backend import float64_scope, max_over_replicas
from hgq.fixed_point import (
    FLOAT32_SIGNIFICAND_BITS,
    OVERFLOW_MODES,
    ROUND_MODES,
    float32_exact,
    quantize_tensor,
    round_codes,
)

GRANULARITIES = ('element', 'channel', 'tensor')
# Bitwidth variables move this many times faster than the optimizer moves other variables (see ScaledStep).
BITS_LR_SCALE = 4.0
# Default weight of the pull of every learned bitwidth towards 0 (see bits_decay): tiny next to any beta * EBOPs
# gradient, but the only force on a bit that the loss has no use for.
BITS_DECAY = 1e-8
# Integer bits of a WRAP range before any data was seen, and the default of learned integer bits (SAT modes).
UNTRAINED_INTEGER_BITS = 4.0
# train_peak of a WRAP quantizer never trained: so large that no element counts as pruned at any step a float32 holds
# (see _pruned).
UNTRAINED_PEAK = 2.0**127

__all__ = [
    'GRANULARITIES',
    'BITS_LR_SCALE',
    'BITS_DECAY',
    'ActivationQuantizer',
    'WeightQuantizer',
    'ScaledStep',
    'round_ste',
    'straight_through',
    'bits_shape',
    'effective_bits',
]


def straight_through(value: Any, x: Any) -> Any:
    """``value`` in the forward pass, exactly; the gradient of ``x`` in the backward pass.

    The usual form ``x + stop_gradient(value - x)`` is exact op by op, but not in every compiled graph:
    TensorFlow's graph optimizer drops ``stop_gradient`` from inference graphs (``model.predict``) and may regroup
    a sum such as ``k + (x + (value - x)) + f`` so that the raw ``x`` meets other terms first, which rounds. A
    saturating quantizer's learned bound then came out ``0.9374998`` instead of ``0.9375``. Here ``value`` enters
    sums on its own, and ``x`` only through a product that is exactly 0 by a factor the optimizer cannot fold,
    so no regrouping of sums reaches it.

    Examples
    --------
    >>> import keras
    >>> x = keras.ops.convert_to_tensor([0.3, 1.7])
    >>> keras.ops.convert_to_numpy(straight_through(keras.ops.round(x), x)).tolist()
    [0.0, 2.0]
    """
    one = ops.stop_gradient(ops.sign(ops.abs(x) + 1.0))  # 1, computed at run time so that it is not folded away
    return ops.stop_gradient(value) + (x - ops.stop_gradient(x)) * one


def round_ste(x: Any) -> Any:
    """Round half up in the forward pass, identity in the backward pass (straight-through estimator)."""
    return straight_through(ops.floor(x + 0.5), x)


def _ceil_log2(v: Any) -> Any:
    """``ceil(log2(v))`` exactly, for normal float32 ``v > 0``.

    Keras's ``log2`` under TensorFlow is ``log(v) / log(2)``, a few ulps off on some exact powers of two (``2**-27``
    gives ``-26.999998``), and differently so in a graph (where the division becomes a multiplication) and op by
    op. Powers of two are exact, so one step either way fixes the estimate.
    """
    e = ops.ceil(ops.log2(v))
    e = ops.where(2.0 ** (e - 1.0) >= v, e - 1.0, e)
    return ops.where(2.0**e < v, e + 1.0, e)


class _RepeatedQuery:
    """``fn`` run op by op on its first call and as one compiled TensorFlow graph from the second call on.

    Queries that callbacks repeat every epoch (:meth:`ActivationQuantizer.kif`, :meth:`WeightQuantizer.exact_bits`,
    hence the exact EBOPs) read a few dozen small tensors: run eagerly, each operation costs more than its
    arithmetic, a sizeable share of an epoch of a small model. The graph runs the same CPU kernels as eager
    execution (no XLA), so its values are the same (``tests/test_speed_paths.py`` compares them). Under JAX and
    PyTorch ``fn`` always runs as is.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls = 0
        self.graph: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        if self.calls == 1 or keras.backend.backend() != 'tensorflow':
            return self.fn(*args)
        if self.graph is None:
            import tensorflow as tf

            # A partial, not the method: TensorFlow counts traces per code object, and one trace per quantizer
            # would add up to "frequent retracing" warnings in a model with many of them.
            self.graph = tf.function(functools.partial(self.fn), autograph=False, reduce_retracing=True)
        return self.graph(*args)


def _round_codes_ste(round_mode: str):
    def round_fn(y: Any) -> Any:
        return straight_through(round_codes(y, round_mode, ops), y)

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


class ScaledStep(keras.constraints.Constraint):
    """Move a bitwidth variable by ``scale`` times each optimizer step of its step variable, then reset the step.

    A trainable bitwidth learns through a companion *step* variable, zero between training steps: the forward
    pass uses the bitwidth's value but sends its gradient to the step (:meth:`ActivationQuantizer.f_int`), so the
    optimizer moves the step exactly as it would move the bitwidth. Keras applies this constraint to the step
    right after each optimizer update: the bitwidth moves by ``scale`` times the step, and the step returns to 0.
    That gives the bitwidths a learning rate of their own whatever the optimizer (with Adam, which moves every
    variable by about the learning rate per step however large its gradient, it is the only way to make one
    variable learn faster).

    Nothing from before the update is needed, so the same happens on every backend: in place under TensorFlow
    and PyTorch, and inside Keras's stateless training step under JAX (the bitwidth is a trainable variable with
    a zero gradient, so that the step hands its new value back). Under JAX the scale is read when the training
    step is compiled: after :meth:`set_scale`, make it again (``model.make_train_function(force=True)``;
    :class:`hgq.callbacks.SettleBits` does).

    Parameters
    ----------
    variable : keras.Variable
        The bitwidth variable that the steps move.
    scale : float
        Factor applied to each step (>= 0).

    Examples
    --------
    >>> import keras
    >>> f = keras.Variable(1.0)
    >>> constraint = ScaledStep(f, 4.0)
    >>> step = keras.Variable(0.5)  # where an optimizer update took the step
    >>> float(constraint(step)), float(f.numpy())
    (0.0, 3.0)
    """

    def __init__(self, variable: Any, scale: float) -> None:
        # A variable, so that TensorFlow and PyTorch read the current pace (set_scale) without retracing; an
        # initializer, not a value, so that it can also be created while Keras traces a model to build it. Not a
        # layer weight: it is neither saved nor listed among the layer's weights.
        self.scale = keras.Variable(
            keras.initializers.Constant(float(scale)),
            shape=(),
            trainable=False,
            dtype=variable.dtype,
            name=f'{variable.name}_pace',
        )
        self.variable = variable

    def set_scale(self, scale: float) -> None:
        """Scale the next optimizer steps by ``scale`` instead (0 holds the variable where it is)."""
        if not (scale >= 0 and np.isfinite(scale)):
            raise ValueError(f'{self.variable.name}: the step scale must be a finite number >= 0, got {scale}')
        self.scale.assign(float(scale))

    def __call__(self, step: Any) -> Any:
        self.variable.assign(self.variable + self.scale * step)
        return ops.zeros(step.shape, dtype=step.dtype)

    def get_config(self) -> dict[str, Any]:
        return {'scale': float(ops.convert_to_numpy(self.scale))}


class _FixedPointQuantizerBase(keras.layers.Layer):
    """Shared bookkeeping: granularity, rounding mode, bitwidth L1, bit learning rate and the integer view of ``f``."""

    def __init__(
        self,
        granularity: str = 'element',
        round_mode: str = 'RND',
        channel_axis: int = -1,
        bits_l1: float = 0.0,
        bits_lr_scale: float = BITS_LR_SCALE,
        bits_decay: float = BITS_DECAY,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if granularity not in GRANULARITIES:
            raise ValueError(f'{self.name}: granularity must be one of {GRANULARITIES}, got {granularity!r}')
        if round_mode not in ROUND_MODES:
            raise ValueError(f'{self.name}: round_mode must be one of {ROUND_MODES}, got {round_mode!r}')
        if bits_l1 < 0:
            raise ValueError(f'{self.name}: bits_l1 must be >= 0, got {bits_l1}')
        if not (bits_lr_scale > 0 and np.isfinite(bits_lr_scale)):
            raise ValueError(f'{self.name}: bits_lr_scale must be a finite number > 0, got {bits_lr_scale}')
        if not (bits_decay >= 0 and np.isfinite(bits_decay)):
            raise ValueError(f'{self.name}: bits_decay must be a finite number >= 0, got {bits_decay}')
        self.granularity = granularity
        self.round_mode = round_mode
        self.channel_axis = int(channel_axis)
        self.bits_l1 = float(bits_l1)
        self.bits_lr_scale = float(bits_lr_scale)
        self.bits_decay = float(bits_decay)
        self.shape: tuple[int, ...] | None = None
        # id of a trainable bitwidth variable -> its step variable (see ScaledStep)
        self._steps: dict[int, Any] = {}

    def _add_bits_variable(
        self, name: str, shape: tuple[int, ...], value: float | Callable[..., Any], trainable: bool = True
    ) -> Any:
        """A bitwidth variable (initial value or initializer) whose optimizer steps are scaled by ``bits_lr_scale``.

        A trainable one gets a step variable ``<name>_step`` (see :class:`ScaledStep`), which is not saved.
        """
        initializer = value if callable(value) else keras.initializers.Constant(value)
        variable = self.add_weight(name=name, shape=shape, initializer=initializer, trainable=trainable)
        if trainable:
            step = self.add_weight(name=f'{name}_step', shape=shape, initializer='zeros', trainable=True)
            step.constraint = ScaledStep(variable, self.bits_lr_scale)
            self._steps[id(variable)] = step
        return variable

    @property
    def _scaled_steps(self) -> list[ScaledStep]:
        """The constraints of the step variables, one per trainable bitwidth, in creation order."""
        return [step.constraint for step in self._steps.values()]

    def _learned(self, variable: Any) -> Any:
        """``variable``'s value, its gradient sent to its step variable (see :class:`ScaledStep`) if it has one.

        The bitwidth itself gets a zero gradient (not none), so that every optimizer keeps it among the variables
        it updates (by 0) and hands back.
        """
        step = self._steps.get(id(variable))
        if step is None:
            return variable
        return ops.stop_gradient(variable) + 0.0 * variable + (step - ops.stop_gradient(step))

    def _saved_variables(self) -> list[Any]:
        """The variables a saved model holds: all but the step variables (zero between training steps)."""
        steps = {id(step) for step in self._steps.values()}
        return [variable for variable in self.weights if id(variable) not in steps]

    def save_own_variables(self, store: Any) -> None:
        # The layout of models saved before step variables existed, so that files load in either version.
        for n, variable in enumerate(self._saved_variables()):
            store[str(n)] = variable

    def load_own_variables(self, store: Any) -> None:
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f'{self.name}: the saved quantizer holds {len(store.keys())} variables, expected {len(variables)} '
                f'({[variable.name for variable in variables]}); was it saved with other quantizer settings?'
            )
        for n, variable in enumerate(variables):
            variable.assign(store[str(n)])
        for step in self._steps.values():
            step.assign(ops.zeros(step.shape, dtype=step.dtype))

    def set_bits_pace(self, factor: float) -> None:
        """Move the bitwidths at ``factor`` times ``bits_lr_scale`` from the next optimizer step on.

        ``factor=0`` freezes every bitwidth of this quantizer (the weights keep learning), ``1`` restores the
        configured pace; used by :class:`hgq.callbacks.SettleBits`. ``bits_lr_scale`` and the saved config keep
        the configured value. Under JAX a compiled training step keeps the pace it was compiled with: call
        ``model.make_train_function(force=True)`` after changing it (SettleBits does).

        Examples
        --------
        >>> q = ActivationQuantizer()
        >>> q.build((None, 4))
        >>> q.set_bits_pace(0.0)
        """
        if not (factor >= 0 and np.isfinite(factor)):
            raise ValueError(f'{self.name}: the bit pace factor must be a finite number >= 0, got {factor}')
        for step in self._scaled_steps:
            step.set_scale(self.bits_lr_scale * factor)

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
        return round_ste(self._learned(self.f))

    def _add_bits_l1(self, bits: Any) -> None:
        if self.bits_l1 > 0:
            self.add_loss(self.bits_l1 * ops.sum(bits))

    def _add_bits_decay(self, training: bool | None) -> None:
        """Training: add ``bits_decay * sum(max(b, 0))`` over the learned bitwidth variables ``b`` to the losses.

        Without a cost (``beta = 0``) nothing else pulls a bitwidth down: a value already exact at fewer bits gives
        its extra bits no gradient at all, and the small gain of each further bit lets them grow for as long as the
        model trains. Adam scales steps by the gradient's own size, so this tiny, constant gradient moves a bit that
        the loss has no use for at a fair share of the bit pace (with Keras's ``epsilon=1e-7``, up to a tenth),
        while any gradient from the loss or from ``beta * EBOPs`` (at least ~1e-7 per bit for ``beta >= 1e-7``)
        outweighs it. It stops at 0 (``max``): it trims needless precision, pruning is left to ``beta``.
        """
        if training and self.bits_decay > 0 and self._scaled_steps:
            pulls = [ops.sum(ops.relu(self._learned(step.variable))) for step in self._scaled_steps]
            self.add_loss(self.bits_decay * sum(pulls[1:], pulls[0]))

    def _full(self, array: np.ndarray) -> np.ndarray:
        return np.broadcast_to(np.asarray(array), self.shape).copy()

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            granularity=self.granularity,
            round_mode=self.round_mode,
            channel_axis=self.channel_axis,
            bits_l1=self.bits_l1,
            bits_lr_scale=self.bits_lr_scale,
            bits_decay=self.bits_decay,
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
    i_init : float, optional
        WRAP mode: ``None`` (default) starts the tracked range at the range of the first training batch, so that
        EBOPs logged from the first epochs are close to calibrated ones; a number starts it at
        ``[-2**i_init, 2**i_init]``. Before any training (or calibration) the range is ``[-2**4, 2**4]``.
        SAT modes: initial value of the learned integer bits (``None``: 4).
    signed : bool
        Sign bit in SAT modes (WRAP mode takes the sign from the data).
    momentum : float
        WRAP mode: how slowly the tracked range shrinks towards the range of the current batch (per step).
    bits_l1 : float
        Weight of an L1 penalty on the bitwidths (added to the model's losses).
    f_trainable : bool
        Whether ``f`` is learned.
    bits_lr_scale : float
        Learning-rate factor of the bitwidth variables ``f`` (and ``i`` in SAT modes): every optimizer step of
        them is multiplied by it (see :class:`ScaledStep`). Adam moves a variable by about the learning rate per
        step whatever the size of its gradient, so without it bits shrink at a fixed pace and raising ``beta``
        beyond some value changes little. Default :data:`BITS_LR_SCALE`.
    bits_decay : float
        Weight of a pull of every learned bitwidth variable towards 0, ``bits_decay * sum(max(f, 0))`` added to
        the losses in training (default :data:`BITS_DECAY`, 1e-8; 0 turns it off). Without ``beta`` nothing else
        takes back a bit the loss has no use for (an input already exact at 4 fractional bits keeps its initial
        6, and bits that help a little keep growing), so ``beta = 0`` models would be wider than they need; for
        ``beta >= 1e-7`` the EBOPs gradient outweighs it.

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
        i_init: float | None = None,
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
        self.i_init = None if i_init is None else float(i_init)
        self.signed = bool(signed)
        self.momentum = float(momentum)
        self.f_trainable = bool(f_trainable)
        i0 = UNTRAINED_INTEGER_BITS if self.i_init is None else self.i_init
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
        i0 = UNTRAINED_INTEGER_BITS if self.i_init is None else self.i_init
        self.f = self._add_bits_variable('f', var_shape, self.f_init, trainable=self.f_trainable)
        if self.tracks_range:
            bound = 2.0**i0
            self.vmin = self.add_weight(name='vmin', shape=var_shape, initializer=init(-bound), trainable=False)
            self.vmax = self.add_weight(name='vmax', shape=var_shape, initializer=init(bound), trainable=False)
            # 1 after hgq.calibrate set the range from data, 0 again once training moves it (stale calibration).
            self.calibrated = self.add_weight(name='calibrated', shape=(), initializer=init(0.0), trainable=False)
            # 0 until the range has been set from data (first training batch or set_range), when i_init is None.
            started = 0.0 if self.i_init is None else 1.0
            self.range_started = self.add_weight(
                name='range_started', shape=(), initializer=init(started), trainable=False
            )
            # Largest magnitude of the range tracked in training (huge before training: nothing is pruned).
            self.train_peak = self.add_weight(
                name='train_peak', shape=var_shape, initializer=init(UNTRAINED_PEAK), trainable=False
            )
        else:
            self.i = self._add_bits_variable('i', var_shape, i0)
        super().build(input_shape)

    def _pruned(self, f_int: Any) -> Any:
        """WRAP mode: True where every value seen in training is smaller in magnitude than one step ``2**-f``.

        Decided on ``train_peak``, the largest magnitude of the range tracked in training: :meth:`set_range`
        (calibration) leaves it alone, so that calibration observes the model with the same pruned elements as
        training and inference use.
        """
        return self.train_peak * 2.0**f_int < 1.0

    def _tracked_ki(self, f_int: Any) -> tuple[Any, Any]:
        """Sign and integer bits that hold the tracked range ``[vmin, vmax]`` after rounding with ``f_int``.

        An element whose every value seen in training is below one step (:meth:`_pruned`) gets width 0
        (``k = 0, i = -f``): it is always exactly 0, even where a value would round up to one step. So one step of
        ``f`` takes an element from 1 bit to 0 bits, instead of passing through a 1-bit format that only holds
        ``0`` and ``2**-f``.
        """
        scale = 2.0**f_int
        qmax = ops.maximum(round_codes(self.vmax * scale, self.round_mode, ops), 0.0) / scale
        qmin = ops.minimum(round_codes(self.vmin * scale, self.round_mode, ops), 0.0) / scale
        k = ops.cast(qmin < 0, self.f.dtype)
        i_pos = _ceil_log2(qmax + 1.0 / scale)
        i_neg = ops.where(qmin < 0, _ceil_log2(ops.maximum(-qmin, 1e-30)), i_pos)
        pruned = self._pruned(f_int)
        return ops.where(pruned, 0.0, k), ops.where(pruned, -f_int, ops.maximum(i_pos, i_neg))

    def ki(self) -> tuple[Any, Any]:
        """Sign bit and integer bits as tensors (shape of the bitwidth variables); no gradient in WRAP mode."""
        if self.tracks_range:
            k, i = self._tracked_ki(ops.floor(self.f + 0.5))
            return k, ops.stop_gradient(i)
        return ops.full(self.f.shape, float(self.signed), dtype=self.f.dtype), round_ste(self._learned(self.i))

    def bits(self) -> Any:
        """Differentiable width ``relu(k + i + f)``, broadcast to the per-sample tensor shape."""
        k, i = self.ki()
        return ops.broadcast_to(ops.relu(k + i + self.f_int), self.shape)

    @functools.cached_property
    def _ki_query(self) -> _RepeatedQuery:
        return _RepeatedQuery(self.ki)

    def kif(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Integer ``(k, i, f)`` arrays of the per-sample tensor shape, as the hardware will use them."""
        k, i = self._ki_query()
        f = np.floor(ops.convert_to_numpy(self.f) + 0.5)
        k, i = ops.convert_to_numpy(k), ops.convert_to_numpy(i)
        return tuple(self._full(a).astype(np.int64) for a in (k, i, f))

    def call(self, x: Any, training: bool | None = None) -> Any:
        self._check_input(x, batch=True)
        if self.observer is not None:
            self.observer(self, x)
        f = self.f_int
        if self.tracks_range and training:
            pruned = self._pruned(f)  # before this batch moves the range: the elements inference prunes now
            self._track(x)
            q = self._train_wrap(x, f, pruned)
        else:
            k, i = self.ki()
            q = quantize_tensor(x, k, i, f, self.round_mode, self.overflow_mode, _round_codes_ste(self.round_mode))
        if self.bits_l1 > 0:
            self._add_bits_l1(self.bits())
        self._add_bits_decay(training)
        return q

    def _train_wrap(self, x: Any, f: Any, pruned: Any) -> Any:
        """WRAP-mode training forward: rounding only (nothing wraps inside the tracked range); pruned elements are 0.

        ``pruned`` is decided on the range tracked before this batch, as inference decides it: decided after the
        batch widened the range, an element that only a rare large value keeps alive would be alive in every
        step that sees such a value and pruned in the inference model of the same weights (on digits at a large
        ``beta``, 0.93 accuracy in training against 0.79 in inference). A pruned element outputs exactly 0, as
        at inference, and passes no gradient to ``x``; ``f`` still gets the gradient it would get unpruned, so an
        element whose loss of information hurts can grow back.
        """
        # One rounding for both kinds of element (the gradient of each bitwidth comes from its own elements only,
        # as every pruned mask is constant over the elements that share one bitwidth).
        pruned = ops.stop_gradient(pruned)
        x = ops.where(pruned, ops.stop_gradient(x), x)
        scale = 2.0**f
        q = _round_codes_ste(self.round_mode)(x * scale) / scale
        return q - ops.stop_gradient(ops.where(pruned, q, 0.0))

    def _track(self, x: Any) -> None:
        """Move the tracked range towards the range of this training batch (the whole batch over all replicas)."""
        axes = _reduce_axes(self.shape, self.vmax.shape, batch=True)
        # One exchange between data-parallel replicas for both ends: the minimum is the maximum of -x.
        extremes = max_over_replicas(ops.stack([ops.max(x, axis=axes), -ops.min(x, axis=axes)]))
        batch_max = ops.reshape(extremes[0], self.vmax.shape)
        batch_min = ops.reshape(-extremes[1], self.vmin.shape)
        m = self.momentum * self.range_started  # the first batch sets the range when it has not started yet
        self.vmax.assign(ops.maximum(batch_max, m * self.vmax + (1 - m) * batch_max))
        self.vmin.assign(ops.minimum(batch_min, m * self.vmin + (1 - m) * batch_min))
        self.calibrated.assign(0.0)
        self.range_started.assign(1.0)
        self.train_peak.assign(ops.maximum(self.vmax, -self.vmin))

    def set_range(self, vmin: Any, vmax: Any) -> None:
        """Set the tracked range exactly (WRAP mode); used by :func:`hgq.calibrate`."""
        if not self.tracks_range:
            raise ValueError(f'{self.name}: set_range applies to WRAP mode only (overflow_mode={self.overflow_mode})')
        self.vmin.assign(ops.cast(ops.broadcast_to(vmin, self.vmin.shape), self.vmin.dtype))
        self.vmax.assign(ops.cast(ops.broadcast_to(vmax, self.vmax.shape), self.vmax.dtype))
        self.range_started.assign(1.0)

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
    bits_lr_scale : float
        Learning-rate factor of ``f`` (see :class:`ActivationQuantizer`). Default :data:`BITS_LR_SCALE`.
    bits_decay : float
        Pull of ``f`` towards 0 in training (see :class:`ActivationQuantizer`). Default :data:`BITS_DECAY`.

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
        self.f = self._add_bits_variable('f', var_shape, self._initial_f, trainable=self.f_trainable)
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
        with float64_scope():
            w = ops.cast(weights, 'float64')
            if self.granularity == 'channel':
                axes = _reduce_axes(self.shape, shape, batch=False)
            else:
                axes = tuple(range(len(self.shape)))
            rms = ops.sqrt(ops.mean(ops.square(w), axis=axes, keepdims=True)) if axes else ops.abs(w)
            rms = ops.where(rms > 0, rms, 1.0)
            # Whole numbers: exact in float32, which every caller casts them to.
            return ops.cast(ops.broadcast_to(ops.ceil(self.init_bits - 1 - ops.log2(rms)), shape), 'float32')

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

    def call(self, w: Any, training: bool | None = None) -> Any:
        self._check_input(w, batch=False)
        f = self.f_int
        scale = 2.0**f
        q = _round_codes_ste(self.round_mode)(w * scale) / scale
        if training and self.bits_l1 > 0:
            self._add_bits_l1(self.bits(w))
        self._add_bits_decay(training)
        return q

    def bits(self, w: Any) -> Any:
        """Differentiable effective bits of each weight: ``msb + 1 + f`` for nonzero quantized weights, else 0.

        The most significant bit position is taken from the quantized value without gradient; the gradient
        flows to ``f``.
        """
        return self.bits_of(self(w, training=False))  # the step's forward pass already marked the bitwidths

    def bits_of(self, q: Any) -> Any:
        """:meth:`bits` of weights this quantizer already quantized (``q = self(w)``), without quantizing again.

        The training forward pass of a layer passes the kernel it just quantized, so that the EBOPs of the step
        reuse it. ``q`` passes no gradient here (only its zeros and most significant bits are read).

        Examples
        --------
        >>> import numpy as np
        >>> q = WeightQuantizer(f_init=2)
        >>> q.build((3,))
        >>> q.bits_of(q(np.array([0.3, 1.0, 0.1], dtype='float32'))).numpy().tolist()
        [1.0, 3.0, 0.0]
        """
        nonzero = ops.not_equal(q, 0.0)
        msb = ops.stop_gradient(ops.floor(ops.log2(ops.where(nonzero, ops.abs(q), 1.0))))
        return ops.where(nonzero, ops.relu(msb + 1.0 + self.f_int), 0.0)

    def exact_bits(self, w: Any) -> np.ndarray:
        """Effective bits from the quantized values: MSB-to-LSB span of each ``|q|`` (0 where ``q == 0``)."""
        if not self.built:
            self.build(tuple(w.shape))
        w = ops.convert_to_tensor(w, dtype=self.compute_dtype)  # as Keras casts the inputs of a layer call
        q = np.abs(np.asarray(ops.convert_to_numpy(self._quantize_query(w)), dtype=np.float64))
        return effective_bits(q)

    @functools.cached_property
    def _quantize_query(self) -> _RepeatedQuery:
        return _RepeatedQuery(self.call)

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
