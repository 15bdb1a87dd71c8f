"""Our extensions of hls4ml's Vivado/Vitis backends, registered once when :mod:`hgq.convert` is imported.

hls4ml 1.3.0 turns the ``FixedPointQuantizer`` IR layers our handlers emit into bit-exact code, with three gaps
that this module closes for quantizers of H-layers (IR layers carrying ``hgq_mask_kbi``; others are untouched):

- Fusion of a uniform quantizer into the layer before it sets that layer's result type. A quantizer whose
  every element has zero width would become a 1-bit type (values 0.5 instead of 0), and a quantizer fused into
  a tensor that already received another quantizer's type overwrites it (``HQuantize`` followed by ``HDense``).
  :class:`GuardedFuseFixedPointQuantizer` leaves those quantizers as explicit casts.
- With ``io_stream`` hls4ml raises for every quantizer it cannot fuse. :class:`StreamQuantizers` replaces them
  with :class:`HGQStreamQuantizer`, implemented by our header ``hgq_quantizer_stream.h``: one pack (the channels
  of one pixel) per clock cycle, each element cast to its own format.
- The header is shipped in :mod:`hgq.hls_templates` and registered as custom source of both backends.

Examples
--------
>>> import hgq.convert.hls_backend as hb
>>> hb.register_backend_extensions()  # idempotent; already done by ``import hgq``
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from math import prod
from typing import Any

import numpy as np
from hls4ml.backends import get_backend
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.model.flow import get_flow
from hls4ml.model.layers import Layer, Reshape, Transpose, register_layer
from hls4ml.model.optimizer import OptimizerPass, get_available_passes, register_pass
from hls4ml.model.optimizer.passes.bit_exact import get_input_layers
from hls4ml.model.optimizer.passes.hgq_proxy_model import FixedPointQuantizer, FuseFixedPointQuantizer

__all__ = [
    'MASK_ATTR',
    'HGQStreamQuantizer',
    'GuardedFuseFixedPointQuantizer',
    'StreamQuantizers',
    'quantize_body',
    'register_backend_extensions',
]

MASK_ATTR = 'hgq_mask_kbi'
STREAM_HEADER = 'hgq_quantizer_stream.h'
BACKENDS = ('Vivado', 'Vitis')
GUARDED_FUSE_PASS = 'hgq_fuse_fixed_point_quantizer'
STREAM_PASS = 'hgq_stream_quantizers'


def _is_ours(node: Layer) -> bool:
    return isinstance(node, FixedPointQuantizer) and MASK_ATTR in node.attributes


def _element_format(k: int, b: int, i: int, rnd: str, sat: str) -> str:
    sign = '' if k else 'u'
    return f'ap_{sign}fixed<{b}, {i}, AP_{rnd}, AP_{sat}>'


def _element_line(j: int, k: int, b: int, i: int, rnd: str, sat: str) -> str:
    if b <= 0:
        return f'out[{j}] = 0;'
    return f'out[{j}] = {_element_format(k, b, i, rnd, sat)}(in[{j}]);'


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
    out[0] = ap_fixed<4, 2, AP_RND, AP_WRAP>(in[0]);
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

    Not fused: quantizers whose every element has zero width (fusion would give the tensor a 1-bit type), and
    quantizers that would set the type of a tensor that already carries another quantizer's type (consecutive
    quantizers, possibly through ``Reshape``/``Transpose``). They stay as explicit per-element casts.
    """

    def match(self, node: Layer) -> bool:
        if _is_ours(node) and node.attributes.get('bit_exact_transformed', False):
            if np.all(np.asarray(node.mask_kbi[1]) <= 0) or _follows_quantizer(node):
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


class StreamQuantizerFunctionTemplate(FunctionCallTemplate):
    """Call of ``hgq::quantize_stream`` for an :class:`HGQStreamQuantizer`."""

    def __init__(self) -> None:
        super().__init__(HGQStreamQuantizer, include_header=[f'nnet_utils/{STREAM_HEADER}'])
        self.template = 'hgq::quantize_stream<{input_t}, {output_t}, {config}>({input}, {output});'

    def format(self, node: Layer) -> str:
        return self.template.format(**self._default_function_params(node))


def header_path() -> str:
    """Absolute path of our stream quantizer header inside the installed package."""
    return str(importlib.resources.files('hgq.hls_templates').joinpath(STREAM_HEADER))


def _insert_before(flow_name: str, anchor: str, pass_name: str) -> None:
    optimizers = get_flow(flow_name).optimizers
    if pass_name in optimizers:
        return
    optimizers.insert(optimizers.index(anchor), pass_name)


def register_backend_extensions() -> None:
    """Register our IR layer, passes, templates and header with hls4ml (idempotent)."""
    if GUARDED_FUSE_PASS in get_available_passes():
        return
    register_layer('HGQStreamQuantizer', HGQStreamQuantizer)
    register_pass(GUARDED_FUSE_PASS, GuardedFuseFixedPointQuantizer)
    convert_flow = get_flow('convert').optimizers
    convert_flow[convert_flow.index('fuse_fixed_point_quantizer')] = GUARDED_FUSE_PASS

    vivado = get_backend('Vivado')
    vivado.register_pass(STREAM_PASS, StreamQuantizers)
    _insert_before('vivado:optimize', 'vivado:process_fixed_point_quantizer_layer', f'vivado:{STREAM_PASS}')
    vivado.register_template(StreamQuantizerConfigTemplate)
    vivado.register_template(StreamQuantizerFunctionTemplate)
    for name in BACKENDS:
        get_backend(name).register_source(header_path())
