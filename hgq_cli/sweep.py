"""``hgq sweep``: train a grid of run configurations on Ray, merge their Pareto fronts, export the best models.

Exit status: 0 when every trial and every export succeeded and the converted models equal Keras bit for bit;
1 when the sweep completed but some trial or export failed (after its retry) or some converted model differs from
Keras; 2 on bad input (configuration, grid, missing Ray).

Examples
--------
::

    hgq sweep configs/digits_mlp.yaml --grid seed=0,1,2 --grid model.layers.1.units=16,32 --out sweeps/digits
    hgq sweep configs/jets_mlp.yaml --grid seed=0,1,2,3 --out /nfs/sweeps/jets --address auto --cpus-per-trial 4
"""

from __future__ import annotations

import argparse

from hgq_cli.common import UserError

__all__ = ['add_arguments', 'run']


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('config', help='YAML run configuration, e.g. configs/digits_mlp.yaml')
    parser.add_argument(
        '--grid',
        action='append',
        default=[],
        metavar='KEY=V1,V2,...',
        help='values of a dotted key of the configuration, e.g. seed=0,1,2 or model.layers.2.units=16,32 '
        '(values are YAML; repeat --grid for more keys: every combination is one trial)',
    )
    parser.add_argument('--out', required=True, help='sweep directory; rerunning the command resumes it')
    parser.add_argument(
        '--address',
        help='Ray cluster to run on: auto (the cluster of this node) or ray://host:10001; default a '
        'local Ray on this machine. The sweep directory must be on storage that every node mounts at the same path',
    )
    parser.add_argument('--num-cpus', type=_positive_int, help='CPUs of the local Ray (default all)')
    parser.add_argument('--max-parallel', type=_positive_int, help='most trials running at once (default: as '
                        'many as the Ray resources allow)')  # fmt: skip
    parser.add_argument('--cpus-per-trial', type=float, default=1.0, help='Ray CPUs per trial (default 1)')
    parser.add_argument('--gpus-per-trial', type=float, default=0.0, help='Ray GPUs per trial (default 0)')
    parser.add_argument('--retries', type=int, default=1, help='runs again of a failed trial (default 1)')
    parser.add_argument('--no-convert', action='store_true', help='stop after calibrating the selected models')


def run(args: argparse.Namespace) -> int:
    from hgq.sweep import RAY_MISSING, sweep

    try:
        results = sweep(
            args.config,
            args.grid,
            args.out,
            address=args.address,
            max_parallel=args.max_parallel,
            cpus_per_trial=args.cpus_per_trial,
            gpus_per_trial=args.gpus_per_trial,
            convert=not args.no_convert,
            retries=args.retries,
            num_cpus=args.num_cpus,
        )
    except ImportError as err:
        if str(err) == RAY_MISSING:
            raise UserError(RAY_MISSING) from None
        raise
    differs = any(m.get('mismatches') or m.get('synth', {}).get('mismatches') for m in results['models'])
    return 0 if results['status'] == 'complete' and not differs else 1
