"""``hgq sweep``: grids, the merged front, and sweeps on a local Ray (digits, 2 epochs per trial).

The Ray tests share one local Ray of 2 CPUs (module fixture). They compare every trial with a serial ``hgq run``
of the same configuration, resume a finished sweep, and kill a worker in the middle of a trial.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import yaml

from hgq.callbacks import read_front
from hgq.config import ConfigError
from hgq.sweep import RAY_MISSING, grid_trials, parse_axis, sweep
from hgq.sweep.grid import resolve_trials, set_path
from hgq_cli import main

BASE = {
    'name': 'digits_sweep',
    'dataset': {'name': 'digits'},
    'model': {
        'layers': [
            {'type': 'HQuantize'},
            {'type': 'HDense', 'units': 12, 'activation': 'relu'},
            {'type': 'HDense', 'units': 10},
        ]
    },
    'training': {'epochs': 2, 'batch_size': 64, 'beta': {'schedule': [[0, 1e-6], [2, 1e-4]], 'interpolation': 'log'}},
    'export': {'n_models': 1, 'n_test': 100},
}


@pytest.fixture(scope='module')
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / 'digits_sweep.yaml'
    path.write_text(yaml.safe_dump(BASE))
    return path


def test_parse_axis_reads_values_as_yaml():
    assert parse_axis('seed=0,1,2').values == (0, 1, 2)
    assert parse_axis('training.learning_rate=1e-3, 3.0e-3').values == (1e-3, 3e-3)
    assert parse_axis('training.optimizer=adam,sgd').values == ('adam', 'sgd')
    schedule = parse_axis('training.beta.schedule=[[0,1e-7],[2,1e-5]],1e-6')
    assert schedule.values == ([[0, 1e-7], [2, 1e-5]], 1e-6)


@pytest.mark.parametrize(
    'text, message',
    [
        ('seed', r'expected key=value1,value2'),
        ('seed=', r'expected key=value1,value2'),
        ('seed=0,,1', r'empty value'),
        ('seed=1,1', r'values repeat'),
        ('training..epochs=2', r'empty part'),
        ('name=a,b', r"'name' cannot vary"),
        ('seed=[0', r'not valid YAML'),
    ],
)
def test_parse_axis_errors_name_the_option(text, message):
    with pytest.raises(ValueError, match=message):
        parse_axis(text)


def test_grid_is_the_product_of_its_axes_in_order():
    trials = grid_trials([parse_axis('seed=0,1'), parse_axis('model.layers.1.units=8,16'), parse_axis('x.units=1')])
    assert [t.name for t in trials] == [
        'seed=0_layers.1.units=8_x.units=1',
        'seed=0_layers.1.units=16_x.units=1',
        'seed=1_layers.1.units=8_x.units=1',
        'seed=1_layers.1.units=16_x.units=1',
    ]
    assert trials[1].overrides == (('seed', 0), ('model.layers.1.units', 16), ('x.units', 1))
    odd = grid_trials([parse_axis('training.beta.schedule=[[0,1e-7],[2,1e-5]]')])[0]
    assert odd.name.startswith('schedule=0-1e-07-2-1e-05-') and len(odd.name) == len('schedule=0-1e-07-2-1e-05-') + 8
    negative = grid_trials([parse_axis('training.learning_rate=-1,1e-3')])
    assert [t.name for t in negative] == ['learning_rate=-1', 'learning_rate=0.001']
    with pytest.raises(ValueError, match=r"keys \['seed'\] are given more than once"):
        grid_trials([parse_axis('seed=0'), parse_axis('seed=1')])


def test_set_path_and_its_errors():
    config = copy.deepcopy(BASE)
    set_path(config, 'model.layers.1.units', 32)
    set_path(config, 'training.beta.schedule', 1e-5)
    set_path(config, 'export.backend', 'Vivado')
    assert config['model']['layers'][1]['units'] == 32 and config['training']['beta']['schedule'] == 1e-5
    assert config['export']['backend'] == 'Vivado' and BASE['model']['layers'][1]['units'] == 12
    with pytest.raises(ValueError, match=r'model\.layers has 3 items; expected an index < 3, got \'3\''):
        set_path(config, 'model.layers.3.units', 8)
    with pytest.raises(ValueError, match=r'training\.epochs is 2, not a mapping or a list'):
        set_path(config, 'training.epochs.value', 8)


def test_every_grid_point_is_validated_before_anything_runs():
    trials = grid_trials([parse_axis('training.epochs=2,0')])
    with pytest.raises(ConfigError, match=r'grid point training\.epochs=0: training\.epochs: expected a positive'):
        resolve_trials(BASE, trials, 'digits_sweep')
    configs = resolve_trials(BASE, trials[:1], 'digits_sweep')
    assert configs[0]['name'] == 'digits_sweep-epochs_2' and configs[0]['training']['epochs'] == 2


def test_command_errors(config_file, tmp_path, capsys, monkeypatch):
    out = tmp_path / 'sweep'
    assert main(['sweep', str(config_file), '--grid', 'training.optimizer=adam,adamax', '--out', str(out)]) == 2
    assert 'grid point training.optimizer=adamax: training.optimizer: expected one of' in capsys.readouterr().err
    assert main(['sweep', str(tmp_path / 'none.yaml'), '--grid', 'seed=0', '--out', str(out)]) == 2
    assert 'no configuration file' in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, 'ray', None)  # as if Ray were not installed
    assert main(['sweep', str(config_file), '--grid', 'seed=0', '--out', str(out)]) == 2
    assert capsys.readouterr().err.strip() == f'hgq sweep: error: {RAY_MISSING}'
    assert not out.exists()


def test_import_hgq_does_not_import_ray():
    code = 'import sys, hgq, hgq.sweep, hgq_cli; assert "ray" not in sys.modules, "ray imported"'
    subprocess.run([sys.executable, '-c', code], check=True, capture_output=True)


def _serial_run(config: dict, directory: Path) -> None:
    """``hgq.run.run(config, directory)`` in a fresh process with one TensorFlow thread, as a sweep trial has."""
    code = (
        'import json, sys\n'
        'from hgq.sweep.trial import limit_threads\n'
        'limit_threads(1)\n'
        'from hgq.run import run\n'
        'run(json.loads(sys.argv[1]), sys.argv[2], convert=False, verbose=0)\n'
    )
    subprocess.run([sys.executable, '-c', code, json.dumps(config), str(directory)], check=True, capture_output=True)


def _history(directory: Path) -> dict:
    return json.loads((directory / 'history.json').read_text())


def _front(directory: Path) -> list:
    return [(p.epoch, p.values) for p in read_front(directory / 'pareto')]


def _dominated(a: dict, b: dict) -> bool:
    """``b`` beats ``a``: at least as good in both metrics and better in one."""
    ge = b['val_accuracy'] >= a['val_accuracy'] and b['ebops'] <= a['ebops']
    return ge and (b['val_accuracy'] > a['val_accuracy'] or b['ebops'] < a['ebops'])


@pytest.mark.slow  # the C simulation of the exported model compiles with g++
def test_sweep_equals_serial_runs_and_resumes(local_ray, tmp_path, capsys):
    config_file = tmp_path / 'digits_sweep.yaml'
    config_file.write_text(yaml.safe_dump({**BASE, 'export': {**BASE['export'], 'synth': True}}))
    out = tmp_path / 'sweep'
    results = sweep(config_file, ['seed=0,1'], out)
    assert results['status'] == 'complete'
    assert [(t['name'], t['status'], t['errors']) for t in results['trials']] == [
        ('seed=0', 'done', []),
        ('seed=1', 'done', []),
    ]

    # Each trial equals a serial ``hgq run`` of its configuration (same history, same front), run with the trial's
    # one TensorFlow thread: the float32 sums behind the logged loss depend on the thread count.
    serial_points = []
    for trial in ('seed=0', 'seed=1'):
        config = copy.deepcopy(BASE)
        config.update(seed=int(trial[-1]), name=f'digits_sweep-seed_{trial[-1]}')
        serial = tmp_path / 'serial' / trial
        _serial_run(config, serial)
        assert _history(out / 'trials' / trial) == _history(serial)
        assert _front(out / 'trials' / trial) == _front(serial)
        serial_points += [{'trial': trial, 'epoch': e, **v} for e, v in _front(serial)]

    # The merged front is exactly the points of all trials that no other point beats.
    expected = [p for p in serial_points if not any(_dominated(p, q) for q in serial_points)]
    merged = [{k: p[k] for k in ('trial', 'epoch', 'val_accuracy', 'ebops')} for p in results['front']]
    assert sorted(merged, key=lambda p: p['ebops']) == sorted(expected, key=lambda p: p['ebops'])
    assert [p.values for p in read_front(out)] == [{k: p[k] for k in ('val_accuracy', 'ebops')} for p in merged]
    assert (out / 'pareto.png').stat().st_size > 0 and '## Merged Pareto front' in (out / 'report.md').read_text()

    # The best model of the merged front was calibrated, converted and checked bit for bit in a Ray task.
    (model,) = results['models']
    best = max(expected, key=lambda p: (p['val_accuracy'], -p['ebops']))
    assert model['tag'] == f'model0-{best["trial"]}-epoch{best["epoch"]:04d}'
    assert model['converted'] and model['n_checked'] == 100 and model['mismatches'] == 0
    assert (out / 'hls' / model['tag']).is_dir() and (out / 'models' / f'{model["tag"]}.keras').is_file()
    # ... and, with export.synth, traced to Verilog (checked bit for bit with iverilog) and synthesized with yosys.
    assert model['lut'] > 0 and model['synth']['mismatches'] == 0 and model['synth']['n_checked'] == 100
    assert (out / 'pareto-lut.png').is_file() and 'LUT (yosys)' in (out / 'report.md').read_text()

    # Rerunning the command (here through the CLI) reuses every trial and the exported model.
    stamps = {p: p.stat().st_mtime_ns for p in [*out.glob('trials/*/results.json'), *out.glob('models/*.json')]}
    capsys.readouterr()
    assert main(['sweep', str(config_file), '--grid', 'seed=0,1', '--out', str(out)]) == 0
    printed = capsys.readouterr().out
    assert '2 finished before, 0 to run' in printed and 'exported before' in printed
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert json.loads((out / 'results.json').read_text())['models'] == results['models']


def _kill_when_training(out: Path, trial: str, killed: dict) -> None:
    """SIGKILL the Ray worker of ``trial`` once it is training (pid from the trial's RUNNING marker)."""
    marker, log = out / 'trials' / trial / 'RUNNING', out / 'logs' / f'{trial}.log'
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if marker.is_file() and log.is_file() and 'training 2 epochs' in log.read_text():
            pid = int(marker.read_text().split('pid')[1])
            killed.update(pid=pid, finished=(out / 'trials' / trial / 'results.json').exists())
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def test_killed_worker_and_failing_trials_leave_the_other_trials_intact(local_ray, tmp_path):
    config_file = tmp_path / 'digits_sweep.yaml'
    config_file.write_text(yaml.safe_dump({**BASE, 'export': {'n_models': 0}}))
    out = tmp_path / 'sweep'
    victim = 'seed=1_units=10'
    killed: dict = {}
    killer = threading.Thread(target=_kill_when_training, args=(out, victim, killed))
    killer.start()
    # units=7 passes validation but cannot build against 10 classes: those trials raise in their workers.
    results = sweep(config_file, ['seed=0,1', 'model.layers.2.units=10,7'], out, convert=False)
    killer.join()
    assert killed and not killed['finished']
    trials = {t['name']: t for t in results['trials']}
    assert results['status'] == 'incomplete'

    (crash,) = trials[victim]['errors']
    assert trials[victim]['status'] == 'done' and crash['kind'] == 'worker died' and crash['attempt'] == 1
    assert trials['seed=0_units=10']['status'] == 'done' and trials['seed=0_units=10']['errors'] == []
    for name in ('seed=0_units=7', 'seed=1_units=7'):
        assert trials[name]['status'] == 'failed' and [e['attempt'] for e in trials[name]['errors']] == [1, 2]
        assert all('outputs 7 values per sample' in e['summary'] for e in trials[name]['errors'])
        assert trials[name]['errors'][0]['kind'] == 'exception' and 'File "' in trials[name]['errors'][0]['detail']
    assert json.loads((out / 'trials.json').read_text()) == results['trials']

    # The killed trial ran again from scratch; both good trials are complete runs, merged into one front.
    assert not (out / 'trials' / victim / 'RUNNING').exists() and len(_history(out / 'trials' / victim)['loss']) == 2
    assert {p['trial'] for p in results['front']} <= {'seed=0_units=10', victim}
    assert len(read_front(out / 'trials' / victim / 'pareto')) >= 1 and results['models'] == []
    report = (out / 'report.md').read_text()
    assert 'failed: ConfigError' in report and '| `seed=1_units=10` | seed=1 model.layers.2.units=10 | done |' in report

    # A rerun with other training settings is refused before anything runs; the trials stay as they are.
    changed = yaml.safe_load(config_file.read_text())
    changed['training']['learning_rate'] = 0.01
    config_file.write_text(yaml.safe_dump(changed))
    with pytest.raises(ValueError, match=r"holds a trial trained with other settings of \['training'\]"):
        sweep(config_file, ['seed=0,1', 'model.layers.2.units=10,7'], out, convert=False)
    assert json.loads((out / 'trials.json').read_text()) == results['trials']


def test_all_epochs_reads_the_values_each_trial_front_was_ranked_by(tmp_path):
    """A trial whose front ranked calibrated checkpoints plots its calibrated epochs; another, its logged epochs."""
    from hgq.sweep.front import all_epochs

    logged = {'val_accuracy': [0.5, 0.6], 'ebops': [900.0, 800.0]}
    calibrated = {'calibrated_val_accuracy': [0.55, 0.65], 'calibrated_ebops': [400.0, 300.0]}
    for name, is_calibrated in (('a', True), ('b', False)):
        (tmp_path / name / 'pareto').mkdir(parents=True)
        (tmp_path / name / 'history.json').write_text(json.dumps({**logged, **calibrated}))
        index = {'metrics': ['val_accuracy', 'ebops'], 'sides': ['max', 'min'], 'points': []}
        (tmp_path / name / 'pareto' / 'front.json').write_text(json.dumps({**index, 'calibrated': is_calibrated}))
    epochs = all_epochs({'a': tmp_path / 'a', 'b': tmp_path / 'b'}, ('val_accuracy', 'ebops'))
    assert epochs == {'val_accuracy': [0.55, 0.65, 0.5, 0.6], 'ebops': [400.0, 300.0, 900.0, 800.0]}
