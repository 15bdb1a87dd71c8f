"""hls4ml handlers, IR layers and HLS templates of the table-based layers: ``HActivation`` and ``HSoftmax``.

- ``HActivation('relu')`` becomes its input quantizer and hls4ml's ``Activation`` (relu).
- ``HActivation`` with any other function becomes its input quantizer and :class:`HGQLookupTable`, a subclass of
  hls4ml's ``UnaryLUT`` IR layer (so the ``bit_exact`` pass types it from the table values), implemented by our
  header ``hgq_lut.h``: each input is cast to the table's input format and its bit pattern indexes the table.
- ``HSoftmax`` becomes its input quantizer and :class:`HGQSoftmax`, implemented by ``hgq_softmax.h``.

Every table is the one the trained Keras layer computes (:meth:`HActivation.table`, :meth:`HSoftmax.tables`),
written as weights; nothing is recomputed in C++. Both layers support ``io_parallel`` and ``io_stream``.
Importing :mod:`hgq.convert` registers all of it (:func:`hgq.convert.register`).

Examples
--------
>>> import keras, hgq
>>> from hgq.layers import HQuantize, HDense, HActivation
>>> model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(3), HActivation('tanh')])
>>> hls_model = hgq.convert.to_hls(model, 'prj/', backend='Vitis')  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from math import ceil, log2, prod
from typing import TYPE_CHECKING, Any

import numpy as np
from hls4ml.backends.template import FunctionCallTemplate, LayerConfigTemplate
from hls4ml.model.attributes import Attribute, TypeAttribute, WeightAttribute
from hls4ml.model.layers import Layer
from hls4ml.model.optimizer.passes.hgq_proxy_model import UnaryLUT
from hls4ml.model.types import FixedPrecisionType

from hgq.convert.handlers import HLayerHandler
from hgq.fixed_point import fixed_type_string
from hgq.layers.activation import HActivation
from hgq.layers.softmax import HSoftmax
from hgq.lut import scalar_kif
from hgq.quantizer import ActivationQuantizer

if TYPE_CHECKING:
    from keras import KerasTensor

__all__ = [
    'HGQLookupTable',
    'HGQSoftmax',
    'HActivationHandler',
    'HSoftmaxHandler',
    'hardware_table',
    'softmax_produce_kif',
    'TEMPLATES',
]

FLOAT32_BITS = 24
IRDict = dict[str, Any]


def hardware_table(table: np.ndarray, k: int, i: int, f: int) -> np.ndarray:
    """Reorder a table from code order (smallest code first) to bit-pattern order (two's complement).

    Entry ``c`` of the result belongs to the input whose ``(k, i, f)`` bit pattern, read as an unsigned
    integer, is ``c``: for a signed format the non-negative codes come first.

    Examples
    --------
    >>> hardware_table(np.array([-2.0, -1.0, 0.0, 1.0]), 1, 1, 0).tolist()
    [0.0, 1.0, -2.0, -1.0]
    """
    offset = -k * 2 ** (i + f) if k + i + f > 0 else 0
    return np.roll(np.asarray(table, dtype=np.float64), offset)


def _format_type(quantizer_kif: tuple[int, int, int], round_mode: str = 'TRN', overflow_mode: str = 'WRAP') -> str:
    """The ap_fixed type of a format; a zero-width format (one-entry table) gets a placeholder 1-bit type."""
    k, i, f = quantizer_kif
    if k + i + f <= 0:
        return 'ap_ufixed<1,1>'
    return fixed_type_string(k, i, f, round_mode, overflow_mode)


def _quantizer_type(quantizer: ActivationQuantizer) -> str:
    return _format_type(scalar_kif(quantizer), quantizer.round_mode, quantizer.overflow_mode)


def _check_float32(layer_name: str, role: str, quantizer: ActivationQuantizer) -> None:
    k, i, f = scalar_kif(quantizer)
    if k + i + f > FLOAT32_BITS:
        raise ValueError(
            f'{layer_name}: the {role} has {k + i + f} bits; Keras computes it in float32, which holds at most '
            f'{FLOAT32_BITS} bits exactly'
        )


# ---------------------------------------------------------------------------------------------------------------
# IR layers


class HGQLookupTable(UnaryLUT):
    """IR layer: element-wise table lookup (``hgq::lut``). Attributes: ``table_data``, ``table_in_type``."""

    _expected_attributes = [Attribute('table_in_type', value_type=str)]


class HGQSoftmax(Layer):
    """IR layer: softmax over the last axis from an exp table and a reciprocal table (``hgq::softmax``)."""

    _expected_attributes = [
        Attribute('n_in'),
        Attribute('n_slice'),
        Attribute('diff_type', value_type=str),
        Attribute('sum_type', value_type=str),
        Attribute('out_type', value_type=str),
        Attribute('out_kif', value_type=tuple),
        WeightAttribute('exp_table'),
        TypeAttribute('exp_table'),
        WeightAttribute('inv_table'),
        TypeAttribute('inv_table'),
    ]

    def initialize(self) -> None:
        shape = self.get_input_variable().shape
        self.add_output_variable(shape)
        self.set_attr('n_in', prod(shape))
        self.add_weights_variable(name='exp_table', var_name='exp_table{index}')
        self.add_weights_variable(name='inv_table', var_name='inv_table{index}')


def softmax_produce_kif(layer: HGQSoftmax) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The output of :class:`HGQSoftmax` has exactly the output quantizer's format."""
    shape = tuple(layer.get_output_variable().shape)
    return tuple(np.full(shape, v, dtype=np.int16) for v in layer.attributes['out_kif'])


# ---------------------------------------------------------------------------------------------------------------
# HLS templates

lut_config_template = """struct config{index} : hgq::lut_config {{
    static const unsigned n_in = {n_in};
    static const unsigned table_size = {table_size};
    typedef {table_in_type} table_in_t;
    typedef {table_t.name} table_t;
}};\n"""

softmax_config_template = """struct config{index} : hgq::softmax_config {{
    static const unsigned n_in = {n_in};
    static const unsigned n_slice = {n_slice};
    static const unsigned exp_table_size = {exp_table_size};
    static const unsigned inv_table_size = {inv_table_size};
    typedef {diff_type} diff_t;
    typedef {exp_table_t.name} exp_table_t;
    typedef {sum_accum_type} sum_accum_t;
    typedef {sum_type} sum_t;
    typedef {inv_table_t.name} inv_table_t;
    typedef {out_type} out_t;
}};\n"""


class LookupTableConfigTemplate(LayerConfigTemplate):
    def __init__(self) -> None:
        super().__init__(HGQLookupTable)
        self.template = lut_config_template

    def format(self, node: Layer) -> str:
        params = self._default_config_params(node)
        params['table_size'] = len(node.get_attr('table_data'))
        return self.template.format(**params)


class LookupTableFunctionTemplate(FunctionCallTemplate):
    def __init__(self) -> None:
        super().__init__(HGQLookupTable, include_header=['nnet_utils/hgq_lut.h'])
        self.template = 'hgq::lut<{input_t}, {output_t}, {config}>({input}, {output}, {table});'

    def format(self, node: Layer) -> str:
        params = self._default_function_params(node)
        params['table'] = node.get_weights('table').name
        return self.template.format(**params)


def sum_accum_type(entry: FixedPrecisionType, n_slice: int) -> str:
    """Type that holds the exact sum of ``n_slice`` values of type ``entry``.

    Examples
    --------
    >>> sum_accum_type(FixedPrecisionType(8, 1, False), 10)
    'ap_ufixed<12,5>'
    """
    extra = ceil(log2(n_slice)) if n_slice > 1 else 0
    k = int(entry.signed)
    return fixed_type_string(k, entry.integer + extra - k, entry.width - entry.integer)


class SoftmaxConfigTemplate(LayerConfigTemplate):
    def __init__(self) -> None:
        super().__init__(HGQSoftmax)
        self.template = softmax_config_template

    def format(self, node: Layer) -> str:
        params = self._default_config_params(node)
        params['exp_table_size'] = len(node.get_attr('exp_table_data'))
        params['inv_table_size'] = len(node.get_attr('inv_table_data'))
        entry = node.get_attr('exp_table_t').precision
        params['sum_accum_type'] = sum_accum_type(entry, node.get_attr('n_slice'))
        return self.template.format(**params)


class SoftmaxFunctionTemplate(FunctionCallTemplate):
    def __init__(self) -> None:
        super().__init__(HGQSoftmax, include_header=['nnet_utils/hgq_softmax.h'])
        self.template = 'hgq::softmax<{input_t}, {output_t}, {config}>({input}, {output}, {exp_table}, {inv_table});'

    def format(self, node: Layer) -> str:
        params = self._default_function_params(node)
        params['exp_table'] = node.get_weights('exp_table').name
        params['inv_table'] = node.get_weights('inv_table').name
        return self.template.format(**params)


# ---------------------------------------------------------------------------------------------------------------
# Keras v3 handlers


class HActivationHandler(HLayerHandler):
    """``HActivation``: input quantizer, then ``Activation`` (relu) or :class:`HGQLookupTable`."""

    keras_classes = (HActivation,)

    def handle(
        self, layer: HActivation, in_tensors: Sequence[KerasTensor], out_tensors: Sequence[KerasTensor]
    ) -> IRDict:
        n_in = prod(in_tensors[0].shape[1:])
        if not layer.is_lut:
            return {'class_name': 'Activation', 'activation': 'relu', 'n_in': n_in}
        _check_float32(layer.name, 'output quantizer', layer.output_quantizer)
        k, i, f = layer.table_format()
        return {
            'class_name': 'HGQLookupTable',
            'activation': 'unary_lut',
            'n_in': n_in,
            'table_data': hardware_table(layer.table(), k, i, f),
            'table_in_type': _format_type((k, i, f)),
        }

    def maybe_get_activation_config(
        self, layer: HActivation, out_tensors: Sequence[KerasTensor]
    ) -> tuple[IRDict | None, str | None]:
        return None, None


class HSoftmaxHandler(HLayerHandler):
    """``HSoftmax``: input quantizer, then :class:`HGQSoftmax` with the layer's exp and reciprocal tables."""

    keras_classes = (HSoftmax,)

    def handle(self, layer: HSoftmax, in_tensors: Sequence[KerasTensor], out_tensors: Sequence[KerasTensor]) -> IRDict:
        out_kif = scalar_kif(layer.output_quantizer)
        if sum(out_kif) <= 0:
            raise ValueError(f'{layer.name}: the output quantizer has zero width (every output would be 0)')
        for role in ('exp_quantizer', 'inv_quantizer', 'output_quantizer'):
            _check_float32(layer.name, role.replace('_', ' '), getattr(layer, role))
        exp_table, inv_table = layer.tables()
        return {
            'class_name': 'HGQSoftmax',
            'n_slice': int(in_tensors[0].shape[-1]),
            'exp_table_data': exp_table,
            'inv_table_data': inv_table,
            'diff_type': _quantizer_type(layer.exp_input_quantizer),
            'sum_type': _quantizer_type(layer.sum_quantizer),
            'out_type': _quantizer_type(layer.output_quantizer),
            'out_kif': out_kif,
        }

    def maybe_get_activation_config(
        self, layer: HSoftmax, out_tensors: Sequence[KerasTensor]
    ) -> tuple[IRDict | None, str | None]:
        return None, None


TEMPLATES = (LookupTableConfigTemplate, LookupTableFunctionTemplate, SoftmaxConfigTemplate, SoftmaxFunctionTemplate)
