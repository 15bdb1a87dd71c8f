"""``register()``: everything the converter adds to hls4ml, in one place.

Called by ``import hgq.convert`` and by :func:`hgq.to_hls`; idempotent. Importing ``hgq`` or ``hgq.layers``
registers nothing. What is registered:

- the Keras v3 handlers of the H-layers (:data:`HANDLERS`);
- our IR layers (:mod:`hgq.convert.hls_backend`, :mod:`hgq.convert.tables`) and their type rules for hls4ml's
  ``bit_exact`` pass;
- our optimizer passes, inserted into hls4ml's ``convert``, ``vivado:optimize`` and writer flows; each acts only
  on graphs converted from H-layers (:func:`hgq.convert.hls_backend.is_hgq_graph`), so plain hls4ml models
  convert exactly as without HGQ;
- the HLS templates of our IR layers.

Examples
--------
>>> from hgq.convert import register
>>> register()  # already done by ``import hgq.convert``; a second call changes nothing
"""

from __future__ import annotations

from hls4ml.backends import get_backend
from hls4ml.model.flow import get_flow
from hls4ml.model.layers import register_layer
from hls4ml.model.optimizer import ModelOptimizerPass, get_available_passes, register_pass
from hls4ml.model.optimizer.passes.bit_exact import _produce_kif, _request_kif

from hgq.convert import hls_backend as hb
from hgq.convert import tables
from hgq.convert.handlers import HQuantizeHandler, register_handler
from hgq.convert.kernels import HBatchNormalizationHandler, HConvHandler, HDenseHandler
from hgq.convert.merging import HGlobalPoolingHandler, HMergeHandler, HPoolingHandler

__all__ = ['register', 'HANDLERS', 'WRITE_HEADERS_PASS']

HANDLERS = (
    HQuantizeHandler,
    HDenseHandler,
    HConvHandler,
    HBatchNormalizationHandler,
    HMergeHandler,
    HPoolingHandler,
    HGlobalPoolingHandler,
    tables.HActivationHandler,
    tables.HSoftmaxHandler,
)
WRITE_HEADERS_PASS = 'hgq_write_headers'
MARK_PASS = 'hgq_mark_graph'
OUTPUTS_PASS = 'hgq_separate_outputs'
# Backend name -> its writer flow.
WRITER_FLOWS = {'Vivado': 'vivado:write', 'Vitis': 'vitis:write'}


def _ir_layers() -> None:
    register_layer(hb.IR_CLASS, hb.HGQFixedPointQuantizer)
    register_layer('HGQStreamQuantizer', hb.HGQStreamQuantizer)
    register_layer('HGQLookupTable', tables.HGQLookupTable)
    register_layer('HGQSoftmax', tables.HGQSoftmax)
    _request_kif.register(hb.HGQFixedPointQuantizer, hb.request_kif)
    _produce_kif.register(hb.HGQFixedPointQuantizer, hb.produce_kif)
    _produce_kif.register(tables.HGQSoftmax, tables.softmax_produce_kif)


def _convert_flow_passes() -> None:
    register_pass(hb.GUARDED_FUSE_PASS, hb.GuardedFuseFixedPointQuantizer)
    register_pass(hb.WIDEN_PASS, hb.WidenWrappedTypes)
    register_pass(hb.MAXPOOL_PASS, hb.SignedMaxPoolPadding)
    register_pass(MARK_PASS, _MarkGraph)
    register_pass(OUTPUTS_PASS, _SeparateOutputs)
    flow = get_flow('convert').optimizers
    flow.insert(0, MARK_PASS)
    flow.insert(flow.index('bit_exact'), OUTPUTS_PASS)
    flow[flow.index('fuse_fixed_point_quantizer')] = hb.GUARDED_FUSE_PASS
    flow.insert(flow.index('bit_exact') + 1, hb.WIDEN_PASS)
    flow.insert(flow.index('fix_input_precision') + 1, hb.MAXPOOL_PASS)


def _backend_passes_and_templates() -> None:
    vivado = get_backend('Vivado')
    vivado.register_pass(hb.STREAM_PASS, hb.StreamQuantizers)
    vivado.register_pass(hb.DA_FUSE_PASS, hb.GuardedFuseQuantizerIntoDA)
    optimize = get_flow('vivado:optimize').optimizers
    optimize.insert(optimize.index('vivado:process_fixed_point_quantizer_layer'), f'vivado:{hb.STREAM_PASS}')
    optimize[optimize.index('vivado:fuse_quantizer_into_d_a_layers')] = f'vivado:{hb.DA_FUSE_PASS}'
    templates = (
        hb.QuantizerFunctionTemplate,
        hb.StreamQuantizerConfigTemplate,
        hb.StreamQuantizerFunctionTemplate,
        *tables.TEMPLATES,
    )
    for template in templates:
        vivado.register_template(template)
    for backend, writer_flow in WRITER_FLOWS.items():
        get_flow(writer_flow).optimizers.append(register_pass(WRITE_HEADERS_PASS, _WriteHeaders, backend=backend))


class _MarkGraph(ModelOptimizerPass):
    def __init__(self) -> None:
        super().__init__(MARK_PASS, hb.mark_graph)


class _SeparateOutputs(ModelOptimizerPass):
    def __init__(self) -> None:
        super().__init__(OUTPUTS_PASS, hb.separate_outputs)


class _WriteHeaders(ModelOptimizerPass):
    def __init__(self) -> None:
        super().__init__(WRITE_HEADERS_PASS, hb.write_headers)


def register() -> None:
    """Register our handlers, IR layers, optimizer passes, templates and headers with hls4ml (idempotent)."""
    for handler in HANDLERS:
        register_handler(handler)
    if hb.GUARDED_FUSE_PASS in get_available_passes():
        return
    _ir_layers()
    _convert_flow_passes()
    _backend_passes_and_templates()
