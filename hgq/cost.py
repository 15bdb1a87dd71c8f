"""Hardware-cost estimate in LUTs: EBOPs plus the terms EBOPs leaves out, fitted against yosys.

EBOPs count ``bits(a) * bits(w)`` per multiplication. In distributed arithmetic (what ``hgq.synth`` and hls4ml's
``distributed_arithmetic`` strategy build) every multiplication by a constant becomes shifted additions, and the
LUTs also pay for what EBOPs ignore: one adder input per non-zero weight (as wide as the activation), the growth of
the partial sums by the width of the weight, and the requantization (rounding, ``relu``, wrap/saturation) of every
activation, and the comparators of max pooling. :func:`cost_terms` counts these from the model, the same way as
EBOPs (kernel layers through their own linear operation, so convolutions count every output position, as the fully
parallel logic does), but only for the logic that reaches an output: synthesis removes what does not (a
convolution position that a ``valid`` pooling window leaves out, a channel whose next-layer weights are all zero,
an element the next quantizer gives 0 bits), so the terms leave it out too (:func:`live_masks`).

====================  ======================================================================================
term                  per kernel layer (``nz``: 1 where the quantized weight or the activation is non-zero)
====================  ======================================================================================
``ebops``             ``sum op(bits(a), bits(w))`` (all output positions; other H-layers: their EBOPs)
``adder_bits``        ``sum op(bits(a), nz(w))``: width of the addends, one per non-zero weight
``weight_bits``       ``sum op(nz(a), bits(w))``: growth of the partial sums by the weights' spans
``act_bits``          ``sum bits(a)`` over every activation quantizer but the model input's: requantization
``pool_bits``         ``sum bits(a)`` over every window of a max pooling layer: its comparators and multiplexers
``sat_round_bits``    ``sum width(x)`` over every element a saturating (``SAT``, ``SAT_SYM``) or ties-to-even
                      (``RND_CONV``) quantizer requantizes inside the logic: the width of the value it reads (a
                      kernel layer's accumulator, or an ``HQuantize`` output), which its comparator and its tie and
                      increment logic span
``sat_round_in_bits`` the same for a quantizer that reads the model input: the width of its input port
====================  ======================================================================================

Truncation, wrapping and round-half-up cost no logic of their own (wiring, or a constant folded into the adders),
so ``act_bits`` alone prices them; saturation and ties to even compare and increment the whole incoming value. The
incoming width is the accumulator's (its range from the input formats and the quantized weights and bias, its
fractional bits from the finest input-weight product) where the quantizer reads a kernel layer's output (through
``Flatten``/``Reshape`` at most), the ``HQuantize`` format where it reads one, or the input port's, as
:func:`hgq.rtl.trace.trace_model` lays it out (signed, one integer bit more, two fractional bits more), where it
reads the model input. A port is counted apart: most of its extra bits are a fixed margin (sign, one integer bit, a
rounding and a sticky bit) that costs less per bit than an accumulator's carries. Behind other layers (pooling,
activations, merges) the value is already quantized and is not counted; a quantizer that holds the incoming format
whole is wiring and is not counted either.

:data:`LUT_COEFFICIENTS` (fitted by ``benchmarks/fit_cost.py`` on trained models synthesized with yosys, no
intercept) turn the terms into LUTs: :func:`lut_estimate`. :func:`lut_cost` is the same sum on the differentiable
bit maps, usable as a training penalty (:class:`LUTPenalty`).

Examples
--------
>>> import hgq.cost
>>> hgq.cost.lut_estimate(model)                 # doctest: +SKIP
5123.0
>>> hgq.cost.cost_terms(model)                   # doctest: +SKIP
{'ebops': 4100.0, 'adder_bits': 2210.0, 'weight_bits': 1830.0, 'act_bits': 120.0, 'pool_bits': 0.0, ...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.ebops import all_layers, h_layers
from hgq.layers.activation import HActivation
from hgq.layers.base import HLayer
from hgq.layers.batchnorm import HBatchNormalization
from hgq.layers.conv import HConv
from hgq.layers.kernel import HKernelLayer
from hgq.layers.merge import HConcatenate, HMerge
from hgq.layers.pooling import HGlobalAveragePooling, HPooling
from hgq.layers.quantize import HQuantize
from hgq.layers.windows import sliding_windows
from hgq.quantizer import ActivationQuantizer

__all__ = ['COST_TERMS', 'LUT_COEFFICIENTS', 'cost_terms', 'lut_estimate', 'lut_cost', 'LUTPenalty', 'LUTLogger']
__all__ += ['live_masks']

COST_TERMS = ('ebops', 'adder_bits', 'weight_bits', 'act_bits', 'pool_bits', 'sat_round_bits', 'sat_round_in_bits')

#: LUTs per unit of each term: fitted by ``benchmarks/fit_cost.py`` against yosys ``synth_xilinx -family xcup``
#: (see benchmarks/README.md for the models and the errors).
LUT_COEFFICIENTS: dict[str, float] = {
    'ebops': 0.285,
    'adder_bits': 0.5033,
    'weight_bits': 0.8611,
    'act_bits': 0.0,
    'pool_bits': 1.2806,
    'sat_round_bits': 2.7627,
    'sat_round_in_bits': 0.5058,
}


def _input_quantizers(model: keras.Model) -> set[int]:
    """Ids of the quantizers that read a model input directly (their formatting happens outside the logic)."""
    inputs = {id(t) for t in getattr(model, 'inputs', None) or []}
    ids = set()
    for layer in h_layers(model):
        try:
            tensors = layer.input if isinstance(layer.input, list | tuple) else [layer.input]
        except (AttributeError, ValueError):  # a layer of a subclassed model: no symbolic input
            continue
        for q, t in zip(layer.activation_quantizers, tensors, strict=False):
            if id(t) in inputs:
                ids.add(id(q))
    if isinstance(model, keras.Sequential):
        first = next(iter(h_layers(model)), None)
        if first is not None:
            ids.add(id(first.activation_quantizers[0]))
    return ids


# -- dead logic: which elements reach an output -----------------------------------------------------------------------

_ELEMENTWISE = (HQuantize, HActivation, HBatchNormalization, keras.layers.Dropout, keras.layers.ReLU)
_ELEMENTWISE += (keras.layers.Activation,)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


# (layer, input tensors, output tensor) per layer, in call order
_Graph = list[tuple[keras.layers.Layer, list[Any], Any]]


def _graph(model: keras.Model) -> _Graph | None:
    """``(layer, input tensors, output tensor)`` in call order, for a model whose layers are each called once.

    Sequential and functional models alike (a built Sequential model has symbolic inputs and outputs too); a
    functional model may branch and merge. A Sequential model is the chain of its layers: a loaded one has called
    its first layers once more for every layer added after them (``layer.input`` shows the first of those calls,
    not the model's graph). None for other models (subclassed, nested models, shared layers, several inputs or
    outputs).
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    if not layers or any(isinstance(layer, keras.Model) for layer in layers):
        return None
    if len({id(layer) for layer in layers}) != len(layers):  # a layer called twice in the model (shared)
        return None
    try:
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            return None
        if isinstance(model, keras.Sequential):
            tensors = [model.inputs[0], *(layer.output for layer in layers[:-1]), model.outputs[0]]
            return [(layer, [tensors[n]], tensors[n + 1]) for n, layer in enumerate(layers)]
        graph = [(layer, _as_list(layer.input), layer.output) for layer in layers]
    except (AttributeError, ValueError):  # a subclassed model: no symbolic graph
        return None
    return graph if _is_model_graph(graph, model.inputs[0], model.outputs[0]) else None


def _is_model_graph(graph: _Graph, model_input: Any, model_output: Any) -> bool:
    """Whether the layers' first calls (what ``layer.input`` and ``layer.output`` show) are the model's whole graph.

    Traced back from the model output, every tensor must be the model input or the output of a layer's first call,
    and every layer must be met. A layer called twice in the model (shared), or first called in another model,
    fails: the model holds a tensor that no first call made. (Keras has no public count of a layer's calls.)
    """
    made_by = {id(output): n for n, (_, _, output) in enumerate(graph)}
    met: set[int] = set()
    pending = [model_output]
    while pending:
        tensor = pending.pop()
        if tensor is model_input:
            continue
        n = made_by.get(id(tensor))
        if n is None:
            return False
        if n not in met:
            met.add(n)
            pending.extend(graph[n][1])
    return len(met) == len(graph)


def _per_sample(tensor: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.shape[1:])


def _window_edges(layer: HConv | HPooling, in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (output position, kernel offset, input position) pair of a windowed layer, as flat indices."""
    rank = layer.rank
    kernel = layer.kernel_size if isinstance(layer, HConv) else layer.pool_size
    _, windows = sliding_windows(in_shape[:rank], kernel, layer.strides, layer.padding)
    edges = [
        (n, offset, int(np.ravel_multi_index(pos, in_shape[:rank])))
        for n, (_, positions, offsets) in enumerate(windows)
        for pos, offset in zip(positions, offsets, strict=True)
    ]
    return tuple(np.array(column, dtype=np.int64) for column in zip(*edges, strict=True))  # type: ignore[return-value]


def _used_inputs(layer: keras.layers.Layer, live: Any, bits_w: Any) -> list[Any] | None:
    """Per input of ``layer``: 1 where an element reaches a live output element (its own bitwidth aside), else 0.

    ``None`` for a layer this analysis does not follow (everything before it then counts as live).
    """
    if isinstance(layer, HMerge):
        return _merge_used(layer, live)
    in_shape = _per_sample(layer.input)
    if isinstance(layer, keras.layers.Flatten | keras.layers.Reshape):
        return [ops.reshape(live, in_shape)]
    if isinstance(layer, _ELEMENTWISE):
        return [live]
    if isinstance(layer, HGlobalAveragePooling):
        return [ops.broadcast_to(ops.reshape(live, (in_shape[-1],)), in_shape)]
    if isinstance(layer, HKernelLayer) and not isinstance(layer, HConv):
        used = ops.matmul(live, ops.transpose(_nonzero(bits_w)))
    elif isinstance(layer, HConv | HPooling):
        out_index, offset, in_index = _window_edges(layer, in_shape)
        flat = ops.reshape(live, (-1, in_shape[-1] if isinstance(layer, HPooling) else layer.filters))
        if isinstance(layer, HConv):  # output position x offset -> input channel, through non-zero weights
            nz_w = ops.reshape(_nonzero(bits_w), (-1, in_shape[-1], layer.filters))
            flat = ops.reshape(ops.einsum('po,kco->pkc', flat, nz_w), (-1, in_shape[-1]))
            gathered = ops.take(flat, out_index * int(nz_w.shape[0]) + offset, axis=0)
        else:
            gathered = ops.take(flat, out_index, axis=0)
        n_positions = int(np.prod(in_shape[:-1]))
        used = ops.reshape(ops.segment_sum(gathered, in_index, num_segments=n_positions), in_shape)
    else:
        return None
    return [_nonzero(used)]


def _merge_used(layer: HMerge, live: Any) -> list[Any]:
    """Elementwise merges: every input element under a live output is used; a concatenation splits ``live``."""
    shapes = [_per_sample(t) for t in _as_list(layer.input)]
    if not isinstance(layer, HConcatenate):
        return [ops.broadcast_to(live, shape) for shape in shapes]
    axis = layer.axis if layer.axis < 0 else layer.axis - 1  # per-sample axis
    sizes = np.cumsum([shape[axis] for shape in shapes])[:-1].tolist()
    return list(ops.split(live, sizes, axis=axis))


def _nonzero(x: Any) -> Any:
    """1.0 where ``x > 0``, else 0.0, without gradient (a mask)."""
    return ops.stop_gradient(ops.cast(ops.greater(x, 0), 'float32'))


def _kernel_bits(layer: HKernelLayer, exact: bool) -> Any:
    kernel = layer.float_kernel_and_bias()[0]
    return (
        layer.kernel_quantizer.exact_bits(kernel).astype(np.float32) if exact else layer.kernel_quantizer.bits(kernel)
    )


def _input_bits(layer: HLayer, quantizer: Any, exact: bool) -> Any:
    return layer.input_bits_exact(quantizer).astype(np.float32) if exact else quantizer.bits()


def _live_masks(model: keras.Model, exact: bool) -> dict[int, tuple[Any, list[Any]]]:
    """Per layer id: (live output elements, used elements of each input) as 0/1 maps of the per-sample shapes.

    Walks the layers backwards from the output. A tensor read by several layers is live where any of them uses it.
    A layer the analysis does not follow makes all of its inputs live (and is left out of the result).
    """
    graph = _graph(model)
    if graph is None:
        return {}
    masks: dict[int, tuple[Any, list[Any]]] = {}
    # id of a tensor -> its live elements, from the layers that read it (the model output: all)
    live_of: dict[int, Any] = {id(model.outputs[0]): ops.ones(_per_sample(model.outputs[0]))}
    for layer, inputs, output in reversed(graph):
        live = live_of.get(id(output), ops.zeros(_per_sample(output)))  # read by no layer: drives nothing
        bits_w = _kernel_bits(layer, exact) if isinstance(layer, HKernelLayer) else None
        used = _used_inputs(layer, live, bits_w)
        if used is None:
            used_upstream = [ops.ones(_per_sample(t)) for t in inputs]
        else:
            masks[id(layer)] = (live, used)
            quantizers = layer.activation_quantizers if isinstance(layer, HLayer) else []
            used_upstream = used
            if len(quantizers) == len(used):  # an element its input quantizer gives 0 bits drives nothing
                used_upstream = [
                    u * _nonzero(_input_bits(layer, q, exact)) for u, q in zip(used, quantizers, strict=True)
                ]
        for tensor, u in zip(inputs, used_upstream, strict=True):
            key = id(tensor)
            live_of[key] = ops.maximum(live_of[key], u) if key in live_of else u
    return masks


def live_masks(model: keras.Model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Which elements of each layer reach a model output: ``{layer name: (live outputs, used inputs)}``.

    An output element is live if some model output depends on it: through a non-zero quantized weight, a window
    of a convolution or pooling, a merge (``HAdd``, ``HSubtract``, ``HMultiply``: elementwise; ``HConcatenate``:
    its slice), and quantizers that give it at least one bit; a tensor read by several layers is live where any of
    them uses it. ``used inputs`` are the input elements a live output reads (before the layer's own input
    quantizer): one array, or a tuple with one per input of a merge. Followed for Sequential and functional models
    (one input, one output, each layer called once); a layer it cannot follow (softmax, custom layers) makes its
    inputs live, and is missing from the result. Models of other shapes give ``{}``: all their logic counts as live.

    Examples
    --------
    >>> live, used = live_masks(model)['h_conv2d']   # doctest: +SKIP
    >>> live.shape, used.shape                       # doctest: +SKIP
    ((13, 13, 4), (28, 28, 1))
    """
    names = {id(layer): layer.name for layer in all_layers(model)}

    def boolean(x: Any) -> np.ndarray:
        return ops.convert_to_numpy(x).astype(bool)

    return {
        names[key]: (boolean(live), boolean(used[0]) if len(used) == 1 else tuple(boolean(u) for u in used))
        for key, (live, used) in _live_masks(model, exact=True).items()
    }


# -- the terms --------------------------------------------------------------------------------------------------------


def _kernel_terms(layer: HKernelLayer, exact: bool, live: Any) -> dict[str, Any]:
    bits_in = ops.expand_dims(_input_bits(layer, layer.input_quantizer, exact), 0)
    bits_w = _kernel_bits(layer, exact)
    # 1 where non-zero: exact on integer bit counts; the straight-through rounding passes gradients to bits >= 0
    nz_in, nz_w = ops.clip(bits_in, 0.0, 1.0), ops.clip(bits_w, 0.0, 1.0)
    return {
        'ebops': ops.sum(layer.apply_kernel(bits_in, bits_w) * live),
        'adder_bits': ops.sum(layer.apply_kernel(bits_in, nz_w) * live),
        'weight_bits': ops.sum(layer.apply_kernel(nz_in, bits_w) * live),
    }


def _pool_bits(layer: HPooling, exact: bool, live: Any) -> Any:
    """Sum of the input widths over every live window of a max pooling layer (its comparators)."""
    in_shape = _per_sample(layer.input)
    out_index, _, in_index = _window_edges(layer, in_shape)
    bits = ops.reshape(ops.broadcast_to(_input_bits(layer, layer.input_quantizer, exact), in_shape), (-1, in_shape[-1]))
    live = ops.reshape(ops.broadcast_to(live, _per_sample(layer.output)), (-1, in_shape[-1]))
    return ops.sum(ops.take(bits, in_index, axis=0) * ops.take(live, out_index, axis=0))


# -- saturating and ties-to-even requantization ----------------------------------------------------------------------

_NO_BITS = -1e4  # fractional bits of "no contribution" (a finite stand-in for -inf)


def _is_logic_requantizer(q: Any) -> bool:
    """Whether requantizing with ``q`` is logic of its own: saturation, or rounding ties to even."""
    return isinstance(q, ActivationQuantizer) and (q.overflow_mode != 'WRAP' or q.round_mode == 'RND_CONV')


def _kif(q: ActivationQuantizer, exact: bool) -> tuple[Any, Any, Any]:
    """``(k, i, f)`` of every element (per-sample shape) as float tensors, without gradient."""
    if exact:
        return tuple(ops.convert_to_tensor(a.astype(np.float32)) for a in q.kif())  # type: ignore[return-value]
    k, i = q.ki()
    return tuple(ops.stop_gradient(ops.broadcast_to(a, q.shape)) for a in (k, i, q.f_int))  # type: ignore


def _port_kif(q: ActivationQuantizer, exact: bool) -> tuple[Any, Any, Any]:
    """Format of the input ports the logic tracer lays out for a quantizer that reads the model input.

    Signed, one integer bit above the widest element, the element's fractional bits plus 2 (ties to even: a
    rounding bit and a sticky bit) or 1 (half up).
    """
    k, i, f = _kif(q, exact)
    extra = 2.0 if q.round_mode == 'RND_CONV' else 1.0 if q.round_mode == 'RND' else 0.0
    return ops.ones_like(k), ops.zeros_like(i) + ops.max(i) + 1.0, f + extra


def _ceil_log2(x: Any) -> Any:
    return ops.ceil(ops.log2(ops.maximum(x, 1e-30)))


def _accumulator_kif(layer: HKernelLayer, exact: bool) -> tuple[Any, Any, Any]:
    """Format ``(k, i, f)`` of every output element of a kernel layer (after its ``relu``), per-sample shape.

    The range is the interval sum of the quantized weights and bias over the input formats' ranges; the fractional
    bits are those of the finest product of a non-zero weight and a live input (for a convolution: the finest input
    times the finest weight of the output channel, a bound). No gradient.
    """
    k, i, f = _kif(layer.input_quantizer, exact)
    live = ops.greater(k + i + f, 0.0)
    hi = ops.expand_dims(ops.where(live, 2.0**i - 2.0 ** (-f), 0.0), 0)
    lo = ops.expand_dims(ops.where(live, -k * 2.0**i, 0.0), 0)
    kernel = ops.stop_gradient(ops.convert_to_tensor(layer.qkernel))
    positive, negative = ops.relu(kernel), -ops.relu(-kernel)
    hi_out = (layer.apply_kernel(hi, positive) + layer.apply_kernel(lo, negative))[0]
    lo_out = (layer.apply_kernel(lo, positive) + layer.apply_kernel(hi, negative))[0]
    f_w = ops.stop_gradient(ops.broadcast_to(layer.kernel_quantizer.f_int, kernel.shape))
    f_w = ops.where(ops.not_equal(kernel, 0.0), f_w, _NO_BITS)
    f_in = ops.where(live, f, _NO_BITS)
    if isinstance(layer, HConv):
        f_out = ops.max(f_in) + ops.max(ops.reshape(f_w, (-1, layer.units_out)), axis=0)
    else:
        f_out = ops.max(ops.expand_dims(f_in, -1) + f_w, axis=-2)
    bias = layer.qbias
    if bias is not None:
        bias = ops.stop_gradient(ops.convert_to_tensor(bias))
        hi_out, lo_out = hi_out + bias, lo_out + bias
        f_b = ops.stop_gradient(ops.broadcast_to(layer.bias_quantizer.f_int, bias.shape))
        f_out = ops.maximum(f_out, ops.where(ops.not_equal(bias, 0.0), f_b, _NO_BITS))
    f_out = ops.broadcast_to(f_out, hi_out.shape)
    f_out = ops.where(f_out > _NO_BITS / 2, f_out, 0.0)  # nothing but zeros: a constant 0
    if layer.activation == 'relu':
        hi_out, lo_out = ops.relu(hi_out), ops.relu(lo_out)
    negative_part = ops.less(lo_out, 0.0)
    i_out = ops.maximum(_ceil_log2(hi_out + 2.0 ** (-f_out)), ops.where(negative_part, _ceil_log2(-lo_out), _NO_BITS))
    constant = ops.less_equal(hi_out, lo_out)  # a constant (nothing but zeros reaches it): no bits
    k_out = ops.where(constant, 0.0, ops.cast(negative_part, 'float32'))
    return k_out, ops.where(constant, 0.0, i_out), ops.where(constant, 0.0, f_out)


def _producers(model: keras.Model) -> dict[int, list[keras.layers.Layer | None]]:
    """Id of a layer -> the layer that made each of its inputs (None: the model input); empty if not followed."""
    graph = _graph(model) or []
    made_by = {id(output): layer for layer, _, output in graph}
    return {id(layer): [made_by.get(id(t)) for t in inputs] for layer, inputs, _ in graph}


def _incoming_kif(
    layer: keras.layers.Layer | None, producers: dict[int, list[keras.layers.Layer | None]], exact: bool
) -> tuple[Any, ...] | None:
    """Format of the output of ``layer`` if it is a kernel layer or an ``HQuantize`` (seen through Flatten and
    Reshape), else None."""
    shape = None if layer is None else _per_sample(layer.output)
    while isinstance(layer, keras.layers.Flatten | keras.layers.Reshape):
        layer = producers.get(id(layer), [None])[0]
    if isinstance(layer, HKernelLayer):
        kif = _accumulator_kif(layer, exact)
    elif isinstance(layer, HQuantize):
        kif = _kif(layer.input_quantizer, exact)
    else:
        return None
    return tuple(ops.reshape(a, shape) for a in kif)


def _requantized_width(kif_in: tuple[Any, Any, Any], q: ActivationQuantizer, exact: bool) -> Any:
    """Width of every incoming element where ``q`` saturates or rounds ties to even, else 0.

    A format ``q`` holds whole (no bit to round off, no integer bit or sign to clip) is wiring.
    """
    k_in, i_in, f_in = kif_in
    k, i, f = _kif(q, exact)
    width = ops.relu(k_in + i_in + f_in)
    rounds = q.round_mode == 'RND_CONV'
    needed = ops.logical_and(ops.greater(f_in, f), rounds)
    if q.overflow_mode != 'WRAP':
        needed = ops.logical_or(needed, ops.logical_or(ops.greater(i_in, i), ops.greater(k_in, k)))
    return ops.where(needed, width, 0.0)


def _sat_round_bits(layer: HLayer, n: int, reads_input: bool, producers: dict, exact: bool, used: Any) -> Any:
    """Incoming width summed over the elements the ``n``-th activation quantizer of ``layer`` saturates or rounds
    ties to even (0 where it is wiring): ``sat_round_in_bits`` if it reads the model input, else ``sat_round_bits``."""
    q = layer.activation_quantizers[n]
    if not _is_logic_requantizer(q):
        return 0.0
    if reads_input:
        kif_in = _port_kif(q, exact)
    else:
        made_by = producers.get(id(layer))
        if made_by is None:  # a model the graph analysis does not follow
            return 0.0
        producer = made_by[n] if len(made_by) == len(layer.activation_quantizers) else made_by[0]
        kif_in = _incoming_kif(producer, producers, exact)
        if kif_in is None:
            return 0.0
    nz_out = ops.clip(_input_bits(layer, q, exact), 0.0, 1.0)
    return ops.sum(ops.stop_gradient(_requantized_width(kif_in, q, exact)) * nz_out * used)


def _terms(model: keras.Model, exact: bool) -> dict[str, Any]:
    if not model.built:
        raise ValueError(f'model {model.name!r} is not built; call it on data or give it an Input first')
    totals: dict[str, Any] = dict.fromkeys(COST_TERMS, 0.0)
    skip = _input_quantizers(model)
    masks = _live_masks(model, exact)
    producers = _producers(model)
    for layer in all_layers(model):
        if not isinstance(layer, HLayer):
            continue
        live, used = masks.get(id(layer), (1.0, None))
        if isinstance(layer, HKernelLayer):
            batch_live = ops.expand_dims(live, 0) if id(layer) in masks else 1.0
            for name, value in _kernel_terms(layer, exact, batch_live).items():
                totals[name] = totals[name] + value
        else:
            totals['ebops'] = totals['ebops'] + (layer.exact_ebops() if exact else layer.ebops())
        if isinstance(layer, HPooling) and layer.mode == 'max':
            totals['pool_bits'] = totals['pool_bits'] + _pool_bits(layer, exact, live)
        quantizers = layer.activation_quantizers
        for n, q in enumerate(quantizers):
            u = 1.0 if used is None else used[n] if len(used) == len(quantizers) else used[0]
            term = 'sat_round_in_bits' if id(q) in skip else 'sat_round_bits'
            totals[term] = totals[term] + _sat_round_bits(layer, n, id(q) in skip, producers, exact, u)
            if id(q) not in skip:
                totals['act_bits'] = totals['act_bits'] + ops.sum(_input_bits(layer, q, exact) * u)
    return totals


def cost_terms(model: keras.Model) -> dict[str, float]:
    """The cost terms of a built model (see the module docstring), from the quantized weights and exact bits.

    Exact after :func:`hgq.calibrate`, like :func:`hgq.ebops`.

    Examples
    --------
    >>> sorted(cost_terms(model))                # doctest: +SKIP
    ['act_bits', 'adder_bits', 'ebops', 'pool_bits', 'weight_bits']
    """
    return {name: float(ops.convert_to_numpy(value)) for name, value in _terms(model, exact=True).items()}


def _coefficients(coefficients: Mapping[str, float] | None) -> Mapping[str, float]:
    coefficients = LUT_COEFFICIENTS if coefficients is None else coefficients
    unknown = set(coefficients) - set(COST_TERMS)
    if unknown:
        raise ValueError(f'unknown cost terms {sorted(unknown)}; expected some of {COST_TERMS}')
    return coefficients


def lut_estimate(model: keras.Model, coefficients: Mapping[str, float] | None = None) -> float:
    """Estimated LUTs of the model's fully parallel logic: ``sum(coefficient * term)``, no intercept.

    Parameters
    ----------
    model : keras.Model
        A built (and, for exact numbers, calibrated) model of H-layers.
    coefficients : mapping, optional
        LUTs per unit of each term; default :data:`LUT_COEFFICIENTS`.

    Examples
    --------
    >>> lut_estimate(model)                      # doctest: +SKIP
    5123.0
    """
    terms = cost_terms(model)
    return float(sum(c * terms[name] for name, c in _coefficients(coefficients).items()))


def lut_cost(model: keras.Model, coefficients: Mapping[str, float] | None = None) -> Any:
    """:func:`lut_estimate` on the differentiable bit maps (a scalar tensor), for use in a training loss.

    Dead logic is found from the current bit maps and weights, as a 0/1 mask without gradient: the penalty pushes on
    the bits of live logic only. After :func:`hgq.calibrate` it equals :func:`lut_estimate` where every weight's
    fractional bits reach down to its lowest set bit; otherwise it is larger (the trainable width bounds the span).
    """
    terms = _terms(model, exact=False)
    total = 0.0
    for name, c in _coefficients(coefficients).items():
        if c:
            total = total + c * terms[name]
    return ops.convert_to_tensor(total)


class LUTPenalty(keras.losses.Loss):
    """A loss plus ``weight * lut_cost(model)``: train against estimated LUTs instead of (or besides) EBOPs.

    Parameters
    ----------
    loss : keras.losses.Loss or str
        The task loss.
    model : keras.Model
        The model being trained (its bit maps enter the penalty).
    weight : float
        LUTs are multiplied by this (like ``beta`` for EBOPs; set the layers' ``beta=0`` to use only this penalty).
    coefficients : mapping, optional
        LUTs per unit of each cost term; default :data:`LUT_COEFFICIENTS`.

    Examples
    --------
    >>> loss = LUTPenalty(keras.losses.SparseCategoricalCrossentropy(from_logits=True), model, 1e-5)  # doctest: +SKIP
    >>> model.compile('adam', loss)              # doctest: +SKIP
    """

    def __init__(
        self,
        loss: Any,
        model: keras.Model,
        weight: float,
        coefficients: Mapping[str, float] | None = None,
        name: str = 'lut_penalty',
    ) -> None:
        super().__init__(name=name)
        if weight < 0:
            raise ValueError(f'LUTPenalty: weight must be >= 0, got {weight}')
        self.loss = keras.losses.get(loss)
        self.model = model
        self.weight = float(weight)
        self.coefficients = dict(_coefficients(coefficients))

    def call(self, y_true: Any, y_pred: Any) -> Any:
        task = self.loss(y_true, y_pred)
        return task + self.weight * ops.cast(lut_cost(self.model, self.coefficients), task.dtype)


class LUTLogger(keras.callbacks.Callback):
    """Log :func:`lut_estimate` as ``lut_estimate`` at the end of every epoch, next to ``ebops``.

    Examples
    --------
    >>> import hgq.cost
    >>> callbacks = [hgq.callbacks.EBOPsLogger(), hgq.cost.LUTLogger()]
    >>> # model.fit(x, y, callbacks=callbacks) -> history.history['lut_estimate']
    """

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs['lut_estimate'] = lut_estimate(self.model)
