"""Train the same model on one device and data-parallel on several, in a process of its own.

``python tests/distribution_worker.py OUT.npz REPLICAS``, with ``KERAS_BACKEND`` set to ``tensorflow`` (REPLICAS
logical CPU devices, ``tf.distribute.MirroredStrategy``) or ``jax`` (``XLA_FLAGS`` must give REPLICAS host devices;
``keras.distribution.DataParallel``). The device setup must happen before the backend starts, hence a process per
backend. Writes, per run (``single``, ``parallel``), every tracked range, weight, loss and calibrated ``k, i, f`` to
``OUT.npz`` for tests/test_distribution.py to compare.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

BATCH_SIZE = 64


def _devices(replicas: int) -> None:
    """Make ``replicas`` devices visible (TensorFlow: logical CPU devices; JAX: checks XLA_FLAGS did it)."""
    if keras.backend.backend() == 'tensorflow':
        import tensorflow as tf

        cpu = tf.config.list_physical_devices('CPU')[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    else:
        import jax

        assert len(jax.devices()) == replicas, f'expected {replicas} JAX devices, got {jax.devices()}'


@contextlib.contextmanager
def _data_parallel(replicas: int) -> Iterator[None]:
    """hgq.backend.data_parallel over the ``replicas`` devices; the model is built and trained inside it."""
    from hgq.backend import data_parallel

    with data_parallel() as found:
        assert found == replicas, f'data_parallel found {found} devices, expected {replicas}'
        yield


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(384, 12)).astype('float32') * rng.uniform(0.5, 4.0, size=12).astype('float32')
    y = keras.utils.to_categorical(rng.integers(0, 3, len(x)), 3).astype('float32')
    return x, y


def _model() -> keras.Model:
    from hgq.layers import HActivation, HDense, HQuantize

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((12,)),
            HQuantize(beta=1e-5),
            HDense(16, activation='relu', beta=1e-5),
            HActivation('tanh', beta=1e-5),
            HDense(3, beta=1e-5),
        ]
    )


def _ranges(model: keras.Model, prefix: str) -> dict[str, np.ndarray]:
    from hgq.calibrate import wrap_quantizers

    found = {}
    for n, quantizer in enumerate(wrap_quantizers(model)):
        for name in ('vmin', 'vmax', 'train_peak'):
            found[f'{prefix}/ranges/{n}/{name}'] = keras.ops.convert_to_numpy(getattr(quantizer, name))
    return found


def _kif(model: keras.Model, prefix: str) -> dict[str, np.ndarray]:
    from hgq.calibrate import wrap_quantizers

    return {
        f'{prefix}/kif/{n}/{name}': value
        for n, quantizer in enumerate(wrap_quantizers(model))
        for name, value in zip('kif', quantizer.kif(), strict=True)
    }


def _run(prefix: str, scope: contextlib.AbstractContextManager) -> dict[str, np.ndarray]:
    import hgq

    x, y = _data()
    found = {}
    with scope:
        model = _model()
        model.compile(keras.optimizers.Adam(0.0), 'categorical_crossentropy')
        # Learning rate 0 first: weights and bits stay put, only the tracked ranges move (exactly as on one device).
        model.fit(x, y, epochs=1, batch_size=BATCH_SIZE, shuffle=False, verbose=0)
        found.update(_ranges(model, f'{prefix}/frozen'))
        model.optimizer.learning_rate.assign(0.01)
        history = model.fit(x, y, epochs=1, batch_size=BATCH_SIZE, shuffle=False, verbose=0)
        found[f'{prefix}/loss'] = np.array(history.history['loss'])
        found.update(_ranges(model, f'{prefix}/trained'))
        for n, weight in enumerate(model.weights):
            found[f'{prefix}/weights/{n}'] = keras.ops.convert_to_numpy(weight)
        found[f'{prefix}/ebops'] = np.float64(hgq.calibrate(model, x))
        found.update(_kif(model, f'{prefix}/calibrated'))
    # The same weights calibrated outside any distribution.
    plain = _model()
    plain.set_weights(model.get_weights())
    hgq.calibrate(plain, x)
    found.update(_kif(plain, f'{prefix}/recalibrated'))
    return found


def _uneven_batch_error(replicas: int) -> str:
    """The error of ``hgq run``'s training when the batch does not split evenly over the devices."""
    from hgq.config import ConfigError, parse_config
    from hgq.datasets import digits
    from hgq.run import train

    layers = [{'type': 'HQuantize'}, {'type': 'HDense', 'units': 10}]
    training = {'epochs': 1, 'batch_size': 8 * replicas + 1, 'distribution': 'data_parallel'}
    config = parse_config({'name': 'uneven', 'dataset': 'digits', 'model': {'layers': layers}, 'training': training})
    try:
        train(config, digits(), Path('unused'), verbose=0)
    except ConfigError as error:
        return str(error)
    return 'no error'


def main(out: Path, replicas: int) -> None:
    _devices(replicas)
    found = _run('single', contextlib.nullcontext())
    found.update(_run('parallel', _data_parallel(replicas)))
    found['uneven_batch_error'] = np.array(_uneven_batch_error(replicas))
    np.savez(out, **found)


if __name__ == '__main__':
    main(Path(sys.argv[1]), int(sys.argv[2]))
