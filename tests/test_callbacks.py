"""Callbacks: beta schedules, the EBOPs-target controller, EBOPs logging and the Pareto front of checkpoints."""

import json
import math

import keras
import numpy as np
import pytest

import hgq
from hgq.callbacks import (
    BetaSchedule,
    BetaTarget,
    BetaWarmup,
    EBOPsLogger,
    ParetoFront,
    SettleBits,
    beta_update,
    log_ebops,
    read_front,
    set_beta,
)
from hgq.ebops import h_layers
from hgq.layers import HDense, HQuantize


@pytest.fixture(scope='module')
def digits():
    data = hgq.datasets.digits()
    return data.x_train[:384], data.y_train[:384], data.x_val[:128], data.y_val[:128]


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), HQuantize(), HDense(16, activation='relu'), HDense(10)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=['accuracy'])
    return model


def _fit(model, digits, callbacks, epochs=3):
    x, y, xv, yv = digits
    return model.fit(x, y, validation_data=(xv, yv), epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks)


def test_beta_schedule_constant_linear_and_log_values():
    assert [BetaSchedule(2e-6)(e) for e in (0, 5, 100)] == [2e-6] * 3
    linear = BetaSchedule([(2, 0.0), (6, 4e-6), (10, 4e-6)])
    assert [linear(e) for e in (0, 2, 3, 4, 6, 8, 20)] == [0.0, 0.0, 1e-6, 2e-6, 4e-6, 4e-6, 4e-6]
    log = BetaSchedule([(0, 1e-8), (4, 1e-4)], interpolation='log')
    assert [math.log10(log(e)) for e in range(5)] == pytest.approx([-8, -7, -6, -5, -4], abs=1e-12)
    assert log(-1) == 1e-8 and log(9) == 1e-4


@pytest.mark.parametrize(
    'beta, interpolation, message',
    [
        ([(0, 1e-6), (0, 2e-6)], 'linear', 'strictly increasing'),
        ([(0, -1.0)], 'linear', '>= 0'),
        ([(0, 0.0), (5, 1e-6)], 'log', 'log interpolation needs every beta > 0'),
        ([], 'linear', 'at least one'),
        ('fast', 'linear', 'number or a list'),
        (1e-6, 'cubic', "interpolation must be one of \\('linear', 'log'\\)"),
    ],
)
def test_beta_schedule_rejects_bad_input(beta, interpolation, message):
    with pytest.raises(ValueError, match=message):
        BetaSchedule(beta, interpolation)


def test_beta_schedule_sets_every_h_layer_and_logs_beta_and_ebops_per_epoch(digits):
    model = _model()
    schedule = BetaSchedule([(0, 1e-7), (2, 1e-5)], interpolation='log')
    history = _fit(model, digits, [schedule]).history
    assert history['beta'] == [schedule(0), schedule(1), schedule(2)]
    assert [float(layer.beta.numpy()) for layer in h_layers(model)] == [np.float32(1e-5)] * 3
    assert len(history['ebops']) == 3
    assert history['ebops'][-1] == hgq.ebops(model)  # exact EBOPs of the model after the last epoch


def test_log_ebops_uses_the_value_already_logged_this_epoch():
    model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])
    logs = {'ebops': 123.0}
    assert log_ebops(model, logs) == 123.0 and logs == {'ebops': 123.0}
    fresh = {}
    assert log_ebops(model, fresh) == fresh['ebops'] == hgq.ebops(model)
    assert set_beta(model, 3e-6) == 2
    assert [float(layer.beta.numpy()) for layer in h_layers(model)] == [np.float32(3e-6)] * 2


def test_ebops_logger_logs_exact_ebops_with_keras_history(digits):
    model = _model()
    history = _fit(model, digits, [EBOPsLogger()], epochs=2).history
    assert len(history['ebops']) == 2 and history['ebops'][-1] == hgq.ebops(model)
    assert 'beta' not in history


def test_beta_update_direction_bounds_and_dead_band():
    assert beta_update(1e-6, 2000, 2000, 1000) > 1e-6  # stuck above the target: push
    assert beta_update(1e-6, 500, 500, 1000) < 1e-6  # stuck below: release
    assert beta_update(1e-6, 1015, 1015, 1000) == 1e-6  # inside the 2 % dead band, steady
    assert beta_update(1e-6, 1030, 1030, 1000) > 1e-6  # outside it: push
    assert beta_update(1e-6, 2000, 8000, 1000) < 1e-6  # falling faster than wanted: ease off already
    assert beta_update(1e-6, 1e9, 1e9, 1, max_factor=1.5) == pytest.approx(1.5e-6)  # bounded step
    assert beta_update(1e-6, 1e-9, 1e-9, 1, max_factor=1.5) == pytest.approx(1e-6 / 1.5)
    assert beta_update(0.9, 1e9, 1e9, 1, max_factor=2.0, beta_max=1.0) == 1.0
    assert beta_update(1e-6, 0.0, 100.0, 1000) == 1e-6  # no measurement, no change


@pytest.mark.parametrize('lag', [0.25, 0.1])
def test_beta_update_closes_the_loop_on_a_lagging_plant(lag):
    """A plant whose EBOPs relax (a fraction ``lag`` per epoch) towards c / sqrt(beta), 5,000 at beta = 1e-5."""
    target, beta, ebops, previous = 5000.0, 1e-7, 60000.0, None
    betas, trace = [], []
    for _ in range(150):
        ebops += lag * (target * math.sqrt(1e-5 / beta) - ebops)
        beta, previous = beta_update(beta, ebops, previous, target), ebops
        betas.append(beta)
        trace.append(ebops)
    assert abs(trace[-1] / target - 1) <= 0.05  # settles inside the dead band
    assert trace[-10:] == pytest.approx([trace[-1]] * 10)  # and stays there
    assert max(betas) < 3e-5  # no wind-up far beyond the equilibrium beta (1e-5)
    assert min(trace) > 0.85 * target  # no deep undershoot


def test_beta_target_moves_beta_towards_the_target(digits):
    model = _model()
    history = _fit(model, digits, [BetaTarget(100.0, beta_init=1e-6)]).history
    assert history['beta'][0] == 1e-6
    assert np.all(np.diff(history['beta']) > 0)  # EBOPs far above 100: beta grows every epoch
    assert float(h_layers(model).__next__().beta.numpy()) > history['beta'][-1]
    model = _model()
    history = _fit(model, digits, [BetaTarget(1e9, beta_init=1e-6)]).history
    assert np.all(np.diff(history['beta']) < 0)


@pytest.mark.parametrize(
    'kwargs, bad',
    [
        ({'target': 0}, 'target'),
        ({'target': 10, 'beta_init': 2.0}, 'beta_init'),
        ({'target': 10, 'max_factor': 1.0}, 'max_factor'),
        ({'target': 10, 'rate': 0}, 'rate'),
    ],
)
def test_beta_target_rejects_bad_settings(kwargs, bad):
    with pytest.raises(ValueError, match=f'BetaTarget: invalid {bad}'):
        BetaTarget(**kwargs)


# -- a fit that raises: Keras skips on_train_end ---------------------------------------------------------------------


class _RaiseIn(keras.callbacks.Callback):
    """Raises after the first training step of ``epoch``, as an error or an interrupt in the middle of ``fit`` would."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.current = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.current == self.epoch:
            raise RuntimeError(f'stopped in epoch {self.epoch}')


class _BetaPerEpoch(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(_betas(self.model))


def _betas(model):
    return [float(keras.ops.convert_to_numpy(layer.beta)) for layer in h_layers(model)]


def _activation_bits(model):
    return [keras.ops.convert_to_numpy(q.f).copy() for layer in h_layers(model) for q in layer.activation_quantizers]


@pytest.mark.backends
def test_beta_warmup_after_a_fit_that_raised_sets_beta_back(digits):
    model = _model()
    targets = np.array([2e-5, 1e-5, 4e-5], 'float32')
    for layer, beta in zip(h_layers(model), targets, strict=True):
        layer.beta.assign(beta)
    warmup = BetaWarmup(4)
    with pytest.raises(RuntimeError, match='stopped in epoch 2'):
        _fit(model, digits, [warmup, _RaiseIn(2)], epochs=6)
    np.testing.assert_allclose(_betas(model), 0.5 * targets, rtol=1e-6)  # left scaled: Keras ended no training
    seen = _BetaPerEpoch()
    _fit(model, digits, [warmup, seen], epochs=2)  # the next fit warms up from the full values, not the scaled ones
    np.testing.assert_allclose(seen.epochs, [0 * targets, 0.25 * targets], rtol=1e-6)
    np.testing.assert_allclose(_betas(model), targets, rtol=1e-6)

    with pytest.raises(RuntimeError, match='stopped in epoch 1'):
        _fit(model, digits, [warmup, _RaiseIn(1)], epochs=6)
    first = next(iter(h_layers(model)))
    first.beta.assign(3e-5)  # set anew after the failure: the user's value stays
    warmup.restore()
    np.testing.assert_allclose(_betas(model), [3e-5, *targets[1:]], rtol=1e-6)


@pytest.mark.backends
def test_settle_bits_after_a_fit_that_raised_gives_the_pace_back(digits):
    model = _model()
    set_beta(model, 3e-4)
    settle = SettleBits(2)
    with pytest.raises(RuntimeError, match='stopped in epoch 3'):
        _fit(model, digits, [settle, _RaiseIn(3)], epochs=4)  # bits frozen from epoch 2 on
    before = _activation_bits(model)
    _fit(model, digits, [], epochs=1)
    assert all(np.array_equal(a, b) for a, b in zip(before, _activation_bits(model), strict=True))  # still frozen
    settle.restore()
    _fit(model, digits, [], epochs=1)
    assert all(not np.array_equal(a, b) for a, b in zip(before, _activation_bits(model), strict=True))

    with pytest.raises(RuntimeError, match='stopped in epoch 3'):
        _fit(model, digits, [settle, _RaiseIn(3)], epochs=4)
    other = _model(seed=1)
    _fit(other, digits, [settle], epochs=1)  # the next fit of the callback, on another model, unfreezes the first
    before = _activation_bits(model)
    _fit(model, digits, [], epochs=1)
    assert all(not np.array_equal(a, b) for a, b in zip(before, _activation_bits(model), strict=True))


class _Front:
    """Drives a ParetoFront by hand: each step changes the model's weights and reports chosen metric values."""

    def __init__(self, directory, **kwargs):
        self.model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(2)])
        self.x = np.random.default_rng(0).normal(size=(16, 4)).astype('float32')
        self.front = ParetoFront(directory, **kwargs)
        self.front.set_model(self.model)
        self.outputs = {}

    def epoch(self, epoch, **values):
        kernel = self.model.layers[1].kernel
        kernel.assign(np.full(kernel.shape, 0.1 * (epoch + 1), dtype='float32'))
        self.outputs[epoch + 1] = self.model.predict(self.x, verbose=0)
        self.front.on_epoch_end(epoch, dict(values))


def test_pareto_front_keeps_non_dominated_files_and_deletes_dominated_ones(tmp_path):
    run = _Front(tmp_path)
    run.epoch(0, val_accuracy=0.5, ebops=100.0)
    run.epoch(1, val_accuracy=0.6, ebops=200.0)
    run.epoch(2, val_accuracy=0.7, ebops=150.0)  # dominates epoch 2 (index 1)
    run.epoch(3, val_accuracy=0.4, ebops=300.0)  # dominated: not saved
    run.epoch(4, val_accuracy=0.7, ebops=150.0)  # equal to a saved point: not saved
    run.epoch(5, val_accuracy=0.9, ebops=90.0)  # dominates everything
    run.epoch(6, val_accuracy=0.95, ebops=120.0)
    files = sorted(p.name for p in tmp_path.glob('*.keras'))
    assert files == ['epoch=0006-val_accuracy=0.9-ebops=90.keras', 'epoch=0007-val_accuracy=0.95-ebops=120.keras']
    points = read_front(tmp_path)
    assert [(p.epoch, p.values) for p in points] == [
        (6, {'val_accuracy': 0.9, 'ebops': 90.0}),
        (7, {'val_accuracy': 0.95, 'ebops': 120.0}),
    ]
    for point in points:  # survivors reload and compute what the model computed when they were saved
        reloaded = keras.models.load_model(point.path)
        assert np.array_equal(reloaded.predict(run.x, verbose=0), run.outputs[point.epoch])
    assert not list(tmp_path.glob('.partial*'))


def test_pareto_front_intermediate_state_removes_each_dominated_file(tmp_path):
    run = _Front(tmp_path)
    run.epoch(0, val_accuracy=0.5, ebops=100.0)
    run.epoch(1, val_accuracy=0.6, ebops=200.0)
    assert len(list(tmp_path.glob('*.keras'))) == 2
    run.epoch(2, val_accuracy=0.7, ebops=150.0)
    assert sorted(p.epoch for p in read_front(tmp_path)) == [1, 3]
    assert not (tmp_path / 'epoch=0002-val_accuracy=0.6-ebops=200.keras').exists()


def test_pareto_front_for_regression_minimizes_both(tmp_path):
    run = _Front(tmp_path, metrics=('val_loss', 'ebops'), sides=('min', 'min'))
    run.epoch(0, val_loss=1.0, ebops=100.0, loss=3.0)
    run.epoch(1, val_loss=0.5, ebops=100.0)
    run.epoch(2, val_loss=0.4, ebops=300.0)
    run.epoch(3, val_loss=0.6, ebops=50.0)
    assert [(p.epoch, p.values['val_loss']) for p in read_front(tmp_path)] == [(4, 0.6), (2, 0.5), (3, 0.4)]


def test_pareto_front_resumes_or_restarts_an_indexed_directory(tmp_path):
    run = _Front(tmp_path)
    run.epoch(0, val_accuracy=0.5, ebops=100.0)
    resumed = ParetoFront(tmp_path)
    assert [p.epoch for p in resumed.points] == [1]
    restarted = ParetoFront(tmp_path, resume=False)
    assert restarted.points == [] and not list(tmp_path.glob('*.keras'))
    run.epoch(1, val_accuracy=0.6, ebops=90.0)
    with pytest.raises(ValueError, match='holds a front of metrics'):
        ParetoFront(tmp_path, metrics=('val_loss', 'ebops'), sides=('min', 'min'))


def test_pareto_front_errors_name_the_problem(tmp_path):
    run = _Front(tmp_path)
    with pytest.raises(KeyError, match=r"\['val_accuracy'\] are not in the epoch logs.*validation_data"):
        run.front.on_epoch_end(0, {'accuracy': 0.5})
    with pytest.raises(ValueError, match='sides must each be one of'):
        ParetoFront(tmp_path / 'x', sides=('max', 'least'))
    with pytest.raises(ValueError, match='equal length'):
        ParetoFront(tmp_path / 'x', metrics=('val_accuracy',))


def test_pareto_front_during_fit_holds_only_non_dominated_checkpoints(digits, tmp_path):
    model = _model()
    front = ParetoFront(tmp_path)
    history = _fit(model, digits, [BetaSchedule([(0, 1e-6), (4, 1e-4)], 'log'), front], epochs=5).history
    points = read_front(tmp_path)
    assert sorted(p.path.name for p in points) == sorted(p.name for p in tmp_path.glob('*.keras'))
    index = json.loads((tmp_path / 'front.json').read_text())
    assert index['metrics'] == ['val_accuracy', 'ebops'] and len(index['points']) == len(points)
    for a in points:
        assert a.values == {
            'val_accuracy': history['val_accuracy'][a.epoch - 1],
            'ebops': history['ebops'][a.epoch - 1],
        }
        for b in points:
            if a is not b:
                assert a.values['val_accuracy'] > b.values['val_accuracy'] or a.values['ebops'] < b.values['ebops']
