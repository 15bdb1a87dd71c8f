"""``register()``: everything the converter adds to hls4ml, in one place.

Called by ``import hgq.convert`` and by :func:`hgq.to_hls`; idempotent. Nothing is registered by importing
``hgq`` or ``hgq.layers``.
"""

from __future__ import annotations

__all__ = ['register']


def register() -> None:
    """Register our handlers, IR layers, optimizer passes, templates and headers with hls4ml (idempotent)."""
    from hgq.convert import handlers, hls_backend, kernels, merging, tables  # noqa: F401

    hls_backend.register_backend_extensions()
    tables.register_table_layers()
