"""``allocate``: fixed bitwidths for a trained model in seconds, chosen by HAWQ-V3, OMPQ or cluster dynamic fixed
point, under an exact EBOPs budget.

Every Dense/Conv layer (an :class:`~hgq.layers.HKernelLayer`) gets

- an input format: ``act_bits`` bits for the largest input element; all elements share the fractional bits ``f``,
  each keeps the integer bits that :func:`hgq.calibrate` finds for it (so inputs that are always 0 cost nothing);
- a weight format per tensor, per output channel, or (``cluster``) per cluster of output channels: ``bits``-bit
  symmetric fixed point with a power-of-two scale (dynamic fixed point), codes in ``+-(2**(bits-1) - 1)``.

The EBOPs of every option are computed exactly from the quantized weights and the calibrated input ranges, so the
choice is an integer program (:func:`hgq.allocate.numerics.solve_allocation`); after the chosen model is built and
calibrated, its EBOPs are measured with :func:`hgq.ebops` and the program is solved again with a tighter budget
until the model is within the budget (input ranges move a little once the upstream layers are quantized).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.allocate import numerics as nm
from hgq.allocate import sensitivity
from hgq.calibrate import OPEN_RANGE_BITS, calibrate
from hgq.ebops import ebops, h_layers
from hgq.fixed_point import float32_exact
from hgq.from_keras import from_keras
from hgq.layers import (
    HBatchNormalization,
    HConv1DBatchNorm,
    HConv2DBatchNorm,
    HDenseBatchNorm,
    HKernelLayer,
    HLayer,
    HQuantize,
)
from hgq.layers.pooling import HGlobalAveragePooling, HPooling
from hgq.quantizer import effective_bits

__all__ = ['METHODS', 'allocate', 'InfeasibleBudgetError']

InfeasibleBudgetError = nm.InfeasibleBudgetError

METHODS = ('hawq_v3', 'ompq', 'cluster')
DEFAULT_BITS = {'hawq_v3': (2, 3, 4, 5, 6, 8), 'ompq': (2, 3, 4, 5, 6, 8), 'cluster': (2, 4)}
DEFAULT_ACT_BITS = {'hawq_v3': (2, 3, 4, 5, 6, 8), 'ompq': (2, 3, 4, 5, 6, 8), 'cluster': (8,)}
WIDE_F = 16  # fractional bits of the near-float model that measures ranges and sensitivities
XLA_MIN_VALUES = 2**22  # calibration data of at least this many values is observed in an XLA-compiled pass
MAX_ATTEMPTS = 12
_RANGE_LAYERS = (HQuantize, HPooling, HGlobalAveragePooling, HBatchNormalization)
# kernel layers with a batch normalization fused in: their kernel is a product, so it cannot be clipped to a format
_FUSED_BATCHNORM = (HDenseBatchNorm, HConv1DBatchNorm, HConv2DBatchNorm)


@dataclass
class _Unit:
    """One Dense/Conv layer and its options."""

    layer: HKernelLayer
    kernel: np.ndarray  # float kernel (float64 of the float32 values the quantizer sees)
    act_f: np.ndarray  # (A,) input fractional bits of each activation option
    weight_f: np.ndarray  # (W, C) fractional bits of each channel for each weight option
    bits: tuple[int, ...]  # weight options
    options: nm.LayerOptions | None = None
    penalties: tuple[np.ndarray, np.ndarray] | None = None  # (C, W) weight and (A,) activation penalties


def _check_args(model, x, method, budget_ebops, bits, act_bits, granularity, cluster_size, finetune_epochs, y):
    if method not in METHODS:
        raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    if granularity not in ('tensor', 'channel'):
        raise ValueError(f"granularity must be 'tensor' or 'channel', got {granularity!r}")
    for name, values in (('bits', bits), ('act_bits', act_bits)):
        if not values or any(int(b) != b or not 1 <= b <= 16 for b in values):
            raise ValueError(f'{name} must be a non-empty sequence of integers in 1..16, got {values!r}')
    if budget_ebops is not None and not budget_ebops > 0:
        raise ValueError(f'budget_ebops must be > 0, got {budget_ebops}')
    if budget_ebops is None and method != 'cluster':
        raise ValueError(f'method {method!r} needs budget_ebops (the EBOPs the result may use)')
    if int(cluster_size) != cluster_size or cluster_size < 1:
        raise ValueError(f'cluster_size must be a positive int, got {cluster_size!r}')
    if finetune_epochs < 0:
        raise ValueError(f'finetune_epochs must be >= 0, got {finetune_epochs}')
    if finetune_epochs and y is None:
        raise ValueError('finetune_epochs > 0 needs the targets y')
    if not isinstance(model, keras.Model) or not model.built or len(model.inputs) != 1:
        raise ValueError(f'allocate expects a built keras.Model with one input, got {model!r}')
    expected = tuple(model.inputs[0].shape[1:])
    if np.ndim(x) < 1 or tuple(np.shape(x)[1:]) != expected:
        raise ValueError(f'x: expected samples of shape {expected}, got an array of shape {np.shape(x)}')
    if y is not None and len(y) != len(x):
        raise ValueError(f'y has {len(y)} samples, x has {len(x)}')


# -- the allocation model ------------------------------------------------------------------------------------------


def _specs(weight_granularity: str) -> tuple[dict[str, Any], dict[str, Any]]:
    act = {'granularity': 'element', 'overflow_mode': 'WRAP', 'f_init': WIDE_F, 'f_trainable': False}
    weight = {'granularity': weight_granularity, 'f_init': WIDE_F, 'f_trainable': False}
    return act, weight


def _rebuild(model: keras.Model, weight_granularity: str) -> keras.Model:
    """A copy of an H-model with frozen quantizers of the allocation's granularities and the same weights."""
    act, weight = _specs(weight_granularity)
    config = model.get_config()
    by_name = {layer.name: layer for layer in model.layers}
    for entry in config['layers']:
        layer = by_name.get(entry['config'].get('name'))
        if isinstance(layer, HKernelLayer):
            entry['config'].update(input_quantizer=act, kernel_quantizer=weight, bias_quantizer=weight)
        elif isinstance(layer, HBatchNormalization):
            channel = {**weight, 'granularity': 'channel'}
            entry['config'].update(input_quantizer=act, scale_quantizer=channel, offset_quantizer=channel)
        elif isinstance(layer, _RANGE_LAYERS):
            entry['config'].update(input_quantizer=act)
    copy = type(model).from_config(config)
    for layer in copy.layers:
        old = by_name[layer.name]
        for attr in ('kernel', 'bias', 'gamma', 'offset', 'moving_mean', 'moving_variance'):
            if hasattr(layer, attr) and hasattr(old, attr):
                getattr(layer, attr).assign(getattr(old, attr))
    return copy


def _allocation_model(model: keras.Model, weight_granularity: str) -> keras.Model:
    if any(isinstance(layer, HLayer) for layer in model.layers):
        return _rebuild(model, weight_granularity)
    act, weight = _specs(weight_granularity)
    return from_keras(model, input_quantizer=act, kernel_quantizer=weight, bias_quantizer=weight)


def _assign(variable: Any, value: Any) -> None:
    variable.assign(np.broadcast_to(np.asarray(value, dtype=np.float64), variable.shape).astype(variable.dtype))


class _InputRanges:
    """Sets the ranges of the WRAP input quantizers of a model's single-input H-layers from ``x``, on demand.

    What :func:`hgq.calibrate` observes (every quantizer input in inference mode, all ranges open), without its
    float32 exactness check: the wide formats that measure the float model's ranges are not exact in float32, and
    the attempts of the budget loop only need the EBOPs. The returned model is then calibrated with
    :func:`hgq.calibrate` itself.

    The pass is compiled once and re-run after every change of formats (the formats are variables the compiled
    function reads). Every batch has one shape (the last is filled up with its own first rows, which leaves the
    minimum and maximum unchanged), so the function is traced once; when ``x`` holds at least
    :data:`XLA_MIN_VALUES` values (or with ``xla=True``) it is compiled with XLA, which fuses the element-wise
    quantizer arithmetic (4-7x less CPU per pass on 60,000 Fashion-MNIST images, for about 1 CPU second of
    compiling).

    A pass of its own rather than :func:`hgq.calibrate`'s: that one observes through a hook in every WRAP quantizer
    of any model (nested, subclassed, several inputs), checks every value against the open range, and runs as a
    plain graph with a free batch axis, since it is called often on small data (each checkpoint of ``hgq run``,
    each fine-tuning epoch here) where XLA's compile time would not pay. This one reads the layers' inputs as the
    outputs of a functional probe model, which one fixed batch shape lets XLA compile.
    """

    def __init__(self, model: keras.Model, x: np.ndarray, batch_size: int = 4096, xla: bool | None = None) -> None:
        self.layers = [
            layer
            for layer in h_layers(model)
            if len(layer.activation_quantizers) == 1 and layer.input_quantizer.tracks_range
        ]
        self.x = x
        self.batch_size = min(len(x), batch_size)
        probe = keras.Model(model.inputs, [layer.input for layer in self.layers])

        def extremes(batch: Any) -> tuple[list[Any], list[Any]]:
            values = probe([batch], training=False)
            values = values if isinstance(values, list | tuple) else [values]
            return [ops.min(v, axis=0) for v in values], [ops.max(v, axis=0) for v in values]

        self._extremes = _compiled(extremes, xla=x.size >= XLA_MIN_VALUES if xla is None else xla)

    def _batches(self):
        for start in range(0, len(self.x), self.batch_size):
            batch = self.x[start : start + self.batch_size]
            if len(batch) < self.batch_size:
                batch = np.concatenate([batch, batch[np.arange(self.batch_size - len(batch)) % len(batch)]])
            yield batch

    def observe(self) -> None:
        """Observe the ranges with the current formats and set them."""
        for layer in self.layers:
            layer.input_quantizer.set_range(-(2.0**OPEN_RANGE_BITS), 2.0**OPEN_RANGE_BITS)
        low: list[np.ndarray] = []
        high: list[np.ndarray] = []
        for batch in self._batches():
            mins, maxs = (list(map(ops.convert_to_numpy, v)) for v in self._extremes(batch))
            low = mins if not low else [np.minimum(a, b) for a, b in zip(low, mins, strict=True)]
            high = maxs if not high else [np.maximum(a, b) for a, b in zip(high, maxs, strict=True)]
        for layer, lo, hi in zip(self.layers, low, high, strict=True):
            if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
                raise ValueError(f'{layer.name}: its inputs hold non-finite values on x; check the data and the model')
            layer.input_quantizer.set_range(lo, hi)


def _compiled(fn: Any, xla: bool) -> Any:
    """``fn`` as a TensorFlow graph (XLA-compiled with ``xla``; plain graph where XLA refuses it), eager elsewhere."""
    if keras.backend.backend() != 'tensorflow':
        return fn
    import tensorflow as tf

    graph = tf.function(fn, reduce_retracing=True)
    if not xla:
        return graph
    fused = tf.function(fn, jit_compile=True, reduce_retracing=True)
    chosen = []

    def call(*args: Any) -> Any:
        if chosen:
            return chosen[0](*args)
        try:
            result = fused(*args)
            chosen.append(fused)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):  # an operation XLA cannot compile
            result = graph(*args)
            chosen.append(graph)
        return result

    return call


def _max_int_bits(quantizer) -> int:
    """Largest ``k + i`` of the elements of a calibrated input quantizer (at its current ``f``)."""
    k, i, _ = quantizer.kif()
    return int(np.max(k + i))


# -- options -------------------------------------------------------------------------------------------------------


def _channel_groups(n_channels: int, method: str, granularity: str, cluster_size: int) -> list[np.ndarray]:
    if method == 'cluster':
        return [np.arange(s, min(s + cluster_size, n_channels)) for s in range(0, n_channels, cluster_size)]
    if granularity == 'channel':
        return [np.array([c]) for c in range(n_channels)]
    return [np.arange(n_channels)]


def _weight_formats(kernel: np.ndarray, bits: Sequence[int], groups: list[np.ndarray], scale: str) -> np.ndarray:
    """``(W, C)`` fractional bits: one power-of-two format per group of channels for every weight option."""
    axes = tuple(range(kernel.ndim))
    f = np.zeros((len(bits), kernel.shape[-1]))
    for n, b in enumerate(bits):
        for group in groups:
            f[n, group] = nm.weight_fractional_bits(kernel[..., group], b, axes, scale).item()
    return f


def _bits_in(layer: HKernelLayer, f: float) -> np.ndarray:
    quantizer = layer.input_quantizer
    _assign(quantizer.f, f)
    return layer.input_bits_exact().astype(np.float64)


def _channel_ebops(layer: HKernelLayer, bits_in: np.ndarray, bits_kernel: np.ndarray) -> np.ndarray:
    """EBOPs of every output channel (the sum is :meth:`HKernelLayer.exact_ebops` for these bit maps)."""
    products = ops.convert_to_numpy(layer.apply_kernel(bits_in[None], bits_kernel.astype(np.float64)))
    return np.sum(products.reshape(-1, products.shape[-1]), axis=0, dtype=np.float64) * layer.ebops_scale()


def _make_unit(layer: HKernelLayer, bits, act_bits, method: str, granularity: str, cluster_size: int) -> _Unit:
    kernel = np.asarray(ops.convert_to_numpy(layer.float_kernel_and_bias()[0]), dtype=np.float64)
    groups = _channel_groups(kernel.shape[-1], method, granularity, cluster_size)
    # least-squares scales need clipping, which only a plain kernel variable allows (not a batch-norm fusion)
    weight_f = _weight_formats(kernel, bits, groups, 'max' if isinstance(layer, _FUSED_BATCHNORM) else 'mse')
    top = _max_int_bits(layer.input_quantizer)
    act_f = np.array([b - top for b in act_bits], dtype=np.float64)
    return _Unit(layer, kernel, act_f, weight_f, tuple(bits))


def _quantized_kernels(unit: _Unit, bits: Sequence[int]) -> list[np.ndarray]:
    return [nm.quantize_weights(unit.kernel, b, f) for b, f in zip(bits, unit.weight_f, strict=True)]


def _channel_bound(layer: HKernelLayer, max_in: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Largest possible magnitude of the sum of products of every output channel."""
    products = ops.convert_to_numpy(layer.apply_kernel(max_in[None], np.abs(kernel)))
    return np.max(products.reshape(-1, products.shape[-1]), axis=0)


def _costs(unit: _Unit, bits: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(A, C, W)`` EBOPs of every channel for every activation and weight option, and whether the option is
    exact in float32 (Keras) with a bias of the accumulator's resolution (the rule of :mod:`hgq.exactness`)."""
    layer = unit.layer
    kernels = _quantized_kernels(unit, bits)
    kernel_bits = [effective_bits(q) for q in kernels]
    bias = layer.float_kernel_and_bias()[1]
    bias = 0.0 if bias is None else np.abs(np.asarray(ops.convert_to_numpy(bias), dtype=np.float64)) + 1.0
    f_before = ops.convert_to_numpy(layer.input_quantizer.f).copy()
    cost, allowed = [], []
    for f in unit.act_f:
        bits_in = _bits_in(layer, f)
        _, i, _ = layer.input_quantizer.kif()
        max_in = np.where(bits_in > 0, 2.0**i, 0.0)
        cost.append(np.stack([_channel_ebops(layer, bits_in, kb) for kb in kernel_bits], axis=-1))
        bounds = [_channel_bound(layer, max_in, q) + bias for q in kernels]
        allowed.append(np.stack([float32_exact(b, f + wf) for b, wf in zip(bounds, unit.weight_f, strict=True)], -1))
    _assign(layer.input_quantizer.f, f_before)
    return np.stack(cost), np.stack(allowed)


def _perturbations(unit: _Unit, bits: Sequence[int]) -> np.ndarray:
    """``(C, W)`` squared weight error of every channel for every weight option."""
    axes = tuple(range(unit.kernel.ndim - 1))
    return np.stack([nm.squared_error(unit.kernel, q, axes) for q in _quantized_kernels(unit, bits)], axis=-1)


def _merges_channels(granularity: str, method: str) -> bool:
    """Whether all channels of a layer take one option (a weight format per tensor)."""
    return granularity == 'tensor' and method != 'cluster'


def _to_channels(per_channel: np.ndarray, granularity: str, method: str) -> np.ndarray:
    """Merge the channel axis into one when the weight format is per tensor (``(C, W)`` -> ``(1, W)``)."""
    if _merges_channels(granularity, method):
        return per_channel.sum(axis=0, keepdims=True)
    return per_channel


# -- penalties of the three methods --------------------------------------------------------------------------------


def _hawq_penalties(model, units, bits, loss, x, y, n_probes, seed) -> list[tuple[np.ndarray, np.ndarray]]:
    """HAWQ-V3: ``Tr(H)/n * ||Q(W) - W||^2 / 2`` per weight option; measured loss increase per input option."""
    probe = sensitivity.LossProbe(model, loss, x, y, [u.layer.kernel for u in units])
    diagonals = probe.hessian_diagonals(n_probes, seed)
    base = probe.loss()
    penalties = []
    for unit, diag in zip(units, diagonals, strict=True):
        if isinstance(unit.layer, _FUSED_BATCHNORM):  # the Hessian is w.r.t. the kernel before the factor
            factor = np.asarray(ops.convert_to_numpy(unit.layer.normalization()[0]), dtype=np.float64)
            diag = diag / factor**2
        axes = tuple(range(unit.kernel.ndim - 1))
        mean_curvature = np.mean(diag, axis=axes)  # (C,)
        weight = 0.5 * mean_curvature[:, None] * _perturbations(unit, bits)
        quantizer = unit.layer.input_quantizer
        f_before = ops.convert_to_numpy(quantizer.f).copy()
        act = []
        for f in unit.act_f:
            _assign(quantizer.f, f)
            act.append(max(probe.loss() - base, 0.0))
        _assign(quantizer.f, f_before)
        penalties.append((weight, np.array(act)))
    return penalties


def _ompq_penalties(model, units, bits, act_bits, x) -> list[tuple[np.ndarray, np.ndarray]]:
    """OMPQ: importance from feature orthogonality; the program maximizes ``sum importance * bits``."""
    features = sensitivity.layer_tensors(model, [u.layer for u in units], x, 'output')
    importance = nm.orthogonality_importance(features)
    penalties = []
    for unit, theta in zip(units, importance, strict=True):
        n_channels = unit.kernel.shape[-1]
        weight = -theta * np.tile(np.asarray(bits, dtype=np.float64), (n_channels, 1)) / n_channels
        penalties.append((weight, -theta * np.asarray(act_bits, dtype=np.float64)))
    return penalties


def _cluster_penalties(model, units, bits, x) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cluster dynamic fixed point: squared quantization error of weights and of layer inputs."""
    inputs = sensitivity.layer_tensors(model, [u.layer for u in units], x, 'input')
    penalties = []
    for unit, values in zip(units, inputs, strict=True):
        quantizer = unit.layer.input_quantizer
        f_before = ops.convert_to_numpy(quantizer.f).copy()
        act = []
        for f in unit.act_f:
            _assign(quantizer.f, f)
            q = np.asarray(ops.convert_to_numpy(quantizer(values.astype('float32'))), dtype=np.float64)
            act.append(float(np.sum((q - values) ** 2) / len(values)))
        _assign(quantizer.f, f_before)
        penalties.append((_perturbations(unit, bits), np.array(act)))
    return penalties


# -- applying a solution -------------------------------------------------------------------------------------------


def _apply(units: list[_Unit], solution: nm.Allocation, bits, granularity: str, method: str) -> list[dict]:
    """Set formats (and clip plain kernels to their formats' range); returns the per-layer choices."""
    chosen = []
    for unit, act, weights in zip(units, solution.acts, solution.weights, strict=True):
        n_channels = unit.kernel.shape[-1]
        per_channel = np.broadcast_to(weights, (n_channels,)) if len(weights) == 1 else weights
        f = unit.weight_f[per_channel, np.arange(n_channels)]
        layer = unit.layer
        _assign(layer.input_quantizer.f, unit.act_f[act])
        kq = layer.kernel_quantizer
        _assign(kq.f, f if kq.granularity == 'channel' else f[:1])
        if layer.use_bias:  # the bias gets the resolution of the accumulator (free: bias bits cost no EBOPs)
            bq = layer.bias_quantizer
            bias_f = f + unit.act_f[act]
            _assign(bq.f, bias_f if bq.granularity == 'channel' else np.max(bias_f))
        if not isinstance(layer, _FUSED_BATCHNORM):
            limit = np.array([2.0 ** (bits[w] - 1) - 1 if bits[w] > 1 else 1.0 for w in per_channel]) * 2.0**-f
            _assign(layer.kernel, np.clip(unit.kernel, -limit, limit))
        chosen.append(
            {
                'layer': layer.name,
                'act_bits': None,
                'act_f': float(unit.act_f[act]),
                'weight_bits': [int(bits[w]) for w in per_channel],
            }
        )
    return chosen


def _set_fixed_layers(model: keras.Model, units: list[_Unit], top_act: int, top_bits: int) -> None:
    """Formats of the H-layers outside the program: ``top_act`` input bits, ``top_bits`` batch-norm scale bits.

    An ``HQuantize`` that feeds a Dense/Conv layer directly takes that layer's input format.
    """
    unit_by_input = {id(u.layer.input): u for u in units}
    for layer in h_layers(model):
        if isinstance(layer, HQuantize) and id(layer.output) in unit_by_input:
            _assign(
                layer.input_quantizer.f, ops.convert_to_numpy(unit_by_input[id(layer.output)].layer.input_quantizer.f)
            )
        elif isinstance(layer, _RANGE_LAYERS):
            _assign(layer.input_quantizer.f, WIDE_F)
            _assign(layer.input_quantizer.f, top_act - _max_int_bits(layer.input_quantizer))
            if isinstance(layer, HBatchNormalization):
                scale = np.asarray(ops.convert_to_numpy(layer.normalization()[0]), dtype=np.float64)
                f = nm.weight_fractional_bits(scale[:, None], top_bits, (1,)).reshape(-1)
                _assign(layer.scale_quantizer.f, f)
                _assign(layer.offset_quantizer.f, f + np.max(ops.convert_to_numpy(layer.input_quantizer.f)))


def _fixed_ebops(model: keras.Model, units: list[_Unit]) -> float:
    decided = {id(u.layer) for u in units}
    return float(sum(layer.exact_ebops() for layer in h_layers(model) if id(layer) not in decided))


# -- fine-tuning ---------------------------------------------------------------------------------------------------


class _KeepFormats(keras.callbacks.Callback):
    """While fine-tuning: clip kernels to their formats' range after every step; keep the last epoch in budget."""

    def __init__(self, units: list[_Unit], limits: list[np.ndarray], x: np.ndarray, budget: float | None) -> None:
        super().__init__()
        self.units, self.limits, self.x, self.budget = units, limits, x, budget
        self.best: list[np.ndarray] | None = None

    def on_train_begin(self, logs=None) -> None:
        self.best = self.model.get_weights()

    def on_train_batch_end(self, batch, logs=None) -> None:
        for unit, limit in zip(self.units, self.limits, strict=True):
            if limit is not None:
                kernel = unit.layer.kernel
                kernel.assign(ops.clip(kernel, -limit, limit))

    def on_epoch_end(self, epoch, logs=None) -> None:
        value = calibrate(self.model, self.x)
        if self.budget is None or value <= self.budget:
            self.best = self.model.get_weights()


def _finetune(model, units, chosen, x, y, loss, epochs, batch_size, learning_rate, budget, verbose) -> None:
    limits = []
    for unit, choice in zip(units, chosen, strict=True):
        if isinstance(unit.layer, _FUSED_BATCHNORM):
            limits.append(None)
            continue
        f = ops.convert_to_numpy(unit.layer.kernel_quantizer.f).reshape(-1)
        bits = np.asarray(choice['weight_bits'], dtype=np.float64)
        limits.append(((np.where(bits > 1, 2.0 ** (bits - 1) - 1, 1.0)) * 2.0**-f).astype('float32'))
    keeper = _KeepFormats(units, limits, x, budget)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose, callbacks=[keeper])
    model.set_weights(keeper.best)


def _options(unit: _Unit, granularity: str, method: str) -> nm.LayerOptions:
    """The unit's options with EBOPs from the current input ranges of its layer."""
    cost, ok = _costs(unit, unit.bits)
    if _merges_channels(granularity, method):
        cost, ok = cost.sum(axis=1, keepdims=True), np.all(ok, axis=1, keepdims=True)
    weight, act = unit.penalties
    return nm.LayerOptions(cost, weight, act, unit.layer.name, ok)


def _cheapest(options: list[nm.LayerOptions]) -> nm.Allocation:
    """The allocation of least cost (ties broken by penalty)."""
    return nm.solve_allocation(options, nm.minimum_cost(options) * (1 + 1e-9))


def _within_budget(model, units, ranges, budget, fixed, bits, act_bits, granularity, method, say):
    """Solve, apply, calibrate and measure until the measured EBOPs are within ``budget``.

    A failed attempt re-computes the options from the input ranges of the calibrated model (upstream layers now
    quantized) and tightens the program's budget by the overshoot (doubling on repeated failures). When the program
    becomes infeasible, the cheapest allocation is measured: within the budget it is the answer, else the budget is
    infeasible and the error names the measured minimum.
    """
    options = [u.options for u in units]
    slack, attempts = 0.0, 0
    while True:
        attempts += 1
        target = None if budget is None else budget - fixed - slack
        try:
            solution = nm.solve_allocation(options, target)
        except InfeasibleBudgetError:
            solution = _cheapest(options)
            target = None
        chosen = _apply(units, solution, bits, granularity, method)
        _set_fixed_layers(model, units, max(act_bits), max(bits))
        ranges.observe()
        measured = ebops(model)
        if measured <= (budget or np.inf):  # the result is calibrated (and checked for float32 exactness) properly
            measured = calibrate(model, ranges.x)
        if not np.isfinite(measured):
            bad = [v.path for v in model.weights if not np.all(np.isfinite(ops.convert_to_numpy(v)))]
            raise RuntimeError(f'allocate: the allocated model holds non-finite values in {bad}')
        fixed = _fixed_ebops(model, units)
        say(f'allocate[{method}]: attempt {attempts}: predicted {solution.cost + fixed:.0f}, measured {measured:.0f}')
        if budget is None or measured <= budget:
            return solution, chosen, measured, attempts
        if target is None:
            raise InfeasibleBudgetError(
                f'budget_ebops={budget:.6g} is infeasible: the cheapest allocation with bits {bits} and act_bits '
                f'{act_bits} uses {measured:.6g} EBOPs after calibration; the minimum feasible budget is '
                f'{measured:.6g} EBOPs',
                measured,
            )
        if attempts >= MAX_ATTEMPTS:
            raise RuntimeError(f'allocate: no allocation within {budget} EBOPs after {attempts} attempts')
        slack = max(2 * slack, slack + measured - budget + 1e-6 * budget) if attempts > 1 else 0.0
        for unit in units:
            unit.options = _options(unit, granularity, method)
        options = [u.options for u in units]


# -- the entry point -----------------------------------------------------------------------------------------------


def allocate(
    model: keras.Model,
    x: Any,
    y: Any = None,
    method: str = 'hawq_v3',
    budget_ebops: float | None = None,
    bits: Sequence[int] | None = None,
    act_bits: Sequence[int] | None = None,
    granularity: str = 'tensor',
    cluster_size: int = 4,
    finetune_epochs: int = 0,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    sample_size: int = 512,
    n_probes: int = 32,
    seed: int = 0,
    verbose: int = 1,
    return_report: bool = False,
) -> keras.Model | tuple[keras.Model, dict[str, Any]]:
    """Fixed bitwidths for a trained model, chosen without learning bits, within an EBOPs budget.

    Methods (see the README section "Bit allocation without training"):

    - ``'hawq_v3'``: penalty of a weight option ``Tr(H)/n * ||Q(W) - W||^2 / 2`` with the Hessian trace of the
      loss estimated by Hutchinson's method; penalty of an input option: the loss increase it causes alone.
      The integer program minimizes the total penalty within the budget.
    - ``'ompq'``: layer importance ``theta`` from the orthogonality of layer features on one batch
      (``sample_size`` samples, at most 64 used); the program maximizes ``sum theta * bits`` within the budget.
    - ``'cluster'``: clusters of ``cluster_size`` output channels share one power-of-two scale chosen for the
      least squared error, weights of ``bits`` (default 2 = ternary, and 4) with codes clipped to
      ``+-(2**(bits-1) - 1)``, inputs of ``act_bits`` (default 8). Without a budget every layer takes the widest
      option; with one, the program minimizes the squared quantization error.

    Parameters
    ----------
    model : keras.Model
        A trained float model (converted with :func:`hgq.from_keras`) or an H-model; it is not changed.
    x : array
        Calibration data (typically the training inputs): sets the input ranges and measures the EBOPs.
    y : array, optional
        Targets of ``x``: HAWQ-V3's loss (without them the float model's own predictions serve as targets) and
        fine-tuning.
    method : {'hawq_v3', 'ompq', 'cluster'}
        Allocation method.
    budget_ebops : float, optional
        Upper bound on :func:`hgq.ebops` of the calibrated result; required by ``hawq_v3`` and ``ompq``.
    bits : sequence of int, optional
        Weight bit options (with sign); default ``(2, 3, 4, 5, 6, 8)``, ``(2, 4)`` for ``cluster``.
    act_bits : sequence of int, optional
        Input bit options (for the largest input element of a layer); default ``bits``, ``(8,)`` for ``cluster``.
    granularity : {'tensor', 'channel'}
        One weight format per layer or per output channel (``cluster`` always uses clusters of channels).
    cluster_size : int
        Output channels per shared scale (``cluster``).
    finetune_epochs : int
        Epochs of fine-tuning with frozen formats (needs ``y``); kernels stay inside their formats' ranges and the
        last epoch within the budget is kept.
    batch_size, learning_rate : int, float
        Fine-tuning settings (Adam).
    sample_size : int
        Samples of ``x`` used for the sensitivities.
    n_probes : int
        Hutchinson probes (``hawq_v3``).
    seed : int
        Seed of the sample and the probes.
    verbose : int
        0: silent; 1: a line per step and a table of the result.
    return_report : bool
        Also return a dict with the choices, EBOPs, attempts and times: ``time_s`` (wall, all of it),
        ``allocate_time_s`` / ``allocate_cpu_s`` (wall and process CPU seconds up to the calibrated allocation) and
        ``finetune_time_s`` / ``finetune_cpu_s`` (the fine-tuning after it).

    Returns
    -------
    keras.Model
        A calibrated H-model with frozen bitwidths (``f`` not trainable); ``(model, report)`` with ``return_report``.
        Lookup-table layers (``HActivation`` other than ``relu``, ``HSoftmax``) keep their own quantizers.

    Raises
    ------
    InfeasibleBudgetError
        When no option meets the budget; its message and ``minimum`` give the smallest feasible EBOPs.

    Examples
    --------
    >>> import numpy as np, keras, hgq
    >>> float_model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation='relu'),
    ...                                 keras.layers.Dense(3)])
    >>> x = np.random.default_rng(0).normal(size=(256, 8)).astype('float32')
    >>> model = hgq.allocate.allocate(float_model, x, method='ompq', budget_ebops=500, verbose=0)
    >>> hgq.ebops(model) <= 500
    True
    """
    bits = tuple(int(b) for b in (bits or DEFAULT_BITS.get(method, (8,))))
    act_bits = tuple(int(b) for b in (act_bits or DEFAULT_ACT_BITS.get(method, bits)))
    weight_granularity = 'channel' if method == 'cluster' else granularity
    x = np.asarray(x, dtype=np.float32)
    _check_args(model, x, method, budget_ebops, bits, act_bits, granularity, cluster_size, finetune_epochs, y)
    start, start_cpu = time.perf_counter(), time.process_time()
    say = print if verbose else (lambda *a, **k: None)

    h_model = _allocation_model(model, weight_granularity)
    units_layers = [layer for layer in h_layers(h_model) if isinstance(layer, HKernelLayer)]
    if not units_layers:
        raise ValueError(f'model {model.name!r} has no Dense/Conv layer to allocate bits to')
    ranges = _InputRanges(h_model, x)
    ranges.observe()
    units = [_make_unit(layer, bits, act_bits, method, granularity, cluster_size) for layer in units_layers]
    _set_fixed_layers(h_model, units, max(act_bits), max(bits))
    fixed = _fixed_ebops(h_model, units)
    for unit in units:
        n_channels = 1 if _merges_channels(granularity, method) else unit.kernel.shape[-1]
        unit.penalties = (np.zeros((n_channels, len(bits))), np.zeros(len(act_bits)))
        unit.options = _options(unit, granularity, method)
    floor = nm.minimum_cost([u.options for u in units]) + fixed
    if budget_ebops is not None and budget_ebops < floor:
        raise InfeasibleBudgetError(
            f'budget_ebops={budget_ebops:.6g} is below the minimum feasible {floor:.6g} EBOPs with bits {bits} and '
            f'act_bits {act_bits} (every layer at its cheapest option); raise the budget or allow fewer bits',
            floor,
        )
    say(f'allocate[{method}]: {len(units)} layers, options computed ({time.perf_counter() - start:.1f} s)')

    rng = np.random.default_rng(seed)
    sample = rng.permutation(len(x))[:sample_size]
    x_s = x[sample]
    loss = y_s = None
    if method == 'hawq_v3' or finetune_epochs:
        outputs = np.asarray(ops.convert_to_numpy(h_model(x_s, training=False)))
        if y is not None:
            y_s = np.asarray(y)[sample]
        else:  # the float model's own predictions serve as targets
            y_s = np.argmax(outputs, axis=1) if outputs.ndim == 2 and outputs.shape[1] > 1 else outputs
        loss = sensitivity.make_loss(y_s, outputs)
    if method == 'hawq_v3':
        penalties = _hawq_penalties(h_model, units, bits, loss, x_s, y_s, n_probes, seed)
    elif method == 'ompq':
        penalties = _ompq_penalties(h_model, units, bits, act_bits, x_s[:64])
    else:
        penalties = _cluster_penalties(h_model, units, bits, x_s)
    for unit, (weight, act) in zip(units, penalties, strict=True):
        unit.penalties = (_to_channels(weight, granularity, method), act)
        unit.options = replace(unit.options, weight_penalty=unit.penalties[0], act_penalty=act)
    say(f'allocate[{method}]: sensitivities measured ({time.perf_counter() - start:.1f} s)')

    solution, chosen, measured, attempts = _within_budget(
        h_model, units, ranges, budget_ebops, fixed, bits, act_bits, granularity, method, say
    )

    timing = {'allocate_time_s': time.perf_counter() - start, 'allocate_cpu_s': time.process_time() - start_cpu}
    timing.update(finetune_time_s=0.0, finetune_cpu_s=0.0)
    if finetune_epochs:
        _finetune(h_model, units, chosen, x, y, loss, finetune_epochs, batch_size, learning_rate, budget_ebops, verbose)
        measured = calibrate(h_model, x)
        timing['finetune_time_s'] = time.perf_counter() - start - timing['allocate_time_s']
        timing['finetune_cpu_s'] = time.process_time() - start_cpu - timing['allocate_cpu_s']
    elapsed = time.perf_counter() - start
    for unit, choice in zip(units, chosen, strict=True):
        choice['act_bits'] = int(np.max(unit.layer.input_bits_exact()))
        choice['ebops'] = unit.layer.exact_ebops()
    if verbose:
        _print_table(chosen, measured, budget_ebops, timing)
    if not return_report:
        return h_model
    report = {
        'method': method,
        'budget_ebops': budget_ebops,
        'ebops': measured,
        'attempts': attempts,
        'time_s': elapsed,
        **timing,
        'layers': chosen,
    }
    return h_model, report


def _print_table(chosen: list[dict], measured: float, budget: float | None, timing: dict[str, float]) -> None:
    print(f'{"layer":<24} {"input bits":>10} {"weight bits":>16} {"EBOPs":>10}')
    for c in chosen:
        w = c['weight_bits']
        wb = str(w[0]) if len(set(w)) == 1 else f'{min(w)}..{max(w)}'
        print(f'{c["layer"]:<24} {c["act_bits"]:>10} {wb:>16} {c["ebops"]:>10.0f}')
    limit = '' if budget is None else f' (budget {budget:.0f})'
    tuned = f', fine-tuning {timing["finetune_time_s"]:.1f} s' if timing['finetune_time_s'] else ''
    print(
        f'total EBOPs {measured:.0f}{limit}, allocation {timing["allocate_time_s"]:.1f} s '
        f'(CPU {timing["allocate_cpu_s"]:.1f} s){tuned}'
    )
