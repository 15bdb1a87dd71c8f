"""HGQ: High-Granularity Quantization for Keras with bit-exact conversion to FPGA firmware through hls4ml.

Examples
--------
>>> import keras, hgq
>>> from hgq.layers import HQuantize, HDense
>>> model = keras.Sequential([keras.Input((16,)), HQuantize(), HDense(64, activation='relu'), HDense(5)])
"""

from hgq import callbacks, convert, datasets, fixed_point, layers, plot, quantizer
from hgq.calibrate import calibrate
from hgq.convert import to_hls
from hgq.ebops import ebops, layer_ebops
from hgq.summary import summary

__version__ = '0.1.0'

__all__ = ['fixed_point', 'quantizer', 'layers', 'convert', 'calibrate', 'ebops', 'layer_ebops', '__version__']
__all__ += ['callbacks', 'datasets', 'plot', 'summary']
__all__ += ['to_hls']
