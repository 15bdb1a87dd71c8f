"""Every fixed-point precision the converter assigns, judged without a C++ build.

``hgq.to_hls(model, path, write=False)`` runs the whole ``convert`` flow (hls4ml's ``bit_exact`` pass with our
``produce_kif``/``request_kif``, :class:`~hgq.convert.hls_backend.WidenWrappedTypes`, quantizer fusion, the
signed max-pool padding, the separate output copies) and types every tensor of the graph. For small models that
together hold every layer kind, overflow mode, several rounding modes and all granularities, each tensor is judged
two ways:

- **values**: the ap_fixed cast of what Keras computes there (on inputs that also overflow and saturate the
  calibrated ranges) gives back what Keras computes, exactly; where the type drops integer bits it may wrap, but
  only if every layer reading it is a WRAP quantizer whose output is then unchanged;
- **rules**: the type is exactly the one the rules give (module docstring of :mod:`hgq.convert.hls_backend`):
  the formats our quantizers produce and request are computed here from their exported masks, the arithmetic of
  the other layers by hls4ml's own interval rules on the graph before any pass ran, and a tensor gets
  ``min(produced, requested)`` bits, the integer bits of a wrapped tensor widened to
  ``min(max(k + i) produced, max(k + i) requested)``. Exact equality: no type is narrower or wider.

Both checks look at the graph only (about 0.1 CPU s a model); the C simulation of the same graphs is in
``test_convert_bitexact.py`` (slow).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from hls4ml.model.layers import Activation, Concatenate, Input, Layer, Pooling1D, Pooling2D, Reshape
from hls4ml.model.optimizer.passes.bit_exact import (
    _produce_kif,
    _request_kif,
    get_input_layers,
    get_output_layers,
    produce_kif,
    requested_by_non_saturating_quantizer,
    requested_kif,
)

import hgq
from hgq.convert import hls_backend as hb
from hgq.fixed_point import quantize
from hgq.layers import (
    HActivation,
    HAdd,
    HAveragePooling1D,
    HAveragePooling2D,
    HBatchNormalization,
    HConcatenate,
    HConv1D,
    HConv1DBatchNorm,
    HConv2D,
    HConv2DBatchNorm,
    HDense,
    HDenseBatchNorm,
    HGlobalAveragePooling1D,
    HGlobalAveragePooling2D,
    HLayer,
    HMaxPooling1D,
    HMaxPooling2D,
    HMultiply,
    HQuantize,
    HSoftmax,
    HSubtract,
)
from hgq.layers.kernel import HKernelLayer
from hgq.layers.merge import HMerge
from hgq.layers.pooling import HGlobalAveragePooling
from hgq.quantizer import ActivationQuantizer

N_SAMPLES = 512
CHANNEL = {'granularity': 'channel'}
TENSOR = {'granularity': 'tensor'}
ENTRY = {**TENSOR, 'round_mode': 'TRN'}  # fused into the input: the input's type is this quantizer's format
MAX_KIF = (1, 126, 126)  # what a model output (or any layer of no rule) requests
SIGN_DEPENDENT = ('TRN_ZERO', 'RND_ZERO', 'RND_INF')  # roundings that wrapping first would change
# WRAP ranges set after calibration: (k, i) = (0, 2) and, for the roundings by the sign, (1, 0)
RANGES = {'unsigned_wrap': (0.0, 3.5), **{f'wrap_{mode.lower()}': (-1.0, 0.5) for mode in SIGN_DEPENDENT}}

KIF = tuple[np.ndarray, np.ndarray, np.ndarray]


# -- models ------------------------------------------------------------------------------------------------------------


def dense_modes() -> keras.Model:
    """Dense, fused batch norm, batch norm; WRAP/SAT/SAT_SYM, six roundings, all granularities, a zero-width
    quantizer, an output that feeds another layer."""
    inp = keras.Input((8,))
    h = HQuantize(input_quantizer=ENTRY)(inp)
    h = HQuantize(input_quantizer={'round_mode': 'RND'})(h)
    h = HDense(7, activation='relu')(h)
    h = HDense(6, input_quantizer={**CHANNEL, 'overflow_mode': 'SAT', 'round_mode': 'RND_CONV'})(h)
    h = HDenseBatchNorm(6, activation='relu', input_quantizer={**TENSOR, 'overflow_mode': 'SAT_SYM'})(h)
    h = HDense(5, input_quantizer={'round_mode': 'TRN_ZERO'})(h)
    bn = HBatchNormalization(input_quantizer={'overflow_mode': 'SAT', 'round_mode': 'RND_INF'})(h)
    h = HDense(4, input_quantizer={'round_mode': 'RND_ZERO'})(bn)
    h = HDense(4, input_quantizer={**TENSOR, 'round_mode': 'TRN'})(h)
    zero = HDense(2, input_quantizer={**TENSOR, 'f_init': -20.0, 'f_trainable': False}, name='zero_width_input')(h)
    # fixed formats: a saturated -2 read by SAT_SYM (its bound is -2 + 2**-5), a signed TRN narrowing that carries
    chain = HQuantize(input_quantizer=_frozen('SAT', 'TRN', 1, 3))(HQuantize(input_quantizer=ENTRY)(inp))
    chain = HQuantize(input_quantizer=_frozen('SAT_SYM', 'RND', 1, 5))(chain)
    chain = HQuantize(input_quantizer=_frozen('SAT', 'TRN', 2, 6))(chain)  # fits: narrowed to the (1, 1, 5) it reads
    chain = HDense(2, input_quantizer=_frozen('SAT', 'TRN', 2, 1))(
        HQuantize(input_quantizer=_frozen('SAT', 'TRN', 2, 1))(chain)
    )
    # a signed tensor read only by an unsigned WRAP quantizer of one more integer bit (range set in RANGES)
    signed = HQuantize(input_quantizer=_frozen('SAT', 'TRN', 1, 3))(HQuantize(input_quantizer=ENTRY)(inp))
    unsigned = HQuantize(input_quantizer={**TENSOR, 'round_mode': 'TRN'}, name='unsigned_wrap')(signed)
    # WRAP quantizers that round by the sign, each the only reader of a signed sum wider than its range (RANGES)
    tail = h
    for mode in SIGN_DEPENDENT:
        tail = HDense(3, input_quantizer={'round_mode': mode}, name=f'wrap_{mode.lower()}')(HDense(3)(tail))
    return keras.Model(inp, [h, bn, zero, chain, HDense(2)(unsigned), tail])


def _frozen(overflow_mode: str, round_mode: str, i: int, f: int) -> dict:
    """A per-tensor quantizer of fixed format (``randomize_bits`` leaves it alone)."""
    return {
        **TENSOR,
        'overflow_mode': overflow_mode,
        'round_mode': round_mode,
        'i_init': float(i),
        'f_init': float(f),
        'f_trainable': False,
    }


def convolutions() -> keras.Model:
    """Conv1D/2D and their batch-norm variants, padded max pooling of unsigned inputs, every pooling layer."""
    img, seq = keras.Input((7, 7, 2)), keras.Input((9, 2))
    h = HQuantize(input_quantizer=CHANNEL)(HQuantize(input_quantizer=ENTRY)(img))
    h = HConv2D(3, 3, activation='relu')(h)
    h = HMaxPooling2D(2, padding='same')(h)
    h = HConv2DBatchNorm(2, 2, padding='same', activation='relu', input_quantizer={'overflow_mode': 'SAT'})(h)
    h = HAveragePooling2D(2, input_quantizer=CHANNEL)(h)
    g = HGlobalAveragePooling2D(keepdims=True, input_quantizer={'round_mode': 'RND_ZERO'})(h)
    s = HQuantize(input_quantizer=ENTRY)(seq)
    s = HConv1D(3, 3, activation='relu', input_quantizer={'round_mode': 'RND_MIN_INF'})(s)
    s = HMaxPooling1D(2, padding='same', input_quantizer=TENSOR)(s)
    s = HConv1DBatchNorm(2, 2, padding='same', input_quantizer={'overflow_mode': 'SAT_SYM', 'round_mode': 'RND'})(s)
    s = HAveragePooling1D(2)(s)
    t = HGlobalAveragePooling1D(input_quantizer={'round_mode': 'TRN_ZERO'})(s)
    flat = HConcatenate()([keras.layers.Flatten()(g), t])
    return keras.Model([img, seq], HDense(3)(flat))


def merges() -> keras.Model:
    """Add of three inputs (a chain of two), subtract, multiply, concatenate of three, on each axis."""
    inputs = [keras.Input((6,)), keras.Input((6,)), keras.Input((4,))]
    a, b, c = (HQuantize(input_quantizer=ENTRY)(x) for x in inputs)
    d = HDense(6, activation='relu')(a)
    s = HAdd(input_quantizer={'round_mode': 'TRN_ZERO'})([d, b, HDense(6)(c)])
    m = HMultiply(input_quantizer={'overflow_mode': 'SAT'})([s, b])
    sub = HSubtract(input_quantizer={**CHANNEL, 'round_mode': 'RND_INF'})([m, d])
    cat = HConcatenate()([sub, a, c])
    cat2 = HConcatenate(axis=1)([keras.layers.Reshape((2, 3))(sub), keras.layers.Reshape((2, 3))(m)])
    return keras.Model(inputs, [HDense(3)(cat), keras.layers.Flatten()(cat2)])


def tables() -> keras.Model:
    """Lookup tables (tanh, sigmoid), relu as an activation layer, softmax."""
    inp = keras.Input((6,))
    h = HQuantize(input_quantizer={**ENTRY, 'i_init': 2.0, 'f_init': 3.0})(inp)
    h = HDense(5)(h)
    h = HActivation('tanh', input_quantizer={**TENSOR, 'round_mode': 'RND'})(h)
    h = HActivation('relu', input_quantizer={'round_mode': 'RND_CONV'})(h)
    h = HDense(4, input_quantizer={'overflow_mode': 'SAT'})(h)
    h = HActivation('sigmoid', input_quantizer={**TENSOR, 'overflow_mode': 'SAT'})(h)
    return keras.Model(inp, HSoftmax(input_quantizer=TENSOR)(HDense(4)(h)))


def stream() -> keras.Model:
    """io_stream: per-element and per-channel formats, convolutions, pooling."""
    inp = keras.Input((6, 6, 2))
    h = HQuantize()(HQuantize(input_quantizer=ENTRY)(inp))
    h = HConv2D(3, 3, activation='relu', input_quantizer=CHANNEL)(h)
    h = HMaxPooling2D(2, input_quantizer={'overflow_mode': 'SAT'})(h)
    h = HConv2DBatchNorm(2, 1, activation='relu', input_quantizer={'round_mode': 'RND_CONV'})(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, HDense(3, input_quantizer=CHANNEL)(h))


def randomize_bits(model: keras.Model, seed: int) -> None:
    """Random integer bitwidths: activation ``f`` in [-1, 4] (per tensor: [0, 4]; some elements pruned), weight
    ``f`` in [1, 3], SAT-mode integer bits in [1, 2]. Quantizers with a frozen ``f`` and lookup-table quantizers
    keep theirs."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if not isinstance(layer, HLayer) or isinstance(layer, HActivation | HSoftmax):
            continue
        for q in layer.quantizers:
            if not q.f.trainable:
                continue
            activation = isinstance(q, ActivationQuantizer)
            several = q.f.shape.num_elements() > 1
            f = rng.integers(-int(several), 5, q.f.shape) if activation else rng.integers(1, 4, q.f.shape)
            if several:
                f = np.where(rng.random(q.f.shape) < 0.1, -16, f)
            q.f.assign(f.astype('float32'))
            if activation and not q.tracks_range:
                q.i.assign(rng.integers(1, 3, q.i.shape).astype('float32'))


# -- what Keras computes at every tensor of the graph ------------------------------------------------------------------


def _numpy(x: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def keras_values(model: keras.Model, x: list[np.ndarray]) -> dict[str, np.ndarray]:
    """IR node name -> the values Keras computes at that node's output (float64, batch first).

    Names follow the handlers: a quantizer IR layer has the quantizer's name, a layer with an internal ``relu`` has
    its name before the ``relu`` and ``<name>_relu`` after it, two-input merges of a chain ``<name>_partial<n>``,
    a ``keepdims`` global pooling ``<name>`` before its ``<name>_keepdims`` reshape.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    outputs = probe.predict(x if len(x) > 1 else x[0], batch_size=len(x[0]), verbose=0)
    by_tensor = {id(t): v for t, v in zip(model.inputs, x, strict=True)}
    by_tensor.update({id(layer.output): _numpy(v) for layer, v in zip(layers, outputs, strict=True)})
    values = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            values[layer.name] = np.asarray(by_tensor[id(layer.output)], np.float64)
    for layer in layers:
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        ins = [by_tensor[id(t)] for t in inputs]
        out = by_tensor[id(layer.output)]
        if not isinstance(layer, HLayer):
            values[layer.name] = out
            continue
        quantizers = layer.activation_quantizers
        qs = [_numpy(q(v.astype('float32'), training=False)) for q, v in zip(quantizers, ins, strict=True)]
        values.update({q.name: v for q, v in zip(quantizers, qs, strict=True)})
        if isinstance(layer, HQuantize):
            values[layer.name] = qs[0]
        elif isinstance(layer, HKernelLayer) and layer.activation == 'relu':
            weights = layer.quantized_weights()
            pre = _numpy(layer.apply_kernel(qs[0].astype('float32'), weights['kernel'][0].astype('float32')))
            values[layer.name] = pre + (weights['bias'][0] if 'bias' in weights else 0.0)
            values[f'{layer.name}_relu'] = out
        elif isinstance(layer, HMerge) and len(qs) > 2:
            ops = {HAdd: np.add, HSubtract: np.subtract, HMultiply: np.multiply}
            axis = getattr(layer, 'axis', -1)
            partial = qs[0]
            for n in range(1, len(qs) - 1):
                op = ops.get(type(layer))
                partial = op(partial, qs[n]) if op else np.concatenate([partial, qs[n]], axis=axis)
                values[f'{layer.name}_partial{n}'] = partial
            values[layer.name] = out
        elif isinstance(layer, HGlobalAveragePooling) and layer.keepdims:
            values[layer.name] = out.reshape(len(out), -1)
            values[f'{layer.name}_keepdims'] = out
        else:
            values[layer.name] = out
    return values


# -- the rules ---------------------------------------------------------------------------------------------------------


def exported_kif(node: Layer) -> KIF:
    """A quantizer's format as exported by its handler (``hgq_mask_kbi``), per element of the tensor."""
    k, b, i = (np.asarray(m, dtype=np.int64)[0] for m in node.attributes[hb.MASK_ATTR])
    return k, i - k, b - i


def rule_produce(node: Layer, lk: np.ndarray, li: np.ndarray, lf: np.ndarray) -> KIF:
    """The format a quantizer outputs from an input of format ``(lk, li, lf)``: where no input value can overflow it,
    the narrower of the two (one more integer bit where rounding up may carry past the input's range); elsewhere
    the exported format. Zero-width elements are ``(0, 0, 0)``."""
    k, i, f = (np.broadcast_to(a, lk.shape).astype(np.int64) for a in exported_kif(node))
    lk, li, lf = (np.asarray(a, np.int64) for a in (lk, li, lf))
    hi_q, hi_in = 2.0**i - 2.0**-f, 2.0**li - 2.0**-lf
    lo_q = np.where(k > 0, -hi_q if node.SAT == 'SAT_SYM' else -(2.0**i), 0.0)
    lo_in = np.where(lk > 0, -(2.0**li), 0.0)
    fits = (hi_q >= hi_in) & (lo_q <= lo_in) & (k >= lk)
    # dropping fractional bits can round up past the input's largest value (TRN: down past a signed minimum)
    carry = (lf > f) & (i > li) & ((k > 0) | (node.RND != 'TRN'))
    k_out, i_out, f_out = np.minimum(k, lk), np.minimum(i, li) + carry, np.minimum(f, lf)
    out = np.where(fits, k_out, k), np.where(fits, i_out, i), np.where(fits, f_out, f)
    zero = out[0] + out[1] + out[2] <= 0
    return tuple(np.where(zero, 0, a).astype(np.int16) for a in out)


def rule_request(node: Layer, narrowed: KIF) -> KIF:
    """What a quantizer requests from its input: its (narrowed) format, every integer bit unless it wraps with a
    rounding that does not depend on the sign, one more fractional bit for ``RND``, every one for other roundings."""
    k, i, f = (a.astype(np.int16).copy() for a in narrowed)
    if node.SAT != 'WRAP' or node.RND in SIGN_DEPENDENT:
        k[:], i[:] = 1, 126
    if node.RND == 'RND':
        f = f + 1
    elif node.RND != 'TRN':
        f[:] = 126
    return k, i, f


class Rules:
    """Produced and requested formats of every node of a graph before any pass ran, by the rules.

    hls4ml's interval rules type the layers that are not ours (on this untouched graph); our quantizers answer with
    :func:`rule_produce` and :func:`rule_request` while the formats are computed.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.narrowed: dict[str, KIF] = {}
        with self._our_quantizers_by_the_rules():
            nodes = list(raw.graph.values())
            self.produced = {n.name: tuple(np.asarray(a).copy() for a in produce_kif(n)) for n in nodes}
            self.requested = {n.name: tuple(np.asarray(a).copy() for a in requested_kif(n)) for n in nodes}
            self.non_saturating = {n.name: requested_by_non_saturating_quantizer(n) for n in nodes}
        for node in nodes:  # a model output is requested in full (also where another layer reads it)
            if node.outputs[0] in raw.outputs:
                self.requested[node.name] = tuple(
                    np.full_like(a, v) for a, v in zip(self.requested[node.name], MAX_KIF, strict=True)
                )
                self.non_saturating[node.name] |= bool(get_output_layers(node))

    @contextmanager
    def _our_quantizers_by_the_rules(self) -> Iterator[None]:
        def produce(node: Layer) -> KIF:
            if node.name not in self.narrowed:
                self.narrowed[node.name] = rule_produce(node, *produce_kif(get_input_layers(node)[0]))
            return self.narrowed[node.name]

        def request(node: Layer) -> tuple[KIF]:
            produce_kif(node)
            return (rule_request(node, self.narrowed[node.name]),)

        _produce_kif.register(hb.HGQFixedPointQuantizer, produce)
        _request_kif.register(hb.HGQFixedPointQuantizer, request)
        try:
            yield
        finally:
            _produce_kif.register(hb.HGQFixedPointQuantizer, hb.produce_kif)
            _request_kif.register(hb.HGQFixedPointQuantizer, hb.request_kif)

    def tensor_kif(self, name: str) -> tuple[int, int, int]:
        """Sign, integer bits (sign included) and fractional bits of the tensor of node ``name``: ``min(produced,
        requested)`` per element, the sign requested where a wrapping quantizer reads it, integer bits widened to
        ``min(max(k + i) produced, max(k + i) requested)``; hls4ml's placeholder type where it is always 0."""
        (pk, pi, pf), (rk, ri, rf) = self.produced[name], self.requested[name]
        k = int(np.max(rk if self.non_saturating[name] else np.minimum(pk, rk)))
        i = int(np.max(np.minimum(pi, ri)))
        f = int(np.max(np.minimum(pf, rf)))
        if k + i + f < 1:  # hls4ml's type of a tensor that is always 0
            k, i, f = 0, 32, -30
        return k, max(k + i, min(int(np.max(pk + pi)), int(np.max(rk + ri)))), f


def _padded_max_pool_reads(node: Layer) -> bool:
    return any(
        isinstance(r, Pooling1D | Pooling2D)
        and r.get_attr('pool_op') == 'Max'
        and any(r.get_attr(f'pad_{side}', 0) for side in ('top', 'bottom', 'left', 'right'))
        for r in get_output_layers(node)
    )


# -- the converted graphs ----------------------------------------------------------------------------------------------


class Case:
    """A calibrated model, the values Keras computes at each node, the converted graph and the graph before passes."""

    def __init__(self, build: Callable[[], keras.Model], seed: int, path: Path, **settings: Any) -> None:
        keras.utils.set_random_seed(seed)
        self.model = build()
        randomize_bits(self.model, seed)
        rng = np.random.default_rng(seed)
        x = [rng.normal(size=(N_SAMPLES, *t.shape[1:])).astype('float32') for t in self.model.inputs]
        hgq.calibrate(self.model, x)
        for name, (vmin, vmax) in RANGES.items():
            if name in [layer.name for layer in self.model.layers]:
                self.model.get_layer(name).input_quantizer.set_range(vmin, vmax)
        # the calibration data, its double (WRAP ranges overflow) and wide values (SAT saturates everywhere)
        self.x = [np.concatenate([v, 2 * v, 8 * v[:64]]) for v in x]
        self.values = keras_values(self.model, self.x)
        self.graph = hgq.to_hls(self.model, path / 'converted', write=False, **settings)
        self.raw = hgq.to_hls(self.model, path / 'raw', write=False, hls_config={'Flows': []}, **settings)
        self.rules = Rules(self.raw)

    def fused_into(self, node: Layer) -> Layer | None:
        """The quantizer whose format became the type of ``node``'s output (fused into it), if any."""
        for reader in get_output_layers(self.raw.graph[node.name]):
            if isinstance(reader, hb.HGQFixedPointQuantizer) and reader.name not in self.graph.graph:
                return reader
        return None

    def stored(self, node: Layer) -> str:
        """Name of the node whose Keras values the output of ``node`` holds in the converted graph."""
        if node.attributes.get('hgq_output_copy', False):
            return self.stored(get_input_layers(node)[0])
        fused = self.fused_into(node)
        return fused.name if fused is not None else node.name


CASES = {
    'dense_modes': (dense_modes, 1, {}),
    'convolutions': (convolutions, 2, {}),
    'merges': (merges, 3, {'backend': 'Vivado'}),
    'tables': (tables, 4, {}),
    'stream': (stream, 5, {'io_type': 'io_stream'}),
}


def _precision(node: Layer) -> Any:
    return node.get_output_variable().type.precision


def _cast(values: np.ndarray, precision: Any) -> np.ndarray:
    k = int(precision.signed)
    modes = [str(m).split('.')[-1].replace('AP_', '') for m in (precision.rounding_mode, precision.saturation_mode)]
    return quantize(values, k, precision.integer - k, precision.width - precision.integer, *modes)


def _quantizer_output(node: Layer, values: np.ndarray) -> np.ndarray:
    k, b, i = (np.asarray(m, np.int64)[0] for m in node.mask_kbi)
    return quantize(values, k, i - k, b - i, node.RND, node.SAT)


# -- checks ------------------------------------------------------------------------------------------------------------


def _recomputed(node: Layer, inputs: list[np.ndarray]) -> np.ndarray | None:
    """What an element-wise or moving node computes from the values its inputs hold; ``None`` for arithmetic."""
    if isinstance(node, hb.HGQFixedPointQuantizer):
        return _quantizer_output(node, inputs[0])
    if isinstance(node, hb.HGQStreamQuantizer):  # each element cast to its exported format
        k, b, i = (np.asarray(m, np.int64)[0] for m in node.get_attr(hb.MASK_ATTR))
        return quantize(inputs[0], k, i - k, b - i, node.get_attr('RND'), node.get_attr('SAT'))
    if isinstance(node, Activation) and node.get_attr('activation') == 'relu':
        return np.maximum(inputs[0], 0.0)
    if isinstance(node, Reshape):
        return inputs[0].reshape(len(inputs[0]), *node.get_output_variable().shape)
    if isinstance(node, Concatenate):
        return np.concatenate(inputs, axis=node.get_attr('axis'))
    return None


def check_values(case: Case) -> None:
    """Each tensor, cast into its type, holds what Keras computes wherever anything but a quantizer, relu, reshape or
    concatenation reads it, and at the model outputs; each quantizer computes what Keras computes from what its
    input holds (a type may drop the integer bits a WRAP quantizer wraps away and the fractional bits no reader
    needs)."""
    held: dict[str, np.ndarray] = {}
    for node in case.graph.graph.values():
        expected = case.values[case.stored(node)]
        inputs = [held[name] for name in node.inputs if not isinstance(node, Input)]
        computed = _recomputed(node, inputs)
        if computed is None and not isinstance(node, Input):  # arithmetic: inputs hold exactly what Keras computes
            for name, value in zip(node.inputs, inputs, strict=True):
                source = case.values[case.stored(case.graph.graph[name])]
                assert np.array_equal(value, source.reshape(value.shape)), f'{node.name}: input {name} differs'
        if isinstance(node, hb.HGQFixedPointQuantizer | hb.HGQStreamQuantizer):
            wrong = int(np.sum(computed.reshape(expected.shape) != expected))
            assert wrong == 0, f'{node.name}: {wrong} of {expected.size} outputs differ'
        if computed is None:
            computed = case.values[node.name]
        value = _cast(computed, _precision(node)).reshape(expected.shape)
        held[node.outputs[0]] = value
        if not get_output_layers(node):
            wrong = int(np.sum(value != expected))
            assert wrong == 0, f'model output {node.name} ({_precision(node)}): {wrong} of {value.size} differ'


def expected_type(case: Case, node: Layer) -> tuple[int, int, int]:
    """(sign, integer bits with the sign, fractional bits) of the output of ``node`` by the rules."""
    if node.attributes.get('hgq_output_copy', False):  # requests all, produces what its input holds
        pk, pi, pf = case.rules.produced[case.stored(node)]
        k = int(np.max(pk))
        return k, max(k + int(np.max(pi)), int(np.max(pk + pi))), int(np.max(pf))
    if isinstance(node, Reshape) and case.graph.config.get_config_value('IOType') == 'io_parallel':
        source = _precision(get_input_layers(node)[0])  # the same array, reinterpreted
        return int(source.signed), source.integer, source.width - source.integer
    fused = case.fused_into(node)
    name = fused.name if fused is not None else node.name
    k, integer, f = case.rules.tensor_kif(name)
    if fused is not None and not (fused.RND == 'TRN' and fused.SAT == 'WRAP'):  # the quantizer's own type
        k, i, f = (int(a.ravel()[0]) for a in case.rules.narrowed[fused.name])
        k, integer, f = k, k + i, max(k + i + f, 1) - k - i
    if _padded_max_pool_reads(case.raw.graph[name]) and k == 0:  # padding: the value whose top bit is set
        k, integer = 1, integer + 1
    return k, integer, f


def check_types(case: Case) -> None:
    """Sign, integer and fractional bits of every tensor equal ``min(produced, requested)`` by the rules (the
    quantizer format where one was fused into the layer), neither narrower nor wider."""
    for node in case.graph.graph.values():
        precision = _precision(node)
        found = (int(precision.signed), precision.integer, precision.width - precision.integer)
        expected = expected_type(case, node)
        assert found == expected, f'{node.name} ({precision}): (k, I, f) {found}, by the rules {expected}'


def check_masks(case: Case) -> None:
    """The per-element formats our explicit quantizers cast to: the exported ones, narrowed only where no input
    value can overflow them."""
    quantizers = [n for n in case.graph.graph.values() if isinstance(n, hb.HGQFixedPointQuantizer)]
    for node in quantizers:
        if node.attributes.get('hgq_output_copy', False):
            continue
        k, i, f = case.rules.narrowed[node.name]
        expected = (k, k + i + f, k + i)
        for found, want, what in zip(node.mask_kbi, expected, ('k', 'width', 'integer bits'), strict=True):
            found = np.broadcast_to(np.asarray(found)[0], want.shape)
            assert np.array_equal(found, want), f'{node.name}: {what} {found.ravel()}, by the rules {want.ravel()}'


def check_reach(case: Case) -> None:
    """The inputs overflow WRAP and saturate SAT quantizers, and both narrowed and kept formats occur."""
    quantizers = [n for n in case.raw.graph.values() if isinstance(n, hb.HGQFixedPointQuantizer)]
    narrowed = [np.any(np.not_equal(case.rules.narrowed[n.name], exported_kif(n))) for n in quantizers]
    assert any(narrowed) and not all(narrowed)
    changed = 0
    for node in quantizers:
        source = case.values[node.inputs[0]] if node.inputs[0] in case.values else None
        if source is not None:
            changed += int(not np.array_equal(source, case.values[node.name]))
    assert changed >= 2


# -- tests -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('name', list(CASES))
def test_every_precision_of_a_converted_model(name: str, tmp_path: Path) -> None:
    """Types by the rules, quantizer masks, values; one test per model (not one per check on a shared fixture), so
    that a mutation run, which picks the tests that run a mutated line, picks the checks with the conversion."""
    build, seed, settings = CASES[name]
    case = Case(build, seed, tmp_path, **settings)
    check_reach(case)
    check_types(case)
    check_masks(case)
    check_values(case)


def test_a_plain_keras_model_keeps_hls4ml_types(tmp_path: Path) -> None:
    """Our passes leave a model without H-layers alone: a padded max pooling of a plain model keeps the default
    precision on its input (the signed-padding pass acts on graphs from H-layers only)."""
    import hls4ml

    model = keras.Sequential(
        [keras.Input((7, 7, 1)), keras.layers.Conv2D(2, 3), keras.layers.MaxPooling2D(2, padding='same')]
    )
    config = {'Model': {'Precision': 'fixed<16,6>', 'ReuseFactor': 1}}
    graph = hls4ml.converters.convert_from_keras_model(
        model, output_dir=str(tmp_path), backend='Vitis', io_type='io_parallel', hls_config=config
    )
    pooling = next(n for n in graph.graph.values() if isinstance(n, Pooling2D))
    assert pooling.get_attr('pad_bottom') or pooling.get_attr('pad_right')  # 5 x 5 in windows of 2: padded
    precision = pooling.get_input_variable().type.precision
    assert (precision.signed, precision.width, precision.integer) == (True, 16, 6)
