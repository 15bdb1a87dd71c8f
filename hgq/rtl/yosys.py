"""Synthesize Verilog with yosys (``synth_xilinx``) and read back LUT, flip-flop, carry and DSP counts.

The numbers come from yosys's own technology mapping for a Xilinx family (``xcup``: UltraScale+), not from
Vivado; they track Vivado's LUT counts closely for adder-dominated logic, but are not a timing-closed result.

Examples
--------
>>> counts = synthesize(sources, 'hgq_model_wrapper', 'rtl/')   # doctest: +SKIP
>>> counts['lut'], counts['depth']                              # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hgq.rtl.verilog import require_tool

__all__ = ['synthesize', 'parse_stat', 'SynthesisError', 'yosys_version']


class SynthesisError(RuntimeError):
    """yosys is missing or failed."""


def yosys_version() -> str:
    """``yosys -V`` (raises :class:`~hgq.rtl.verilog.ToolNotFoundError` when yosys is missing)."""
    proc = subprocess.run([require_tool('yosys'), '-V'], capture_output=True, text=True, timeout=60)
    return proc.stdout.strip()


_CELL = re.compile(r'^\s+(\$?[A-Za-z_][\w$]*)\s+(\d+)\s*$')
_LTP = re.compile(r'Longest topological path in \S+ \(length=(\d+)\)')
_CPU = re.compile(r'CPU: user ([\d.]+)s system ([\d.]+)s')


def parse_stat(text: str) -> dict[str, int]:
    """Cell counts of the last ``stat`` report in a yosys log, summed into ``lut``, ``ff``, ``carry``, ``dsp``,
    ``muxf``, ``bram``, ``inv`` (plus ``cells``: every cell type and its count). ``lut`` counts ``LUT1``..``LUT6``
    cells; yosys keeps inverters as separate ``INV`` cells (``inv``), which Vivado mostly absorbs into LUTs.

    Examples
    --------
    >>> parse_stat('   Number of cells: 3\\n     LUT2   2\\n     CARRY8  1\\n')['lut']
    2
    """
    start = text.rfind('Number of cells')
    if start < 0:
        raise SynthesisError('no `stat` report in the yosys log')
    cells: dict[str, int] = {}
    for line in text[start:].splitlines()[1:]:
        m = _CELL.match(line)
        if m:
            cells[m.group(1)] = cells.get(m.group(1), 0) + int(m.group(2))
        elif line.strip() and cells:
            break

    def total(pattern: str) -> int:
        return sum(n for name, n in cells.items() if re.fullmatch(pattern, name))

    return {
        'lut': total(r'LUT[1-6]'),
        'ff': total(r'FD[A-Z]*'),
        'carry': total(r'CARRY\d'),
        'dsp': total(r'DSP\w*'),
        'muxf': total(r'MUXF\d'),
        'bram': total(r'RAMB\w*'),
        'inv': total(r'INV'),
        'cells': cells,
    }


def synthesize(
    sources: Sequence[str | os.PathLike],
    top: str,
    work_dir: str | os.PathLike,
    part_family: str = 'xcup',
    depth: bool = True,
    timeout: float | None = None,
) -> dict:
    """Run ``synth_xilinx -family <part_family> -flatten -noiopad`` on ``sources`` and return the cell counts.

    Parameters
    ----------
    sources : sequence of path
        Verilog files.
    top : str
        The top module.
    work_dir : path
        Where ``synth.ys`` and ``yosys.log`` are written.
    part_family : str
        yosys's Xilinx family: ``xcup`` (UltraScale+), ``xcu``, ``xc7``, ...
    depth : bool
        Also report the longest combinational path in cells (yosys ``ltp -noff``) as ``depth``.

    Returns
    -------
    dict
        ``lut``, ``ff``, ``carry``, ``dsp``, ``muxf``, ``bram``, ``inv``, ``cells``, ``depth`` (``None``
        without it) and ``cpu_seconds`` (yosys's own CPU time, without its ABC subprocesses).
    """
    yosys = require_tool('yosys')
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    # relative to the script: the directory of sources and script can be moved as a whole (hgq.synth does)
    files = ' '.join(f'"{os.path.relpath(Path(s).resolve(), work_dir.resolve())}"' for s in sources)
    script = [
        f'read_verilog -defer {files}',
        f'synth_xilinx -family {part_family} -flatten -noiopad -top {top}',
        'stat',
    ]
    if depth:
        script.append('ltp -noff')
    (work_dir / 'synth.ys').write_text('\n'.join(script) + '\n')
    log = work_dir / 'yosys.log'
    cmd = [yosys, '-q', '-l', log.name, '-s', 'synth.ys']
    proc = subprocess.run(cmd, cwd=work_dir, capture_output=True, text=True, timeout=timeout)
    text = log.read_text(errors='replace') if log.is_file() else ''
    if proc.returncode != 0:
        raise SynthesisError(f'yosys failed ({proc.returncode}); the end of its log:\n{(text or proc.stderr)[-2000:]}')
    counts = parse_stat(text)
    m = _LTP.search(text)
    counts['depth'] = int(m.group(1)) if m else None
    m = _CPU.search(text)
    counts['cpu_seconds'] = round(float(m.group(1)) + float(m.group(2)), 2) if m else None
    return counts
