"""Frozen batch normalization (``trainable=False``) keeps and uses its moving statistics, as in Keras."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from hgq.layers import HBatchNormalization, HConv2DBatchNorm, HDenseBatchNorm

LAYERS = [
    (lambda: HBatchNormalization(), (5, 3)),
    (lambda: HDenseBatchNorm(4, activation='relu'), (6,)),
    (lambda: HConv2DBatchNorm(3, 3, padding='same'), (5, 5, 2)),
]


@pytest.mark.parametrize('trainable', [True, False])
@pytest.mark.parametrize('make, shape', LAYERS, ids=['standalone', 'dense', 'conv2d'])
def test_frozen_batchnorm_uses_moving_statistics_while_training(make, shape, trainable):
    layer = make()
    model = keras.Sequential([keras.Input(shape), layer])
    layer.moving_mean.assign(np.full(layer.moving_mean.shape, 0.25, dtype='float32'))
    layer.trainable = trainable
    x = np.random.default_rng(0).normal(1.0, 2.0, size=(32, *shape)).astype('float32')
    trained = keras.ops.convert_to_numpy(model(x, training=True))
    inferred = keras.ops.convert_to_numpy(model(x, training=False))
    moved = not np.all(layer.moving_mean.numpy() == 0.25)
    assert moved == trainable
    assert np.array_equal(trained, inferred) == (not trainable)
