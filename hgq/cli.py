"""The ``hgq`` command line: ``hgq demo``, and sub-commands registered by the modules that own them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ['main', 'build_parser']


def _demo(args: argparse.Namespace) -> int:
    from hgq.demo import run_demo

    return run_demo(epochs=args.epochs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog='hgq', description='High-Granularity Quantization for FPGA firmware.')
    sub = parser.add_subparsers(dest='command', required=True)
    demo = sub.add_parser('demo', help='train, calibrate and report a small model on the digits data set')
    demo.add_argument('--epochs', type=int, default=60, help='training epochs (default: 60)')
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hgq`` command."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
