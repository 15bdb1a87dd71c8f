"""Limits of exactness, all-or-nothing calibration, diverged training, run-directory handling, subclassed models."""

import copy
import math
import warnings

import keras
import numpy as np
import pytest

import hgq
from hgq.calibrate import CalibrationError
from hgq.callbacks import ParetoFront
from hgq.config import ConfigError, parse_config
from hgq.ebops import h_layers
from hgq.exactness import InexactError, check_float32_exact
from hgq.fixed_point import float32_exact, quantize
from hgq.layers import HDense, HQuantize
from hgq.quantizer import ActivationQuantizer
from hgq.run import FAILED, RUNNING, DivergedError, run
from hgq_cli import main

RNG = np.random.default_rng(0)
X = RNG.uniform(0, 1, size=(256, 4)).astype('float32')

BASE = {
    'name': 'hardening',
    'dataset': {'name': 'digits'},
    'model': {'layers': [{'type': 'HQuantize'}, {'type': 'HDense', 'units': 10}]},
    'training': {'epochs': 1, 'batch_size': 128},
    'export': {'n_models': 1},
}


def _config(**changes):
    config = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, last = path.split('__')
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return config


def _mlp(**dense):
    return keras.Sequential([keras.Input((4,)), HQuantize(), HDense(3, **dense)])


# -- float32 limits --------------------------------------------------------------------------------------------------


def test_float32_rule_matches_what_float32_holds():
    assert float32_exact(2.0**8, 16) and not float32_exact(2.0**8, 17)
    assert float32_exact(2.0**24, 0) and not float32_exact(2.0**24 + 1, 0)
    assert float32_exact(0.0, 300) and not float32_exact(1.0, 127) and not float32_exact(np.nan, 0)
    # The boundary is real: the largest 25-bit code is not a float32, the largest 24-bit one is.
    assert float(np.float32(2**25 - 1)) != 2**25 - 1 and float(np.float32(2**24 - 1)) == 2**24 - 1


@pytest.mark.parametrize(
    'kwargs', [{'f_init': 40}, {'i_init': 200}, {'overflow_mode': 'SAT', 'i_init': 10, 'f_init': 15}]
)
def test_quantizer_formats_wider_than_float32_are_refused_at_construction(kwargs):
    with pytest.raises(ValueError, match=r'significant bits, more than the 24 that float32'):
        ActivationQuantizer(**kwargs)
    ActivationQuantizer(i_init=10, f_init=14)  # 24 bits: exact


def test_config_with_a_format_wider_than_float32_names_the_layer():
    layers = [{'type': 'HQuantize', 'input_quantizer': {'i_init': 200}}, {'type': 'HDense', 'units': 10}]
    with pytest.raises(ConfigError, match=r'model\.layers\[0\] \(HQuantize\):.*float32'):
        parse_config(_config(model__layers=layers))


def test_calibrate_refuses_accumulators_float32_cannot_hold_and_the_refusal_is_real():
    dense = HDense(3, input_quantizer={'f_init': 14}, kernel_quantizer={'f_init': 14})
    model = keras.Sequential([keras.Input((4,)), dense])
    with pytest.raises(InexactError, match=r'h_dense.*: the sum of products needs up to \d+ significant bits'):
        hgq.calibrate(model, X)
    assert all(float(q.calibrated.numpy()) == 0.0 for layer in h_layers(model) for q in layer.activation_quantizers)
    # What the refusal protects against: Keras's float32 result differs from the exact (float64) fixed-point one.
    k, i, f = dense.input_quantizer.kif()
    x = RNG.uniform(0, 1, size=(512, 4)).astype('float32')
    xq = quantize(x, k, i, f, 'RND', 'WRAP')
    exact = xq @ np.float64(dense.qkernel) + np.float64(dense.qbias)
    assert not np.array_equal(model.predict(x, verbose=0).astype(np.float64), exact)


def test_default_models_are_exact_in_float32_after_calibration():
    model = _mlp()
    hgq.calibrate(model, X)
    check_float32_exact(model)


# -- calibration is all or nothing -----------------------------------------------------------------------------------


def _state(model):
    return [np.array(v.numpy()) for v in model.non_trainable_weights]


@pytest.mark.parametrize(
    'data, message',
    [
        (np.zeros((0, 4), 'float32'), 'non-empty array'),
        (np.full((8, 4), np.nan, 'float32'), 'NaN or infinite'),
        (X * 1e7, r'beyond \+-2\*\*19'),
        ([X, X], 'has 1 inputs'),
        (X[:, :3], r'calibration data: expected samples of shape \(4,\) \(model .*\), got \(3,\)'),
        (X[:, :, None], r'expected samples of shape \(4,\) \(model .*\), got \(4, 1\)'),
    ],
)
def test_failed_calibration_leaves_the_model_as_it_was(data, message):
    model = _mlp()
    hgq.calibrate(model, X)
    before, ebops_before = _state(model), hgq.ebops(model)
    with pytest.raises(CalibrationError, match=message):
        hgq.calibrate(model, data)
    assert all(np.array_equal(a, b) for a, b in zip(before, _state(model), strict=True))
    assert hgq.ebops(model) == ebops_before


def test_calibrate_an_unbuilt_model_is_a_clear_error():
    with pytest.raises(CalibrationError, match='is not built'):
        hgq.calibrate(keras.Sequential([HQuantize(), HDense(2)]), X)


def test_calibrate_a_sequential_nested_in_a_functional_model():
    inner = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(3, activation='relu')])
    inputs = keras.Input((4,))
    model = keras.Model(inputs, HDense(2)(inner(inputs)))
    assert hgq.calibrate(model, X) > 0
    assert [float(q.calibrated.numpy()) for layer in h_layers(model) for q in layer.activation_quantizers] == [1.0] * 3


# -- diverged training ----------------------------------------------------------------------------------------------


def _poisoned(model):
    dense = model.layers[-1]
    dense.kernel.assign(np.full(dense.kernel.shape, np.nan, 'float32'))
    return model


def test_ebops_of_a_nan_model_are_nan_with_a_warning_not_zero():
    model = _poisoned(_mlp())
    with pytest.warns(RuntimeWarning, match='non-finite weights'):
        assert math.isnan(hgq.ebops(model))
    assert math.isnan(hgq.layer_ebops(model)[model.layers[-1].name])


def test_pareto_front_never_saves_a_nan_model(tmp_path):
    model = _poisoned(_mlp())
    front = ParetoFront(tmp_path, metrics=('val_accuracy', 'ebops'))
    front.set_model(model)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        front.on_epoch_end(0, {'val_accuracy': 0.5})
    assert front.points == [] and not list(tmp_path.glob('*.keras'))


def test_diverged_run_fails_with_the_cause(tmp_path):
    with pytest.raises(DivergedError, match='training diverged.*learning_rate'):
        run(_config(training__learning_rate=1e30, training__optimizer='sgd'), tmp_path / 'run', verbose=0)
    assert (tmp_path / 'run' / FAILED).is_file() and not (tmp_path / 'run' / 'results.json').exists()


# -- the whole configuration is checked before any work --------------------------------------------------------------


@pytest.mark.parametrize(
    'change, message',
    [
        ({'training__learning_rate': math.inf}, r'training\.learning_rate: expected a finite positive number'),
        ({'training__learning_rate': math.nan}, r'training\.learning_rate'),
        ({'seed': -1}, r'seed: expected an integer in \[0, 2\*\*32\)'),
        ({'seed': 2**32}, r'seed: expected an integer in \[0, 2\*\*32\)'),
        ({'export__part': 'xcvu9p; rm -rf /'}, r'export\.part: expected a Xilinx part name'),
        ({'export__clock_period': math.inf}, r'export\.clock_period'),
        ({'export__min_metric': math.nan}, r'export\.min_metric: expected a finite number'),
    ],
)
def test_bad_values_are_refused_before_training(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        run(_config(**change), tmp_path / 'run', verbose=0)
    assert not (tmp_path / 'run').exists()


def test_cli_run_refuses_bad_epochs_and_out_before_training(tmp_path, capsys):
    config = tmp_path / 'c.yaml'
    config.write_text('dataset: digits\nmodel: {layers: [{type: HDense, units: 10}]}\n')
    a_file = tmp_path / 'file'
    a_file.write_text('')
    assert main(['run', str(config), '--epochs', '0', '--out', str(tmp_path / 'r')]) == 2
    assert 'epochs (--epochs): expected a positive integer, got 0' in capsys.readouterr().err
    assert main(['run', str(config), '--out', str(a_file)]) == 2
    assert 'is a file' in capsys.readouterr().err
    assert main(['run', str(config), '--out', str(a_file / 'run')]) == 2
    assert 'cannot write the run directory' in capsys.readouterr().err


# -- run directories: partial files, --overwrite ---------------------------------------------------------------------


def test_pareto_front_removes_partial_files_of_a_killed_run(tmp_path):
    (tmp_path / '.partial-epoch=0003-val_accuracy=0.9-ebops=10.keras').write_text('truncated')
    ParetoFront(tmp_path)
    assert not list(tmp_path.glob('.partial-*'))


def test_overwrite_replaces_a_failed_or_killed_run_only(tmp_path):
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / RUNNING).write_text('started 2026-01-01 pid 999999999\n')  # a killed run
    (run_dir / 'pareto').mkdir()
    with pytest.raises(FileExistsError, match='--overwrite'):
        run(BASE, run_dir, verbose=0, convert=False)
    results = run(BASE, run_dir, verbose=0, convert=False, overwrite=True)
    assert results['status'] == 'complete' and not (run_dir / RUNNING).exists()
    other = tmp_path / 'data'
    other.mkdir()
    (other / 'keep.txt').write_text('not a run')
    with pytest.raises(FileExistsError, match='not a run directory'):
        run(BASE, other, verbose=0, overwrite=True)
    assert (other / 'keep.txt').is_file()


# -- H-layers in subclassed models and custom layers -----------------------------------------------------------------


@keras.saving.register_keras_serializable(package='hgq_tests')
class SubclassedMLP(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.quantize = HQuantize()
        self.hidden = HDense(8, activation='relu', beta=1e-6)
        self.out = HDense(3, beta=1e-6)

    def call(self, x, training=None):
        return self.out(self.hidden(self.quantize(x, training=training), training=training), training=training)


@keras.saving.register_keras_serializable(package='hgq_tests')
class Block(keras.layers.Layer):
    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = HDense(units, activation='relu')

    def call(self, x, training=None):
        return self.dense(x, training=training)

    def get_config(self):
        return {**super().get_config(), 'units': self.units}


def test_subclassed_model_trains_calibrates_saves_and_reports_ebops(tmp_path):
    y = (X[:, 0] * 3).astype('int64').clip(0, 2)
    model = SubclassedMLP()
    model.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, y, epochs=2, batch_size=64, verbose=0)  # built by Keras tracing it
    assert [layer.name for layer in h_layers(model)] == [model.quantize.name, model.hidden.name, model.out.name]
    assert float(np.max(model.hidden.kernel_quantizer.f.numpy())) < 10  # fitted to the weights, then trained
    exact = hgq.calibrate(model, X)
    assert exact == hgq.ebops(model) > 0
    model.save(tmp_path / 'm.keras')
    loaded = keras.models.load_model(tmp_path / 'm.keras')
    assert np.array_equal(loaded.predict(X, verbose=0), model.predict(X, verbose=0))
    assert hgq.ebops(loaded) == exact


def test_h_layers_inside_a_custom_layer_are_found_and_counted():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, HDense(2)(Block(8)(HQuantize()(inputs))))
    assert sum(isinstance(layer, HDense) for layer in h_layers(model)) == 2
    hgq.calibrate(model, X)
    assert len(hgq.layer_ebops(model)) == 2


def test_to_hls_refuses_subclassed_and_inexact_models_clearly(tmp_path):
    from hgq.conversion import ConversionError

    model = SubclassedMLP()
    model(X[:2])
    hgq.calibrate(model, X)
    with pytest.raises(ConversionError, match='is a subclassed keras.Model.*keras.Model\\(inputs, outputs\\)'):
        hgq.to_hls(model, tmp_path / 'a')
    dense = HDense(3, input_quantizer={'f_init': 14}, kernel_quantizer={'f_init': 14})
    wide = keras.Sequential([keras.Input((4,)), dense])
    with pytest.raises(ConversionError, match=r'cannot be bit-exact \(Keras computes in float32\): h_dense'):
        hgq.to_hls(wide, tmp_path / 'b', allow_uncalibrated=True)
    assert not (tmp_path / 'b').exists()


def test_training_data_with_nan_is_refused_before_training(tmp_path):
    from dataclasses import replace

    from hgq.run import train

    data = hgq.datasets.digits()
    x_train = data.x_train.copy()
    x_train[3, 5] = np.nan
    with pytest.raises(ValueError, match='data set digits: x_train holds 1 NaN or infinite values'):
        train(parse_config(BASE), replace(data, x_train=x_train), tmp_path)
    assert not (tmp_path / 'pareto').exists()
