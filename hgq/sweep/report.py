"""The ``report.md`` of a sweep: the grid, every trial with its status and errors, the models, the merged front."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ['write_report']


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
