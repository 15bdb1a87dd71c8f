"""Bit-exact conversion of H-layer models to HLS C++ through hls4ml.

Importing this package registers the hls4ml handlers of the H-layers and our backend extensions
(:mod:`hgq.convert.hls_backend`); ``import hgq`` does it, so ``hls4ml.converters.convert_from_keras_model``
converts H-layer models too. :func:`to_hls` is the checked entry point.

Examples
--------
>>> import hgq
>>> hls_model = hgq.to_hls(model, 'prj/', backend='Vitis', io_type='io_parallel')  # doctest: +SKIP
"""

from hgq.convert import handlers, hls_backend, kernels, merging, tables
from hgq.convert.project import ConversionError, to_hls

hls_backend.register_backend_extensions()
tables.register_table_layers()

__all__ = ['handlers', 'hls_backend', 'kernels', 'merging', 'tables', 'to_hls', 'ConversionError']
