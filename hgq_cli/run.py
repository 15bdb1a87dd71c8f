"""``hgq run``: train, keep the Pareto front, calibrate, convert and check, from a YAML configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

from hgq_cli.demo import add_run_options

__all__ = ['add_arguments', 'run']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('config', help='YAML run configuration, e.g. configs/digits_mlp.yaml')
    add_run_options(parser)
    parser.add_argument('--quiet', action='store_true', help='no progress output; print the report path at the end')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace the run in --out (complete, failed or killed) instead of refusing a non-empty directory',
    )


def run(args: argparse.Namespace) -> int:
    from hgq.run import run as run_config

    results = run_config(
        args.config,
        args.out,
        epochs=args.epochs,
        convert=not args.no_convert,
        verbose=int(not args.quiet),
        overwrite=args.overwrite,
    )
    if args.quiet:
        print(Path(results['run_dir']) / 'report.md')
    return 0
