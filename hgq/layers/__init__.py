"""H-layers: Keras layers whose inputs and weights carry learned fixed-point bitwidths."""

from hgq.layers.activation import HActivation
from hgq.layers.base import HLayer
from hgq.layers.batchnorm import HBatchNormalization, HConv1DBatchNorm, HConv2DBatchNorm, HDenseBatchNorm
from hgq.layers.conv import HConv1D, HConv2D
from hgq.layers.dense import HDense
from hgq.layers.kernel import HKernelLayer
from hgq.layers.merge import HAdd, HConcatenate, HMultiply, HSubtract
from hgq.layers.pooling import (
    HAveragePooling1D,
    HAveragePooling2D,
    HGlobalAveragePooling1D,
    HGlobalAveragePooling2D,
    HMaxPooling1D,
    HMaxPooling2D,
)
from hgq.layers.quantize import HQuantize
from hgq.layers.softmax import HSoftmax

__all__ = [
    'HLayer',
    'HQuantize',
    'HDense',
    'HActivation',
    'HSoftmax',
    'HKernelLayer',
    'HConv1D',
    'HConv2D',
    'HDenseBatchNorm',
    'HConv1DBatchNorm',
    'HConv2DBatchNorm',
    'HBatchNormalization',
    'HAdd',
    'HSubtract',
    'HMultiply',
    'HConcatenate',
    'HMaxPooling1D',
    'HMaxPooling2D',
    'HAveragePooling1D',
    'HAveragePooling2D',
    'HGlobalAveragePooling1D',
    'HGlobalAveragePooling2D',
]
