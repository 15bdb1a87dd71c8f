"""Run a sweep on Ray: trials as Ray tasks, failures recorded and retried, then the merged front's models exported.

The driver (this module) is the only writer of the sweep's bookkeeping (``trials.json``, ``front.json``,
``results.json``, ``report.md``); each Ray task writes only its own trial directory or its model's files. A trial
directory without a complete ``hgq run`` result (a killed worker leaves ``RUNNING`` behind) is removed before the
trial runs again, so rerunning the same command skips finished trials and redoes only the others.

Every Ray task runs in a fresh worker process (``max_calls=1``): a crash or a leak of one trial cannot reach the
next, and TensorFlow's thread pools are set for the task's CPUs before it starts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hgq.sweep.export import clear_outputs, export_point, json_default, result_path
from hgq.sweep.front import all_epochs, merge_fronts, write_front
from hgq.sweep.grid import GridAxis, Trial, grid_trials, parse_axis, resolve_trials
from hgq.sweep.report import write_report
from hgq.sweep.trial import SWEEP_ID, run_trial, trial_complete, trial_config

__all__ = ['sweep', 'RAY_MISSING']

RAY_MISSING = 'hgq sweep runs on Ray, an optional dependency; install it with: pip install "hgq-fpga[ray]"'
Say = Callable[[str], Any]


def import_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(RAY_MISSING) from None
    return ray


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec='seconds')


def _write_json(path: Path, content: Any) -> None:
    from hgq.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(content, indent=1, default=json_default))


@dataclass
class _Job:
    """One Ray task to run (a trial or a model export), with its failed attempts."""

    key: str
    submit: Callable[[], Any]
    prepare: Callable[[], None]
    errors: list[dict[str, Any]]
    attempts: int = 0


def _describe(err: BaseException, attempt: int) -> dict[str, Any]:
    """A failed attempt: its kind, a one-line summary and the full text (with the remote traceback)."""
    ray = import_ray()
    cause = getattr(err, 'cause', None)
    if isinstance(err, ray.exceptions.RayTaskError) and cause is not None:
        kind, summary = 'exception', f'{type(cause).__name__}: {cause}'
    elif isinstance(err, ray.exceptions.WorkerCrashedError):
        kind, summary = 'worker died', 'the worker process died (killed or crashed) during the task'
    else:
        kind, summary = 'ray error', f'{type(err).__name__}: {err}'
    return {
        'attempt': attempt,
        'kind': kind,
        'summary': ' '.join(summary.split())[:300],
        'detail': str(err),
        'time': _now(),
    }


def _drive(
    jobs: Sequence[_Job],
    max_parallel: int | None,
    retries: int,
    on_done: Callable[[_Job, Any], None],
    on_failed: Callable[[_Job, bool], None],
) -> None:
    """Run ``jobs`` on Ray, at most ``max_parallel`` at once; a failed job runs again up to ``retries`` times."""
    ray = import_ray()
    limit = max_parallel or max(1, len(jobs))
    queue: deque[_Job] = deque(jobs)
    running: dict[Any, _Job] = {}
    while queue or running:
        while queue and len(running) < limit:
            job = queue.popleft()
            job.prepare()
            job.attempts += 1
            running[job.submit()] = job
        (ref,), _ = ray.wait(list(running), num_returns=1)
        job = running.pop(ref)
        try:
            value = ray.get(ref)
        except ray.exceptions.RayError as err:
            job.errors.append(_describe(err, job.attempts))
            again = job.attempts <= retries
            on_failed(job, again)
            if again:
                queue.append(job)
        else:
            on_done(job, value)


def _connect(address: str | None, num_cpus: int | None) -> bool:
    """Initialize Ray (local without ``address``) unless it is already; returns whether this call started it."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def _sweep_id(directory: Path) -> str:
    marker = directory / SWEEP_ID
    if marker.is_file():
        return marker.read_text().strip()
    sweep_id = uuid.uuid4().hex
    marker.write_text(sweep_id + '\n')
    return sweep_id


def _best(front: Sequence[dict[str, Any]], metric: str, side: str) -> dict[str, Any] | None:
    """The point of best ``metric`` (fewest EBOPs among equals)."""
    sign = 1.0 if side == 'max' else -1.0
    return max(front, key=lambda p: (sign * p[metric], -p['ebops']), default=None)


def _trial_summary(directory: Path) -> dict[str, Any]:
    """Front, metric and side, and training time of a finished trial, read from its run directory."""
    results = json.loads((directory / 'results.json').read_text())
    index = json.loads((directory / 'pareto' / 'front.json').read_text())
    metric = results['pareto_metric']
    side = dict(zip(index['metrics'], index['sides'], strict=True))[metric]
    return {'front': results['front'], 'pareto_metric': metric, 'pareto_side': side, 'train_s': results['train_s']}


# Keys of a run configuration that the training does not depend on: a finished trial stays valid when they change.
NOT_TRAINING = ('name', 'output', 'export')


def _check_same_training(directory: Path, expected: dict[str, Any]) -> None:
    """Refuse to reuse a finished trial whose training configuration differs from the one requested now."""
    import yaml

    from hgq.config import parse_config

    found = parse_config(yaml.safe_load((directory / 'config.yaml').read_text())).to_dict()
    changed = sorted(key for key in expected if key not in NOT_TRAINING and found.get(key) != expected[key])
    if changed:
        raise ValueError(
            f'{directory} holds a trial trained with other settings of {changed}; rerun with the same '
            'configuration and grid, or choose another --out'
        )


@dataclass
class _Sweep:
    """The state of one invocation: the sweep directory, its trials and the Ray settings."""

    directory: Path
    name: str
    selection: Any  # the ExportConfig of the base configuration: how many models to take from the merged front
    trials: list[Trial]
    configs: dict[str, dict[str, Any]]
    resources: dict[str, float]
    max_parallel: int | None
    retries: int
    say: Say
    sweep_id: str = ''
    state: dict[str, dict[str, Any]] = field(default_factory=dict)
    export_errors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def threads(self) -> int:
        return max(1, int(self.resources['num_cpus']))

    def trial_dir(self, name: str) -> Path:
        return self.directory / 'trials' / name

    def load_state(self) -> None:
        """Mark trials finished by an earlier invocation as done; keep the errors recorded then."""
        (self.directory / 'trials').mkdir(parents=True, exist_ok=True)
        self.sweep_id = _sweep_id(self.directory)
        earlier = self.directory / 'trials.json'
        errors = {}
        if earlier.is_file():
            errors = {entry['name']: entry.get('errors', []) for entry in json.loads(earlier.read_text())}
        for trial in self.trials:
            entry = {'name': trial.name, 'label': trial.label(), 'overrides': dict(trial.overrides)}
            entry.update(status='pending', errors=errors.get(trial.name, []))
            directory = self.trial_dir(trial.name)
            if trial_complete(directory):
                _check_same_training(directory, trial_config(self.configs[trial.name]).to_dict())
                entry.update(status='done', **_trial_summary(directory))
            self.state[trial.name] = entry

    def save_state(self) -> None:
        _write_json(self.directory / 'trials.json', [self.state[t.name] for t in self.trials])

    def count(self, status: str) -> int:
        return sum(entry['status'] == status for entry in self.state.values())

    def progress(self) -> str:
        done = [entry for entry in self.state.values() if entry['status'] == 'done']
        text = f'{len(done)} done, {self.count("failed")} failed, {self.count("pending")} remaining'
        if done:
            metric, side = done[0]['pareto_metric'], done[0]['pareto_side']
            best = _best([{**p, 'trial': e['name']} for e in done for p in e['front']], metric, side)
            if best is not None:
                text += f'; best so far {metric} {best[metric]:.4f} at {best["ebops"]:,.0f} EBOPs ({best["trial"]})'
        return text

    def run_trials(self) -> None:
        """Run every unfinished trial as a Ray task; report each as it finishes."""
        ray = import_ray()
        remote = ray.remote(max_calls=1, max_retries=0, **self.resources)(run_trial)

        def job(trial: Trial) -> _Job:
            directory = self.trial_dir(trial.name)
            log = self.directory / 'logs' / f'{trial.name}.log'
            config = self.configs[trial.name]
            return _Job(
                trial.name,
                submit=lambda: remote.remote(config, str(directory), str(log), self.sweep_id, self.threads),
                prepare=lambda: shutil.rmtree(directory, ignore_errors=True),
                errors=self.state[trial.name]['errors'],
            )

        def done(job: _Job, value: dict[str, Any]) -> None:
            entry = self.state[job.key]
            entry.update(status='done', host=value['host'], **_trial_summary(self.trial_dir(job.key)))
            self.save_state()
            best = _best(entry['front'], entry['pareto_metric'], entry['pareto_side'])
            found = f'best {entry["pareto_metric"]} {best[entry["pareto_metric"]]:.4f}' if best else 'empty front'
            self.say(f'trial {job.key} done in {value["wall_s"]:.0f} s ({found}) | {self.progress()}')

        def failed(job: _Job, again: bool) -> None:
            error = job.errors[-1]
            self.state[job.key]['status'] = 'pending' if again else 'failed'
            self.save_state()
            then = 'retrying' if again else 'giving up'
            self.say(f'trial {job.key} failed (attempt {job.attempts}): {error["summary"]}; {then} | {self.progress()}')

        todo = [trial for trial in self.trials if self.state[trial.name]['status'] != 'done']
        self.save_state()
        _drive([job(trial) for trial in todo], self.max_parallel, self.retries, done, failed)

    def export(self, convert: bool) -> dict[str, Any]:
        """Merge the fronts of the finished trials, then calibrate, convert and check the selected models."""
        from hgq.plot import pareto as plot_pareto
        from hgq.run import choose_points

        finished = {t.name: self.trial_dir(t.name) for t in self.trials if self.state[t.name]['status'] == 'done'}
        results: dict[str, Any] = {'name': self.name, 'front': [], 'models': [], 'export_failures': []}
        if not finished:
            self.say('no trial finished: nothing to merge')
            return {**results, 'pareto_metric': None, 'pareto_side': None}
        front = merge_fronts(finished)
        write_front(front, self.directory)
        metric, side = front.metric, front.sides[front.metric]
        results.update(pareto_metric=metric, pareto_side=side)
        results['front'] = [
            {
                'trial': front.trial[p.path],
                'file': p.path.relative_to(self.directory).as_posix(),
                'epoch': p.epoch,
                **p.values,
            }
            for p in front.points
        ]
        chosen = choose_points(front.points, self.selection, metric, side, self.say)
        self.say(f'merged front: {len(front.points)} checkpoints of {len(finished)} trials; exporting {len(chosen)}')
        points = {f'model{j}-{front.trial[p.path]}-epoch{p.epoch:04d}': p for j, p in enumerate(chosen)}
        models = self._export_models(points, front.trial, convert)
        results['models'] = [models[tag] for tag in points if tag in models]
        results['export_failures'] = [
            {'tag': tag, **errors[-1]} for tag, errors in self.export_errors.items() if tag not in models
        ]
        marked = [{**m['training'], 'label': m['tag'].split('-')[0]} for m in results['models']]
        plot_pareto(
            front.points,
            self.directory / 'pareto.png',
            metric=metric,
            history=all_epochs(finished, (metric, 'ebops')),
            marked=marked,
            title=f'{self.name}: merged front of {len(finished)} trials',
        )
        synthesized = [
            {**mark, 'lut': m['lut']} for mark, m in zip(marked, results['models'], strict=True) if m.get('lut')
        ]
        if synthesized:
            plot_pareto(synthesized, self.directory / 'pareto-lut.png', metric=metric, cost='lut', title=self.name)
        return results

    def _stored_model(self, tag: str, point: Any, config: dict[str, Any], convert: bool) -> dict[str, Any] | None:
        """The result of an earlier export of the same checkpoint with the same export settings, if any."""
        from hgq.config import parse_config

        stored = result_path(self.directory, tag)
        if not stored.is_file():
            return None
        result = json.loads(stored.read_text())
        same = result.get('checkpoint') == point.path.relative_to(self.directory).as_posix()
        same = same and result.get('export') == parse_config(config).to_dict()['export']
        return result if same and (result.get('converted') or not convert) else None

    def _export_models(self, points: dict[str, Any], trial_of: dict[Path, str], convert: bool) -> dict[str, Any]:
        ray = import_ray()
        remote = ray.remote(max_calls=1, max_retries=0, **self.resources)(export_point)
        models: dict[str, Any] = {}

        def job(tag: str) -> _Job:
            point = points[tag]
            trial = trial_of[point.path]
            entry = {
                'file': point.path.relative_to(self.directory).as_posix(),
                'epoch': point.epoch,
                'values': point.values,
                'trial': trial,
            }
            args = (self.configs[trial], entry, tag, str(self.directory), self.sweep_id, convert, self.threads)
            errors = self.export_errors.setdefault(tag, [])
            return _Job(tag, lambda: remote.remote(*args), lambda: clear_outputs(self.directory, tag), errors)

        def done(job: _Job, value: dict[str, Any]) -> None:
            models[job.key] = value = json.loads(result_path(self.directory, job.key).read_text())
            text = f'model {job.key}: {value["ebops"]:,.0f} EBOPs after calibration'
            if value.get('converted'):
                text += f'; HLS: {value["mismatches"]} of {value["n_checked"]} test samples differ from Keras'
            if value.get('synth'):
                synth = value['synth']
                text += f'; yosys: {synth["lut"]:,} LUTs, Verilog: {synth["mismatches"]} of {synth["n_checked"]} differ'
            self.say(text)

        def failed(job: _Job, again: bool) -> None:
            then = 'retrying' if again else 'giving up'
            self.say(f'model {job.key} failed (attempt {job.attempts}): {job.errors[-1]["summary"]}; {then}')

        todo = []
        for tag, point in points.items():
            stored = self._stored_model(tag, point, self.configs[trial_of[point.path]], convert)
            if stored is None:
                todo.append(job(tag))
            else:
                models[tag] = stored
                self.say(f'model {tag}: exported before')
        _drive(todo, self.max_parallel, self.retries, done, failed)
        return models


def sweep(
    config: str | os.PathLike,
    grid: Sequence[str | GridAxis],
    out_dir: str | os.PathLike,
    address: str | None = None,
    max_parallel: int | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    convert: bool = True,
    retries: int = 1,
    num_cpus: int | None = None,
    print_fn: Say = print,
) -> dict[str, Any]:
    """Train every grid point of ``config`` as a Ray task, merge the Pareto fronts, and export the best models.

    Parameters
    ----------
    config : path
        The YAML run configuration (see :mod:`hgq.config`) that the grid varies.
    grid : sequence of str or GridAxis
        Axes like ``'seed=0,1,2'`` or ``'model.layers.2.units=16,32'`` (see :mod:`hgq.sweep.grid`).
    out_dir : path
        The sweep directory; an existing one is resumed (finished trials are skipped, failed ones run again).
    address : str, optional
        Ray cluster address (``auto``, ``ray://host:10001``); default a local Ray on this machine. A Ray that is
        already initialized in this process is used as it is.
    max_parallel : int, optional
        Most trials (and model exports) in flight at once; default as many as Ray's resources allow.
    cpus_per_trial, gpus_per_trial : float
        Ray resources of each task; TensorFlow uses ``max(1, int(cpus_per_trial))`` threads.
    convert : bool
        Convert and check the selected models (``export.n_models`` of the configuration, picked from the merged
        front as ``hgq run`` picks them from its front); ``False`` stops after calibration.
    retries : int
        How many times a failed trial or export runs again (default once).
    num_cpus : int, optional
        CPUs of the local Ray (default all of this machine's); not with ``address``.
    print_fn : callable
        Where progress lines go.

    Returns
    -------
    dict
        The content of ``results.json``; ``status`` is ``complete`` when every trial and export succeeded.

    Examples
    --------
    >>> from hgq.sweep import sweep
    >>> results = sweep('configs/digits_mlp.yaml', ['seed=0,1,2'], 'sweeps/digits')  # doctest: +SKIP
    >>> [(m['tag'], m['ebops'], m['mismatches']) for m in results['models']]  # doctest: +SKIP
    """
    from hgq.config import load_config

    clock = time.perf_counter()
    axes = [axis if isinstance(axis, GridAxis) else parse_axis(axis) for axis in grid]
    if max_parallel is not None and max_parallel < 1:
        raise ValueError(f'max_parallel: expected a positive integer, got {max_parallel}')
    if num_cpus is not None and (address is not None or num_cpus < 1):
        raise ValueError(f'num_cpus: a positive number of CPUs for a local Ray (no address), got {num_cpus}')
    if not cpus_per_trial > 0 or gpus_per_trial < 0 or retries < 0:
        raise ValueError(
            f'expected cpus_per_trial > 0, gpus_per_trial >= 0 and retries >= 0, got {cpus_per_trial}, '
            f'{gpus_per_trial} and {retries}'
        )
    base = load_config(config)
    trials = grid_trials(axes)
    configs = resolve_trials(base.to_dict(), trials, base.name)
    run = _Sweep(
        directory=Path(out_dir),
        name=base.name,
        selection=base.export,
        trials=trials,
        configs=dict(zip((t.name for t in trials), configs, strict=True)),
        resources={'num_cpus': cpus_per_trial, 'num_gpus': gpus_per_trial},
        max_parallel=max_parallel,
        retries=retries,
        say=lambda text: print_fn(f'[hgq sweep] {text}'),
    )
    import_ray()
    run.load_state()
    grid_json = [{'key': axis.key, 'values': list(axis.values)} for axis in axes]
    _write_json(run.directory / 'sweep.json', {'config_file': str(config), 'base': base.to_dict(), 'grid': grid_json})
    n_done = run.count('done')
    run.say(f'{len(trials)} trials in {run.directory}: {n_done} finished before, {len(trials) - n_done} to run')
    started = _connect(address, num_cpus)
    try:
        run.run_trials()
        results = run.export(convert)
    finally:
        if started:
            import_ray().shutdown()
    complete = run.count('done') == len(trials) and not results['export_failures']
    results.update(
        status='complete' if complete else 'incomplete',
        config_file=str(config),
        grid=grid_json,
        ray={'address': address or 'local', 'resources_per_trial': run.resources},
        trials=[run.state[t.name] for t in trials],
        wall_s=round(time.perf_counter() - clock, 2),
    )
    _write_json(run.directory / 'results.json', results)
    write_report(results, run.directory / 'report.md')
    run.say(f'{run.progress()}; report: {run.directory / "report.md"}')
    return results
