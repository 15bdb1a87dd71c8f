"""The ``hgq`` command line: demo, run, plot, summary, and clean errors for bad input."""

import contextlib
import importlib
import io
from pathlib import Path

import pytest

from hgq_cli import COMMANDS, build_parser, main

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
CONFIGS = Path(__file__).resolve().parent.parent / 'configs'


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """A short demo run without conversion (conversion is covered by tests/test_run.py), and its output."""
    out = tmp_path_factory.mktemp('cli') / 'demo'
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(['demo', '--epochs', '3', '--no-convert', '--out', str(out)]) == 0
    return out, printed.getvalue()


def test_every_registered_command_follows_the_convention():
    names = [command.name for command in COMMANDS]
    assert len(names) == len(set(names))
    assert {'demo', 'run', 'plot', 'summary', 'convert', 'report'} <= set(names)
    for command in COMMANDS:
        module = importlib.import_module(command.module)
        assert callable(module.add_arguments) and callable(module.run), command.module
        with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args([command.name, '--help'])
        assert exit_info.value.code == 0


def test_only_the_selected_command_is_parsed_in_full(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(['--help'])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command.name in out
    with pytest.raises(SystemExit) as exit_info:
        main(['no-such-command'])
    assert exit_info.value.code == 2 and 'invalid choice' in capsys.readouterr().err


def test_demo_prints_progress_the_table_and_where_the_report_is(demo_run):
    run_dir, out = demo_run
    assert (run_dir / 'report.md').is_file() and (run_dir / 'results.json').is_file()
    assert not (run_dir / 'RUNNING').exists()
    assert '[hgq] training 3 epochs' in out and 'Epoch 3/3' in out
    assert 'test acc' in out and 'EBOPs' in out and 'mismatches' in out
    assert out.rstrip().endswith(f'report: {run_dir / "report.md"}')


def test_plot_pareto_and_bits_write_pngs(demo_run, tmp_path, capsys):
    demo_run = demo_run[0]
    assert main(['plot', 'pareto', str(demo_run), '-o', str(tmp_path / 'front.png')]) == 0
    assert (tmp_path / 'front.png').read_bytes()[:8] == PNG_MAGIC
    assert main(['plot', 'pareto', str(demo_run / 'pareto'), '-o', str(tmp_path / 'front2.png')]) == 0
    assert (tmp_path / 'front2.png').read_bytes()[:8] == PNG_MAGIC
    model = next((demo_run / 'models').glob('*.keras'))
    assert main(['plot', 'bits', str(model), '-o', str(tmp_path / 'bits.png')]) == 0
    assert (tmp_path / 'bits.png').read_bytes()[:8] == PNG_MAGIC
    assert capsys.readouterr().out.split() == [str(tmp_path / n) for n in ('front.png', 'front2.png', 'bits.png')]


def test_summary_prints_the_table(demo_run, capsys):
    demo_run = demo_run[0]
    model = next((demo_run / 'models').glob('*.keras'))
    assert main(['summary', str(model)]) == 0
    out = capsys.readouterr().out
    assert 'HGQ summary' in out and '(HDense)' in out and 'Total EBOPs' in out


def test_run_quiet_prints_the_report_path(tmp_path, capsys):
    out_dir = tmp_path / 'run'
    args = ['run', str(CONFIGS / 'digits_mlp.yaml'), '--out', str(out_dir), '--epochs', '1', '--no-convert', '--quiet']
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out_dir / 'report.md')


def test_bad_input_gives_a_clean_error(tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('dataset: {name: digits}\nmodel: {layers: [{type: HDense, units: 10}]}\ntraining: {epochs: 0}\n')
    assert main(['run', str(bad)]) == 2
    assert 'hgq run: error:' in capsys.readouterr().err
    assert main(['run', str(tmp_path / 'missing.yaml')]) == 2
    assert 'no configuration file' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['plot', 'histogram', 'x'])
