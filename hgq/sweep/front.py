"""The Pareto front merged over the trials of a sweep, and the sweep's ``front.json``.

The merged front keeps the checkpoints that no checkpoint of any trial matches or beats in every metric, by the
rule of :class:`hgq.callbacks.ParetoFront` (:func:`hgq.callbacks.non_dominated`); of equal checkpoints, the one of
the earlier trial in grid order stays. ``front.json`` has the format of a ParetoFront index, with file names
relative to the sweep directory, so :func:`hgq.callbacks.read_front` and ``hgq plot pareto DIR`` read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hgq.callbacks import FRONT_INDEX, ParetoPoint, non_dominated, read_front

__all__ = ['MergedFront', 'merge_fronts', 'write_front', 'all_epochs']


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
    """The ``keys`` of every epoch of every trial's ``history.json``, concatenated (grey dots of the plot).

    A trial whose front ranked calibrated checkpoints contributes its ``calibrated_<key>`` values, the values its
    front was measured by, so that the dots and the front share one scale.
    """
    epochs: dict[str, list[float]] = {key: [] for key in keys}
    for directory in trial_dirs.values():
        history = json.loads((Path(directory) / 'history.json').read_text())
        prefix = 'calibrated_' if _calibrated(Path(directory) / 'pareto') else ''
        if all(prefix + key in history for key in keys):
            for key in keys:
                epochs[key] += history[prefix + key]
    return epochs


def _calibrated(front_dir: Path) -> bool:
    index = front_dir / FRONT_INDEX
    return index.is_file() and bool(json.loads(index.read_text()).get('calibrated', False))
