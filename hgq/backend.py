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

Data-parallel training splits each batch over replicas. Statistics that must equal those of one device (the ranges
that WRAP quantizers track) go through :func:`max_over_replicas`, the one place that knows how a backend
distributes a step:

- TensorFlow (``tf.distribute.MirroredStrategy`` and other strategies): each replica sees its share of the batch;
  the values of all replicas are gathered and reduced.
- JAX (``keras.distribution.DataParallel``): the compiled step works on the global, sharded batch, so a reduction
  over the batch axis already covers every device; nothing is added.
- PyTorch: Keras has no data-parallel distribution for it; nothing is added.

:func:`data_parallel` is the scope in which a model is built, compiled and trained data-parallel over every
local device (``training.distribution: data_parallel`` of ``hgq run``).

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
from typing import Any

import keras

__all__ = ['exact_float32', 'float64_scope', 'max_over_replicas', 'data_parallel', 'check_data_parallel']
__all__ += ['DATA_PARALLEL_BACKENDS']

#: The Keras backends that :func:`data_parallel` distributes over (Keras has no data-parallel distribution for PyTorch).
DATA_PARALLEL_BACKENDS = ('tensorflow', 'jax')


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


def max_over_replicas(x: Any) -> Any:
    """Elementwise maximum of ``x`` over the replicas of a data-parallel step (``x`` itself outside one).

    Exact (a maximum never rounds), so a statistic reduced with it is the one a single device computes from the
    whole batch. For a minimum use ``-max_over_replicas(-x)``.

    Examples
    --------
    >>> import numpy as np
    >>> from keras import ops
    >>> ops.convert_to_numpy(max_over_replicas(np.array([1.0, -2.0], 'float32'))).tolist()
    [1.0, -2.0]
    """
    if keras.backend.backend() != 'tensorflow':
        return x  # JAX DataParallel reduces over the global batch already; PyTorch has no Keras distribution
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return x
    return tf.reduce_max(context.all_gather(tf.expand_dims(x, 0), axis=0), axis=0)


@contextlib.contextmanager
def data_parallel() -> Iterator[int]:
    """Scope in which models are built, compiled and trained data-parallel over every local device; yields how many.

    TensorFlow: ``tf.distribute.MirroredStrategy`` over every GPU, or over every logical CPU device where there is
    no GPU (``tf.config.set_logical_device_configuration`` makes several). JAX: ``keras.distribution.DataParallel``
    over ``keras.distribution.list_devices()`` (on CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
    makes N devices). Each batch is split evenly over the devices; the batch size must be a multiple of their
    number. Build, compile and fit the model inside the scope.

    Raises
    ------
    ValueError
        Under the PyTorch backend, for which Keras has no data-parallel distribution (:func:`check_data_parallel`).

    Examples
    --------
    >>> import keras
    >>> with data_parallel() as replicas:  # doctest: +SKIP
    ...     model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    ...     model.compile('adam', 'mse')
    ...     model.fit(x, y, batch_size=64 * replicas)
    """
    check_data_parallel()
    if keras.backend.backend() == 'tensorflow':
        import tensorflow as tf

        devices = tf.config.list_logical_devices('GPU') or tf.config.list_logical_devices('CPU')
        strategy = tf.distribute.MirroredStrategy([device.name for device in devices])
        with strategy.scope():
            yield strategy.num_replicas_in_sync
    else:
        devices = keras.distribution.list_devices()
        with keras.distribution.DataParallel(devices=devices).scope():
            yield len(devices)


def check_data_parallel() -> None:
    """Raise ``ValueError`` unless this process's Keras backend can train data-parallel (:func:`data_parallel`).

    The one check behind :func:`data_parallel` and ``training.distribution: data_parallel`` of a run
    configuration, which refuses the configuration before anything is built.

    Examples
    --------
    >>> check_data_parallel()  # under PyTorch: ValueError  # doctest: +SKIP
    """
    backend = keras.backend.backend()
    if backend not in DATA_PARALLEL_BACKENDS:
        raise ValueError(
            f'data-parallel training needs the {" or ".join(DATA_PARALLEL_BACKENDS)} Keras backend (KERAS_BACKEND); '
            f'this process runs {backend}, for which Keras has no data-parallel distribution'
        )
