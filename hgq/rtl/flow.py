"""``synth``: hardware numbers without a vendor tool: trace to logic, write Verilog, simulate it, run yosys.

Steps, each timed and printed:

1. check the model (every layer traceable, calibrated) and the tools (yosys, iverilog) before any long work;
2. trace the model into exact combinational logic with da4ml (:mod:`hgq.rtl.trace`);
3. write the Verilog (``DIR/rtl/src``);
4. simulate the Verilog with Icarus Verilog on the check inputs and compare with ``model.predict``
   (``np.array_equal`` per sample);
5. synthesize with yosys (``synth_xilinx``) and count LUTs, flip-flops, carry chains and DSPs;
6. write ``DIR/synth.json``.

Every file is written under ``DIR/.partial-rtl`` first; only a complete run replaces ``DIR/rtl`` and
``DIR/synth.json`` (renames). A run that fails at any step (a layer the tracer refuses, a simulator or yosys
error, an interrupt) removes its partial files and leaves ``DIR`` as it was (not created, if it did not exist).

Examples
--------
>>> import hgq
>>> result = hgq.synth(model, 'synth_out/')      # doctest: +SKIP
>>> result['lut'], result['mismatches']          # doctest: +SKIP
(1834, 0)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from hgq.ebops import ebops as model_ebops
from hgq.ebops import h_layers
from hgq.fileio import make_writable_dir, partial_path, write_text_atomic
from hgq.rtl.trace import TracedModel, TraceError, check_traceable, trace_model
from hgq.rtl.verilog import require_tool, simulate, verilog_sources, write_verilog
from hgq.rtl.yosys import synthesize, yosys_version

__all__ = ['synth', 'probe_inputs', 'count_mismatches', 'SYNTH_FILE', 'DEFAULT_N_CHECK']

SYNTH_FILE = 'synth.json'
RTL_DIR = 'rtl'
DEFAULT_N_CHECK = 10_000


def _uncalibrated(model: keras.Model) -> list[str]:
    return [
        q.name
        for layer in h_layers(model)
        for q in layer.activation_quantizers
        if q.tracks_range and float(keras.ops.convert_to_numpy(q.calibrated)) != 1.0
    ]


def probe_inputs(model: keras.Model, n: int = DEFAULT_N_CHECK, seed: int = 0) -> np.ndarray:
    """Random check inputs: half inside the calibrated range of the first quantizer, half up to 4x beyond it.

    The range is the calibrated ``[vmin, vmax]`` of a WRAP quantizer, or the representable range of a SAT one,
    per input element. Values beyond it overflow (wrap or saturate) in the first and later layers.

    Examples
    --------
    >>> x = probe_inputs(model, 1000)     # doctest: +SKIP
    """
    first = next(iter(h_layers(model)), None)
    if first is None:
        raise TraceError(f'model {model.name!r} has no H-layer')
    shape = tuple(int(s) for s in model.inputs[0].shape[1:])
    q = first.input_quantizer
    if q.tracks_range:
        lo = np.broadcast_to(keras.ops.convert_to_numpy(q.vmin), q.shape)
        hi = np.broadcast_to(keras.ops.convert_to_numpy(q.vmax), q.shape)
    else:
        k, i, _ = q.kif()
        lo, hi = -(2.0**i) * k, 2.0**i
    lo, hi = (np.broadcast_to(np.asarray(a, dtype=np.float64).reshape(-1), (int(np.prod(shape)),)) for a in (lo, hi))
    rng = np.random.default_rng(seed)
    n_in = n // 2
    inside = rng.uniform(lo, hi, size=(n_in, lo.size))
    span = np.maximum(hi - lo, 1.0)
    beyond = rng.uniform(lo - 1.5 * span, hi + 1.5 * span, size=(n - n_in, lo.size))
    return np.concatenate([inside, beyond]).reshape(n, *shape).astype(np.float32)


def count_mismatches(y_rtl: np.ndarray, y_keras: np.ndarray) -> int:
    """Samples whose outputs differ anywhere (exact comparison, no tolerance)."""
    y_rtl = np.asarray(y_rtl, dtype=np.float64).reshape(len(y_rtl), -1)
    y_keras = np.asarray(y_keras, dtype=np.float64).reshape(len(y_keras), -1)
    return int(sum(not np.array_equal(a, b) for a, b in zip(y_rtl, y_keras, strict=True)))


def _check_inputs(model: keras.Model, check: Any) -> np.ndarray | None:
    if check is False:
        return None
    if check is None:
        return probe_inputs(model)
    if isinstance(check, int) and not isinstance(check, bool):
        return probe_inputs(model, check)
    x = np.asarray(check, dtype=np.float32)
    shape = tuple(int(s) for s in model.inputs[0].shape[1:])
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        raise ValueError(
            f'check inputs have shape {x.shape}; model {model.name!r} expects (n, {", ".join(map(str, shape))})'
        )
    return x


def synth(
    model: keras.Model,
    out_dir: str | os.PathLike,
    check: np.ndarray | int | bool | None = None,
    part_family: str = 'xcup',
    top: str = 'hgq_model',
    run_yosys: bool = True,
    allow_uncalibrated: bool = False,
    verbose: bool = True,
    print_fn: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Trace a calibrated model to Verilog, check the Verilog bit for bit, and synthesize it with yosys.

    Parameters
    ----------
    model : keras.Model
        A calibrated model of traceable H-layers (see :data:`hgq.rtl.trace.SUPPORTED_LAYERS`).
    out_dir : path
        Output directory: ``rtl/`` (Verilog, testbench, yosys log) and ``synth.json``.
    check : array, int, bool or None
        Inputs on which the simulated Verilog must equal ``model.predict`` exactly. ``None``: 10,000 inputs
        from :func:`probe_inputs` (half beyond the calibrated range); an int: that many; ``False``: no check.
    part_family : str
        yosys ``synth_xilinx -family`` (``xcup``: UltraScale+, ``xcu``, ``xc7``).
    top : str
        Name of the Verilog module (``<top>_wrapper`` is the top of synthesis).
    run_yosys : bool
        Synthesize (``False``: stop after the check; LUT fields are ``None``).
    allow_uncalibrated : bool
        Trace even if WRAP quantizers were not calibrated by :func:`hgq.calibrate`.

    Returns
    -------
    dict
        The content of ``synth.json``: ``lut``, ``ff``, ``carry``, ``dsp``, ``muxf``, ``depth`` (longest path
        in cells after synthesis), ``latency_estimate`` (da4ml's delay estimate), ``estimate_lut`` (da4ml's LUT
        estimate), ``ebops``, ``mismatches``, ``n_checked``, ``seconds`` (total) and ``step_seconds``.

    Raises
    ------
    hgq.rtl.trace.TraceError
        A layer or setting the tracer cannot express (names it), or an uncalibrated model.
    hgq.rtl.verilog.ToolNotFoundError
        yosys or iverilog missing (says how to install it).

    Examples
    --------
    >>> result = synth(model, 'out/', check=x_test)   # doctest: +SKIP
    """
    start = time.perf_counter()
    say = print_fn if verbose else (lambda _: None)
    check_traceable(model)
    stale = _uncalibrated(model)
    if stale and not allow_uncalibrated:
        raise TraceError(
            f'model {model.name!r} is not calibrated, or was trained after calibration (WRAP quantizers '
            f'{", ".join(stale[:4])}{" ..." if len(stale) > 4 else ""}): run hgq.calibrate(model, data) first'
        )
    x_check = _check_inputs(model, check)
    if x_check is not None:
        require_tool('iverilog')
        require_tool('vvp')
    if run_yosys:
        version = yosys_version()
    out_dir = Path(out_dir)
    created = _missing_ancestors(out_dir)
    make_writable_dir(out_dir)
    work = partial_path(out_dir / RTL_DIR)
    shutil.rmtree(work, ignore_errors=True)  # left by a run that was killed
    try:
        measured = _run_steps(model, work, top, x_check, part_family if run_yosys else None, say)
        result = {
            **measured,
            'part_family': part_family,
            'synthesizer': f'{version} synth_xilinx -flatten -noiopad' if run_yosys else None,
            'seconds': round(time.perf_counter() - start, 2),
        }
        _publish(work, out_dir, result)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        _remove_empty(created)
        raise
    say(f'[synth] wrote {out_dir / SYNTH_FILE} ({result["seconds"]:.1f} s in all)')
    return result


def _run_steps(
    model: keras.Model,
    rtl_dir: Path,
    top: str,
    x_check: np.ndarray | None,
    part_family: str | None,
    say: Callable[[str], Any],
) -> dict[str, Any]:
    """Trace, write, simulate and synthesize (``part_family=None``: no yosys) into ``rtl_dir``.

    Returns what the steps measured: every field of ``synth.json`` but ``part_family``, ``synthesizer`` and
    ``seconds``, which :func:`synth` adds.
    """
    steps: dict[str, float] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        value = fn()
        steps[name] = round(time.perf_counter() - t0, 2)
        say(f'[synth] {name}: {steps[name]:.1f} s')
        return value

    say(f'[synth] tracing {model.name!r} ...')
    traced: TracedModel = step('trace', lambda: trace_model(model))
    say(f'[synth] logic: {traced.comb.shape[0]} inputs -> {traced.comb.shape[1]} outputs, '
        f'{len(traced.comb.ops)} operations, estimated {traced.comb.cost:,.0f} LUTs')  # fmt: skip
    step('write_verilog', lambda: write_verilog(traced, rtl_dir, top))

    mismatches = n_checked = None
    if x_check is not None:
        say(f'[synth] simulating the Verilog on {len(x_check):,} inputs (iverilog) ...')
        y_rtl = step('simulate', lambda: simulate(traced, rtl_dir, top, x_check))
        y_keras = model.predict(x_check, batch_size=4096, verbose=0)
        mismatches, n_checked = count_mismatches(y_rtl, y_keras), len(x_check)
        say(f'[synth] bit-exact check: {mismatches} of {n_checked:,} samples differ from model.predict')
        if mismatches:
            say(_mismatch_hint(model))

    counts: dict[str, Any] = dict.fromkeys(('lut', 'ff', 'carry', 'dsp', 'muxf', 'bram', 'inv', 'depth'))
    if part_family is not None:
        say(f'[synth] synthesizing with yosys (synth_xilinx -family {part_family}) ...')
        sources = verilog_sources(rtl_dir, top)
        counts = step('yosys', lambda: synthesize(sources, f'{top}_wrapper', rtl_dir / 'yosys', part_family))
        say(f'[synth] yosys: {counts["lut"]:,} LUTs, {counts["carry"]:,} carry chains, {counts["ff"]} FFs, '
            f'{counts["dsp"]} DSPs, depth {counts["depth"]}')  # fmt: skip

    return {
        'model': model.name,
        'lut': counts['lut'],
        'ff': counts['ff'],
        'carry': counts['carry'],
        'dsp': counts['dsp'],
        'muxf': counts['muxf'],
        'bram': counts['bram'],
        'inv': counts['inv'],
        'depth': counts['depth'],
        'latency_estimate': float(traced.comb.latency[1]),
        'estimate_lut': float(traced.comb.cost),
        'ebops': float(model_ebops(model)),
        'mismatches': mismatches,
        'n_checked': n_checked,
        'step_seconds': steps,
        'yosys_cpu_seconds': counts.get('cpu_seconds'),
        'top': f'{top}_wrapper',
        'rtl_dir': RTL_DIR,
        'n_inputs': int(traced.comb.shape[0]),
        'n_outputs': int(traced.comb.shape[1]),
        'input_kif': traced.input_kif.T.tolist(),
        'input_overflow': traced.input_overflow.tolist(),
        'input_sticky': None if traced.input_sticky is None else traced.input_sticky.tolist(),
        'cells': counts.get('cells'),
    }


def _mismatch_hint(model: keras.Model) -> str:
    """Why Keras and the logic may differ: float32 limits of the model, if any."""
    from hgq.exactness import float32_problems

    problems = float32_problems(model)
    if not problems:
        return '[synth] the model is exact in float32 by its formats: please report this model as a bug'
    return '[synth] Keras computes this model inexactly in float32: ' + '; '.join(problems[:3])


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def _remove_empty(directories: list[Path]) -> None:
    """Remove the directories a failed run created, deepest first, as long as they are empty."""
    for directory in directories:
        try:
            directory.rmdir()
        except OSError:
            return


def _publish(work: Path, out_dir: Path, result: dict[str, Any]) -> None:
    """Put a complete run in place: ``work`` becomes ``out_dir/rtl``, then ``synth.json`` is written."""
    rtl, old = out_dir / RTL_DIR, out_dir / '.old-rtl'
    shutil.rmtree(old, ignore_errors=True)
    (out_dir / SYNTH_FILE).unlink(missing_ok=True)  # never a synth.json beside an rtl/ it does not describe
    if rtl.exists():
        rtl.rename(old)
    work.rename(rtl)
    write_text_atomic(out_dir / SYNTH_FILE, json.dumps(result, indent=1) + '\n')
    shutil.rmtree(old, ignore_errors=True)
