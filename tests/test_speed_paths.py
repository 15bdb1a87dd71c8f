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
    for epoch in range(1, 4):
        model.fit(data.x_train, data.y_train, epochs=1, batch_size=64, verbose=0)
        path = tmp_path / 'pareto' / f'epoch{epoch}.keras'
        model.save(path)
        points.append(ParetoPoint(path, epoch, {'val_accuracy': 0.5, 'ebops': float(hgq.ebops(model))}))
    traces['n'] = 0
    with retracing_warnings() as retraced:
        results = process_points(points, data, tmp_path, config, convert=False)
    assert retraced == []
    assert traces['n'] == 2 * 2  # two HDense layers, each traced once to calibrate and once to predict
    assert [r['epoch'] for r in results] == [1, 2, 3]
    for point, result in zip(points, results, strict=True):  # each checkpoint's own weights, calibrated
        alone = keras.models.load_model(point.path)
        assert result['ebops'] == hgq.calibrate(alone, data.x_train)
        saved = keras.models.load_model(tmp_path / 'models' / f'{result["tag"]}.keras')
        assert np.array_equal(saved.predict(data.x_test, verbose=0), alone.predict(data.x_test, verbose=0))


def _two_pass_wrap(quantizer, x, f):
    """The WRAP training path as two roundings: kept elements through ``x``, pruned ones through a copy of ``x``
    without gradient whose output is cancelled (the reference the single pass must equal bit for bit)."""
    from keras import ops

    from hgq.quantizer import _round_codes_ste

    scale = 2.0**f
    round_fn = _round_codes_ste(quantizer.round_mode)
    q = round_fn(x * scale) / scale
    q_f = round_fn(ops.stop_gradient(x) * scale) / scale
    return ops.where(ops.stop_gradient(quantizer._pruned(f)), q_f - ops.stop_gradient(q_f), q)


@pytest.mark.parametrize('granularity', ['element', 'channel', 'tensor'])
@pytest.mark.parametrize('round_mode', ['RND', 'TRN', 'RND_CONV'])
def test_single_pass_wrap_training_equals_two_passes_bit_for_bit(granularity, round_mode):
    import tensorflow as tf

    from hgq.quantizer import ActivationQuantizer

    rng = np.random.default_rng(7)
    q = ActivationQuantizer(granularity=granularity, round_mode=round_mode)
    q.build((None, 6, 5))
    q.f.assign(rng.uniform(-3, 9, q.f.shape).astype('float32'))
    peak = np.exp2(rng.uniform(-8, 6, q.f.shape)).astype('float32')
    if granularity == 'tensor':
        peak[...] = 2.0**-12  # the whole tensor pruned
    q.train_peak.assign(peak)
    x = (rng.normal(size=(48, 6, 5)) * np.exp2(rng.integers(-6, 14, size=(48, 6, 5)))).astype('float32')
    x.flat[:6] = [0.5, -0.5, 2.5, -1.5, 3e7, -6e8]  # ties and values far beyond every range
    g = (rng.normal(size=x.shape) * np.exp2(rng.integers(-30, 30, size=x.shape))).astype('float32')
    results = []

    def single_pass(quantizer, x, f):
        return quantizer._train_wrap(x, f, quantizer._pruned(f))

    for path in (_two_pass_wrap, single_pass):
        xt, ft = tf.constant(x), tf.constant(q.f.numpy())
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([xt, ft])
            out = path(q, xt, ft + tf.stop_gradient(tf.floor(ft + 0.5) - ft))
            loss = tf.reduce_sum(out * g)
        results.append([out.numpy(), tape.gradient(loss, xt).numpy(), tape.gradient(loss, ft).numpy()])
    pruned = q._pruned(np.floor(q.f.numpy() + 0.5)).numpy()
    if granularity == 'element':
        assert pruned.any() and not pruned.all(), 'the case needs pruned and kept elements'
    for name, reference, single in zip(('values', 'd/dx', 'd/df'), *results, strict=True):
        assert np.array_equal(reference, single), name
        assert np.array_equal(np.signbit(reference), np.signbit(single)), f'{name}: sign of zeros'


def test_integer_bits_are_exact_at_powers_of_two_in_graphs_and_op_by_op():
    """TensorFlow's log2 is off by an ulp on some powers of two, differently in a graph: kif would differ from
    the bits the compiled model uses."""
    import tensorflow as tf

    from hgq.quantizer import _ceil_log2

    v = np.concatenate([np.exp2(np.arange(-126, 128)), np.exp2(np.arange(-126, 127)) * (1 + 2.0**-23)])
    v = v.astype(np.float32)
    mantissa, exponent = np.frexp(v.astype(np.float64))
    expected = np.where(mantissa > 0.5, exponent, exponent - 1).astype(np.float32)
    assert np.array_equal(_ceil_log2(tf.constant(v)).numpy(), expected)
    assert np.array_equal(tf.function(_ceil_log2)(tf.constant(v)).numpy(), expected)


def test_repeated_kif_and_exact_bits_run_as_graphs_with_the_same_values():
    from keras import ops

    from hgq.quantizer import ActivationQuantizer, WeightQuantizer, effective_bits

    rng = np.random.default_rng(3)
    for round_mode in ('RND', 'TRN', 'RND_ZERO'):
        q = ActivationQuantizer(round_mode=round_mode)
        q.build((None, 8, 9))
        w = WeightQuantizer(round_mode=round_mode)
        w.build((8, 9))
        for _ in range(3):
            q.f.assign(rng.integers(-10, 30, q.f.shape).astype('float32'))
            w.f.assign(rng.uniform(-10, 30, w.f.shape).astype('float32'))
            # Ranges whose rounded ends are exact powers of two, the case where log2 is inexact.
            ends = np.exp2(rng.integers(-28, 20, size=(2, 8, 9))) * (1 - 2.0 ** -rng.integers(1, 4, size=(2, 8, 9)))
            q.vmax.assign(ends[0].astype('float32'))
            q.vmin.assign(-ends[1].astype('float32'))
            q.train_peak.assign(np.exp2(rng.uniform(-40, 30, q.f.shape)).astype('float32'))
            k, i = (ops.convert_to_numpy(a) for a in q.ki())  # op by op
            f = np.floor(q.f.numpy() + 0.5)
            assert all(np.array_equal(a, b) for a, b in zip(q.kif(), (k, i, f), strict=True))
            kernel = (rng.normal(size=(8, 9)) * np.exp2(rng.integers(-20, 20, size=(8, 9)))).astype('float32')
            reference = np.abs(w(kernel).numpy().astype(np.float64))
            assert np.array_equal(w.exact_bits(kernel), effective_bits(reference))
    assert q._ki_query.graph is not None and w._quantize_query.graph is not None, 'the graphs must have run'


def test_per_epoch_ebops_of_many_models_raise_no_retracing_warning():
    with retracing_warnings() as retraced:
        for _ in range(6):
            model = _model()
            for _ in range(3):
                hgq.ebops(model)
    assert retraced == []
