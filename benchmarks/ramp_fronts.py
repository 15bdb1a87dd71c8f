"""What ranking ramp checkpoints on calibrated models changes: one training per seed, two Pareto fronts.

Run in the hgq virtual environment (``/work/main/.venv``)::

    python benchmarks/ramp_fronts.py --dataset digits --ramp 1e-6:3e-4 --seeds 0 1 2

Each seed trains the ramp of ``train_hgq.py --ramps`` once with two :class:`hgq.callbacks.ParetoFront` side by side:
one ranked on the epoch logs (training-set accuracy in inference mode and EBOPs, with the ranges tracked in
training), the other with ``calibration_data`` (the same measured on the model calibrated on the training set).
The calibrated front leaves training unchanged, so both see the same models. Every checkpoint of both fronts is
then calibrated and scored on the test set, and for each accuracy threshold of ``compare.py`` the ramp column's
value is computed from either front (per seed the cheapest checkpoint reaching it, EBOPs averaged over seeds).
Prints the comparison and writes ``results/ramp_fronts_<dataset>.json``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
from bench_common import RESULTS_DIR, seed_everything, sweep_parser, sweep_settings
from compare import THRESHOLDS
from train_hgq import SETTLE_EPOCHS, accuracy, fit, make_model, parse_ramp, settle_callbacks

import hgq

METRICS, SIDES = ('val_accuracy', 'ebops'), ('max', 'min')


class TrainingSetAccuracy(keras.callbacks.Callback):
    """Logs ``val_accuracy``: the training-set accuracy in inference mode with the ranges tracked in training."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__()
        self.x, self.y = x, y

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        scores = self.model.evaluate(self.x, self.y, batch_size=1024, verbose=0, return_dict=True)
        if logs is not None:
            logs['val_accuracy'] = float(scores['accuracy'])


def scored(points: list[hgq.callbacks.ParetoPoint], data: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Each checkpoint calibrated on the training set: its epoch, front values, EBOPs and test accuracy."""
    rows = []
    for point in points:
        model = keras.models.load_model(point.path)
        ebops = hgq.calibrate(model, data['x_train'])
        rows.append(
            {'epoch': point.epoch, 'front': point.values, 'ebops': ebops, 'test_accuracy': accuracy(model, data)}
        )
    return rows


def train_seed(ramp: tuple[float, float], seed: int, data: dict[str, np.ndarray], settings: dict, settle: int) -> dict:
    seed_everything(seed)
    start, end = ramp
    model = make_model(settings, data, start)
    schedule = hgq.callbacks.BetaSchedule([(0, start), (settings['epochs'] - 1, end)], interpolation='log')
    with tempfile.TemporaryDirectory() as directory:
        logged = hgq.callbacks.ParetoFront(Path(directory) / 'logged', METRICS, SIDES)
        calibrated = hgq.callbacks.ParetoFront(
            Path(directory) / 'calibrated',
            METRICS,
            SIDES,
            calibration_data=data['x_train'],
            validation_data=(data['x_train'], data['y_train']),
        )
        log = keras.callbacks.History()
        callbacks = [schedule, *settle_callbacks(settle), TrainingSetAccuracy(data['x_train'], data['y_train'])]
        fit(model, data, settings, callbacks=[*callbacks, logged, calibrated, log])
        fronts = {name: scored(front.points, data) for name, front in (('logged', logged), ('calibrated', calibrated))}
    history = {key: [float(v) for v in values] for key, values in log.history.items()}
    return {'seed': seed, 'history': history, **fronts}


def column(runs: list[dict], front: str, threshold: float) -> float | None:
    """Mean over seeds of each seed's cheapest checkpoint of ``front`` reaching ``threshold`` (None if one has none)."""
    cheapest = [min((r['ebops'] for r in run[front] if r['test_accuracy'] >= threshold), default=None) for run in runs]
    return None if None in cheapest else float(np.mean(cheapest))


def report(runs: list[dict], thresholds: list[float]) -> None:
    for run in runs:
        history = run['history']
        accuracy_gap = np.subtract(history['val_accuracy'], history['calibrated_val_accuracy'])
        ebops_ratio = np.divide(history['ebops'], history['calibrated_ebops'])
        epochs = {name: sorted(r['epoch'] for r in run[name]) for name in ('logged', 'calibrated')}
        print(
            f'seed {run["seed"]}: logged - calibrated training accuracy {accuracy_gap.min():+.4f} .. '
            f'{accuracy_gap.max():+.4f}; logged / calibrated EBOPs {ebops_ratio.min():.3f} .. {ebops_ratio.max():.3f}; '
            f'front epochs logged {epochs["logged"]}, calibrated {epochs["calibrated"]}'
        )
    for threshold in thresholds:
        values = [column(runs, name, threshold) for name in ('logged', 'calibrated')]
        print(
            f'accuracy >= {threshold}: '
            + ', '.join(
                f'{n} {"-" if v is None else f"{v:.0f}"}' for n, v in zip(('logged', 'calibrated'), values, strict=True)
            )
        )


def main() -> None:
    parser = sweep_parser(__doc__.splitlines()[0])
    parser.add_argument('--ramp', type=parse_ramp, default=(1e-6, 3e-4), help='log beta ramp START:END')
    args = parser.parse_args()
    settings, data = sweep_settings(args)
    settle = SETTLE_EPOCHS[args.dataset]
    settle = settings['epochs'] // 5 if settle is None else settle
    runs = []
    for seed in args.seeds:
        runs.append(train_seed(args.ramp, seed, data, settings, settle))
        print(f'seed {seed} trained', flush=True)
    thresholds = list(THRESHOLDS.get(args.dataset, (0.9,)))
    report(runs, thresholds)
    result = {'dataset': args.dataset, 'ramp': list(args.ramp), 'settings': settings, 'runs': runs}
    (RESULTS_DIR / f'ramp_fronts_{args.dataset}.json').write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
    main()
