"""``hgq run``: train under a ``beta`` schedule, keep the Pareto front, then calibrate, convert and verify.

A run writes one directory::

    RUNNING            present while the run is in progress (FAILED, with the traceback, if it stopped)
    config.yaml        the validated configuration
    history.json       per-epoch logs (loss, metrics, ebops, beta)
    pareto/            the Pareto front of checkpoints (front.json indexes it)
    models/            the calibrated models that were converted
    hls/<model>/       the HLS projects
    pareto.png, bits-<model>.png
    results.json       everything measured (written last, atomically)
    report.md          accuracy, EBOPs and bit-exactness per model

Only a directory without ``RUNNING`` or ``FAILED`` holds a complete run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from hgq import to_hls
from hgq.backend import data_parallel
from hgq.calibrate import calibrate
from hgq.callbacks import ParetoFront, ParetoPoint, read_front
from hgq.config import OPTIMIZERS, ConfigError, ExportConfig, RunConfig, build_model, load_config, parse_config
from hgq.conversion import check_bit_exact
from hgq.datasets import Dataset, load
from hgq.fileio import make_writable_dir, write_text_atomic
from hgq.summary import layer_rows

__all__ = ['run', 'train', 'select_points', 'process_point', 'check_model', 'write_report', 'RUNNING', 'FAILED']
__all__ += ['DivergedError', 'choose_points', 'process_points']

RUNNING = 'RUNNING'
FAILED = 'FAILED'
Say = Callable[[str], Any]


def _quiet(_: str) -> None:
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f'cannot write {type(value).__name__} to JSON')


def _write_json(path: Path, content: Any) -> None:
    write_text_atomic(path, json.dumps(content, indent=1, default=_json_default, allow_nan=True))


def _task(data: Dataset) -> tuple[Any, list[str], str, str]:
    """Loss, metrics, and the Pareto metric with its side."""
    if data.task == 'classification':
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        return loss, ['accuracy'], 'val_accuracy', 'max'
    return 'mse', [], 'val_loss', 'min'


def _optimizer(config: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    training = config.training
    rate: Any = training.learning_rate
    if training.lr_schedule == 'cosine':
        steps = training.epochs * steps_per_epoch
        rate = keras.optimizers.schedules.CosineDecay(training.learning_rate, steps, alpha=training.lr_final)
    return getattr(keras.optimizers, OPTIMIZERS[training.optimizer])(learning_rate=rate)


def train(config: RunConfig, data: Dataset, directory: str | os.PathLike, verbose: int = 1):
    """Build, compile and fit the model of ``config``, keeping its Pareto front in ``directory/pareto``.

    The front holds calibrated models: each epoch's model is calibrated on the training set and ranked by its
    validation metric and exact EBOPs (:class:`hgq.callbacks.ParetoFront` with ``calibration_data``), as it will be
    deployed; ``training.calibrated_front: false`` ranks the epoch logs instead. Data holding NaN or infinite
    values are refused before anything is built.

    Returns
    -------
    model : keras.Model
        The model after the last epoch.
    history : dict
        ``History.history`` (with ``ebops`` and ``beta`` per epoch).
    front : ParetoFront
        The callback, whose ``points`` are the saved checkpoints.
    """
    _check_finite_data(data)
    with _distribution(config) as replicas:
        if config.training.batch_size % replicas:
            raise ConfigError(
                f'training.batch_size: expected a multiple of the {replicas} devices of data-parallel training '
                f'(each takes an equal share of every batch), got {config.training.batch_size}'
            )
        keras.utils.set_random_seed(config.seed)
        model = build_model(config, data.input_shape, data.n_classes)
        loss, metrics, metric, side = _task(data)
        steps = math.ceil(len(data.x_train) / config.training.batch_size)
        model.compile(_optimizer(config, steps), loss, metrics=metrics)
        calibrated = config.training.calibrated_front
        front = ParetoFront(
            Path(directory) / 'pareto',
            metrics=(metric, 'ebops'),
            sides=(side, 'min'),
            calibration_data=data.x_train if calibrated else None,
            validation_data=(data.x_val, data.y_val) if calibrated else None,
        )
        history = model.fit(
            data.x_train,
            data.y_train,
            validation_data=(data.x_val, data.y_val),
            epochs=config.training.epochs,
            batch_size=config.training.batch_size,
            callbacks=[config.training.beta.callback(), front, keras.callbacks.TerminateOnNaN()],
            verbose=2 if verbose else 0,
        )
    return model, history.history, front


def _distribution(config: RunConfig) -> contextlib.AbstractContextManager[int]:
    """The scope of ``training.distribution``, yielding the number of devices that share each batch."""
    if config.training.distribution == 'data_parallel':
        return data_parallel()
    return contextlib.nullcontext(1)


def select_points(
    points: Sequence[ParetoPoint], n: int, metric: str, side: str = 'max', min_metric: float | None = None
) -> list[ParetoPoint]:
    """Pick ``n`` checkpoints spread along a front by EBOPs, always including the best ``metric``.

    ``min_metric`` drops points worse than it first (a floor for ``side='max'``, a ceiling for ``'min'``).

    Examples
    --------
    >>> from pathlib import Path
    >>> pts = [ParetoPoint(Path(f'{e}.keras'), e, {'acc': a, 'ebops': c}) for e, a, c in
    ...        [(1, 0.80, 100), (2, 0.90, 200), (3, 0.95, 400), (4, 0.97, 800)]]
    >>> [p.epoch for p in select_points(pts, 2, 'acc')]
    [1, 4]
    >>> [p.epoch for p in select_points(pts, 2, 'acc', min_metric=0.9)]
    [2, 4]
    """
    sign = 1.0 if side == 'max' else -1.0
    finite = [p for p in points if math.isfinite(p.values[metric]) and math.isfinite(p.values['ebops'])]
    candidates = [p for p in finite if min_metric is None or sign * (p.values[metric] - min_metric) >= 0]
    candidates.sort(key=lambda p: (p.values['ebops'], p.epoch))
    if n <= 0 or not candidates:
        return []
    if n == 1:
        return [max(candidates, key=lambda p: (sign * p.values[metric], -p.values['ebops']))]
    if n >= len(candidates):
        return candidates
    indices = sorted({int(round(i)) for i in np.linspace(0, len(candidates) - 1, n)})
    return [candidates[i] for i in indices]


def choose_points(
    points: Sequence[ParetoPoint], export: ExportConfig, metric: str, side: str, say: Say = _quiet
) -> list[ParetoPoint]:
    """The ``export.n_models`` checkpoints of a front to export (:func:`select_points` above ``export.min_metric``),
    or the best one if none reaches ``min_metric``."""
    chosen = select_points(points, export.n_models, metric, side, export.min_metric)
    if not chosen and points and export.n_models:
        say(f'no checkpoint reaches {metric} {export.min_metric}; taking the best one')
        chosen = select_points(points, 1, metric, side)
    return chosen


def _accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(outputs.reshape(len(labels), -1), axis=-1) == labels))


def check_model(
    model: keras.Model, data: Dataset, directory: Path, export: ExportConfig, say: Say = _quiet
) -> dict[str, Any]:
    """Convert a calibrated model with :func:`hgq.to_hls`, compile it, and compare it with Keras on the test set.

    Returns the HLS project, the test metric from the C simulation and the number of test samples whose
    outputs differ from Keras's in any bit (``mismatches``).
    """
    n = len(data.x_test) if export.n_test is None else min(export.n_test, len(data.x_test))
    x, y = np.ascontiguousarray(data.x_test[:n]), data.y_test[:n]
    start = time.perf_counter()
    say(f'  converting to {export.backend} HLS ({export.io_type}, {export.strategy}) in {directory}')
    hls_model = to_hls(model, directory, export.hls_settings())
    say('  compiling the C simulation')
    hls_model.compile()
    say(f'  checking bit-exactness on {n} test samples')
    check, hls_outputs = check_bit_exact(model, hls_model, x, batch_size=1024)
    if check.nonfinite_samples:
        say(f'  {check.describe()}')
    result = {
        'converted': True,
        'hls_project': str(directory),
        'n_checked': n,
        'mismatches': check.mismatched_samples,
        'max_abs_diff': check.max_abs_diff,
        'convert_s': round(time.perf_counter() - start, 2),
    }
    if data.task == 'classification':
        result['test_accuracy_hls'] = _accuracy(hls_outputs[0], y)
    return result


def _evaluate(model: keras.Model, data: Dataset) -> dict[str, float]:
    outputs = np.asarray(model.predict(data.x_test, batch_size=1024, verbose=0))
    if data.task == 'classification':
        return {'test_accuracy': _accuracy(outputs, data.y_test)}
    return {'test_mse': float(np.mean((outputs.reshape(data.y_test.shape) - data.y_test) ** 2))}


def process_point(
    point: ParetoPoint,
    tag: str,
    data: Dataset,
    run_dir: Path,
    config: RunConfig,
    convert: bool,
    say: Say = _quiet,
    model: keras.Model | None = None,
) -> dict[str, Any]:
    """Calibrate the checkpoint of ``point``, save it as ``run_dir/models/<tag>.keras``, and convert and check it.

    Also plots its bitwidths (``run_dir/bits-<tag>.png``); the HLS project goes to ``run_dir/hls/<tag>``.
    Returns the model's entry of ``results.json``: EBOPs after calibration, test metrics, per-layer rows and, when
    ``convert``, the result of :func:`check_model`.

    ``model``, a model of the same architecture (another checkpoint of the same run), receives the checkpoint's
    weights, so that its compiled calibration and prediction passes serve every checkpoint instead of each one
    tracing a new model; ``None`` loads the checkpoint as a new model.
    """
    from hgq.plot import bits as plot_bits

    if model is None:
        model = keras.models.load_model(point.path)
    else:
        model.load_weights(point.path)
    say('  calibrating integer bits on the training set')
    ebops = calibrate(model, data.x_train)
    (run_dir / 'models').mkdir(exist_ok=True)
    model.save(run_dir / 'models' / f'{tag}.keras')
    plot_bits(model, run_dir / f'bits-{tag}.png', title=f'{config.name} {tag}')
    result: dict[str, Any] = {
        'tag': tag,
        'checkpoint': str(point.path.relative_to(run_dir)),
        'epoch': point.epoch,
        'training': dict(point.values),
        'ebops': ebops,
        **_evaluate(model, data),
        'layers': layer_rows(model),
    }
    say(f'  EBOPs after calibration {ebops:,.0f}; ' + ', '.join(f'{k} {v:.4f}' for k, v in _metrics(result).items()))
    if convert:
        result.update(check_model(model, data, run_dir / 'hls' / tag, config.export, say))
        if result.get('converted'):
            say(f'  {result["mismatches"]} of {result["n_checked"]} test samples differ from Keras')
    if config.export.synth:
        result.update(synth_model(model, data, run_dir / 'synth' / tag, config.export, say))
    return result


def process_points(
    points: Sequence[ParetoPoint], data: Dataset, run_dir: Path, config: RunConfig, convert: bool, say: Say = _quiet
) -> list[dict[str, Any]]:
    """:func:`process_point` for every checkpoint of one run, tagged ``model<j>-epoch<epoch>``.

    The checkpoints share one architecture, so they are loaded into one model: it is traced once for calibration
    and once for prediction, however many checkpoints there are (a new model per checkpoint would be traced anew
    each time).
    """
    model = keras.models.load_model(points[0].path) if points else None
    results = []
    for j, point in enumerate(points):
        values = ', '.join(f'{k} {v:.4g}' for k, v in point.values.items())
        say(f'model {j + 1}/{len(points)}: epoch {point.epoch} ({values})')
        tag = f'model{j}-epoch{point.epoch:04d}'
        results.append(process_point(point, tag, data, run_dir, config, convert, say, model=model))
    return results


def synth_model(
    model: keras.Model, data: Dataset, directory: Path, export: ExportConfig, say: Say = _quiet
) -> dict[str, Any]:
    """:func:`hgq.synth` (yosys LUTs, Verilog checked on the first ``export.n_test`` test inputs) of one model."""
    from hgq.rtl import synth

    n = len(data.x_test) if export.n_test is None else min(export.n_test, len(data.x_test))
    say(f'  tracing to Verilog and synthesizing with yosys in {directory}')
    done = synth(model, directory, check=data.x_test[:n], verbose=False)
    say(f'  yosys: {done["lut"]:,} LUTs; Verilog: {done["mismatches"]} of {n} test samples differ from Keras')
    keys = ('lut', 'ff', 'carry', 'dsp', 'depth', 'estimate_lut', 'mismatches', 'n_checked', 'seconds')
    return {'lut': done['lut'], 'synth': {k: done[k] for k in keys}}


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    return {k: result[k] for k in ('test_accuracy', 'test_mse') if k in result}


class DivergedError(ValueError):
    """Training produced non-finite losses or weights (too high a learning rate, or non-finite data)."""


def _running_pid(run_dir: Path) -> int | None:
    """The process id in ``RUNNING`` when that process still lives (a run in progress), else ``None``."""
    try:
        pid = int((run_dir / RUNNING).read_text().split(' pid ')[1].split()[0])
        os.kill(pid, 0)
    except (OSError, IndexError, ValueError):
        return None
    return pid


def _is_run_dir(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in (RUNNING, FAILED, 'config.yaml', 'pareto'))


def _run_dir(config: RunConfig, out_dir: str | os.PathLike | None, overwrite: bool = False) -> Path:
    """Create (or, with ``overwrite``, empty) the run directory, checking it before any work starts."""
    if out_dir is None:
        stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
        out_dir = Path(config.output) / f'{config.name}-{stamp}'
    run_dir = Path(out_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FileExistsError(f'run directory {run_dir} is a file; choose a directory for --out')
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f'run directory {run_dir} exists and is not empty; choose another --out or pass --overwrite'
            )
        if not _is_run_dir(run_dir):
            raise FileExistsError(f'--overwrite: {run_dir} is not a run directory (no config.yaml); not deleting it')
        pid = _running_pid(run_dir)
        if pid is not None and pid != os.getpid():
            raise FileExistsError(f'--overwrite: a run (pid {pid}) is still writing to {run_dir}')
        shutil.rmtree(run_dir)
    try:
        make_writable_dir(run_dir)
    except OSError as err:
        raise OSError(f'cannot write the run directory {run_dir}: {err.strerror or err}') from None
    return run_dir


def _check_finite_data(data: Dataset) -> None:
    for name in ('x_train', 'y_train', 'x_val', 'y_val', 'x_test', 'y_test'):
        values = np.asarray(getattr(data, name))
        if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
            bad = int(np.sum(~np.isfinite(values)))
            raise ValueError(f'data set {data.name}: {name} holds {bad} NaN or infinite values')


def _check_converged(history: dict[str, list[float]], model: keras.Model) -> None:
    """Raise :class:`DivergedError` when a loss or a weight of the trained model is not finite."""
    for key in ('loss', 'val_loss'):
        for epoch, value in enumerate(history.get(key, []), start=1):
            if not math.isfinite(value):
                raise DivergedError(
                    f'training diverged: {key} is {value} at epoch {epoch}; lower training.learning_rate '
                    '(or check the data)'
                )
    broken = [w.path for w in model.weights if not np.all(np.isfinite(ops.convert_to_numpy(w)))]
    if broken:
        raise DivergedError(
            f'training diverged: weights {broken[:3]} are not finite; lower training.learning_rate (or check the data)'
        )


def _as_config(config: RunConfig | str | os.PathLike | dict[str, Any]) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return parse_config(config)
    return load_config(config)


def run(
    config: RunConfig | str | os.PathLike | dict[str, Any],
    out_dir: str | os.PathLike | None = None,
    epochs: int | None = None,
    convert: bool = True,
    verbose: int = 1,
    print_fn: Say = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run a configuration end to end: train, keep the Pareto front, calibrate, convert, check bit-exactness.

    Parameters
    ----------
    config : RunConfig, path to a YAML file, or dict
        The run configuration (see :mod:`hgq.config`).
    out_dir : path, optional
        The run directory (must be new or empty). Default: ``<config.output>/<name>-<date>-<time>``.
        Checked (a directory, writable) before anything else happens.
    epochs : int, optional
        Overrides ``training.epochs``.
    convert : bool
        Convert and check the selected models (``export.n_models`` of them); ``False`` stops after calibration.
    verbose : int
        0: silent; 1: progress lines and one line per epoch.
    print_fn : callable
        Where progress lines go.
    overwrite : bool
        Delete ``out_dir`` first if it holds a run (complete, failed or killed; not one still running).

    Returns
    -------
    dict
        The content of ``results.json``.

    Examples
    --------
    >>> import hgq.run
    >>> results = hgq.run.run('configs/digits_mlp.yaml', 'runs/digits')  # doctest: +SKIP
    >>> [(m['tag'], m['ebops'], m['mismatches']) for m in results['models']]  # doctest: +SKIP
    """
    config = _as_config(config)
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
            raise ConfigError(f'epochs (--epochs): expected a positive integer, got {epochs!r}')
        config = replace(config, training=replace(config.training, epochs=int(epochs)))
    say: Say = (lambda text: print_fn(f'[hgq] {text}')) if verbose else _quiet
    run_dir = _run_dir(config, out_dir, overwrite)
    started = datetime.now(timezone.utc)
    (run_dir / RUNNING).write_text(f'started {started.isoformat()} pid {os.getpid()}\n')
    try:
        results = _run(config, run_dir, convert, verbose, say, started)
    except BaseException:
        write_text_atomic(run_dir / FAILED, traceback.format_exc())
        (run_dir / RUNNING).unlink(missing_ok=True)
        raise
    (run_dir / RUNNING).unlink()
    say(f'done: {run_dir / "report.md"}')
    return results


def _run(config: RunConfig, run_dir: Path, convert: bool, verbose: int, say: Say, started: datetime):
    import yaml

    from hgq.plot import pareto as plot_pareto

    clock = time.perf_counter()
    write_text_atomic(run_dir / 'config.yaml', yaml.safe_dump(config.to_dict(), sort_keys=False))
    say(f'run {config.name} in {run_dir}')
    say(f'loading data set {config.dataset.name}')
    data = load(config.dataset.name, **config.dataset.options)
    say(f'{data}')
    if config.export.synth:
        from hgq.rtl.verilog import require_tool

        for tool in ('yosys', 'iverilog', 'vvp'):  # export.synth: fail before training, not after it
            require_tool(tool)
    say(f'training {config.training.epochs} epochs')
    train_start = time.perf_counter()
    model, history, front = train(config, data, run_dir, verbose)
    train_s = time.perf_counter() - train_start
    _check_converged(history, model)
    _write_json(run_dir / 'history.json', history)
    metric, side = front.metrics[0], front.sides[front.metrics[0]]
    points = read_front(front.directory)
    say(f'Pareto front: {len(points)} checkpoints')
    export = config.export
    chosen = choose_points(points, export, metric, side, say)
    models = process_points(chosen, data, run_dir, config, convert, say)
    marked = [{**m['training'], 'label': m['tag'].split('-')[0]} for m in models]
    prefix = 'calibrated_' if front.calibrated else ''  # every epoch as the front measures it
    epochs = {key: history.get(f'{prefix}{key}', []) for key in (metric, 'ebops')}
    plot_pareto(points, run_dir / 'pareto.png', metric=metric, history=epochs, marked=marked, title=config.name)
    synthesized = [{**mark, 'lut': m['lut']} for mark, m in zip(marked, models, strict=True) if m.get('lut')]
    if synthesized:
        plot_pareto(synthesized, run_dir / 'pareto-lut.png', metric=metric, cost='lut', title=config.name)
    results = {
        'status': 'complete',
        'name': config.name,
        'run_dir': str(run_dir),
        'config': config.to_dict(),
        'dataset': {
            'name': data.name,
            'input_shape': list(data.input_shape),
            'n_classes': data.n_classes,
            'sizes': {'train': len(data.x_train), 'val': len(data.x_val), 'test': len(data.x_test)},
        },
        'started': started.isoformat(),
        'finished': datetime.now(timezone.utc).isoformat(),
        'wall_s': round(time.perf_counter() - clock, 2),
        'train_s': round(train_s, 2),
        'pareto_metric': metric,
        'front': [{'file': p.path.name, 'epoch': p.epoch, **p.values} for p in points],
        'models': models,
    }
    write_report(results, run_dir / 'report.md')
    _write_json(run_dir / 'results.json', results)
    return results


def _fmt(value: Any, spec: str = '.4f') -> str:
    if value is None:
        return '-'
    return format(value, spec) if isinstance(value, int | float) else str(value)


def model_table(results: dict[str, Any]) -> str:
    """The per-model Markdown table of a run's results."""
    metric = results['pareto_metric']
    head = f'| model | epoch | {metric} | test acc (Keras) | test acc (HLS) | EBOPs | mismatches | HLS project |'
    synth = any('synth' in m for m in results['models'])
    head += ' LUT (yosys) | Verilog mismatches |' if synth else ''
    lines = [head, '|' + '---|' * (10 if synth else 8)]
    for m in results['models']:
        mismatches = f'{m["mismatches"]} / {m["n_checked"]}' if m.get('converted') else 'not converted'
        project = f'`{Path(m["hls_project"]).name}`' if m.get('converted') else '-'
        test = m.get('test_accuracy', m.get('test_mse'))
        cells = [m['tag'], str(m['epoch']), _fmt(m['training'][metric]), _fmt(test), _fmt(m.get('test_accuracy_hls'))]
        cells += [f'{m["ebops"]:,.0f}', mismatches, project]
        if synth:
            y = m.get('synth')
            cells += [f'{y["lut"]:,}', f'{y["mismatches"]} / {y["n_checked"]}'] if y else ['-', '-']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_report(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a run's ``report.md``: data set, training, the converted models and the Pareto front."""
    metric = results['pareto_metric']
    data, training, export = results['dataset'], results['config']['training'], results['config']['export']
    sizes = data['sizes']
    lines = [
        f'# HGQ run: {results["name"]}',
        '',
        f'- data set: {data["name"]}, input shape {tuple(data["input_shape"])}, {data["n_classes"]} classes; '
        f'train {sizes["train"]}, validation {sizes["val"]}, test {sizes["test"]}',
        f'- training: {training["epochs"]} epochs in {results["train_s"]:.0f} s, beta {training["beta"]}',
        f'- export: {export["backend"]} {export["part"]}, {export["io_type"]}, clock {export["clock_period"]} ns',
        f'- wall time: {results["wall_s"]:.0f} s',
        '',
        '## Models',
        '',
        'EBOPs are exact, after calibration on the training set. Mismatches count test samples whose HLS '
        'C-simulation output differs from Keras in any bit.',
        '',
        model_table(results),
        '',
        '![Pareto front](pareto.png)',
        '',
        *(['![Accuracy vs yosys LUTs](pareto-lut.png)', ''] if any('lut' in m for m in results['models']) else []),
        f'## Pareto front ({len(results["front"])} {"calibrated " if training.get("calibrated_front") else ""}'
        'checkpoints)',
        '',
        f'| epoch | {metric} | EBOPs | file |',
        '|---|---|---|---|',
    ]
    lines += [f'| {p["epoch"]} | {p[metric]:.4f} | {p["ebops"]:,.0f} | `{p["file"]}` |' for p in results['front']]
    path = Path(path)
    write_text_atomic(path, '\n'.join(lines) + '\n')
    return path
