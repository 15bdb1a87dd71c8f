"""The Pareto front merged over the trials of a sweep, and the sweep's ``front.json``, ``pareto.png`` and report.

The merged front keeps the checkpoints that no checkpoint of any trial matches or beats in every metric, by the
rule of :class:`hgq.callbacks.ParetoFront` (:func:`hgq.callbacks.non_dominated`); of equal checkpoints, the one of
the earlier trial in grid order stays. ``front.json`` has the format of a ParetoFront index, with file names
relative to the sweep directory, so :func:`hgq.callbacks.read_front` and ``hgq plot pareto DIR`` read it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hgq.callbacks import FRONT_INDEX, ParetoPoint, non_dominated, read_front

__all__ = ['MergedFront', 'merge_fronts', 'write_front', 'all_epochs', 'write_report']


@dataclass(frozen=True)
class MergedFront:
    """The merged front: its ``points``, the ``trial`` of each point (by checkpoint path) and the metric ``sides``."""

    points: list[ParetoPoint]
    trial: dict[Path, str]
    sides: dict[str, str]

    @property
    def metric(self) -> str:
        """The quality metric (``val_accuracy`` or ``val_loss``); the other metric is ``ebops``."""
        return next(iter(self.sides))


def _sides(directory: Path) -> dict[str, str]:
    content = json.loads((directory / FRONT_INDEX).read_text())
    return dict(zip(content['metrics'], content['sides'], strict=True))


def merge_fronts(trial_dirs: Mapping[str, Path]) -> MergedFront:
    """Merge the Pareto fronts of finished trials (``name -> run directory``, in grid order).

    Raises
    ------
    ValueError
        If the trials trade off different metrics (e.g. a grid over data sets of different tasks).
    """
    sides: dict[str, str] | None = None
    candidates: list[ParetoPoint] = []
    trial: dict[Path, str] = {}
    for name, directory in trial_dirs.items():
        front_dir = Path(directory) / 'pareto'
        these = _sides(front_dir)
        if sides is None:
            sides = these
        elif these != sides:
            raise ValueError(f'trial {name} trades off {these}, other trials {sides}; a merged front needs one metric')
        for point in read_front(front_dir):
            candidates.append(point)
            trial[point.path] = name
    if sides is None:
        raise ValueError('no finished trial to merge')
    points = sorted(non_dominated(candidates, sides), key=lambda p: (p.values['ebops'], trial[p.path], p.epoch))
    return MergedFront(points, {p.path: trial[p.path] for p in points}, sides)


def write_front(front: MergedFront, sweep_dir: Path) -> Path:
    """Write ``sweep_dir/front.json`` (a ParetoFront index with paths relative to ``sweep_dir``)."""
    from hgq.fileio import write_text_atomic

    content = {
        'metrics': list(front.sides),
        'sides': list(front.sides.values()),
        'points': [
            {
                'file': p.path.relative_to(sweep_dir).as_posix(),
                'epoch': p.epoch,
                'values': p.values,
                'trial': front.trial[p.path],
            }
            for p in front.points
        ],
    }
    path = sweep_dir / FRONT_INDEX
    write_text_atomic(path, json.dumps(content, indent=1))
    return path


def all_epochs(trial_dirs: Mapping[str, Path], keys: Sequence[str]) -> dict[str, list[float]]:
    """The ``keys`` of every epoch of every trial's ``history.json``, concatenated (grey dots of the plot)."""
    epochs: dict[str, list[float]] = {key: [] for key in keys}
    for directory in trial_dirs.values():
        history = json.loads((Path(directory) / 'history.json').read_text())
        if all(key in history for key in keys):
            for key in keys:
                epochs[key] += history[key]
    return epochs


def _fmt(value: Any) -> str:
    return f'{value:.4f}' if isinstance(value, float) else str(value)


def write_report(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the sweep's ``report.md``: the grid, every trial, the selected models and the merged front."""
    from hgq.fileio import write_text_atomic
    from hgq.run import model_table

    metric, side = results['pareto_metric'], results['pareto_side']
    trials = results['trials']
    done = sum(t['status'] == 'done' for t in trials)
    grid = ', '.join(f'`{a["key"]}` = {a["values"]}' for a in results['grid']) or 'none'
    lines = [
        f'# HGQ sweep: {results["name"]}',
        '',
        f'- configuration: `{results["config_file"]}`; grid: {grid}',
        f'- trials: {len(trials)}, {done} done, {len(trials) - done} failed or not run; Ray: '
        f'{results["ray"]["address"]}, {results["ray"]["resources_per_trial"]} per trial',
        f'- wall time of the last invocation: {results["wall_s"]:.0f} s',
        '',
        '## Trials',
        '',
        f'| trial | settings | status | best {metric} | EBOPs of its front | train s | failed attempts |',
        '|---|---|---|---|---|---|---|',
    ]
    sign = 1.0 if side == 'max' else -1.0
    for t in trials:
        front = t.get('front') or []
        best = _fmt(max((p[metric] for p in front), key=lambda v: sign * v)) if front else '-'
        span = f'{min(p["ebops"] for p in front):,.0f} - {max(p["ebops"] for p in front):,.0f}' if front else '-'
        status = f'failed: {t["errors"][-1]["summary"]}' if t['status'] == 'failed' else t['status']
        seconds = f'{t["train_s"]:.0f}' if 'train_s' in t else '-'
        cells = [f'`{t["name"]}`', t['label'], status, best, span, seconds, str(len(t['errors']))]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', '## Models of the merged front', '']
    if results['models']:
        lines += [
            'EBOPs are exact, after calibration on the training set. Mismatches count test samples whose HLS '
            'C-simulation output differs from Keras in any bit.',
            '',
            model_table(results),
        ]
    else:
        lines.append('No model was selected.')
    for failure in results.get('export_failures', []):
        lines.append(f'- {failure["tag"]}: failed: {failure["summary"]}')
    lines += [
        '',
        '![Merged Pareto front](pareto.png)',
        '',
        f'## Merged Pareto front ({len(results["front"])} checkpoints, EBOPs before calibration)',
        '',
        f'| trial | epoch | {metric} | EBOPs | file |',
        '|---|---|---|---|---|',
    ]
    lines += [
        f'| `{p["trial"]}` | {p["epoch"]} | {p[metric]:.4f} | {p["ebops"]:,.0f} | `{p["file"]}` |'
        for p in results['front']
    ]
    path = Path(path)
    write_text_atomic(path, '\n'.join(lines) + '\n')
    return path
