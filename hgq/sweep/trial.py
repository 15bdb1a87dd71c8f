"""One trial of a sweep: the training part of ``hgq run`` for one grid point, in its own run directory.

A trial is :func:`hgq.run.run` without conversion and with ``export.n_models: 0``: it trains, keeps the Pareto
front of checkpoints and writes ``config.yaml``, ``history.json``, ``pareto/``, ``results.json`` and ``report.md``.
Models are selected, calibrated and converted later, from the front merged over all trials. The training is the
same computation as ``hgq run`` on the trial's configuration (same seed, same epochs), so the history and the
front equal those of a serial ``hgq run`` of that configuration.

Nothing here imports Ray: the functions run inside Ray workers, and are plain functions for tests.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

__all__ = ['run_trial', 'trial_complete', 'trial_config', 'limit_threads', 'SWEEP_ID']

# Written by the driver into the sweep directory; a worker that cannot read it does not see the directory.
SWEEP_ID = '.sweep-id'


def trial_config(config: dict[str, Any]):
    """The :class:`~hgq.config.RunConfig` a trial trains: ``config`` with ``export.n_models`` 0."""
    from hgq.config import parse_config

    parsed = parse_config(config)
    return replace(parsed, export=replace(parsed.export, n_models=0))


def trial_complete(directory: Path) -> bool:
    """Whether ``directory`` holds a finished trial (``results.json`` written, no ``RUNNING``/``FAILED`` marker)."""
    from hgq.run import FAILED, RUNNING

    return (directory / 'results.json').is_file() and not any((directory / m).exists() for m in (RUNNING, FAILED))


def limit_threads(threads: int) -> None:
    """Let TensorFlow use ``threads`` threads per op and between ops (call before TensorFlow runs any op)."""
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already initialized: the process was set up before
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def check_visible(sweep_dir: Path, sweep_id: str) -> None:
    """Fail with a clear message if this process does not see the driver's sweep directory (no shared storage)."""
    marker = sweep_dir / SWEEP_ID
    if not marker.is_file() or marker.read_text().strip() != sweep_id:
        raise FileNotFoundError(
            f'the sweep directory {sweep_dir} is not visible from node {socket.gethostname()}: put --out on storage '
            'that every node of the Ray cluster mounts at the same path (e.g. NFS)'
        )


def run_trial(config: dict[str, Any], trial_dir: str, log_path: str, sweep_id: str, threads: int) -> dict[str, Any]:
    """Train one grid point into ``trial_dir`` (which must not exist) and return its summary.

    Progress lines and Keras's per-epoch lines go to ``log_path``.

    Returns
    -------
    dict
        ``name``, ``front`` (the trial's Pareto points), ``pareto_metric``, ``train_s``, ``wall_s``, ``host``, ``pid``.
    """
    from hgq.run import run

    directory = Path(trial_dir)
    check_visible(directory.parent.parent, sweep_id)
    limit_threads(threads)
    start = time.perf_counter()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, 'w', buffering=1) as log, contextlib.redirect_stdout(log):
        results = run(trial_config(config), directory, convert=False, verbose=1, print_fn=print)
    return {
        'name': directory.name,
        'front': results['front'],
        'pareto_metric': results['pareto_metric'],
        'train_s': results['train_s'],
        'wall_s': round(time.perf_counter() - start, 2),
        'host': socket.gethostname(),
        'pid': os.getpid(),
    }
