"""``hgq demo``: a built-in run on scikit-learn's digits, end to end, in a few minutes on a laptop CPU.

It trains a small HGQ MLP under a log-linear ``beta`` ramp, keeps the Pareto front of accuracy versus EBOPs,
calibrates two models from it, converts them to HLS with :func:`hgq.to_hls`, compiles the C simulation and counts
test samples whose outputs differ from Keras (0 when the conversion is bit-exact).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

from hgq.config import parse_config
from hgq.run import run

__all__ = ['DEMO_CONFIG', 'run_demo', 'demo_table']

DEMO_EPOCHS = 80

DEMO_CONFIG: dict[str, Any] = {
    'name': 'demo_digits',
    'seed': 0,
    'dataset': {'name': 'digits'},
    'model': {
        'layers': [
            {'type': 'HQuantize'},
            {'type': 'HDense', 'units': 32, 'activation': 'relu'},
            {'type': 'HDense', 'units': 10},
        ]
    },
    'training': {
        'epochs': DEMO_EPOCHS,
        'batch_size': 64,
        'optimizer': 'adam',
        'learning_rate': 3e-3,
        'beta': {'schedule': [[0, 1e-7], [DEMO_EPOCHS, 3e-4]], 'interpolation': 'log'},
    },
    'export': {'n_models': 2, 'min_metric': 0.95, 'backend': 'Vitis', 'io_type': 'io_parallel'},
}


def demo_table(results: dict[str, Any]) -> str:
    """A short plain-text table of a run's models: accuracy (Keras and HLS), EBOPs and mismatches."""
    header = f'{"model":<20}{"test acc":>10}{"HLS acc":>10}{"EBOPs":>10}{"mismatches":>14}'
    lines = [header, '-' * len(header)]
    for m in results['models']:
        hls = f'{m["test_accuracy_hls"]:.4f}' if 'test_accuracy_hls' in m else '-'
        mismatches = f'{m["mismatches"]}/{m["n_checked"]}' if m.get('converted') else 'n/a'
        lines.append(f'{m["tag"]:<20}{m["test_accuracy"]:>10.4f}{hls:>10}{m["ebops"]:>10,.0f}{mismatches:>14}')
    return '\n'.join(lines)


def run_demo(
    epochs: int | None = None,
    out_dir: str | os.PathLike | None = None,
    convert: bool = True,
    verbose: int = 1,
    print_fn: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run the built-in digits configuration end to end and print where the report is and a short table.

    Parameters
    ----------
    epochs : int, optional
        Training epochs (default 80); the ``beta`` ramp is stretched to match.
    out_dir : path, optional
        The run directory (default ``hgq_runs/demo_digits-<date>-<time>``).
    convert : bool
        Convert and check two Pareto models with hls4ml (needs g++).

    Returns
    -------
    dict
        The run's results (as in ``results.json``).

    Examples
    --------
    >>> from hgq.demo import run_demo
    >>> results = run_demo(epochs=20)  # doctest: +SKIP
    """
    config = copy.deepcopy(DEMO_CONFIG)
    if epochs is not None:
        config['training']['epochs'] = int(epochs)
        config['training']['beta']['schedule'][-1][0] = max(int(epochs), 1)
    results = run(parse_config(config), out_dir, convert=convert, verbose=verbose, print_fn=print_fn)
    print_fn('')
    print_fn(demo_table(results))
    print_fn(f'\nreport: {os.path.join(results["run_dir"], "report.md")}')
    return results
