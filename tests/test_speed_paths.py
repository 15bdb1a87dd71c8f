"""Compiled passes are traced once per model: repeated calibration and the checkpoints of ``hgq run`` do not retrace.

TensorFlow logs "N out of the last M calls to <function> triggered tf.function retracing" when one function is
traced again and again (at most twice per function and process, so the warning alone could miss a retrace once
other tests have used it up); these tests fail on that warning and on the number of times ``HDense.call`` runs
outside eager execution, which counts the traces of the model.
"""

import functools
import logging
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import pytest

import hgq
from hgq.callbacks import ParetoPoint
from hgq.config import build_model, parse_config
from hgq.datasets import load
from hgq.layers import HDense, HQuantize
from hgq.run import process_points

pytestmark = pytest.mark.skipif(keras.backend.backend() != 'tensorflow', reason='tf.function tracing')

CONFIG = {
    'name': 'retrace_test',
    'dataset': {'name': 'digits'},
    'model': {
        'layers': [
            {'type': 'HQuantize'},
            {'type': 'HDense', 'units': 8, 'activation': 'relu'},
            {'type': 'HDense', 'units': 10},
        ]
    },
    'training': {'epochs': 1, 'batch_size': 64, 'beta': 1e-5},
    'export': {'n_models': 5},
}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def retracing_warnings():
    """The messages of TensorFlow's retracing warnings logged inside the block."""
    handler = _Records()
    logger = logging.getLogger('tensorflow')
    logger.addHandler(handler)
    retraced: list[str] = []
    try:
        yield retraced
    finally:
        logger.removeHandler(handler)
        retraced.extend(m for m in handler.messages if 'retracing' in m)


@pytest.fixture
def traces(monkeypatch):
    """How often ``HDense.call`` has run while tracing (reset it before the part to measure)."""
    import tensorflow as tf

    count = {'n': 0}
    original = HDense.call

    @functools.wraps(original)
    def counted(self, *args, **kwargs):
        if not tf.executing_eagerly():
            count['n'] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HDense, 'call', counted)
    return count


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), HQuantize(), HDense(4, activation='relu'), HDense(3)])


def test_repeated_calibration_traces_the_model_once(traces):
    model = _model()
    x = np.random.default_rng(0).normal(size=(300, 6)).astype('float32')  # 128, 128, then a batch of 44
    traces['n'] = 0
    with retracing_warnings() as retraced:
        first = hgq.calibrate(model, x, batch_size=128)
        for _ in range(5):
            assert hgq.calibrate(model, x, batch_size=128) == first
    assert retraced == []
    assert traces['n'] == 2  # one trace, two HDense layers


def test_cached_calibration_pass_forgets_earlier_data():
    model = _model()
    x = np.random.default_rng(1).normal(size=(200, 6)).astype('float32')
    wide = hgq.calibrate(model, x * 64)
    narrow = hgq.calibrate(model, x)
    fresh = _model()
    assert narrow == hgq.calibrate(fresh, x) < wide
    layer = model.layers[0].input_quantizer
    assert np.array_equal(layer.vmax.numpy(), fresh.layers[0].input_quantizer.vmax.numpy())
    assert hgq.calibrate(model, x * 64) == wide


def test_run_checkpoints_are_traced_once(tmp_path: Path, traces):
    config = parse_config(CONFIG)
    data = load('digits')
    model = build_model(config, data.input_shape, data.n_classes)
    model.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=['accuracy'])
    (tmp_path / 'pareto').mkdir()
    points = []
    for epoch in range(1, 6):
        model.fit(data.x_train, data.y_train, epochs=1, batch_size=64, verbose=0)
        path = tmp_path / 'pareto' / f'epoch{epoch}.keras'
        model.save(path)
        points.append(ParetoPoint(path, epoch, {'val_accuracy': 0.5, 'ebops': float(hgq.ebops(model))}))
    traces['n'] = 0
    with retracing_warnings() as retraced:
        results = process_points(points, data, tmp_path, config, convert=False)
    assert retraced == []
    assert traces['n'] == 2 * 2  # two HDense layers, each traced once to calibrate and once to predict
    assert [r['epoch'] for r in results] == [1, 2, 3, 4, 5]
    for point, result in zip(points, results, strict=True):  # each checkpoint's own weights, calibrated
        alone = keras.models.load_model(point.path)
        assert result['ebops'] == hgq.calibrate(alone, data.x_train)
        saved = keras.models.load_model(tmp_path / 'models' / f'{result["tag"]}.keras')
        assert np.array_equal(saved.predict(data.x_test, verbose=0), alone.predict(data.x_test, verbose=0))
