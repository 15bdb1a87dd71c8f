"""Measurements on a model that feed the allocation penalties: the loss, Hessian diagonals of kernels (HAWQ-V3),
layer features (OMPQ) and layer inputs (cluster dynamic fixed point).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq.allocate.numerics import hutchinson_diagonal
from hgq.layers.base import HLayer

__all__ = ['make_loss', 'loss_evaluator', 'hessian_diagonals', 'layer_tensors']

LossFn = Callable[[Any, Any], Any]


def make_loss(y: np.ndarray, outputs: np.ndarray) -> LossFn:
    """The loss a trained model was most likely trained with, judged from targets and outputs.

    Integer class labels and 2-D outputs: sparse categorical cross-entropy (from logits unless every output row is
    a probability distribution); targets of the outputs' shape: mean squared error.
    """
    y, outputs = np.asarray(y), np.asarray(outputs)
    if y.ndim == 1 and outputs.ndim == 2 and outputs.shape[1] > 1:
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f'y: expected integer class labels for a {outputs.shape[1]}-class output, got floats')
        probabilities = np.all(outputs >= 0) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities)
    if y.shape[1:] == outputs.shape[1:]:
        return keras.losses.MeanSquaredError()
    raise ValueError(
        f'y of shape {y.shape} matches neither class labels nor the model outputs of shape {outputs.shape}'
    )


def loss_evaluator(model: keras.Model, loss: LossFn, x: np.ndarray, y: np.ndarray) -> Callable[[], float]:
    """A function giving the loss of the model in inference mode on one batch, with the current variable values.

    Compiled once (TensorFlow backend), so that re-evaluating after changing a format costs one forward pass.
    """
    if keras.backend.backend() != 'tensorflow':
        return lambda: float(ops.convert_to_numpy(loss(y, model(x, training=False))))
    import tensorflow as tf

    x_t, y_t = tf.constant(x), tf.constant(y)
    compiled = tf.function(lambda: loss(y_t, model(x_t, training=False)))
    return lambda: float(compiled().numpy())


def hessian_diagonals(
    model: keras.Model,
    variables: Sequence[Any],
    loss: LossFn,
    x: np.ndarray,
    y: np.ndarray,
    n_probes: int = 32,
    seed: int = 0,
) -> list[np.ndarray]:
    """Hutchinson estimates of the diagonals of the Hessian of the loss with respect to each variable.

    Hessian-vector products by double back-propagation (TensorFlow backend); quantizers pass gradients straight
    through, so on a model with wide formats this is the Hessian of the float model.
    """
    if keras.backend.backend() != 'tensorflow':
        raise RuntimeError(f'Hessian estimates need the TensorFlow backend, Keras uses {keras.backend.backend()!r}')
    import tensorflow as tf

    x_t, y_t = tf.constant(x), tf.constant(y)

    @tf.function(reduce_retracing=True)
    def graph_hvp(*v):
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                value = loss(y_t, model(x_t, training=False))
            grads = inner.gradient(value, variables)
            dot = tf.add_n([tf.reduce_sum(g * vi) for g, vi in zip(grads, v, strict=True)])
        return outer.gradient(dot, variables)

    def hvp(vectors: list[np.ndarray]) -> list[np.ndarray]:
        v = [tf.constant(vi, dtype=var.dtype) for vi, var in zip(vectors, variables, strict=True)]
        return [h.numpy() for h in graph_hvp(*v)]

    shapes = [tuple(var.shape) for var in variables]
    return hutchinson_diagonal(hvp, shapes, n_probes=n_probes, seed=seed)


def layer_tensors(model: keras.Model, layers: Sequence[HLayer], x: np.ndarray, which: str) -> list[np.ndarray]:
    """The input (``which='input'``) or output (``'output'``) of every layer on the batch ``x``."""
    tensors = [layer.input if which == 'input' else layer.output for layer in layers]
    values = keras.Model(model.inputs, tensors)([x], training=False)
    values = values if isinstance(values, list | tuple) else [values]
    return [np.asarray(ops.convert_to_numpy(v), dtype=np.float64) for v in values]
