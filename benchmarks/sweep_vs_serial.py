"""A 6-trial digits sweep on a local Ray against the same 6 trials run one after another with ``hgq run``.

Checks that every trial's history and Pareto front, and the merged front, are identical, and prints the wall
times. The merged front of the serial runs is computed here by brute force (a point stays unless another point
is at least as good in both metrics and better in one), independently of :mod:`hgq.sweep`.

Usage::

    python benchmarks/sweep_vs_serial.py --out /tmp/sweep_bench --epochs 10 --num-cpus 2

Measured on a 2-core x86_64 box shared with other jobs (load average about 20), Ray 2.60.0, 10 epochs per
trial: all 6 histories and fronts identical, merged front (4 checkpoints from 3 trials) identical; sweep 761 s
including Ray start, serial 887 s. The times say little on a machine that busy; on an idle machine expect the
sweep to approach the serial time divided by the number of CPUs, plus Ray start (about 6 s) and one TensorFlow
import per trial (each trial runs in a fresh worker process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
GRID = ['seed=0,1,2', 'model.layers.1.units=16,32']


def _front(run_dir: Path) -> list[tuple[int, dict]]:
    index = json.loads((run_dir / 'pareto' / 'front.json').read_text())
    return sorted((p['epoch'], p['values']) for p in index['points'])


def _beaten(a: dict, b: dict) -> bool:
    at_least = b['val_accuracy'] >= a['val_accuracy'] and b['ebops'] <= a['ebops']
    return at_least and (b['val_accuracy'] > a['val_accuracy'] or b['ebops'] < a['ebops'])


def _rows(front: list[dict]) -> list[tuple]:
    rows = [(p['trial'], p['epoch'], p['val_accuracy'], p['ebops']) for p in front]
    return sorted(rows, key=lambda t: (t[3], t[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', required=True, help='working directory (sweep/ and serial/ go there)')
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--num-cpus', type=int, default=2, help='CPUs of the local Ray')
    args = parser.parse_args()

    from hgq.config import load_config
    from hgq.sweep import grid_trials, parse_axis, sweep
    from hgq.sweep.grid import resolve_trials

    out = Path(args.out)
    grid = [*GRID, f'training.epochs={args.epochs}']
    config_file = ROOT / 'configs' / 'digits_mlp.yaml'
    print(f'machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start')

    start = time.perf_counter()
    results = sweep(config_file, grid, out / 'sweep', convert=False, num_cpus=args.num_cpus)
    sweep_s = time.perf_counter() - start

    base = load_config(config_file)
    trials = grid_trials([parse_axis(axis) for axis in grid])
    configs = resolve_trials(base.to_dict(), trials, base.name)
    start = time.perf_counter()
    points, same = [], True
    for trial, config in zip(trials, configs, strict=True):
        serial = out / 'serial' / trial.name
        if not (serial / 'results.json').is_file():
            (out / 'serial').mkdir(parents=True, exist_ok=True)
            path = out / 'serial' / f'{trial.name}.yaml'
            path.write_text(yaml.safe_dump(config, sort_keys=False))
            command = ['hgq', 'run', str(path), '--out', str(serial), '--no-convert', '--quiet']
            subprocess.run(command, check=True, capture_output=True)
        in_sweep = out / 'sweep' / 'trials' / trial.name
        history_same = json.loads((in_sweep / 'history.json').read_text()) == json.loads(
            (serial / 'history.json').read_text()
        )
        front_same = _front(in_sweep) == _front(serial)
        same &= history_same and front_same
        print(f'{trial.name:28s} history identical: {history_same}; front identical: {front_same}')
        points += [{'trial': trial.name, 'epoch': e, **v} for e, v in _front(serial)]
    serial_s = time.perf_counter() - start

    expected = _rows([p for p in points if not any(_beaten(p, q) for q in points)])
    merged = _rows(results['front'])
    print(f'merged front: {len(merged)} checkpoints from {len({m[0] for m in merged})} trials; identical to the '
          f'front of the serial runs: {merged == expected}')  # fmt: skip
    print(f'sweep on Ray ({args.num_cpus} CPUs, 1 per trial): {sweep_s:.0f} s (incl. Ray start); '
          f'serial hgq run x {len(trials)}: {serial_s:.0f} s')  # fmt: skip
    return 0 if same and merged == expected else 1


if __name__ == '__main__':
    sys.exit(main())
