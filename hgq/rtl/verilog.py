"""Write the traced logic as Verilog and simulate it with Icarus Verilog (``iverilog``/``vvp``).

:func:`write_verilog` emits da4ml's combinational Verilog: ``src/<top>.v`` (the logic on packed, per-element
widths), ``src/<top>_wrapper.v`` (one equally wide slot per element) and ``src/static/*.v`` (adder, negation and
mux primitives). :func:`simulate` drives the wrapper with real input codes from a file and reads back its output
codes: no part of the check goes through Python's model of the logic.

Port layout of ``<top>_wrapper``: input ``j`` occupies bits ``[(j + 1) * w_in - 1 : j * w_in]`` of ``model_inp``
and holds ``value * 2**f_in`` in two's complement (``w_in``, ``f_in``: the widest port's width and fractional bits);
outputs are laid out the same way in ``model_out`` (sign-extended for signed outputs).

Examples
--------
>>> files = write_verilog(traced, 'rtl/', 'hgq_model')        # doctest: +SKIP
>>> y = simulate(traced, 'rtl/', 'hgq_model', x)              # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
from da4ml.codegen import RTLModel
from da4ml.types import minimal_kif

from hgq.rtl.trace import TracedModel

__all__ = ['write_verilog', 'simulate', 'verilog_sources', 'port_layout', 'SimulationError', 'ToolNotFoundError']
__all__ += ['require_tool']


class SimulationError(RuntimeError):
    """The RTL simulation failed."""


class ToolNotFoundError(FileNotFoundError):
    """An open-source EDA tool (yosys, iverilog) is not on ``PATH``; the message says how to install it."""


_PACKAGES = {'iverilog': 'iverilog', 'vvp': 'iverilog', 'yosys': 'yosys'}


def require_tool(tool: str) -> str:
    """Path of ``tool``, or a :class:`ToolNotFoundError` that says how to install it."""
    path = shutil.which(tool)
    if path is None:
        package = _PACKAGES[tool]
        raise ToolNotFoundError(
            f'{tool} not found on PATH; install it, e.g. `apt-get install {package}` (Debian/Ubuntu) '
            f'or `brew install {package}` (macOS)'
        )
    return path


def write_verilog(traced: TracedModel, out_dir: str | os.PathLike, top: str = 'hgq_model') -> list[Path]:
    """Write the Verilog of ``traced`` under ``out_dir`` and return the source files (primitives first)."""
    out_dir = Path(out_dir)
    RTLModel(traced.comb, top, out_dir, flavor='verilog', print_latency=False).write()
    return verilog_sources(out_dir, top)


def verilog_sources(out_dir: str | os.PathLike, top: str) -> list[Path]:
    """The synthesizable sources written by :func:`write_verilog`: primitives, the logic, the wrapper."""
    src = Path(out_dir) / 'src'
    # The lookup-table primitive is unused (tables are not traced) and not plain Verilog-2005 (iverilog rejects it).
    static = [p for p in sorted((src / 'static').glob('*.v')) if p.name != 'lookup_table.v']
    return [*static, src / f'{top}.v', src / f'{top}_wrapper.v']


def port_layout(qints: list) -> tuple[int, int, np.ndarray]:
    """Slot width, fractional bits of the slots, and the sign bit of every element of a wrapper port."""
    kifs = np.array([minimal_kif(q) for q in qints], dtype=np.int64).reshape(-1, 3)
    k, i, f = kifs.T
    width = int(np.max(k) + np.max(i) + np.max(f))
    return width, int(np.max(f)), k


def _pack(codes: np.ndarray, width: int) -> list[str]:
    """Hex lines of ``model_inp``: element ``j`` of each row in bits ``[(j+1)*width-1 : j*width]``."""
    mask = (1 << width) - 1
    n_digits = max(1, -(-width * codes.shape[1] // 4))
    lines = []
    for row in codes:
        word = 0
        for j, c in enumerate(row.tolist()):
            word |= (int(c) & mask) << (j * width)
        lines.append(f'{word:0{n_digits}x}')
    return lines


def _unpack(lines: list[str], n_out: int, width: int, signed: np.ndarray) -> np.ndarray:
    mask = (1 << width) - 1
    codes = np.empty((len(lines), n_out), dtype=np.int64)
    for n, line in enumerate(lines):
        if any(c in line for c in 'xXzZ'):
            raise SimulationError(f'the simulated outputs of sample {n} hold undefined bits: {line}')
        word = int(line, 16)
        for j in range(n_out):
            c = (word >> (j * width)) & mask
            codes[n, j] = c - (1 << width) if signed[j] and c >> (width - 1) else c
    return codes


_TESTBENCH = """`timescale 1ns / 1ps
module hgq_testbench;
    reg [{w_in}:0] inputs [0:{last}];
    reg [{w_in}:0] model_inp;
    wire [{w_out}:0] model_out;
    reg [8 * 256 - 1:0] in_file, out_file;
    integer n, n_samples, fd;
    {top}_wrapper dut (.model_inp(model_inp), .model_out(model_out));
    initial begin
        if (!$value$plusargs("n=%d", n_samples) || !$value$plusargs("inputs=%s", in_file)
            || !$value$plusargs("outputs=%s", out_file)) begin
            $display("usage: vvp testbench.vvp +n=N +inputs=FILE +outputs=FILE");
            $finish;
        end
        $readmemh(in_file, inputs, 0, n_samples - 1);
        fd = $fopen(out_file, "w");
        for (n = 0; n < n_samples; n = n + 1) begin
            model_inp = inputs[n];
            #1;
            $fdisplay(fd, "%h", model_out);
        end
        $fclose(fd);
        $finish;
    end
endmodule
"""


def simulate(
    traced: TracedModel,
    rtl_dir: str | os.PathLike,
    top: str,
    x: np.ndarray,
    jobs: int | None = None,
    timeout: float | None = None,
) -> np.ndarray:
    """Simulate the written Verilog on float inputs ``x`` with Icarus Verilog; return the outputs as floats.

    Parameters
    ----------
    traced : TracedModel
        The traced model whose Verilog :func:`write_verilog` wrote to ``rtl_dir``.
    rtl_dir : path
        The RTL directory; the testbench and its files go to ``rtl_dir/sim``.
    top : str
        The module name given to :func:`write_verilog`.
    x : np.ndarray
        Float model inputs, ``(n, *input_shape)``; they are brought onto the ports by
        :meth:`TracedModel.encode_inputs`.
    jobs : int, optional
        Simulator processes, each on a slice of the inputs (default: one per CPU, at most 8, at least 500 inputs
        each).

    Returns
    -------
    np.ndarray
        ``(n, *output_shape)`` float64 outputs, exact binary fractions read from the simulated ports.
    """
    for tool in ('iverilog', 'vvp'):
        require_tool(tool)
    comb = traced.comb
    sim_dir = Path(rtl_dir) / 'sim'
    sim_dir.mkdir(parents=True, exist_ok=True)
    w_in, f_in, _ = port_layout(list(comb.inp_qint))
    w_out, f_out, signed_out = port_layout(list(comb.out_qint))
    n_in, n_out = comb.shape
    codes = np.round(traced.encode_inputs(x) * 2.0**f_in).astype(np.int64)
    jobs = jobs or max(1, min(os.cpu_count() or 1, 8, len(x) // 500))
    chunks = [c for c in np.array_split(np.arange(len(x)), jobs) if len(c)]
    tb = _TESTBENCH.format(w_in=w_in * n_in - 1, w_out=w_out * n_out - 1, last=max(len(c) for c in chunks) - 1, top=top)
    (sim_dir / 'testbench.v').write_text(tb)
    sources = [str(p.resolve()) for p in verilog_sources(rtl_dir, top)]
    _run(['iverilog', '-g2012', '-o', 'testbench.vvp', 'testbench.v', *sources], sim_dir, timeout)
    runs = []
    for j, chunk in enumerate(chunks):
        (sim_dir / f'inputs{j}.hex').write_text('\n'.join(_pack(codes[chunk], w_in)) + '\n')
        args = [f'+n={len(chunk)}', f'+inputs=inputs{j}.hex', f'+outputs=outputs{j}.hex']
        runs.append(subprocess.Popen(['vvp', '-n', 'testbench.vvp', *args], cwd=sim_dir, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True))  # fmt: skip
    lines = []
    for j, proc in enumerate(runs):
        log, _ = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise SimulationError(f'`vvp testbench.vvp` failed ({proc.returncode}) in {sim_dir}:\n{log[-2000:]}')
        lines += (sim_dir / f'outputs{j}.hex').read_text().split()
    if len(lines) != len(x):
        raise SimulationError(f'the simulation wrote {len(lines)} output lines for {len(x)} inputs ({sim_dir})')
    y = _unpack(lines, n_out, w_out, signed_out).astype(np.float64) / 2.0**f_out
    return y.reshape(len(x), *traced.output_shape)


def _run(cmd: list[str], cwd: Path, timeout: float | None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SimulationError(
            f'`{" ".join(cmd[:2])}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}'
        )
