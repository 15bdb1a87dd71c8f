"""Synthesis results of a converted project next to the model's EBOPs (``hgq report``).

Reads what Vivado/Vitis HLS and Vivado wrote into an hls4ml project directory, through
``hls4ml.report.parse_vivado_report``: the HLS report ``<project>_prj/solution1/syn/report/<project>_csynth.xml``
(latency, initiation interval, estimated resources) and Vivado's ``vivado_synth.rpt`` (post-synthesis LUT, FF,
DSP, BRAM), plus the ``hgq_meta.json`` that :func:`hgq.to_hls` wrote (EBOPs, settings), and ``synth.json`` from
:func:`hgq.synth` (yosys LUTs of the traced Verilog) as a third column; a directory with only ``synth.json``
(``hgq synth -o DIR``) is reported too.

Examples
--------
>>> from hgq.report import read_report, format_table
>>> report = read_report('prj/')  # doctest: +SKIP
>>> print(format_table(report))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from hls4ml.report import parse_vivado_report

from hgq.conversion import read_meta

__all__ = ['ReportError', 'read_report', 'format_table', 'format_json', 'RESOURCES']

RESOURCES = ('LUT', 'FF', 'DSP', 'BRAM_18K', 'URAM')
DSP_LUT_EQUIVALENT = 55  # EBOPs track LUT + 55 * DSP (README, "Design notes")


class ReportError(ValueError):
    """A project directory without the files a report needs; the message says which and how to get them."""


def _project_settings(project_dir: Path) -> dict[str, str]:
    script = project_dir / 'project.tcl'
    if not script.is_file():
        raise ReportError(f'{project_dir} is not an hls4ml Vivado/Vitis project: project.tcl is missing')
    settings = dict(re.findall(r'^set (\w+) "?([^"\n]*)"?\s*$', script.read_text(), flags=re.MULTILINE))
    if 'project_name' not in settings:
        raise ReportError(f'{script} does not set project_name; is it an hls4ml project?')
    return settings


def _has_solution(project_dir: Path, name: str) -> bool:
    prj = project_dir / f'{name}_prj'
    return (prj / 'vivado_hls.app').is_file() or (prj / 'hls.app').is_file()


def _number(text: Any) -> float | int | None:
    if text is None:
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        return None
    return int(value) if value.is_integer() else value


def _hls_section(csynth: dict[str, Any], clock_period: float | None) -> dict[str, Any]:
    period = _number(csynth.get('TargetClockPeriod')) or clock_period
    best, worst = _number(csynth.get('BestLatency')), _number(csynth.get('WorstLatency'))
    return {
        'latency_cycles': {'best': best, 'worst': worst},
        'latency_ns': {
            'best': None if best is None or period is None else best * period,
            'worst': None if worst is None or period is None else worst * period,
        },
        'ii_cycles': {'min': _number(csynth.get('IntervalMin')), 'max': _number(csynth.get('IntervalMax'))},
        'target_clock_ns': period,
        'estimated_clock_ns': _number(csynth.get('EstimatedClockPeriod')),
        'resources': {key: _number(csynth.get(key)) for key in RESOURCES},
        'available': {key: _number(csynth.get(f'Available{key}')) for key in RESOURCES},
    }


def _synth_section(vivado: dict[str, Any]) -> dict[str, Any]:
    tiles = _number(vivado.get('BRAM_18K'))  # hls4ml stores Vivado's "Block RAM Tile" (36 Kb) count here
    return {
        'LUT': _number(vivado.get('LUT')),
        'FF': _number(vivado.get('FF')),
        'DSP': _number(vivado.get('DSP48E')),
        'BRAM_18K': None if tiles is None else 2 * tiles,
        'URAM': _number(vivado.get('URAM')),
    }


def read_report(project_dir: str | Path) -> dict[str, Any]:
    """Latency, initiation interval and resources of a synthesized project, with the model's EBOPs if known.

    Parameters
    ----------
    project_dir : str or Path
        The ``output_dir`` of :func:`hgq.to_hls` after HLS synthesis (``hls_model.build()`` or
        ``vitis_hls -f build_prj.tcl``), optionally followed by Vivado synthesis (``vsynth=True``).

    Returns
    -------
    dict
        ``project``, ``backend``, ``part``, ``clock_period_ns``, ``hls`` (HLS estimates, or ``None``),
        ``vivado_synth`` (post-synthesis resources, or ``None``), ``ebops`` and ``lut_plus_55_dsp`` (the resource
        figure EBOPs track, from Vivado synthesis if present, else from HLS), ``meta`` (``hgq_meta.json``).

    Raises
    ------
    ReportError
        If the directory does not exist, is not an hls4ml project, or holds no synthesis report.
    """
    path = Path(project_dir)
    if not path.is_dir():
        raise ReportError(f'project directory {path} does not exist')
    yosys = _yosys_section(path)
    if yosys is not None and not (path / 'project.tcl').is_file():
        return _yosys_only(path, yosys)
    settings = _project_settings(path)
    name = settings['project_name']
    meta = read_meta(path)
    if not _has_solution(path, name) and not (path / 'vivado_synth.rpt').is_file():
        raise ReportError(
            f'no synthesis reports in {path}: run HLS synthesis first (hls_model.build(csynth=True, vsynth=True), '
            f'or vitis_hls -f build_prj.tcl in {path})'
        )
    parsed = _parse(path, name)
    clock = _number(settings.get('clock_period'))
    hls = _hls_section(parsed['CSynthesisReport'], clock) if parsed.get('CSynthesisReport') else None
    synth = _synth_section(parsed['VivadoSynthReport']) if parsed.get('VivadoSynthReport') else None
    if hls is None and synth is None:
        raise ReportError(
            f'no synthesis reports in {path}: {name}_prj/solution1/syn/report/{name}_csynth.xml and '
            'vivado_synth.rpt are both missing'
        )
    resources = synth or hls['resources']
    lut, dsp = resources.get('LUT'), resources.get('DSP')
    return {
        'project': name,
        'backend': settings.get('backend'),
        'part': settings.get('part'),
        'clock_period_ns': clock,
        'hls': hls,
        'vivado_synth': synth,
        'ebops': None if meta is None else meta.get('ebops'),
        'lut_plus_55_dsp': None if lut is None or dsp is None else lut + DSP_LUT_EQUIVALENT * dsp,
        'meta': meta,
        'yosys': yosys,
    }


def _yosys_section(path: Path) -> dict[str, Any] | None:
    """``synth.json`` written by :func:`hgq.synth` (yosys resources and the Verilog check), if present."""
    file = path / 'synth.json'
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f'{file} is not valid JSON ({err}); rerun hgq synth') from None


def _yosys_only(path: Path, yosys: dict[str, Any]) -> dict[str, Any]:
    lut, dsp = yosys.get('lut'), yosys.get('dsp')
    return {
        'project': yosys.get('model', path.name),
        'backend': 'yosys',
        'part': yosys.get('part_family'),
        'clock_period_ns': None,
        'hls': None,
        'vivado_synth': None,
        'ebops': yosys.get('ebops'),
        'lut_plus_55_dsp': None if lut is None or dsp is None else lut + DSP_LUT_EQUIVALENT * dsp,
        'meta': None,
        'yosys': yosys,
    }


def _parse(path: Path, name: str) -> dict[str, Any]:
    if not _has_solution(path, name):
        return _synth_only(path)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the parser prints a line for every report it misses
            return parse_vivado_report(str(path)) or {}
    except (IndexError, AttributeError, ElementTree.ParseError) as err:
        raise ReportError(
            f'cannot read the synthesis reports in {path} ({name}_prj/solution1/syn/report/{name}_csynth.xml): '
            f'not the report Vivado/Vitis HLS writes ({type(err).__name__}: {err})'
        ) from None


def _synth_only(path: Path) -> dict[str, Any]:
    """Vivado synthesis report without an HLS project (``parse_vivado_report`` needs the HLS solution)."""
    section, values = 0, {}
    keys = (('CLB LUTs', 'Slice LUTs', 1, 'LUT'), ('CLB Registers', 'Slice Registers', 1, 'FF'))
    keys += (('Block RAM Tile', 'Block RAM Tile', 2, 'BRAM_18K'), ('URAM', 'URAM', 2, 'URAM'))
    keys += (('DSPs', 'DSPs', 3, 'DSP48E'),)
    for line in (path / 'vivado_synth.rpt').read_text().splitlines():
        match = re.match(r'^(\d)\.', line)
        section = int(match.group(1)) if match else section
        for first, second, sec, key in keys:
            if '|' in line and (first in line or second in line) and section == sec and key not in values:
                values[key] = line.split('|')[2].strip()
    return {'VivadoSynthReport': values}


def _fmt(value: Any) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.6g}'
    return str(value)


def _range(pair: dict[str, Any], low: str, high: str) -> str:
    a, b = pair.get(low), pair.get(high)
    return _fmt(a) if a == b else f'{_fmt(a)} - {_fmt(b)}'


def format_table(report: dict[str, Any]) -> str:
    """The report as a plain-text table (HLS estimate and Vivado synthesis side by side)."""
    hls, synth, yosys = report['hls'] or {}, report['vivado_synth'] or {}, report.get('yosys') or {}
    yosys_values = {'LUT': yosys.get('lut'), 'FF': yosys.get('ff'), 'DSP': yosys.get('dsp')}
    yosys_values['BRAM_18K'] = yosys.get('bram')
    lines = [
        f'project {report["project"]}  backend {_fmt(report["backend"])}  part {_fmt(report["part"])}  '
        f'clock {_fmt(report["clock_period_ns"])} ns',
        f'{"":<18}{"HLS estimate":>16}{"Vivado synth":>16}' + (f'{"yosys":>16}' if yosys else ''),
    ]
    if hls:
        lines.append(f'{"latency [cycles]":<18}{_range(hls["latency_cycles"], "best", "worst"):>16}{"":>16}')
        lines.append(f'{"latency [ns]":<18}{_range(hls["latency_ns"], "best", "worst"):>16}{"":>16}')
        lines.append(f'{"II [cycles]":<18}{_range(hls["ii_cycles"], "min", "max"):>16}{"":>16}')
        lines.append(f'{"est. clock [ns]":<18}{_fmt(hls["estimated_clock_ns"]):>16}{"":>16}')
    for key in RESOURCES:
        hls_value = hls['resources'].get(key) if hls else None
        yosys_value = f'{_fmt(yosys_values.get(key)):>16}' if yosys else ''
        lines.append(f'{key:<18}{_fmt(hls_value):>16}{_fmt(synth.get(key)):>16}{yosys_value}')
    lines.append(f'{"EBOPs":<18}{_fmt(report["ebops"]):>16}')
    lines.append(f'{"LUT + 55 DSP":<18}{_fmt(report["lut_plus_55_dsp"]):>16}')
    if yosys:
        checked = f'{yosys.get("mismatches")}/{yosys.get("n_checked")}' if yosys.get('n_checked') else 'not checked'
        lines.append(
            f'yosys ({_fmt(yosys.get("part_family"))}): carry {_fmt(yosys.get("carry"))}, depth '
            f'{_fmt(yosys.get("depth"))}, da4ml estimate {_fmt(yosys.get("estimate_lut"))} LUT, '
            f'Verilog mismatches {checked}'
        )
    return '\n'.join(lines)


def format_json(report: dict[str, Any]) -> str:
    """The report as indented JSON."""
    return json.dumps(report, indent=2)
