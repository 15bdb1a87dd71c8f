"""Run configurations (validation errors name the key) and the ``hgq run`` pipeline end to end on digits."""

import copy
import json
from pathlib import Path

import keras
import numpy as np
import pytest

import hgq
from hgq.callbacks import ParetoPoint
from hgq.config import ConfigError, build_model, load_config, parse_config
from hgq.convert.project import uncalibrated_quantizers
from hgq.run import FAILED, RUNNING, run, select_points

CONFIGS = Path(__file__).resolve().parent.parent / 'configs'

BASE = {
    'name': 'digits_test',
    'dataset': {'name': 'digits'},
    'model': {
        'layers': [
            {'type': 'HQuantize'},
            {'type': 'HDense', 'units': 12, 'activation': 'relu'},
            {'type': 'HDense', 'units': 10},
        ]
    },
    'training': {'epochs': 3, 'batch_size': 64, 'beta': {'schedule': [[0, 1e-6], [3, 1e-4]], 'interpolation': 'log'}},
    'export': {'n_models': 1},
}


def _with(path: str, value):
    config = copy.deepcopy(BASE)
    *parents, last = path.split('.')
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


@pytest.mark.parametrize(
    'config, message',
    [
        ({**BASE, 'trainng': {}}, r"config: unknown keys \['trainng'\]"),
        ({k: v for k, v in BASE.items() if k != 'dataset'}, r'dataset\.name: required'),
        (_with('dataset.name', 'mnist'), r"dataset\.name: expected one of \['digits', 'fashion_mnist', 'jets'\]"),
        (_with('dataset.path', '/data'), r"dataset: unknown keys \['path'\] for 'digits'"),
        ({k: v for k, v in BASE.items() if k != 'model'}, r'model\.layers: required'),
        (_with('model.layers', [{'type': 'HDense', 'units': 4}, {'type': 'Dense'}]), r'model\.layers\[1\]\.type'),
        (_with('model.layers', [{'units': 4}]), r'model\.layers\[0\]: expected a mapping with a "type" key'),
        (_with('model.layers', [{'type': 'HDense'}]), r'model\.layers\[0\] \(HDense\):.*units'),
        (_with('model.layers', [{'type': 'HDense', 'units': 4, 'activation': 'tanh'}]), r'\(HDense\):.*activation'),
        (_with('model.layers', [{'type': 'HDense', 'units': 4, 'colour': 1}]), r'\(HDense\):.*colour'),
        (_with('training.optimizer', 'adamax'), r"training\.optimizer: expected one of \['adam'"),
        (_with('training.epochs', 0), r'training\.epochs: expected a positive integer, got 0'),
        (_with('training.epochs', 'ten'), r"training\.epochs: expected a positive integer, got 'ten'"),
        (_with('training.learning_rate', -1.0), r'training\.learning_rate: expected a finite positive number'),
        (_with('training.lr_schedule', 'step'), r"training\.lr_schedule: expected one of \['constant', 'cosine'\]"),
        (_with('training.beta.interpolation', 'cubic'), r'training\.beta\.interpolation: expected one of'),
        (_with('training.beta.schedule', [[5, 1e-6], [2, 1e-5]]), r'training\.beta\.schedule:.*strictly increasing'),
        (_with('training.beta', {'target': -5}), r'training\.beta\.target: expected a positive number of EBOPs'),
        (_with('training.beta', {'target': 5000, 'gains': 1}), r"training\.beta: unknown keys \['gains'\]"),
        (_with('training.beta', {'target': 5000, 'max_factor': 0.5}), r'training\.beta:.*invalid max_factor'),
        (_with('export.backend', 'Quartus'), r"export\.backend: expected one of \['Vivado', 'Vitis'\]"),
        (_with('export.io_type', 'io_serial'), r'export\.io_type: expected one of'),
        (_with('export.strategy', 'fast'), r"export\.strategy: expected one of \['Latency'"),
        (_with('export.n_models', -1), r'export\.n_models: expected an integer >= 0'),
        (_with('export.clock_period', 0), r'export\.clock_period: expected a finite positive number \(ns\)'),
        (_with('export.board', 'pynq'), r"export: unknown keys \['board'\]"),
        (_with('training', [1, 2]), r'training: expected a mapping of keys'),
    ],
)
def test_config_errors_name_the_key_and_the_expected_values(config, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


def test_example_configs_are_valid_and_round_trip():
    names = sorted(p.name for p in CONFIGS.glob('*.yaml'))
    assert names == ['digits_mlp.yaml', 'fashion_mnist_cnn.yaml', 'jets_mlp.yaml']
    for path in CONFIGS.glob('*.yaml'):
        config = load_config(path)
        assert config.name == path.stem
        assert parse_config(config.to_dict()) == config
    jets = load_config(CONFIGS / 'jets_mlp.yaml')
    assert [layer.get('units') for layer in jets.layers] == [None, 64, 32, 32, 5]
    assert build_model(jets, (16,), 5).output_shape == (None, 5)
    cnn = build_model(load_config(CONFIGS / 'fashion_mnist_cnn.yaml'), (28, 28, 1), 10)
    assert cnn.output_shape == (None, 10) and any(isinstance(layer, keras.layers.Flatten) for layer in cnn.layers)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='no configuration file'):
        load_config(tmp_path / 'none.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: [unclosed\n')
    with pytest.raises(ConfigError, match='bad.yaml: not valid YAML'):
        load_config(bad)
    bad.write_text('dataset: digits\nmodel: {layers: [{type: HDense, units: 10}]}\nexport: {n_models: two}\n')
    with pytest.raises(ConfigError, match=r"bad\.yaml: export\.n_models: expected an integer >= 0, got 'two'"):
        load_config(bad)


def test_build_model_checks_the_output_size():
    config = parse_config(_with('model.layers', [{'type': 'HDense', 'units': 5}]))
    with pytest.raises(ConfigError, match=r'model\.layers\[0\]: the model outputs 5 values per sample.*10 classes'):
        build_model(config, (64,), 10)
    model = build_model(parse_config(BASE), (64,), 10)
    assert [type(layer).__name__ for layer in model.layers] == ['HQuantize', 'HDense', 'HDense']


def _points(rows):
    return [ParetoPoint(Path(f'{e}.keras'), e, {'val_loss': m, 'ebops': c}) for e, m, c in rows]


def test_select_points_spreads_along_the_front():
    points = _points([(1, 0.9, 100), (2, 0.5, 200), (3, 0.4, 300), (4, 0.3, 400), (5, 0.2, 500)])
    assert [p.epoch for p in select_points(points, 1, 'val_loss', 'min')] == [5]
    assert [p.epoch for p in select_points(points, 3, 'val_loss', 'min')] == [1, 3, 5]
    assert [p.epoch for p in select_points(points, 9, 'val_loss', 'min')] == [1, 2, 3, 4, 5]
    assert [p.epoch for p in select_points(points, 2, 'val_loss', 'min', min_metric=0.45)] == [3, 5]
    assert select_points(points, 0, 'val_loss', 'min') == []


@pytest.mark.slow
def test_run_end_to_end_on_digits_is_bit_exact(tmp_path):
    lines = []
    results = run(BASE, tmp_path / 'run', print_fn=lines.append)
    run_dir = tmp_path / 'run'
    assert not (run_dir / RUNNING).exists() and not (run_dir / FAILED).exists()
    for name in ('config.yaml', 'history.json', 'results.json', 'report.md', 'pareto.png', 'pareto/front.json'):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / 'results.json').read_text()) == json.loads(json.dumps(results))
    assert results['status'] == 'complete' and results['run_dir'] == str(run_dir)
    history = json.loads((run_dir / 'history.json').read_text())
    assert len(history['ebops']) == len(history['beta']) == 3
    (model_result,) = results['models']
    assert model_result['converted'] and model_result['mismatches'] == 0
    assert model_result['n_checked'] == 360
    assert model_result['test_accuracy_hls'] == model_result['test_accuracy']
    assert (Path(model_result['hls_project']) / 'firmware').is_dir()
    model = keras.models.load_model(run_dir / 'models' / f'{model_result["tag"]}.keras')
    assert uncalibrated_quantizers(model) == []  # calibrated before conversion
    assert model_result['ebops'] == hgq.ebops(model)
    report = (run_dir / 'report.md').read_text()
    assert f'| {model_result["tag"]} |' in report and '0 / 360' in report
    assert any('checking bit-exactness on 360 test samples' in line for line in lines)
    assert any('Pareto front:' in line for line in lines)


def test_failed_run_is_marked_and_leaves_no_results(tmp_path):
    config = _with('dataset', {'name': 'fashion_mnist', 'path': str(tmp_path / 'nothing')})
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        run(config, tmp_path / 'run', verbose=0)
    assert not (tmp_path / 'run' / RUNNING).exists()
    assert 'FileNotFoundError' in (tmp_path / 'run' / FAILED).read_text()
    assert not (tmp_path / 'run' / 'results.json').exists()
    with pytest.raises(FileExistsError, match='not empty'):
        run(BASE, tmp_path / 'run', verbose=0)


def test_run_without_conversion_calibrates_the_chosen_models(tmp_path):
    config = _with('export.n_models', 2)
    results = run(config, tmp_path / 'run', epochs=2, convert=False, verbose=0)
    assert results['config']['training']['epochs'] == 2
    assert 1 <= len(results['models']) <= 2
    x = hgq.datasets.digits().x_train
    for entry in results['models']:
        assert not entry.get('converted') and 'mismatches' not in entry
        model = keras.models.load_model(tmp_path / 'run' / 'models' / f'{entry["tag"]}.keras')
        before = model.predict(x, verbose=0)
        hgq.calibrate(model, x)  # calibrating again on the same data changes nothing
        assert np.array_equal(model.predict(x, verbose=0), before)
        assert (tmp_path / 'run' / f'bits-{entry["tag"]}.png').is_file()
