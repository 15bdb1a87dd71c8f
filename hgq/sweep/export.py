"""The post-front stage of a sweep for one selected checkpoint: calibrate, save, convert and check (in a Ray worker).

Each selected checkpoint of the merged front goes through :func:`hgq.run.process_point`, the same function that
``hgq run`` uses, with the configuration of the trial that trained it (so ``export: {synth: true}`` also traces
the model to Verilog and synthesizes it with yosys). Outputs go to the sweep directory: ``models/<tag>.keras``,
``bits-<tag>.png``, ``hls/<tag>/``, ``synth/<tag>/`` and ``models/<tag>.json`` (the result, written last: a later
run of the sweep reuses it).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from hgq.sweep.trial import check_visible, limit_threads

__all__ = ['export_point', 'result_path', 'clear_outputs']


def json_default(value: Any) -> Any:
    """JSON for numpy scalars and arrays."""
    if hasattr(value, 'tolist'):
        return value.tolist()
    raise TypeError(f'cannot write {type(value).__name__} to JSON')


def result_path(sweep_dir: Path, tag: str) -> Path:
    """Where the result of model ``tag`` is stored (its presence means the model is done)."""
    return sweep_dir / 'models' / f'{tag}.json'


def clear_outputs(sweep_dir: Path, tag: str) -> None:
    """Remove what an interrupted export of ``tag`` may have left."""
    for directory in (sweep_dir / 'hls' / tag, sweep_dir / 'synth' / tag):
        shutil.rmtree(directory, ignore_errors=True)
    for path in (sweep_dir / 'models' / f'{tag}.keras', sweep_dir / f'bits-{tag}.png', result_path(sweep_dir, tag)):
        path.unlink(missing_ok=True)


def export_point(
    config: dict[str, Any],
    point: dict[str, Any],
    tag: str,
    sweep_dir: str,
    sweep_id: str,
    convert: bool,
    threads: int,
) -> dict[str, Any]:
    """Calibrate, convert and check one checkpoint of the merged front; returns its entry of ``results.json``.

    ``point`` is an entry of the sweep's ``front.json`` (``file`` relative to ``sweep_dir``, ``epoch``, ``values``).
    """
    from hgq.callbacks import ParetoPoint
    from hgq.config import parse_config
    from hgq.datasets import load
    from hgq.fileio import write_text_atomic
    from hgq.run import process_point

    directory = Path(sweep_dir)
    check_visible(directory, sweep_id)
    limit_threads(threads)
    start = time.perf_counter()
    run_config = parse_config(config)
    data = load(run_config.dataset.name, **run_config.dataset.options)
    checkpoint = ParetoPoint(directory / point['file'], int(point['epoch']), dict(point['values']))
    result = process_point(checkpoint, tag, data, directory, run_config, convert)
    result.update(trial=point['trial'], export=run_config.to_dict()['export'])
    result['export_s'] = round(time.perf_counter() - start, 2)
    write_text_atomic(result_path(directory, tag), json.dumps(result, indent=1, default=json_default))
    return result
