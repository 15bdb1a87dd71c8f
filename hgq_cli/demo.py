"""``hgq demo``: the built-in end-to-end example on scikit-learn's digits."""

from __future__ import annotations

import argparse

__all__ = ['add_arguments', 'run', 'add_run_options']


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``hgq demo`` and ``hgq run``."""
    parser.add_argument('--out', help='run directory (must be new or empty)')
    parser.add_argument('--epochs', type=int, help='override the number of training epochs')
    parser.add_argument('--no-convert', action='store_true', help='stop after calibration (no hls4ml)')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)


def run(args: argparse.Namespace) -> int:
    from hgq.demo import run_demo

    run_demo(epochs=args.epochs, out_dir=args.out, convert=not args.no_convert)
    return 0
