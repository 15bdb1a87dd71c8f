"""``hgq plot pareto|bits``: a Pareto front (metric vs EBOPs) or the bitwidth histograms of a model, as PNG."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hgq_cli.common import UserError, add_unsafe_argument, load_model

__all__ = ['add_arguments', 'run']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('kind', choices=('pareto', 'bits'), help='pareto: metric vs EBOPs; bits: per-layer histograms')
    parser.add_argument('path', help='pareto: a run or ParetoFront directory; bits: a .keras model')
    parser.add_argument('-o', '--output', help='PNG file to write')
    parser.add_argument('--metric', default='val_accuracy', help='y axis of the Pareto plot (default val_accuracy)')
    add_unsafe_argument(parser)


def _front_and_history(path: Path) -> tuple[Path, dict | None]:
    """A run directory (with ``pareto/`` and ``history.json``) or a ParetoFront directory."""
    if (path / 'pareto' / 'front.json').is_file():
        history = path / 'history.json'
        try:
            return path / 'pareto', json.loads(history.read_text()) if history.is_file() else None
        except json.JSONDecodeError as err:
            raise UserError(f'{history} is not valid JSON ({err})') from None
    return path, None


def run(args: argparse.Namespace) -> int:
    import hgq.plot

    path = Path(args.path)
    if args.kind == 'pareto':
        front, history = _front_and_history(path)
        out = args.output or (path / 'pareto.png' if path.is_dir() else Path('pareto.png'))
        written = hgq.plot.pareto(front, out, metric=args.metric, history=history)
    else:
        model = load_model(path, unsafe=args.unsafe)
        written = hgq.plot.bits(model, args.output or path.with_name(f'bits-{path.stem}.png'))
    print(written)
    return 0
