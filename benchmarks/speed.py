"""Training speed: float Keras, hgq and HGQ2 on the same models, timed interleaved, one run per Keras backend.

Every trial is a fresh process that builds one model, fits it for ``--epochs`` epochs and reports the wall and
process CPU time of every epoch. The first epoch holds the tracing and (XLA) compilation of the training step;
the later ones are steady state. Trials run in rounds, one trial of every tool per round in a rotating order
(float, hgq, HGQ2; then hgq, HGQ2, float; ...), so that a change of load on a shared machine hits every tool
alike. Ratios are taken within a round and their median over rounds is reported. ``--concurrent`` runs the
trials of a round at the same time instead (all tools then share the same load; process CPU time is the figure).

Models (same layer sizes, optimizer, loss and batch for every tool)::

    digits   64-32-10 MLP on the digits training split (1,347 samples: 22 steps per epoch, so per-epoch work such
             as logging EBOPs counts; --digits-repeat N repeats the split N times per epoch), batch 64
    mlp16    16-64-32-32-5 MLP on 65,536 Gaussian samples labelled by a random teacher, batch 1024

- ``float``: ``keras.layers.Dense`` layers.
- ``hgq``: ``HDense`` layers (every layer quantizes its input and kernel per element, ``beta = 1e-6``), with
  :class:`hgq.callbacks.EBOPsLogger` logging the exact EBOPs after every epoch.
- ``hgq2``: HGQ2's ``QDense`` layers (per-element input and kernel quantizers, EBOPs on, ``beta0 = 1e-6``)
  with its ``FreeEBOPs`` callback, run with the Python of its own virtual environment (``--hgq2-python``,
  default ``/work/bench_venvs/hgq2/bin/python``; see ``setup_venvs.sh``); skipped when that is missing or
  lacks the backend.

``--baseline DIR`` adds ``hgq@base``: the hgq model run from the package source in ``DIR`` (another checkout,
e.g. ``git worktree add /tmp/base <commit>``), interleaved with the rest, to measure a change before and after.

Every tool uses Keras's defaults (``jit_compile='auto'``: XLA under JAX, none under TensorFlow on a CPU)::

    python benchmarks/speed.py                          # TensorFlow, and JAX where installed
    python benchmarks/speed.py --backends tensorflow --rounds 5

Writes ``benchmarks/results/speed.json`` and prints a table, the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / 'results'
TOOLS = ('float', 'hgq', 'hgq2')
BASELINE = 'hgq@base'
MODELS = {
    'digits': {'hidden': (32,), 'batch_size': 64},
    'mlp16': {'hidden': (64, 32, 32), 'batch_size': 1024, 'n_in': 16, 'n_out': 5, 'n_samples': 65536},
}
BETA = 1e-6
LEARNING_RATE = 3e-3
DEFAULT_HGQ2_PYTHON = '/work/bench_venvs/hgq2/bin/python'


# -- one trial (runs in its own process, in the tool's virtual environment) ---------------------------------------


def load_data(model: str, digits_repeat: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Training inputs, labels and number of classes of a benchmark model (identical for every tool)."""
    if model == 'digits':
        sys.path.insert(0, str(BENCH_DIR))
        from bench_common import load_split

        split = load_split('digits')
        x = np.tile(split['x_train'], (digits_repeat, 1))
        y = np.tile(split['y_train'], digits_repeat)
        return x, y.astype(np.int64), 10
    spec = MODELS[model]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(spec['n_samples'], spec['n_in'])).astype(np.float32)
    teacher = rng.normal(size=(spec['n_in'], spec['n_out']))
    y = np.argmax(np.tanh(x @ teacher) + 0.3 * rng.normal(size=(spec['n_samples'], spec['n_out'])), axis=1)
    return x, y.astype(np.int64), spec['n_out']


def build_model(tool: str, n_in: int, hidden: tuple[int, ...], n_out: int) -> tuple[Any, list[Any]]:
    """The model of ``tool`` and the callbacks its users run with it."""
    import keras

    widths = [*hidden, n_out]
    activations = ['relu'] * len(hidden) + [None]
    if tool == 'float':
        layers = [keras.layers.Dense(w, activation=a) for w, a in zip(widths, activations, strict=True)]
        return keras.Sequential([keras.Input((n_in,)), *layers]), []
    if tool == 'hgq':
        from hgq.callbacks import EBOPsLogger
        from hgq.layers import HDense

        layers = [HDense(w, activation=a, beta=BETA) for w, a in zip(widths, activations, strict=True)]
        return keras.Sequential([keras.Input((n_in,)), *layers]), [EBOPsLogger()]
    if tool == 'hgq2':  # HGQ2 imports as hgq too: this runs with the Python of its own virtual environment
        from hgq.utils.sugar import FreeEBOPs

        from hgq.config import LayerConfigScope
        from hgq.layers import QDense

        with LayerConfigScope(enable_ebops=True, beta0=BETA):
            layers = [QDense(w, activation=a) for w, a in zip(widths, activations, strict=True)]
            return keras.Sequential([keras.Input((n_in,)), *layers]), [FreeEBOPs()]
    raise ValueError(f'unknown tool {tool!r}; expected one of {TOOLS}')


def trial(tool: str, model: str, epochs: int, digits_repeat: int) -> dict[str, Any]:
    """Fit one model and time every epoch (wall and process CPU seconds); the timer runs after every callback."""
    import keras

    keras.utils.set_random_seed(0)
    x, y, n_classes = load_data(model, digits_repeat)
    spec = MODELS[model]
    net, callbacks = build_model(tool, x.shape[1], spec['hidden'], n_classes)
    net.compile(
        keras.optimizers.Adam(LEARNING_RATE),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=['accuracy'],
    )

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.wall: list[float] = []
            self.cpu: list[float] = []
            self._start = (0.0, 0.0)

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self._start = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.wall.append(time.perf_counter() - self._start[0])
            self.cpu.append(time.process_time() - self._start[1])

    timer = EpochTimer()
    history = net.fit(x, y, epochs=epochs, batch_size=spec['batch_size'], callbacks=[*callbacks, timer], verbose=0)
    return {
        'tool': tool,
        'model': model,
        'backend': keras.backend.backend(),
        'keras': keras.__version__,
        'steps_per_epoch': -(-len(x) // spec['batch_size']),
        'wall': timer.wall,
        'cpu': timer.cpu,
        'final_accuracy': float(history.history['accuracy'][-1]),
        'has_ebops': 'ebops' in history.history,
    }


# -- the driver ------------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, logical cores and memory of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        pages = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
        memory = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {'cpu': cpu, 'logical_cores': os.cpu_count(), 'memory_gib': memory, 'python': platform.python_version()}


def backend_available(python: str, backend: str) -> bool:
    """Whether ``python`` exists and imports the package of a Keras backend."""
    if not Path(python).is_file():
        return False
    module = {'tensorflow': 'tensorflow', 'jax': 'jax', 'torch': 'torch'}[backend]
    done = subprocess.run([python, '-c', f'import {module}'], capture_output=True)
    return done.returncode == 0


def run_trial(python: str, backend: str, tool: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    worker = 'hgq' if tool == BASELINE else tool
    command = [python, str(Path(__file__).resolve()), '--worker', worker, '--model', model]
    command += ['--epochs', str(args.epochs), '--digits-repeat', str(args.digits_repeat)]
    env = {**os.environ, 'KERAS_BACKEND': backend, 'TF_CPP_MIN_LOG_LEVEL': '2'}
    if tool == BASELINE:
        env['PYTHONPATH'] = str(args.baseline)
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=BENCH_DIR)
    lines = [line for line in done.stdout.splitlines() if line.startswith('{')]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f'{tool} / {model} / {backend} failed (exit {done.returncode}):\n{done.stderr[-3000:]}')
    result = json.loads(lines[-1])
    result['tool'] = tool
    return result


def summarize(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Per tool: median steady epoch and first epoch (wall, CPU) over rounds; ratios to float within each round."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for t in trials:
        by_round.setdefault(t['round'], {})[t['tool']] = t
    rows = {}
    for tool in sorted({t['tool'] for t in trials}, key=(*TOOLS, BASELINE).index):
        mine = [t for t in trials if t['tool'] == tool]
        row = {
            'epoch_s': statistics.median(statistics.median(t['wall'][1:]) for t in mine),
            'epoch_cpu_s': statistics.median(statistics.median(t['cpu'][1:]) for t in mine),
            'first_epoch_s': statistics.median(t['wall'][0] for t in mine),
            'first_epoch_cpu_s': statistics.median(t['cpu'][0] for t in mine),
            'rounds': len(mine),
        }
        for key, pick in (
            ('epoch', lambda t: statistics.median(t['wall'][1:])),
            ('epoch_cpu', lambda t: statistics.median(t['cpu'][1:])),
            ('first_epoch', lambda t: t['wall'][0]),
            ('first_epoch_cpu', lambda t: t['cpu'][0]),
        ):
            ratios = [pick(r[tool]) / pick(r['float']) for r in by_round.values() if tool in r and 'float' in r]
            if ratios:
                row[f'{key}_ratio'] = statistics.median(ratios)
                row[f'{key}_ratio_range'] = (min(ratios), max(ratios))
        rows[tool] = row
    return rows


def table(results: dict[str, Any]) -> str:
    """Markdown table: per backend, model and tool, medians over rounds and ratios to float (range over rounds)."""

    def ratio(row: dict[str, Any], key: str) -> str:
        if f'{key}_ratio' not in row:
            return '-'
        low, high = row[f'{key}_ratio_range']
        return f'{row[f"{key}_ratio"]:.2f}x ({low:.2f}-{high:.2f})'

    head = '| backend | model | tool | epoch s | epoch / float | epoch CPU s | CPU / float | 1st epoch s | 1st / float '
    head += '| 1st epoch CPU s | 1st CPU / float |'
    lines = [head, '|' + '---|' * 11]
    for entry in results['runs']:
        for tool, row in entry['summary'].items():
            cells = [entry['backend'], entry['model'], tool]
            cells += [f'{row["epoch_s"]:.3f}', ratio(row, 'epoch'), f'{row["epoch_cpu_s"]:.3f}']
            cells += [ratio(row, 'epoch_cpu'), f'{row["first_epoch_s"]:.2f}', ratio(row, 'first_epoch')]
            cells += [f'{row["first_epoch_cpu_s"]:.2f}', ratio(row, 'first_epoch_cpu')]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def drive(args: argparse.Namespace) -> dict[str, Any]:
    pythons = {'float': sys.executable, 'hgq': sys.executable, 'hgq2': args.hgq2_python, BASELINE: sys.executable}
    results: dict[str, Any] = {'machine': machine(), 'load_before': os.getloadavg(), 'runs': []}
    print(f'machine: {results["machine"]}; load average {results["load_before"]}', flush=True)
    for backend in args.backends:
        wanted = [*args.tools, BASELINE] if args.baseline else list(args.tools)
        tools = [t for t in wanted if backend_available(pythons[t], backend)]
        skipped = sorted(set(wanted) - set(tools))
        if skipped:
            print(f'{backend}: skipping {skipped} (no {backend} in their Python)', flush=True)
        if 'float' not in tools:
            continue
        for model in args.models:
            trials = []
            for n in range(args.rounds):
                order = tools[n % len(tools) :] + tools[: n % len(tools)]
                with ThreadPoolExecutor(len(order) if args.concurrent else 1) as pool:
                    count = len(order)
                    done = pool.map(
                        run_trial,
                        [pythons[t] for t in order],
                        [backend] * count,
                        order,
                        [model] * count,
                        [args] * count,
                    )
                for tool, t in zip(order, done, strict=True):
                    t['round'] = n
                    trials.append(t)
                    steady = statistics.median(t['wall'][1:])
                    print(
                        f'{backend} {model} round {n + 1}/{args.rounds} {tool:6s} first epoch {t["wall"][0]:6.2f} s, '
                        f'epoch {steady:.3f} s (CPU {statistics.median(t["cpu"][1:]):.3f} s)',
                        flush=True,
                    )
            results['runs'].append({'backend': backend, 'model': model, 'trials': trials, 'summary': summarize(trials)})
    results['load_after'] = os.getloadavg()
    results['settings'] = {k: v for k, v in vars(args).items() if k != 'worker'}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backends', nargs='+', default=['tensorflow', 'jax'], choices=['tensorflow', 'jax', 'torch'])
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--tools', nargs='+', default=list(TOOLS), choices=TOOLS)
    parser.add_argument('--rounds', type=int, default=3, help='trials of every tool (interleaved)')
    parser.add_argument('--epochs', type=int, default=8, help='epochs per trial (the first one is the compile epoch)')
    parser.add_argument('--digits-repeat', type=int, default=1, help='copies of the digits training set per epoch')
    parser.add_argument('--hgq2-python', default=DEFAULT_HGQ2_PYTHON)
    parser.add_argument(
        '--concurrent',
        action='store_true',
        help='run the trials of a round at the same time (a loaded machine, where starting TensorFlow takes minutes)',
    )
    parser.add_argument('--baseline', type=Path, help='source checkout of hgq to time as hgq@base (before/after)')
    parser.add_argument('--out', type=Path, default=RESULTS_DIR / 'speed.json')
    parser.add_argument('--worker', choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument('--model', choices=list(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(trial(args.worker, args.model, args.epochs, args.digits_repeat)))
        return
    if args.epochs < 2:
        parser.error('--epochs must be at least 2 (the first epoch is timed apart)')
    results = drive(args)
    print(table(results))
    print(f'load average before {results["load_before"]}, after {results["load_after"]}')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
