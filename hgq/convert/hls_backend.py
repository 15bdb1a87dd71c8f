"""Our extensions of hls4ml's Vivado/Vitis backends, registered once when :mod:`hgq.convert` is imported.

Our handlers emit :class:`HGQFixedPointQuantizer`, a subclass of hls4ml's ``FixedPointQuantizer`` IR layer, so
hls4ml's ``bit_exact`` flow, quantizer fusion, distributed-arithmetic passes and code generation all apply to it.
This module closes the gaps of hls4ml 1.3.0 for these quantizers (hls4ml's own ``FixedPointQuantizer`` layers,
e.g. from HGQ2 models, are left as they are):

- The ``bit_exact`` pass lets the layer before a WRAP quantizer wrap its result to the quantizer's integer bits.
  That is exact only for rounding modes that commute with wrapping; ``TRN_ZERO``, ``RND_ZERO`` and ``RND_INF``
  round according to the sign, which wrapping changes. :func:`request_kif` asks for the full range instead.
- The ``bit_exact`` pass narrows a SAT quantizer's fractional bits to those of its input even where values
  saturate, which moves the saturation bound ``2**i - 2**-f``. :func:`produce_kif` narrows a quantizer (SAT or
  WRAP) only where no value can overflow it.

- Fusion of a uniform quantizer into the layer before it sets that layer's result type. A quantizer whose
  every element has zero width would become a 1-bit type (values 0.5 instead of 0), and a quantizer fused into
  a tensor that already received another quantizer's type overwrites it (``HQuantize`` followed by ``HDense``).
  :class:`GuardedFuseFixedPointQuantizer` leaves those quantizers as explicit casts.
- With ``io_stream`` hls4ml raises for every quantizer it cannot fuse. :class:`StreamQuantizers` replaces them
  with :class:`HGQStreamQuantizer`, implemented by our header ``hgq_quantizer_stream.h``: one pack (the channels
  of one pixel) per clock cycle, each element cast to its own format.
- The ``bit_exact`` pass narrows the sign bit and the integer bits of a tensor separately, so a signed tensor
  cast to an unsigned type (or the reverse) can wrap with a smaller modulus than the quantizer that reads it.
  :class:`WidenWrappedTypes` restores the integer bits ``min(produced, requested)`` of ``k + i``.
- hls4ml's distributed-arithmetic backend fuses a quantizer into the DA kernel after it; a second quantizer
  before the first (``HQuantize`` then ``HDense``) would be fused into the same kernel again, declaring its
  variables twice. :class:`GuardedFuseQuantizerIntoDA` fuses one quantizer per kernel.
- ``bit_exact`` sizes a tensor by what its readers request, so a model output that also feeds another layer was
  narrowed to that layer's request. :func:`separate_outputs` gives such an output its own pass-through quantizer.
- hls4ml pads max pooling with the value whose top bit is set: the most negative value of a signed type, but the
  largest of an unsigned one (after ``relu``). :class:`SignedMaxPoolPadding` gives such inputs a sign bit.
- Our headers are shipped in :mod:`hgq.hls_templates`; :func:`write_headers` (a pass of the backends' writer
  flows) copies them into projects that use them.

All of this acts only on graphs converted from H-layers (:func:`is_hgq_graph`): a plain hls4ml model converted in
the same process is untouched. :func:`hgq.convert.register` registers it all with hls4ml.

Examples
--------
>>> import hgq.convert  # registers our IR layers, passes, templates and handlers with hls4ml
"""

from __future__ import annotations

import importlib.resources
import shutil
from collections.abc import Sequence
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
from hls4ml.backends.fpga.passes.hgq_proxy_model import ProcessFixedPointQuantizerCall
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.backends.vivado.passes.distributed_arithmetic import FuseQuantizerIntoDALayers
from hls4ml.model.layers import Input, Layer, Pooling1D, Pooling2D, Reshape, Transpose
from hls4ml.model.optimizer import ModelOptimizerPass, OptimizerPass
from hls4ml.model.optimizer.passes.bit_exact import (
    _request_kif,
    get_input_layers,
    get_output_layers,
    requested_kif,
)
from hls4ml.model.optimizer.passes.bit_exact import produce_kif as _cached_produce_kif
from hls4ml.model.optimizer.passes.hgq_proxy_model import FixedPointQuantizer, FuseFixedPointQuantizer
from hls4ml.model.types import FixedPrecisionType

from hgq.fixed_point import fixed_type_string

__all__ = [
    'MASK_ATTR',
    'SIGN_DEPENDENT_ROUNDING',
    'HGQFixedPointQuantizer',
    'HGQStreamQuantizer',
    'request_kif',
    'produce_kif',
    'GuardedFuseFixedPointQuantizer',
    'StreamQuantizers',
    'SignedMaxPoolPadding',
    'WidenWrappedTypes',
    'GuardedFuseQuantizerIntoDA',
    'quantize_body',
    'is_hgq_graph',
    'mark_graph',
    'separate_outputs',
    'header_path',
    'write_headers',
]

MASK_ATTR = 'hgq_mask_kbi'
OUTPUT_COPY_ATTR = 'hgq_output_copy'  # marks the pass-through quantizers of separate_outputs
IR_CLASS = 'HGQFixedPointQuantizer'
# Rounding modes whose result depends on the sign, so that wrapping before rounding changes it.
SIGN_DEPENDENT_ROUNDING = ('TRN_ZERO', 'RND_ZERO', 'RND_INF')
STREAM_HEADER = 'hgq_quantizer_stream.h'
# Every header of hgq.hls_templates, copied into projects converted from H-layers.
HEADERS = (STREAM_HEADER, 'hgq_lut.h', 'hgq_softmax.h')
GRAPH_MARK = 'HGQGraph'
# IR classes that mark a graph as ours (see is_hgq_graph).
HGQ_IR_CLASSES = frozenset({IR_CLASS, 'HGQStreamQuantizer', 'HGQLookupTable', 'HGQSoftmax'})
GUARDED_FUSE_PASS = 'hgq_fuse_fixed_point_quantizer'
STREAM_PASS = 'hgq_stream_quantizers'
MAXPOOL_PASS = 'hgq_signed_maxpool_padding'
WIDEN_PASS = 'hgq_widen_wrapped_types'
DA_FUSE_PASS = 'hgq_fuse_quantizer_into_d_a_layers'


class HGQFixedPointQuantizer(FixedPointQuantizer):
    """IR layer of an H-layer's activation quantizer: hls4ml's ``FixedPointQuantizer`` with our corrections.

    Attributes are those of ``FixedPointQuantizer`` (``mask_kbi``, ``SAT``, ``RND``, ``fusible``, ``overrides``)
    and ``hgq_mask_kbi``, the masks as exported (``bit_exact`` narrows ``mask_kbi`` to what the input can hold).
    """


def request_kif(layer: HGQFixedPointQuantizer) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """The formats a quantizer needs from its input: hls4ml's rule, but the full integer range before a WRAP
    quantizer that rounds according to the sign (wrapping first would flip the sign of some values)."""
    ((k, i, f),) = _request_kif.dispatch(FixedPointQuantizer)(layer)
    if layer.SAT == 'WRAP' and layer.RND in SIGN_DEPENDENT_ROUNDING:
        k, i = np.ones_like(k), np.full_like(i, 126)
    return ((k, i, f),)


def produce_kif(layer: HGQFixedPointQuantizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The formats a quantizer outputs, given what its input can hold; also narrows ``layer.mask_kbi``.

    Where no input value can overflow the quantizer, its integer bits shrink to the input's (plus one where
    rounding up may carry), its fractional bits to the input's and its sign bit to the input's; elsewhere the
    exported format is kept, for WRAP and SAT alike (a narrower SAT format would saturate to another bound).
    """
    k0, b0, i0 = (np.asarray(m, dtype=np.int16)[0] for m in layer.attributes[MASK_ATTR])
    lk, li, lf = _cached_produce_kif(get_input_layers(layer)[0])
    k, i, f, lk, li, lf = np.broadcast_arrays(k0, i0 - k0, b0 - i0, lk, li, lf)
    carry = (lf > f) & (i > li) & ((layer.RND != 'TRN') | (k > 0))
    top = 2.0**i - 2.0**-f
    bottom = -top if layer.SAT == 'SAT_SYM' else -(2.0**i)
    fits = (top >= 2.0**li - 2.0**-lf) & ((k >= lk) & (k * bottom <= lk * -(2.0**li)))
    k = np.where(fits, np.minimum(k, lk), k).astype(np.int16)
    i = np.where(fits, np.minimum(i, li) + carry, i).astype(np.int16)
    f = np.where(fits, np.minimum(f, lf), f).astype(np.int16)
    zero = k + i + f <= 0
    k, i, f = (np.where(zero, 0, a).astype(np.int16) for a in (k, i, f))
    layer.mask_kbi = (k[None], (k + i + f)[None], (k + i)[None])
    return k, i, f


def _is_ours(node: Layer) -> bool:
    return isinstance(node, HGQFixedPointQuantizer)


def is_hgq_graph(model: Any) -> bool:
    """Whether an hls4ml graph was converted from H-layers; our passes act on those graphs only, so plain
    hls4ml models convert exactly as without HGQ.

    A graph is ours if it holds one of our IR layers, or held one when the ``convert`` flow started
    (:func:`mark_graph` records it in the model configuration as ``HGQGraph``: quantizers may be fused away).
    """
    if model.config.get_config_value(GRAPH_MARK, False):
        return True
    return any(_is_hgq_ir(node) for node in model.graph.values())


def _is_hgq_ir(node: Layer) -> bool:
    # hls4ml specializes IR classes per backend (VitisHGQSoftmax), so look through the class hierarchy.
    return any(cls.__name__ in HGQ_IR_CLASSES for cls in type(node).__mro__)


def mark_graph(model: Any) -> bool:
    """First pass of hls4ml's ``convert`` flow: record in the configuration whether the graph is ours."""
    if is_hgq_graph(model):
        model.config.config[GRAPH_MARK] = True
    return True  # applied: not run again in this flow


def _element_line(j: int, k: int, b: int, i: int, rnd: str, sat: str) -> str:
    """Element ``j`` cast to the format with sign ``k``, width ``b`` and integer bits ``i`` (sign included)."""
    if b <= 0:
        return f'out[{j}] = 0;'
    return f'out[{j}] = {fixed_type_string(k, i - k, b - i, rnd, sat)}(in[{j}]);'


def quantize_body(
    mask_kbi: Sequence[np.ndarray],
    shape: Sequence[int],
    pack_size: int,
    rnd: str,
    sat: str,
    indent: str = '        ',
) -> str:
    """C++ statements that quantize pack ``p`` (``in`` -> ``out``) of a streamed tensor of ``shape``.

    Parameters
    ----------
    mask_kbi : (k, B, I) arrays
        Per-element formats, shape ``(1, *s)`` with ``s`` broadcastable to ``shape``.
    shape : tuple of int
        Per-sample tensor shape.
    pack_size : int
        Elements per pack (the stream word); the tensor is read row-major in ``prod(shape) / pack_size`` packs.
    rnd, sat : str
        ap_fixed rounding and overflow mode names (``'RND'``, ``'WRAP'``...).

    Examples
    --------
    >>> k, b, i = (np.array([[1, 0]]), np.array([[4, 0]]), np.array([[2, 0]]))
    >>> print(quantize_body((k, b, i), (3, 2), 2, 'RND', 'WRAP', indent=''))
    out[0] = ap_fixed<4,2,AP_RND,AP_WRAP>(in[0]);
    out[1] = 0;
    """
    n = prod(shape)
    if n % pack_size:
        raise ValueError(f'tensor of shape {tuple(shape)} does not split into packs of {pack_size}')
    rows = [np.broadcast_to(np.asarray(m)[0], shape).reshape(-1, pack_size) for m in mask_kbi]
    groups: dict[bytes, list[int]] = {}
    for p in range(n // pack_size):
        key = np.stack([r[p] for r in rows]).astype(np.int64).tobytes()
        groups.setdefault(key, []).append(p)

    def lines(p: int, pad: str) -> list[str]:
        return [pad + _element_line(j, *(int(r[p, j]) for r in rows), rnd, sat) for j in range(pack_size)]

    if len(groups) == 1:
        return '\n'.join(lines(0, indent))
    out = [f'{indent}switch (p) {{']
    packs = list(groups.values())
    for n_group, members in enumerate(packs):
        last = n_group == len(packs) - 1
        labels = ['default:'] if last else [f'case {p}:' for p in members]
        out += [f'{indent}{label}' for label in labels]
        out += lines(members[0], indent + '    ')
        out.append(f'{indent}    break;')
    out.append(f'{indent}}}')
    return '\n'.join(out)


class HGQStreamQuantizer(Layer):
    """IR layer: heterogeneous activation quantizer on a stream (``hgq::quantize_stream``)."""

    def initialize(self) -> None:
        shape = self.get_input_variable().shape
        self.add_output_variable(shape)
        self.set_attr('n_in', prod(shape))


class GuardedFuseFixedPointQuantizer(FuseFixedPointQuantizer):
    """hls4ml's quantizer fusion, except where it would not be bit-exact for our quantizers.

    Not fused: quantizers whose every element has zero width (fusion would give the tensor a 1-bit type),
    quantizers that would set the type of a tensor that already carries another quantizer's type (consecutive
    quantizers, possibly through ``Reshape``/``Transpose``), and unsigned quantizers read by a padded max pooling
    (:class:`SignedMaxPoolPadding` gives that tensor a sign bit, so a fused cast would wrap modulo twice the
    quantizer's range and keep negative inputs). They stay as explicit per-element casts.
    """

    def match(self, node: Layer) -> bool:
        if _is_ours(node) and node.attributes.get('bit_exact_transformed', False):
            if np.all(np.asarray(node.mask_kbi[1]) <= 0) or _follows_quantizer(node):
                return False
            unsigned = not np.any(np.asarray(node.mask_kbi[0]))
            if unsigned and any(_is_padded_max_pooling(reader) for reader in get_output_layers(node)):
                return False
        return super().match(node)


def _follows_quantizer(node: Layer) -> bool:
    """Whether fusing ``node`` would overwrite the type of a tensor quantized by another quantizer."""
    parent = get_input_layers(node)[0]
    while True:
        if isinstance(parent, FixedPointQuantizer) or parent.attributes.get('_result_t_propagated', False):
            return True
        if not isinstance(parent, (Reshape, Transpose)):
            return False
        parent = get_input_layers(parent)[0]


def _widen_wrapped(node: Layer) -> None:
    precision = node.get_output_variable().type.precision
    if not isinstance(precision, FixedPrecisionType):
        return
    pk, pi, _ = _cached_produce_kif(node)
    rk, ri, _ = requested_kif(node)
    needed = min(int(np.max(pk + pi)), int(np.max(rk + ri)))
    if precision.integer < needed:
        extra = needed - precision.integer
        precision.integer += extra
        precision.width += extra


class WidenWrappedTypes(ModelOptimizerPass):
    """After ``bit_exact``: give every tensor at least ``min(max(k + i) produced, max(k + i) requested)`` integer
    bits (sign included), so that wrapping it is congruent with the wrapping of every quantizer that reads it.

    hls4ml takes ``min`` of ``k`` and of ``i`` separately: a signed producer (``k = 1``, ``i = 1``) read by an
    unsigned WRAP quantizer (``k = 0``, ``i = 2``) got 1 integer bit, wrapping modulo 2 where the quantizer wraps
    modulo 4. Applies to graphs with our quantizers only.
    """

    def __init__(self) -> None:
        super().__init__(WIDEN_PASS, self._transform)

    @staticmethod
    def _transform(model: Any) -> bool:
        nodes = list(model.graph.values())
        if not is_hgq_graph(model):
            return False
        for node in nodes:
            if node.attributes.get('bit_exact_transformed', False) and not isinstance(node, Input):
                _widen_wrapped(node)
        for node in nodes:
            if node.attributes.get(OUTPUT_COPY_ATTR, False):
                node.attributes[MASK_ATTR] = tuple(np.asarray(m).copy() for m in node.mask_kbi)  # as narrowed
            node.attributes.pop('_produce_kif', None)
            node.attributes.pop('_request_kif', None)
        return True  # applied: not run again in this flow


def separate_outputs(model: Any) -> bool:
    """Before ``bit_exact``: give every model output that also feeds another layer its own pass-through quantizer.

    hls4ml's ``bit_exact`` pass sizes a tensor by what the layers reading it request; a model output read by
    another layer was narrowed to that layer's request, and the output differed from Keras. The new quantizer is
    the model output instead: it reads the tensor, requests every bit it can hold (WRAP, TRN, 126 integer and
    fractional bits) and changes no value, so the tensor keeps the full format it is produced in.
    """
    if not is_hgq_graph(model):
        return True
    for position, name in enumerate(list(model.outputs)):
        readers = [node for node in model.graph.values() if name in node.inputs]
        producer = next((node for node in model.graph.values() if name in node.outputs), None)
        if not readers or producer is None:
            continue
        shape = (1, *model.output_vars[name].shape)
        masks = (np.ones(shape, np.int16), np.full(shape, 253, np.int16), np.full(shape, 127, np.int16))
        attributes = {
            'name': f'{producer.name}_output',
            'mask_kbi': masks,
            MASK_ATTR: tuple(m.copy() for m in masks),
            'SAT': 'WRAP',
            'RND': 'TRN',
            'fusible': None,
            'overrides': {},
            OUTPUT_COPY_ATTR: True,
        }
        node = model.make_node(IR_CLASS, attributes['name'], attributes, [name], [f'{name}_output'])
        graph = {}
        for key, value in model.graph.items():
            graph[key] = value
            if key == producer.name:
                graph[node.name] = node
        model.graph = type(model.graph)(graph)
        model.outputs[position] = node.outputs[0]
    return True  # applied: not run again in this flow


class GuardedFuseQuantizerIntoDA(FuseQuantizerIntoDALayers):
    """hls4ml's fusion of a quantizer into the distributed-arithmetic kernel after it, once per kernel."""

    def match(self, node: Layer) -> bool:
        if not super().match(node):
            return False
        if not is_hgq_graph(node.model):
            return True
        return not any('model_inp_q_' in str(n.get_attr('da_codegen', '')) for n in get_output_layers(node))


def _is_padded_max_pooling(node: Layer) -> bool:
    if not isinstance(node, (Pooling1D, Pooling2D)) or node.get_attr('pool_op') != 'Max':
        return False
    return any(node.get_attr(f'pad_{side}', 0) for side in ('top', 'bottom', 'left', 'right'))


class SignedMaxPoolPadding(OptimizerPass):
    """Give the unsigned input of a padded max pooling a sign bit, so that hls4ml's padding value is the minimum.

    Values are unchanged (one more bit); only bit-exact graphs converted from H-layers are touched.
    """

    def match(self, node: Layer) -> bool:
        if not _is_padded_max_pooling(node):
            return False
        if not node.attributes.get('bit_exact_transformed', False) or not is_hgq_graph(node.model):
            return False
        precision = node.get_input_variable().type.precision
        return not getattr(precision, 'signed', True)

    def transform(self, model: Any, node: Layer) -> bool:
        precision = node.get_input_variable().type.precision
        precision.signed = True
        precision.width += 1
        precision.integer += 1
        return False


class StreamQuantizers(OptimizerPass):
    """With ``io_stream``, replace our remaining ``FixedPointQuantizer`` layers by :class:`HGQStreamQuantizer`."""

    def match(self, node: Layer) -> bool:
        return _is_ours(node) and node.model.config.get_config_value('IOType') == 'io_stream'

    def transform(self, model: Any, node: FixedPointQuantizer) -> bool:
        attributes = {MASK_ATTR: node.attributes[MASK_ATTR], 'SAT': node.SAT, 'RND': node.RND}
        new = model.make_node(HGQStreamQuantizer, node.name, attributes, node.inputs.copy(), node.outputs.copy())
        new.get_output_variable().type = node.get_output_variable().type
        new.set_attr('result_t', node.get_output_variable().type)
        model.replace_node(node, new)
        return True


stream_config_template = """struct config{index} : hgq::quantizer_stream_config {{
    static const unsigned n_packs = {n_packs};
    static const unsigned pack_size = {pack_size};
    template <class data_T, class res_T> static void quantize(const data_T &in, res_T &out, unsigned p) {{
        #pragma HLS INLINE
{body}
    }}
}};\n"""


class StreamQuantizerConfigTemplate(LayerConfigTemplate):
    """``config{index}`` of an :class:`HGQStreamQuantizer`, with its generated per-pack ``quantize``."""

    def __init__(self) -> None:
        super().__init__(HGQStreamQuantizer)
        self.template = stream_config_template

    def format(self, node: Layer) -> str:
        in_type = node.get_input_variable().type
        pack_size = int(getattr(in_type, 'n_elem', 0) or 0)
        if pack_size <= 0 or getattr(in_type, 'unpack', False) or getattr(in_type, 'n_pack', 1) != 1:
            raise ValueError(f'{node.name}: HGQ stream quantizer expects a stream of plain packs, got {in_type}')
        shape = node.get_input_variable().shape
        body = quantize_body(node.get_attr(MASK_ATTR), shape, pack_size, node.get_attr('RND'), node.get_attr('SAT'))
        return self.template.format(index=node.index, n_packs=prod(shape) // pack_size, pack_size=pack_size, body=body)


class QuantizerFunctionTemplate(ProcessFixedPointQuantizerCall):
    """io_parallel call of the per-element cast function hls4ml generates for a quantizer (also for ours)."""

    def __init__(self) -> None:
        FunctionCallTemplate.__init__(self, HGQFixedPointQuantizer, include_header=[])
        self.template = '{namespace}::{name}<{input_t}, {output_t}>({input}, {output});'


class StreamQuantizerFunctionTemplate(FunctionCallTemplate):
    """Call of ``hgq::quantize_stream`` for an :class:`HGQStreamQuantizer`."""

    def __init__(self) -> None:
        super().__init__(HGQStreamQuantizer, include_header=[f'nnet_utils/{STREAM_HEADER}'])
        self.template = 'hgq::quantize_stream<{input_t}, {output_t}, {config}>({input}, {output});'

    def format(self, node: Layer) -> str:
        return self.template.format(**self._default_function_params(node))


def header_path(name: str = STREAM_HEADER) -> str:
    """Absolute path of one of our HLS headers inside the installed package."""
    return str(importlib.resources.files('hgq.hls_templates').joinpath(name))


def write_headers(model: Any) -> bool:
    """Copy our headers into ``firmware/nnet_utils`` of a project that uses our layers (writer-flow pass)."""
    if not is_hgq_graph(model):
        return True
    target = Path(model.config.get_output_dir()) / 'firmware' / 'nnet_utils'
    target.mkdir(parents=True, exist_ok=True)
    for name in HEADERS:
        shutil.copyfile(header_path(name), target / name)
    return True  # applied: not run again in this flow
