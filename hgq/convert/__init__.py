"""Bit-exact conversion of H-layer models to HLS C++ through hls4ml.

Importing this package registers the hls4ml handlers of the H-layers (``import hgq`` does it), so
``hls4ml.converters.convert_from_keras_model`` converts H-layer models too.
"""

from hgq.convert import handlers

__all__ = ['handlers']
