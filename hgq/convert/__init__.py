"""Bit-exact conversion of H-layer models to HLS C++ through hls4ml.

Importing this package calls :func:`register`, which adds our handlers, IR layers, passes, templates and headers
to hls4ml; after that ``hls4ml.converters.convert_from_keras_model`` converts H-layer models too. Our passes act
only on graphs that hold our layers: plain hls4ml models convert as before. :func:`to_hls` is the checked entry
point (``hgq.to_hls`` imports this package on first use).

Examples
--------
>>> import hgq
>>> hls_model = hgq.to_hls(model, 'prj/', backend='Vitis', io_type='io_parallel')  # doctest: +SKIP
"""

from hgq.conversion import CheckResult, ConversionError, ConversionSettings, check_bit_exact
from hgq.convert.project import check_output_dir, read_meta, to_hls
from hgq.convert.registry import register

register()

__all__ = [
    'register',
    'to_hls',
    'ConversionError',
    'ConversionSettings',
    'CheckResult',
    'check_bit_exact',
    'check_output_dir',
    'read_meta',
]
