"""Exact float32 products on every Keras backend and device.

HGQ's bit-exactness rests on Keras computing H-layer matmuls and convolutions in full float32: every product of a
quantized input and a quantized weight, and every partial sum, is then exact (:mod:`hgq.exactness`). NVIDIA GPUs
from Ampere on offer TensorFloat-32 (TF32) tensor cores, which round the operands of float32 matmuls and
convolutions to 10-bit mantissas; with more than 11 significant bits in an input or weight the results differ
from the CPU and from the firmware. :func:`exact_float32` is the scope in which the H-layers run those operations:

- JAX: ``jax.default_matmul_precision('highest')`` for the operations traced inside the scope only.
- PyTorch: TF32 of cuBLAS matmuls and cuDNN convolutions is switched off inside the scope and restored after it
  (only where CUDA is available; PyTorch's default already keeps matmuls in full float32, not convolutions).
- TensorFlow: TF32 can only be switched off for the whole process
  (``tf.config.experimental.enable_tensor_float_32_execution(False)``). The first scope entered in a process
  that sees a GPU does that, once; without a GPU nothing is changed.

``benchmarks/gpu_check.py`` compares GPU and CPU predictions of a model with 14 fractional bits per backend.

Examples
--------
>>> import numpy as np
>>> from keras import ops
>>> with exact_float32():
...     y = ops.matmul(np.ones((1, 3), 'float32'), np.ones((3, 2), 'float32'))
>>> ops.convert_to_numpy(y).tolist()
[[3.0, 3.0]]
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import keras

__all__ = ['exact_float32', 'float64_scope']


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Scope in which matmuls and convolutions run in full float32 (no TF32) on the current Keras backend."""
    backend = keras.backend.backend()
    if backend == 'jax':
        import jax

        with jax.default_matmul_precision('highest'):
            yield
    elif backend == 'torch':
        with _torch_without_tf32():
            yield
    else:
        if backend == 'tensorflow':
            _tensorflow_without_tf32()
        yield


@contextlib.contextmanager
def _torch_without_tf32() -> Iterator[None]:
    import torch

    if not torch.cuda.is_available():
        yield
        return
    if hasattr(torch.backends.cudnn, 'conv'):  # PyTorch >= 2.9: per-operation fp32_precision settings
        flags, exact = (
            [(torch.backends.cuda.matmul, 'fp32_precision'), (torch.backends.cudnn.conv, 'fp32_precision')],
            'ieee',
        )
    else:
        flags, exact = [(torch.backends.cuda.matmul, 'allow_tf32'), (torch.backends.cudnn, 'allow_tf32')], False
    saved = [getattr(owner, name) for owner, name in flags]
    for owner, name in flags:
        setattr(owner, name, exact)
    try:
        yield
    finally:
        for (owner, name), value in zip(flags, saved, strict=True):
            setattr(owner, name, value)


@functools.cache
def _tensorflow_without_tf32() -> None:
    """Switch TF32 off for the process, once, where TensorFlow sees a GPU (its only switch is process-wide)."""
    import tensorflow as tf

    if tf.config.list_physical_devices('GPU'):
        tf.config.experimental.enable_tensor_float_32_execution(False)


@contextlib.contextmanager
def float64_scope() -> Iterator[None]:
    """Scope in which ``keras.ops`` computes in float64 when asked to, on every backend.

    JAX computes float64 requests in float32 unless 64-bit types are enabled; inside this scope they are (for the
    operations traced in it only). Lookup tables of activations and the softmax sums are computed in float64 so
    that every backend (and the firmware) gets the same values.
    """
    if keras.backend.backend() == 'jax':
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield
