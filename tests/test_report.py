"""``hgq.report`` and ``hgq report`` on synthesis reports in the Vivado HLS / Vitis HLS / Vivado formats.

The fixtures (``tests/fixtures/*_prj``, see their README) hold hand-written reports in the tools' layouts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hgq.report import ReportError, format_json, format_table, read_report
from hgq_cli import main

FIXTURES = Path(__file__).parent / 'fixtures'


def test_vitis_project_reports_latency_ii_resources_and_ebops() -> None:
    report = read_report(FIXTURES / 'vitis_prj')
    assert (report['project'], report['backend'], report['part']) == ('myproject', 'vitis', 'xcvu13p-flga2577-2-e')
    hls = report['hls']
    assert hls['latency_cycles'] == {'best': 6, 'worst': 6}
    assert hls['latency_ns'] == {'best': 30.0, 'worst': 30.0}
    assert hls['ii_cycles'] == {'min': 1, 'max': 1}
    assert hls['estimated_clock_ns'] == 3.412
    assert hls['resources'] == {'LUT': 9391, 'FF': 1874, 'DSP': 2, 'BRAM_18K': 0, 'URAM': 0}
    assert hls['available']['LUT'] == 1728000
    assert report['vivado_synth'] == {'LUT': 6482, 'FF': 1517, 'DSP': 2, 'BRAM_18K': 0, 'URAM': 0}
    assert report['ebops'] == 6815.0
    assert report['lut_plus_55_dsp'] == 6482 + 55 * 2


def test_vivado_project_uses_dsp48e_and_slice_rows() -> None:
    report = read_report(FIXTURES / 'vivado_prj')
    hls = report['hls']
    assert hls['latency_cycles'] == {'best': 4, 'worst': 5}
    assert hls['latency_ns'] == {'best': 40.0, 'worst': 50.0}
    assert hls['ii_cycles'] == {'min': 1, 'max': 2}
    assert hls['resources']['DSP'] == 7
    synth = report['vivado_synth']
    assert (synth['LUT'], synth['FF'], synth['DSP']) == (3105, 864, 5)
    assert synth['BRAM_18K'] == 3  # 1.5 Block RAM tiles of 36 Kb
    assert report['ebops'] is None and report['meta'] is None


def test_table_and_json_formats() -> None:
    report = read_report(FIXTURES / 'vitis_prj')
    table = format_table(report)
    assert 'latency [cycles]' in table and 'II [cycles]' in table
    lut_row = next(line for line in table.splitlines() if line.startswith('LUT '))
    assert lut_row.split() == ['LUT', '9391', '6482']
    assert next(line for line in table.splitlines() if line.startswith('EBOPs')).split() == ['EBOPs', '6815']
    assert json.loads(format_json(report)) == json.loads(json.dumps(report))


def test_report_without_hls_solution_reads_vivado_synthesis_only(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / 'vitis_prj' / 'project.tcl', tmp_path)
    shutil.copy(FIXTURES / 'vitis_prj' / 'vivado_synth.rpt', tmp_path)
    report = read_report(tmp_path)
    assert report['hls'] is None
    assert report['vivado_synth']['LUT'] == 6482


def test_missing_project_directory(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match='does not exist'):
        read_report(tmp_path / 'nowhere')


def test_directory_that_is_not_an_hls4ml_project(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match='project.tcl is missing'):
        read_report(tmp_path)


def test_project_without_synthesis_reports(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / 'vitis_prj' / 'project.tcl', tmp_path)
    with pytest.raises(ReportError, match='no synthesis reports .* run HLS synthesis first'):
        read_report(tmp_path)


def test_solution_without_reports(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / 'vitis_prj', tmp_path / 'prj')
    (tmp_path / 'prj' / 'myproject_prj' / 'solution1' / 'syn' / 'report' / 'myproject_csynth.xml').unlink()
    (tmp_path / 'prj' / 'vivado_synth.rpt').unlink()
    with pytest.raises(ReportError, match='csynth.xml and vivado_synth.rpt are both missing'):
        read_report(tmp_path / 'prj')


def test_corrupt_report(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / 'vitis_prj', tmp_path / 'prj')
    (tmp_path / 'prj' / 'myproject_prj' / 'solution1' / 'syn' / 'report' / 'myproject_csynth.xml').write_text('<prof')
    with pytest.raises(ReportError, match='cannot read the synthesis reports'):
        read_report(tmp_path / 'prj')


def test_report_command_table_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(['report', str(FIXTURES / 'vitis_prj')]) == 0
    assert 'LUT + 55 DSP' in capsys.readouterr().out
    assert main(['report', str(FIXTURES / 'vivado_prj'), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['vivado_synth']['DSP'] == 5
    assert main(['report', str(tmp_path / 'nowhere')]) == 2
    assert 'hgq report: error: project directory' in capsys.readouterr().err
    assert main(['report', str(tmp_path)]) == 2
    assert 'project.tcl is missing' in capsys.readouterr().err


def test_well_formed_xml_that_is_not_a_csynth_report(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(FIXTURES / 'vitis_prj', tmp_path / 'prj')
    report = tmp_path / 'prj' / 'myproject_prj' / 'solution1' / 'syn' / 'report' / 'myproject_csynth.xml'
    report.write_text('<profile><UserAssignments/></profile>')
    assert main(['report', str(tmp_path / 'prj')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('hgq report: error: cannot read the synthesis reports') and '\n' not in err
    assert 'myproject_csynth.xml' in err


def test_corrupt_meta_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shutil.copytree(FIXTURES / 'vitis_prj', tmp_path / 'prj')
    (tmp_path / 'prj' / 'hgq_meta.json').write_text('{"ebops": 12')
    assert main(['report', str(tmp_path / 'prj')]) == 2
    err = capsys.readouterr().err.strip()
    meta = tmp_path / 'prj' / 'hgq_meta.json'
    assert err.startswith(f'hgq report: error: {meta} is not valid JSON') and '\n' not in err
