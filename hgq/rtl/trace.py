"""Trace a calibrated H-layer model into exact combinational logic with da4ml's symbolic fixed-point arrays.

Every layer is replayed on :class:`da4ml.trace.FixedVariableArray` objects: the quantizers become exact
requantizations (``kif()`` formats, rounding and overflow modes), kernels become constant-matrix-vector products
that da4ml turns into adder graphs (distributed arithmetic, no multipliers), pooling becomes max/add trees. The
result, :class:`TracedModel`, holds the logic (``comb``) and the format of every input port.

The input ports take each model input in the format the first quantizer needs (for ``RND`` one fractional bit
more than the quantizer, so the rounding happens inside the logic): :meth:`TracedModel.encode_inputs` maps float
inputs onto the ports exactly as a ``TRN`` quantization with the port's overflow mode (``WRAP``, or ``SAT`` when
the first quantizer saturates). A first quantizer that rounds ties to even (``RND_CONV``) reads ports with two
more fractional bits, fed as a ``TRN`` to one more bit plus a sticky bit (set when anything below was cut off), so
that the logic tells exact ties from values just above them.

Examples
--------
>>> from hgq.rtl.trace import trace_model
>>> traced = trace_model(model)                 # doctest: +SKIP
>>> traced.comb.cost, traced.comb.latency       # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from da4ml.trace import FixedVariableArray, FixedVariableArrayInput, HWConfig, comb_trace
from da4ml.trace.fixed_variable import FixedVariable, FixedVariableInput
from da4ml.types import CombLogic
from keras import ops

from hgq.fixed_point import quantize as quantize_np
from hgq.layers import (
    HActivation,
    HAdd,
    HBatchNormalization,
    HConcatenate,
    HKernelLayer,
    HMultiply,
    HQuantize,
    HSubtract,
)
from hgq.layers.conv import HConv
from hgq.layers.dense import HDense
from hgq.layers.pooling import HGlobalAveragePooling, HPooling
from hgq.layers.windows import sliding_windows
from hgq.quantizer import ActivationQuantizer

__all__ = ['TraceError', 'TracedModel', 'trace_model', 'SUPPORTED_LAYERS']

#: Rounding modes the logic expresses exactly (da4ml: truncation and round-half-up; ties to even built here).
TRACEABLE_ROUND_MODES = ('TRN', 'RND', 'RND_CONV')

SUPPORTED_LAYERS = (
    'HQuantize, HDense, HConv1D, HConv2D, HDenseBatchNorm, HConv1DBatchNorm, HConv2DBatchNorm, HBatchNormalization, '
    "HActivation('relu'), HMaxPooling1D/2D, HAveragePooling1D/2D, HGlobalAveragePooling1D/2D, HAdd, HSubtract, "
    'HMultiply, HConcatenate; keras InputLayer, Flatten, Reshape, Dropout, ReLU, Activation(linear/relu)'
)


class TraceError(ValueError):
    """A model (or one of its layers) that the logic tracer cannot express exactly."""


@dataclass
class TracedModel:
    """The combinational logic of a model and the formats of its input ports.

    Attributes
    ----------
    comb : da4ml.types.CombLogic
        The traced logic; ``comb.cost`` is da4ml's LUT estimate, ``comb.latency`` its delay estimate.
    input_kif : np.ndarray
        ``(3, n_inputs)`` sign, integer and fractional bits of every (flattened) model input as the ports take it.
    input_overflow : np.ndarray
        ``(n_inputs,)`` ``'WRAP'`` or ``'SAT'``: how a float input is brought into its port format.
    input_shape, output_shape : tuple of int
        Per-sample shapes of the model input and output.
    input_sticky : np.ndarray or None
        ``(n_inputs,)`` True where the port's last fractional bit is a sticky bit (see the module docstring).
    """

    comb: CombLogic
    input_kif: np.ndarray
    input_overflow: np.ndarray
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    input_sticky: np.ndarray | None = None

    def encode_inputs(self, x: np.ndarray) -> np.ndarray:
        """Float model inputs ``(n, *input_shape)`` as the port values: ``TRN`` into each port's format.

        Inputs the logic does not read (zero-width ports) become 0. Sticky ports get ``TRN`` to one bit less,
        plus their last bit where anything below it was cut off.
        """
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        k, i, f = self.input_kif
        if self.input_sticky is not None and self.input_sticky.any():
            sticky = self.input_sticky
            kept = np.floor(x[:, sticky] * 2.0 ** (f[sticky] - 1)) / 2.0 ** (f[sticky] - 1)
            x = x.copy()
            x[:, sticky] = kept + np.where(kept != x[:, sticky], 2.0 ** -f[sticky], 0.0)
        out = np.zeros_like(x)
        for mode in ('WRAP', 'SAT'):
            sel = self.input_overflow == mode
            if sel.any():
                out[:, sel] = quantize_np(x[:, sel], k[sel], i[sel], f[sel], 'TRN', mode)
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs of the logic for float inputs, from da4ml's interpreter (no RTL involved)."""
        y = self.comb.predict(self.encode_inputs(x))
        return np.asarray(y).reshape(len(x), *self.output_shape)


# -- quantizers -------------------------------------------------------------------------------------------------------


def _check_round_mode(layer: keras.layers.Layer, quantizer: ActivationQuantizer) -> None:
    if quantizer.round_mode not in TRACEABLE_ROUND_MODES:
        raise TraceError(
            f'layer {layer.name!r}: quantizer {quantizer.name!r} rounds with {quantizer.round_mode}; the logic '
            f'tracer expresses {TRACEABLE_ROUND_MODES} only'
        )


def _requantize(layer: keras.layers.Layer, quantizer: ActivationQuantizer, x: FixedVariableArray) -> FixedVariableArray:
    """``quantizer`` applied to a traced tensor (formats from ``kif()``, as the hardware uses them)."""
    _check_round_mode(layer, quantizer)
    k, i, f = quantizer.kif()
    reads_input = any(isinstance(v, FixedVariableInput) for v in x._vars.ravel())
    if isinstance(x, _ModelInput):
        x = x.prepare(k, i, f, quantizer)
    elif reads_input and (quantizer.overflow_mode != 'WRAP' or quantizer.round_mode == 'RND_CONV'):
        raise TraceError(
            f'layer {layer.name!r}: its quantizer ({quantizer.overflow_mode}, {quantizer.round_mode}) reads the model '
            'input through Flatten/Reshape; the logic tracer needs it right after the input (add an HQuantize there)'
        )
    if quantizer.round_mode == 'RND_CONV':
        x = _round_half_even(x, f)
        return x.quantize(k, i, f, overflow_mode=quantizer.overflow_mode, round_mode='TRN')
    return x.quantize(k, i, f, overflow_mode=quantizer.overflow_mode, round_mode=quantizer.round_mode)


def _round_half_even(x: FixedVariableArray, f: np.ndarray) -> FixedVariableArray:
    """Round every element to ``f`` fractional bits, ties to even, keeping its integer range (no overflow).

    With ``ulp`` the input's last bit and ``lsb`` the bit of weight ``2**-f`` (the last one kept), ties to even is
    ``TRN(x + 2**-(f+1) - ulp + lsb * ulp)``: a tie rounds up only where ``lsb`` is 1; everything else rounds as
    half up does.
    """
    f = np.broadcast_to(np.asarray(f, dtype=np.int64), x.shape)
    out = np.empty(x.shape, dtype=object)
    for index, v in np.ndenumerate(x._vars):
        f_out = int(f[index])
        k_in, i_in, f_in = v.kif
        if v.low == v.high:  # a constant
            value = float(quantize_np(np.float64(v.low), 1, max(int(i_in), 0) + 2, f_out, 'RND_CONV', 'WRAP'))
            out[index] = FixedVariable.from_const(value, hwconf=v.hwconf)
            continue
        if f_in <= f_out:
            out[index] = v
            continue
        kept = v.quantize(k_in, i_in, f_out, 'WRAP', 'TRN') - v.quantize(k_in, i_in, f_out - 1, 'WRAP', 'TRN')
        lsb_ulp = kept * 2.0 ** (f_out - f_in)  # lsb * ulp
        shifted = v + (2.0 ** (-f_out - 1) - 2.0**-f_in) + lsb_ulp
        k_s, i_s, _ = shifted.kif
        out[index] = shifted.quantize(k_s, i_s, f_out, 'WRAP', 'TRN')
    return FixedVariableArray(out, x.solver_options, hwconf=x.hwconf)


class _ModelInput(FixedVariableArrayInput):
    """The model input before its first quantizer; records how the ports must be fed (WRAP or SAT)."""

    def __init__(self, shape: tuple[int, ...], hwconf: HWConfig) -> None:
        super().__init__(shape, hwconf)
        self.overflow = np.full(shape, 'WRAP', dtype=object)
        self.sticky = np.zeros(shape, dtype=bool)
        self.ports = self._vars.copy()
        self.modes: set[str] = set()

    def prepare(
        self, k: np.ndarray, i: np.ndarray, f: np.ndarray, quantizer: ActivationQuantizer
    ) -> FixedVariableArray:
        """WRAP quantizers read the ports directly; SAT ones through a wider WRAP format fed with saturation.

        A quantizer rounding ties to even reads them through a format with two more fractional bits, the last a
        sticky bit (:meth:`TracedModel.encode_inputs`).
        """
        port_mode = 'WRAP' if quantizer.overflow_mode == 'WRAP' else 'SAT'
        sticky = quantizer.round_mode == 'RND_CONV'
        self.modes.add((port_mode, sticky))
        if len(self.modes) > 1:
            raise TraceError(
                f'quantizer {quantizer.name!r}: the model input is read by quantizers with different overflow or '
                'tie-rounding modes; the logic tracer needs one input port format'
            )
        if port_mode == 'WRAP' and not sticky:
            return self
        extra_f = 2 if sticky else 1 if quantizer.round_mode == 'RND' else 0
        wide = self.quantize(np.ones_like(k), np.max(i) + 1, f + extra_f, overflow_mode='WRAP', round_mode='TRN')
        self.overflow[...] = port_mode
        self.sticky[...] = sticky
        return wide


# -- windows (convolution and pooling) ------------------------------------------------------------------------------


def _conv(x: FixedVariableArray, kernel: np.ndarray, strides: Sequence[int], padding: str) -> FixedVariableArray:
    """Convolution (channels last) as one constant-matrix-vector product per output position."""
    rank = kernel.ndim - 2
    n_cin, n_cout = kernel.shape[-2:]
    flat_kernel = kernel.reshape(-1, n_cin, n_cout)
    out_shape, windows = sliding_windows(x.shape[:rank], kernel.shape[:rank], strides, padding)
    out = np.empty((*out_shape, n_cout), dtype=object)
    for out_pos, positions, offsets in windows:
        patch = np.stack([x._vars[pos] for pos in positions]).reshape(-1)
        matrix = flat_kernel[offsets].reshape(-1, n_cout)
        out[out_pos] = (FixedVariableArray(patch, x.solver_options, hwconf=x.hwconf) @ matrix)._vars
    return FixedVariableArray(out, x.solver_options, hwconf=x.hwconf)


def _pool(x: FixedVariableArray, layer: HPooling) -> FixedVariableArray:
    rank = layer.rank
    out_shape, windows = sliding_windows(x.shape[:rank], layer.pool_size, layer.strides, layer.padding)
    out = np.empty((*out_shape, x.shape[-1]), dtype=object)
    n = math.prod(layer.pool_size)
    for out_pos, positions, _ in windows:
        window = FixedVariableArray(np.stack([x._vars[pos] for pos in positions]), x.solver_options, hwconf=x.hwconf)
        out[out_pos] = (np.amax(window, axis=0) if layer.mode == 'max' else np.sum(window, axis=0) * (1.0 / n))._vars
    return FixedVariableArray(out, x.solver_options, hwconf=x.hwconf)


# -- layers -----------------------------------------------------------------------------------------------------------


def _numpy(value: Any) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(value), dtype=np.float64)


def _kernel_layer(layer: HKernelLayer, x: FixedVariableArray) -> FixedVariableArray:
    xq = _requantize(layer, layer.input_quantizer, x)
    kernel = _numpy(layer.qkernel)
    if isinstance(layer, HConv):
        y = _conv(xq, kernel, layer.strides, layer.padding)
    elif isinstance(layer, HDense):
        y = xq @ kernel
    else:
        raise TraceError(f'layer {layer.name!r} ({type(layer).__name__}): no logic tracer for this kernel layer')
    if layer.use_bias:
        y = y + _numpy(layer.qbias)
    return np.maximum(y, 0) if layer.activation == 'relu' else y


def _batchnorm(layer: HBatchNormalization, x: FixedVariableArray) -> FixedVariableArray:
    xq = _requantize(layer, layer.input_quantizer, x)
    scale, offset = _numpy(layer.qscale), _numpy(layer.qoffset)
    return xq * np.broadcast_to(scale, xq.shape) + np.broadcast_to(offset, xq.shape)


def _check_activation(layer: HActivation) -> None:
    if layer.is_lut:
        raise TraceError(
            f'layer {layer.name!r} (HActivation({layer.activation!r})): lookup tables are not traced to logic; '
            "only HActivation('relu') is"
        )


def _activation(layer: HActivation, x: FixedVariableArray) -> FixedVariableArray:
    _check_activation(layer)
    return np.maximum(_requantize(layer, layer.input_quantizer, x), 0)


def _merge(layer: keras.layers.Layer, xs: list[FixedVariableArray]) -> FixedVariableArray:
    qs = [_requantize(layer, q, x) for q, x in zip(layer.activation_quantizers, xs, strict=True)]
    if isinstance(layer, HAdd):
        out = qs[0]
        for q in qs[1:]:
            out = out + q
        return out
    if isinstance(layer, HSubtract):
        return qs[0] - qs[1]
    if isinstance(layer, HMultiply):
        out = qs[0]
        for q in qs[1:]:
            out = out * q
        return out
    axis = layer.axis if layer.axis < 0 else layer.axis - 1
    return FixedVariableArray(np.concatenate([q._vars for q in qs], axis=axis), qs[0].solver_options, qs[0].hwconf)


def _keras_layer(layer: keras.layers.Layer, x: FixedVariableArray) -> FixedVariableArray:
    name = type(layer).__name__
    if isinstance(layer, keras.layers.Flatten):
        return x.reshape(-1)
    if isinstance(layer, keras.layers.Reshape):
        return x.reshape(tuple(layer.target_shape))
    if isinstance(layer, keras.layers.Dropout):
        return x
    if (
        isinstance(layer, keras.layers.ReLU)
        and layer.max_value is None
        and not layer.negative_slope
        and not layer.threshold
    ):
        return np.maximum(x, 0)
    if isinstance(layer, keras.layers.Activation):
        fn = keras.activations.serialize(layer.activation)
        fn = fn if isinstance(fn, str) else fn.get('config', fn)
        if fn == 'linear':
            return x
        if fn == 'relu':
            return np.maximum(x, 0)
    raise TraceError(
        f'layer {layer.name!r} ({name}): the logic tracer cannot express this layer; supported: {SUPPORTED_LAYERS}'
    )


def _trace_layer(layer: keras.layers.Layer, inputs: list[FixedVariableArray]) -> FixedVariableArray:
    if isinstance(layer, (HAdd, HSubtract, HMultiply, HConcatenate)):
        return _merge(layer, inputs)
    if len(inputs) != 1:
        raise TraceError(f'layer {layer.name!r} ({type(layer).__name__}): expected one input, got {len(inputs)}')
    x = inputs[0]
    handlers: list[tuple[type, Callable[[Any, FixedVariableArray], FixedVariableArray]]] = [
        (HQuantize, lambda lay, v: _requantize(lay, lay.input_quantizer, v)),
        (HKernelLayer, _kernel_layer),
        (HBatchNormalization, _batchnorm),
        (HActivation, _activation),
        (HPooling, lambda lay, v: _pool(_requantize(lay, lay.input_quantizer, v), lay)),
        (HGlobalAveragePooling, _global_average),
    ]
    for cls, handler in handlers:
        if isinstance(layer, cls):
            return handler(layer, x)
    if type(layer).__module__.startswith('hgq.'):
        raise TraceError(
            f'layer {layer.name!r} ({type(layer).__name__}): the logic tracer cannot express this layer; '
            f'supported: {SUPPORTED_LAYERS}'
        )
    return _keras_layer(layer, x)


def _global_average(layer: HGlobalAveragePooling, x: FixedVariableArray) -> FixedVariableArray:
    xq = _requantize(layer, layer.input_quantizer, x)
    axes = tuple(range(layer.rank))
    n = math.prod(xq.shape[: layer.rank])
    y = np.sum(xq, axis=axes) * (1.0 / n)
    return y.reshape((1,) * layer.rank + (xq.shape[-1],)) if layer.keepdims else y


# -- the model graph --------------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_traceable(model: keras.Model) -> None:
    """Raise :class:`TraceError` naming the first layer the tracer cannot express, before any long work."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise TraceError(
            f'model {model.name!r}: the logic tracer needs one input and one output, '
            f'got {len(model.inputs)} and {len(model.outputs)}'
        )
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, HActivation):
            _check_activation(layer)
        for q in getattr(layer, 'activation_quantizers', []):
            _check_round_mode(layer, q)
        known = (HQuantize, HKernelLayer, HBatchNormalization, HActivation, HPooling, HGlobalAveragePooling)
        known += (HAdd, HSubtract, HMultiply, HConcatenate)
        plain = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout, keras.layers.ReLU)
        if not isinstance(layer, known + plain + (keras.layers.Activation,)):
            raise TraceError(
                f'layer {layer.name!r} ({type(layer).__name__}): the logic tracer cannot express this layer; '
                f'supported: {SUPPORTED_LAYERS}'
            )


def trace_model(
    model: keras.Model, hwconf: HWConfig | tuple[int, int, int] = (1, -1, -1), verbose: bool = False
) -> TracedModel:
    """Trace a calibrated model into combinational logic.

    Parameters
    ----------
    model : keras.Model
        A Sequential or functional model of H-layers (see ``SUPPORTED_LAYERS``) with one input and one output,
        calibrated with :func:`hgq.calibrate`.
    hwconf : HWConfig or (adder_size, carry_size, latency_cutoff)
        da4ml's cost model of one adder; the default ``(1, -1, -1)`` counts LUTs of a ripple-carry fabric.
    verbose : bool
        Print one line per layer.

    Returns
    -------
    TracedModel

    Raises
    ------
    TraceError
        A layer, quantizer setting or graph the tracer cannot express, naming it.

    Examples
    --------
    >>> traced = trace_model(model)            # doctest: +SKIP
    >>> np.array_equal(traced.predict(x), model.predict(x))  # doctest: +SKIP
    True
    """
    check_traceable(model)
    hwconf = HWConfig(*hwconf)
    input_shape = tuple(int(s) for s in model.inputs[0].shape[1:])
    model_input = _ModelInput(input_shape, hwconf)
    values: dict[int, FixedVariableArray] = {id(model.inputs[0]): model_input}
    sequential = isinstance(model, keras.Sequential)
    previous = model_input
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        try:
            inputs = [previous] if sequential else [values[id(t)] for t in _as_list(layer.input)]
        except KeyError:
            raise TraceError(f'layer {layer.name!r}: its input is not produced by a traced layer') from None
        try:
            out = _trace_layer(layer, inputs)
        except TraceError:
            raise
        except (ValueError, AssertionError, NotImplementedError) as err:
            raise TraceError(f'layer {layer.name!r} ({type(layer).__name__}): cannot be traced: {err}') from err
        if verbose:
            print(f'  traced {layer.name} -> {tuple(out.shape)}')
        previous = out
        if not sequential:
            values[id(layer.output)] = out
    output = previous if sequential else values[id(model.outputs[0])]
    if any(isinstance(v, FixedVariableInput) for v in np.ravel(output._vars)):
        raise TraceError(f'model {model.name!r}: an output is an unquantized model input; add an HQuantize layer')
    comb = comb_trace(model_input.ports.ravel(), output._vars.ravel(), keep_dead_inputs=True)
    kif = np.array([_port_kif(q) for q in comb.inp_qint], dtype=np.int64).T.reshape(3, -1)
    return TracedModel(
        comb=comb,
        input_kif=kif,
        input_overflow=model_input.overflow.ravel(),
        input_shape=input_shape,
        output_shape=tuple(int(s) for s in model.outputs[0].shape[1:]),
        input_sticky=model_input.sticky.ravel(),
    )


def _port_kif(qint: Any) -> tuple[int, int, int]:
    from da4ml.types import minimal_kif

    k, i, f = minimal_kif(qint)
    return int(k), int(i), int(f)
