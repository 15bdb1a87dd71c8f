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

__all__ = ['make_loss', 'LossProbe', 'layer_tensors']

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


class LossProbe:
    """The loss of a model on one batch in inference mode, and Hessian-vector products of it, from one graph.

    TensorFlow backend: one compiled function returns the loss and the product of its Hessian with respect to
    ``variables`` with a vector (by double back-propagation), so it is traced once for both; the loss alone is that
    function at the zero vector. Quantizers pass gradients straight through, so on a model with wide formats the
    Hessian is that of the float model. Other backends: the loss only, eagerly.

    Parameters
    ----------
    model : keras.Model
        The model; the function reads its variables (formats included) when called.
    loss : callable
        ``loss(y, outputs)``.
    x, y : array
        The batch and its targets.
    variables : sequence of variables
        The variables of the Hessian (e.g. kernels).

    Examples
    --------
    >>> import keras, numpy as np
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, use_bias=False)])
    >>> probe = LossProbe(model, keras.losses.MeanSquaredError(), np.eye(2, dtype='float32'), np.zeros((2, 1)),
    ...                   [model.layers[0].kernel])
    >>> probe.hessian_diagonals(n_probes=2)[0].ravel().tolist()  # the loss is (w1**2 + w2**2) / 2
    [1.0, 1.0]
    """

    def __init__(self, model: keras.Model, loss: LossFn, x: np.ndarray, y: np.ndarray, variables: Sequence[Any]):
        self.model, self.variables = model, list(variables)
        self.shapes = [tuple(var.shape) for var in self.variables]
        self._graph = None
        if keras.backend.backend() != 'tensorflow':
            self._eager = lambda: loss(y, model(x, training=False))
            return
        import tensorflow as tf

        x_t, y_t = tf.constant(x), tf.constant(y)

        @tf.function(reduce_retracing=True)
        def loss_and_hvp(*v):
            with tf.GradientTape() as outer:
                with tf.GradientTape() as inner:
                    value = loss(y_t, model(x_t, training=False))
                if not v:
                    return value, []
                grads = inner.gradient(value, self.variables)
                dot = tf.add_n([tf.reduce_sum(g * vi) for g, vi in zip(grads, v, strict=True)])
            return value, outer.gradient(dot, self.variables)

        self._graph = loss_and_hvp
        self._zeros = [np.zeros(shape) for shape in self.shapes]

    def _call(self, vectors: Sequence[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        import tensorflow as tf

        v = [tf.constant(vi, dtype=var.dtype) for vi, var in zip(vectors, self.variables, strict=True)]
        value, products = self._graph(*v)
        return float(value.numpy()), [h.numpy() for h in products]

    def loss(self) -> float:
        """The loss with the current values of the model's variables."""
        if self._graph is None:
            return float(ops.convert_to_numpy(self._eager()))
        return self._call(self._zeros)[0]

    def hvp(self, vectors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Hessian-vector product: one array per variable."""
        if self._graph is None:
            raise RuntimeError(f'Hessian estimates need the TensorFlow backend, Keras uses {keras.backend.backend()!r}')
        return self._call(vectors)[1]

    def hessian_diagonals(self, n_probes: int = 32, seed: int = 0) -> list[np.ndarray]:
        """Hutchinson estimates of the diagonals of the Hessian with respect to each variable."""
        return hutchinson_diagonal(self.hvp, self.shapes, n_probes=n_probes, seed=seed)


def layer_tensors(model: keras.Model, layers: Sequence[HLayer], x: np.ndarray, which: str) -> list[np.ndarray]:
    """The input (``which='input'``) or output (``'output'``) of every layer on the batch ``x``."""
    tensors = [layer.input if which == 'input' else layer.output for layer in layers]
    values = keras.Model(model.inputs, tensors)([x], training=False)
    values = values if isinstance(values, list | tuple) else [values]
    return [np.asarray(ops.convert_to_numpy(v), dtype=np.float64) for v in values]
