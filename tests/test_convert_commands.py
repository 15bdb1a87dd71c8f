"""``hgq convert``: conversion from a saved model, calibration, the bit-exact check and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

import hgq
from hgq.conversion import compare_outputs
from hgq.layers import HActivation, HDense, HQuantize
from hgq_cli import main
from hgq_cli.common import UserError, load_data

RNG = np.random.default_rng(3)


@pytest.fixture(scope='module')
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An uncalibrated and a calibrated saved model, and input data files."""
    root = tmp_path_factory.mktemp('commands')
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8,)), HQuantize(), HDense(6, activation='relu'), HDense(3)])
    x = RNG.normal(size=(2000, 8)).astype('float32')
    model.save(root / 'raw.keras')
    hgq.calibrate(model, x)
    model.save(root / 'calibrated.keras')
    np.save(root / 'x.npy', x)
    np.save(root / 'x2.npy', np.concatenate([x, 2 * x]))
    return {'root': root, 'raw': root / 'raw.keras', 'calibrated': root / 'calibrated.keras', 'x': root / 'x.npy'}


def test_convert_calibrated_model(saved: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    out = saved['root'] / 'prj'
    args = ['convert', str(saved['calibrated']), '-o', str(out), '--backend', 'Vivado', '--clock-period', '4']
    assert main(args) == 0
    assert 'EBOPs' in capsys.readouterr().out
    meta = json.loads((out / 'hgq_meta.json').read_text())
    assert (meta['backend'], meta['clock_period'], meta['calibrated']) == ('Vivado', 4.0, True)
    assert (out / 'firmware' / 'myproject.cpp').is_file()


def test_uncalibrated_model_is_an_error(saved: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(['convert', str(saved['raw']), '-o', str(saved['root'] / 'raw_prj')]) == 2
    assert 'not calibrated' in capsys.readouterr().err


def test_calibration_data_calibrates_before_converting(saved: dict[str, Path]) -> None:
    out = saved['root'] / 'cal_prj'
    assert main(['convert', str(saved['raw']), '-o', str(out), '--calibration', str(saved['x'])]) == 0
    assert json.loads((out / 'hgq_meta.json').read_text())['calibrated'] is True


def test_allow_uncalibrated(saved: dict[str, Path]) -> None:
    out = saved['root'] / 'any_prj'
    assert main(['convert', str(saved['raw']), '-o', str(out), '--allow-uncalibrated']) == 0
    assert json.loads((out / 'hgq_meta.json').read_text())['calibrated'] is False


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--part', 'virtex-big'], 'part must be a Xilinx part name'),
        (['--backend', 'Quartus'], 'backend must be one of'),
        (['--io-type', 'io_serial'], 'io_type must be one of'),
        (['--calibration', 'missing.npy'], 'data file missing.npy does not exist'),
    ],
)
def test_bad_options(saved: dict[str, Path], extra: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(['convert', str(saved['calibrated']), '-o', str(saved['root'] / 'bad'), *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(['convert', str(tmp_path / 'nope.keras'), '-o', str(tmp_path / 'prj')]) == 2
    err = capsys.readouterr().err
    assert 'hgq convert: error: model file' in err and 'does not exist' in err


def test_unsupported_layer(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = keras.Sequential([keras.Input((4,)), HQuantize(), keras.layers.Dense(2, name='float_dense')])
    hgq.calibrate(model, RNG.normal(size=(64, 4)).astype('float32'))
    model.save(tmp_path / 'm.keras')
    assert main(['convert', str(tmp_path / 'm.keras'), '-o', str(tmp_path / 'prj')]) == 2
    assert "layer 'float_dense'" in capsys.readouterr().err


@pytest.mark.slow
def test_check_compiles_and_counts_no_mismatch(saved: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    x2 = saved['root'] / 'x2.npy'
    out = saved['root'] / 'check_prj'
    assert main(['convert', str(saved['calibrated']), '-o', str(out), '--check', str(x2)]) == 0
    assert 'bit-exact check: 0 of 4000 samples differ from Keras (0 output values)' in capsys.readouterr().out


def test_compare_outputs_counts_samples_and_values() -> None:
    keras_out = [np.zeros((3, 2)), np.ones((3, 1))]
    hls_out = [np.array([[0, 0], [0, 0.5], [0.25, 0.5]]), np.array([1.0, 1.0, 2.0])]
    result = compare_outputs(keras_out, hls_out)
    assert (result.mismatched_samples, result.mismatched_values, result.max_abs_diff) == (2, 4, 1.0)
    assert compare_outputs(np.zeros((4, 2)), np.zeros(8)).exact


def test_load_data_formats(tmp_path: Path) -> None:
    np.savez(tmp_path / 'two.npz', a=np.zeros((2, 3)), b=np.ones((2, 4)))
    a, b = load_data(tmp_path / 'two.npz')
    assert a.shape == (2, 3) and b.shape == (2, 4)
    (tmp_path / 'x.csv').write_text('1,2')
    with pytest.raises(UserError, match=r'must be \.npy'):
        load_data(tmp_path / 'x.csv')


# -- clear errors: exit 2 and one line naming the problem ----------------------------------------------------------


def _error_line(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'hgq {command}: error: ') and '\n' not in err and 'Traceback' not in err, err
    return err


def test_corrupt_or_truncated_model_files(saved: dict[str, Path], tmp_path: Path, capsys) -> None:
    data = saved['calibrated'].read_bytes()
    (tmp_path / 'truncated.keras').write_bytes(data[: len(data) // 2])
    (tmp_path / 'text.keras').write_text('not a model')
    for name in ('truncated.keras', 'text.keras'):
        for command in (['convert', '-o', str(tmp_path / 'prj')], ['summary'], ['plot', 'bits']):
            assert main([*command[:1], *command[1:], str(tmp_path / name)]) == 2
            err = _error_line(capsys, command[0])
            assert f'model file {tmp_path / name} is not a .keras archive (truncated or corrupt' in err
    assert not (tmp_path / 'prj').exists()


def test_a_model_with_python_code_needs_unsafe(tmp_path: Path, capsys) -> None:
    model = keras.Sequential([keras.Input((4,)), HQuantize(), HDense(3), HActivation(lambda x: 0.5 * x)])
    hgq.calibrate(model, RNG.normal(size=(64, 4)).astype('float32'))
    model.save(tmp_path / 'lambda.keras')
    for command in (['convert', '-o', str(tmp_path / 'prj')], ['summary'], ['plot', 'bits']):
        assert main([*command, str(tmp_path / 'lambda.keras')]) == 2
        err = _error_line(capsys, command[0])
        assert 'holds Python code' in err and 'safe_mode=False' in err and '--unsafe' in err
    assert main(['summary', str(tmp_path / 'lambda.keras'), '--unsafe']) == 0
    assert 'HActivation' in capsys.readouterr().out


@pytest.mark.parametrize(
    ('extra', 'message'),
    [
        (['--project-name', 'class'], "project_name 'class' is a C++ keyword"),
        (['--clock-period', 'inf'], 'clock_period must be a finite positive number of ns, got inf'),
    ],
)
def test_settings_the_compiler_or_the_tcl_script_would_reject(saved, extra, message, capsys) -> None:
    out = saved['root'] / 'bad_setting'
    assert main(['convert', str(saved['calibrated']), '-o', str(out), *extra]) == 2
    assert message in _error_line(capsys, 'convert')
    assert not out.exists()


def test_output_directory_problems(saved: dict[str, Path], tmp_path: Path, capsys) -> None:
    (tmp_path / 'file').write_text('')
    assert main(['convert', str(saved['calibrated']), '-o', str(tmp_path / 'file' / 'prj')]) == 2
    assert f'output directory {tmp_path / "file" / "prj"} is not writable' in _error_line(capsys, 'convert')
    prj = tmp_path / 'prj'
    assert main(['convert', str(saved['calibrated']), '-o', str(prj), '--project-name', 'one']) == 0
    capsys.readouterr()
    assert main(['convert', str(saved['calibrated']), '-o', str(prj), '--project-name', 'two']) == 2
    err = _error_line(capsys, 'convert')
    assert "holds the hls4ml project 'one'" in err and '--overwrite' in err
    assert main(['convert', str(saved['calibrated']), '-o', str(prj), '--project-name', 'two', '--overwrite']) == 0
    assert (prj / 'firmware' / 'two.cpp').is_file() and not (prj / 'firmware' / 'one.cpp').exists()


def test_traceback_flag_shows_the_error(saved: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='clock_period must be a finite positive number'):
        main(['--traceback', 'convert', str(saved['calibrated']), '-o', str(tmp_path), '--clock-period', '-1'])
