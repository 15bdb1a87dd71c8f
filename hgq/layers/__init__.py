"""H-layers: Keras layers whose inputs and weights carry learned fixed-point bitwidths."""

from hgq.layers.activation import HActivation
from hgq.layers.base import HLayer
from hgq.layers.dense import HDense
from hgq.layers.quantize import HQuantize
from hgq.layers.softmax import HSoftmax

__all__ = ['HLayer', 'HQuantize', 'HDense', 'HActivation', 'HSoftmax']
