"""hls4ml handlers of the H-layers with weights: Dense, Conv1D/2D, their fused batch-norm variants, BatchNorm.

Each becomes its input quantizer and the plain hls4ml IR layer (``Dense``, ``Conv1D``, ``Conv2D``,
``BatchNormalization``) carrying the quantized weights the Keras layer computes with (``qkernel``/``qbias``, or
``qscale``/``qoffset``), followed by ``relu`` where the layer applies it. Batch-norm variants export their fused
kernel and bias, so hardware sees an ordinary Dense/Conv layer.

Examples
--------
>>> import keras, hls4ml, hgq
>>> from hgq.layers import HQuantize, HConv2D
>>> model = keras.Sequential([keras.Input((8, 8, 1)), HQuantize(), HConv2D(4, 3, activation='relu')])
>>> hls_model = hls4ml.converters.convert_from_keras_model(model, backend='Vitis')  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod
from typing import TYPE_CHECKING

from hls4ml.converters.keras_v3.conv import gen_conv_config

from hgq.convert.handlers import HLayerHandler, IRDict
from hgq.layers.batchnorm import HBatchNormalization, HConv1DBatchNorm, HConv2DBatchNorm, HDenseBatchNorm
from hgq.layers.conv import HConv, HConv1D, HConv2D
from hgq.layers.dense import HDense

if TYPE_CHECKING:
    from keras import KerasTensor

__all__ = ['HDenseHandler', 'HConvHandler', 'HBatchNormalizationHandler']


class HDenseHandler(HLayerHandler):
    """``HDense``/``HDenseBatchNorm``: input quantizer, ``Dense`` with the quantized kernel and bias, ``relu``."""

    keras_classes = (HDense, HDenseBatchNorm)
    ir_class_name = 'Dense'

    def handle(self, layer: HDense, in_tensors: Sequence[KerasTensor], out_tensors: Sequence[KerasTensor]) -> IRDict:
        kernel = self.load_weight(layer, 'kernel')
        bias = self.load_weight(layer, 'bias') if layer.use_bias else None
        n_in, n_out = kernel.shape
        return {'data_format': 'channels_last', 'weight_data': kernel, 'bias_data': bias, 'n_in': n_in, 'n_out': n_out}


class HConvHandler(HLayerHandler):
    """``HConv1D``/``HConv2D`` and their batch-norm variants: input quantizer, ``Conv1D``/``Conv2D``, ``relu``.

    The layer's ``parallelization_factor`` (``-1``: every output position) is handed to hls4ml.
    """

    keras_classes = (HConv1D, HConv2D, HConv1DBatchNorm, HConv2DBatchNorm)

    def default_class_name(self, layer: HConv) -> str:
        return f'Conv{layer.rank}D'

    def handle(self, layer: HConv, in_tensors: Sequence[KerasTensor], out_tensors: Sequence[KerasTensor]) -> IRDict:
        in_shape, out_shape = tuple(in_tensors[0].shape[1:]), tuple(out_tensors[0].shape[1:])
        config = gen_conv_config(
            in_shape=in_shape,
            out_shape=out_shape,
            ker_px_shape=tuple(layer.kernel_size),
            strides=tuple(layer.strides),
            padding=layer.padding,
            data_format='channels_last',
            name=layer.name,
        )
        pf = layer.parallelization_factor
        config.update(
            data_format='channels_last',
            weight_data=self.load_weight(layer, 'kernel'),
            bias_data=self.load_weight(layer, 'bias') if layer.use_bias else None,
            parallelization_factor=prod(out_shape[:-1]) if pf == -1 else pf,
        )
        return config


class HBatchNormalizationHandler(HLayerHandler):
    """``HBatchNormalization``: input quantizer and ``BatchNormalization`` with the quantized scale and offset."""

    keras_classes = (HBatchNormalization,)
    ir_class_name = 'BatchNormalization'

    def handle(
        self, layer: HBatchNormalization, in_tensors: Sequence[KerasTensor], out_tensors: Sequence[KerasTensor]
    ) -> IRDict:
        scale = self.load_weight(layer, 'scale')
        offset = self.load_weight(layer, 'offset')
        return {
            'n_in': prod(in_tensors[0].shape[1:]),
            'n_filt': scale.size,
            'scale_data': scale,
            'bias_data': offset,
            'use_gamma': True,
            'use_beta': True,
        }
