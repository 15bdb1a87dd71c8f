"""``hgq summary``: the per-layer table of parameters, bitwidths, pruning and EBOPs of a saved model."""

from __future__ import annotations

import argparse

from hgq_cli.common import add_unsafe_argument, load_model

__all__ = ['add_arguments', 'run']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', help='a .keras model with H-layers')
    add_unsafe_argument(parser)


def run(args: argparse.Namespace) -> int:
    from hgq.summary import summary

    summary(load_model(args.model, unsafe=args.unsafe))
    return 0
