"""ParetoFront with ``calibration_data``: checkpoints are calibrated models, ranked on their own metrics.

Each epoch's model is calibrated, scored and saved, then put back as it was, so training is unchanged. The
checkpoints are checked against the saved files (calibrating again changes nothing, logged EBOPs and accuracy are
those of the loaded model), and a constructed case shows the two rankings part: ranges narrowed as the momentum
decay of training narrows them make the uncalibrated model wrap, which the calibrated front does not see.
"""

import dataclasses

import keras
import numpy as np
import pytest

import hgq
from hgq.calibrate import wrap_quantizers
from hgq.callbacks import ParetoFront, read_front
from hgq.layers import HDense, HQuantize

EPOCHS = 3


@pytest.fixture(scope='module')
def data():
    # a third of the digits splits: enough samples for fronts of several points, a third of the test time
    full = hgq.datasets.digits()
    n_train, n_val = len(full.x_train) // 3, len(full.x_val) // 3
    return dataclasses.replace(
        full,
        x_train=full.x_train[:n_train],
        y_train=full.y_train[:n_train],
        x_val=full.x_val[:n_val],
        y_val=full.y_val[:n_val],
    )


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((64,)), HQuantize(), HDense(8, activation='relu'), HDense(10)])
    model.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=['accuracy']
    )
    return model


def _fit(data, front: ParetoFront) -> tuple[keras.Model, dict]:
    model = _model()
    hgq.callbacks.set_beta(model, 1e-5)
    history = model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=EPOCHS,
        batch_size=32,
        callbacks=[front],
        verbose=0,
    )
    return model, history.history


def _calibrated_front(directory, data) -> ParetoFront:
    return ParetoFront(directory, calibration_data=data.x_train, validation_data=(data.x_val, data.y_val))


def _ranges(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for q in wrap_quantizers(model) for v in (q.vmin, q.vmax)]


def test_checkpoints_are_calibrated_models_with_their_own_metrics(tmp_path, data):
    _, history = _fit(data, _calibrated_front(tmp_path, data))
    points = read_front(tmp_path)
    assert points
    assert len(history['calibrated_ebops']) == len(history['calibrated_val_accuracy']) == EPOCHS
    for point in points:
        assert point.values['ebops'] == history['calibrated_ebops'][point.epoch - 1]
        assert point.values['val_accuracy'] == history['calibrated_val_accuracy'][point.epoch - 1]
        model = keras.models.load_model(point.path)
        assert all(float(q.calibrated.numpy()) == 1.0 for q in wrap_quantizers(model))
        before = _ranges(model)
        assert hgq.calibrate(model, data.x_train) == point.values['ebops']
        assert all(np.array_equal(a, b) for a, b in zip(before, _ranges(model), strict=True))
        assert hgq.ebops(model) == point.values['ebops']
        scores = model.evaluate(data.x_val, data.y_val, batch_size=1024, verbose=0, return_dict=True)
        assert scores['accuracy'] == point.values['val_accuracy']


def test_training_is_unchanged_by_calibrating_the_front(tmp_path, data):
    plain, plain_history = _fit(data, ParetoFront(tmp_path / 'plain'))
    calibrated, history = _fit(data, _calibrated_front(tmp_path / 'calibrated', data))
    assert plain_history['loss'] == history['loss']
    assert plain_history['val_accuracy'] == history['val_accuracy']
    assert plain_history['ebops'] == history['ebops']
    before, after = plain.variables + plain.optimizer.variables, calibrated.variables + calibrated.optimizer.variables
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)), a.path
    assert all(float(q.calibrated.numpy()) == 0.0 for q in wrap_quantizers(calibrated))


def test_a_failing_calibration_skips_the_epoch_with_a_warning(tmp_path, data):
    x_bad = data.x_train.copy()
    x_bad[0, 0] = np.nan
    front = ParetoFront(tmp_path, calibration_data=x_bad, validation_data=(data.x_val, data.y_val))
    with pytest.warns(UserWarning, match=r'epoch \d skipped, its model cannot be calibrated: .*NaN') as caught:
        _, history = _fit(data, front)
    skipped = [str(w.message) for w in caught if 'skipped' in str(w.message)]
    assert [m.split(' skipped')[0] for m in skipped] == [f'ParetoFront: epoch {n}' for n in range(1, EPOCHS + 1)]
    assert len(history['loss']) == EPOCHS
    assert front.points == [] and list(tmp_path.iterdir()) == []


def test_narrowed_ranges_mislead_the_logged_ranking_but_not_the_calibrated_one(tmp_path, data):
    """Epoch 2 is epoch 1 with the input ranges narrowed to half (as momentum decay narrows them in training):
    its uncalibrated model wraps, so the logs show it cheaper and less accurate, a new point of the logged front;
    calibrated, it is the same model as epoch 1 and not a new point."""
    model = _model()
    model.fit(data.x_train, data.y_train, epochs=2, batch_size=32, verbose=0)
    hgq.calibrate(model, data.x_train)
    plain = ParetoFront(tmp_path / 'plain')
    calibrated = _calibrated_front(tmp_path / 'calibrated', data)
    for front in (plain, calibrated):
        front.set_model(model)
    inputs = [q for q in wrap_quantizers(model) if q.vmin.shape == (64,)]
    for epoch in range(2):
        if epoch == 1:
            for quantizer in inputs:
                quantizer.set_range(quantizer.vmin.numpy() / 2, quantizer.vmax.numpy() / 2)
        scores = model.evaluate(data.x_val, data.y_val, batch_size=1024, verbose=0, return_dict=True)
        logs = {'val_accuracy': scores['accuracy']}
        for front in (plain, calibrated):
            front.on_epoch_end(epoch, logs)
    assert [p.epoch for p in plain.points] == [1, 2]
    assert [p.epoch for p in calibrated.points] == [1]
    assert plain.points[1].values['val_accuracy'] < calibrated.points[0].values['val_accuracy']


def test_bad_arguments_are_refused(tmp_path, data):
    with pytest.raises(ValueError, match='pass calibration_data too'):
        ParetoFront(tmp_path, validation_data=(data.x_val, data.y_val))
    with pytest.raises(ValueError, match='need validation_data'):
        ParetoFront(tmp_path, calibration_data=data.x_train)
    with pytest.raises(ValueError, match=r'tuple \(x, y\)'):
        ParetoFront(tmp_path, calibration_data=data.x_train, validation_data=[data.x_val, data.y_val])
    ParetoFront(tmp_path, metrics=('loss', 'ebops'), sides=('min', 'min'), calibration_data=data.x_train)


def test_a_front_is_not_resumed_in_the_other_mode(tmp_path, data):
    front = ParetoFront(tmp_path)
    front.set_model(_model())
    front.on_epoch_end(0, {'val_accuracy': 0.5})
    with pytest.raises(ValueError, match='front of uncalibrated checkpoints'):
        _calibrated_front(tmp_path, data)


def test_hgq_run_keeps_a_front_of_calibrated_checkpoints(tmp_path, data):
    from hgq.config import parse_config
    from hgq.run import train

    layers = [{'type': 'HQuantize'}, {'type': 'HDense', 'units': 8}, {'type': 'HDense', 'units': 10}]
    config = parse_config(
        {'name': 'tiny', 'dataset': 'digits', 'model': {'layers': layers}, 'training': {'epochs': 2, 'batch_size': 32}}
    )
    _, history, front = train(config, data, tmp_path, verbose=0)
    assert front.calibrated and front.points
    for point in read_front(tmp_path / 'pareto'):
        assert point.values['ebops'] == history['calibrated_ebops'][point.epoch - 1]
        assert hgq.ebops(keras.models.load_model(point.path)) == point.values['ebops']


def test_hgq_run_can_rank_the_epoch_logs_instead(tmp_path, data):
    from hgq.config import ConfigError, parse_config
    from hgq.run import train

    layers = [{'type': 'HQuantize'}, {'type': 'HDense', 'units': 10}]
    training = {'epochs': 1, 'batch_size': 32, 'calibrated_front': False}
    config = parse_config({'name': 'logged', 'dataset': 'digits', 'model': {'layers': layers}, 'training': training})
    assert config.to_dict()['training']['calibrated_front'] is False
    _, history, front = train(config, data, tmp_path, verbose=0)
    assert not front.calibrated and 'calibrated_ebops' not in history
    with pytest.raises(ConfigError, match='training.calibrated_front'):
        parse_config(
            {
                'name': 'x',
                'dataset': 'digits',
                'model': {'layers': layers},
                'training': {**training, 'calibrated_front': 1},
            }
        )


def test_a_diverged_model_is_no_checkpoint_and_no_calibration_error(tmp_path, data):
    model = _model()
    model(data.x_val[:1])
    front = _calibrated_front(tmp_path, data)
    front.set_model(model)
    kernel = model.layers[1].kernel
    kernel.assign(np.full(kernel.shape, np.nan, dtype='float32'))
    with pytest.warns(RuntimeWarning, match='non-finite weights'):
        front.on_epoch_end(0, {'val_accuracy': 0.1})
    assert front.points == [] and list(tmp_path.iterdir()) == []
