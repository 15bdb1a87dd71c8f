"""The ``hgq`` command line: ``demo``, ``run``, ``plot``, ``summary``, and the converter's ``convert``/``report``.

Examples
--------
::

    hgq demo                                  # digits end to end: train, Pareto, convert, bit-exact check
    hgq run configs/jets_mlp.yaml --out runs/jets
    hgq plot pareto runs/jets -o pareto.png
    hgq plot bits runs/jets/models/model0-epoch0123.keras -o bits.png
    hgq summary runs/jets/models/model0-epoch0123.keras
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hgq.convert.commands import register as register_converter_commands

__all__ = ['main', 'build_parser']


def _demo(args: argparse.Namespace) -> int:
    from hgq.demo import run_demo

    run_demo(epochs=args.epochs, out_dir=args.out, convert=not args.no_convert)
    return 0


def _run(args: argparse.Namespace) -> int:
    from hgq.run import run

    results = run(args.config, args.out, epochs=args.epochs, convert=not args.no_convert, verbose=int(not args.quiet))
    if args.quiet:
        print(Path(results['run_dir']) / 'report.md')
    return 0


def _front_and_history(path: Path) -> tuple[Path, dict | None]:
    """A run directory (with ``pareto/`` and ``history.json``) or a ParetoFront directory."""
    if (path / 'pareto' / 'front.json').is_file():
        history = path / 'history.json'
        return path / 'pareto', json.loads(history.read_text()) if history.is_file() else None
    return path, None


def _plot(args: argparse.Namespace) -> int:
    import hgq.plot

    path = Path(args.path)
    if args.kind == 'pareto':
        front, history = _front_and_history(path)
        out = args.output or (path / 'pareto.png' if path.is_dir() else Path('pareto.png'))
        written = hgq.plot.pareto(front, out, metric=args.metric, history=history)
    else:
        import keras

        model = keras.models.load_model(path)
        written = hgq.plot.bits(model, args.output or path.with_name(f'bits-{path.stem}.png'))
    print(written)
    return 0


def _summary(args: argparse.Namespace) -> int:
    import keras

    import hgq

    hgq.summary(keras.models.load_model(args.model))
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', help='run directory (must be new or empty)')
    parser.add_argument('--epochs', type=int, help='override the number of training epochs')
    parser.add_argument('--no-convert', action='store_true', help='stop after calibration (no hls4ml)')


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog='hgq', description='High-Granularity Quantization for FPGA firmware.')
    sub = parser.add_subparsers(dest='command', required=True)

    demo = sub.add_parser('demo', help='digits end to end: train, Pareto front, calibrate, convert, bit-exact check')
    _add_run_options(demo)
    demo.set_defaults(func=_demo)

    run = sub.add_parser('run', help='run a YAML configuration (train, Pareto front, convert, check)')
    run.add_argument('config', help='YAML run configuration, e.g. configs/digits_mlp.yaml')
    _add_run_options(run)
    run.add_argument('--quiet', action='store_true', help='no progress output; print the report path at the end')
    run.set_defaults(func=_run)

    plot = sub.add_parser('plot', help='plot a Pareto front or the bitwidths of a model as PNG')
    plot.add_argument('kind', choices=('pareto', 'bits'), help='pareto: metric vs EBOPs; bits: per-layer histograms')
    plot.add_argument('path', help='pareto: a run or ParetoFront directory; bits: a .keras model')
    plot.add_argument('-o', '--output', help='PNG file to write')
    plot.add_argument('--metric', default='val_accuracy', help='y axis of the Pareto plot (default val_accuracy)')
    plot.set_defaults(func=_plot)

    summary = sub.add_parser('summary', help='per-layer bits, pruning and EBOPs of a saved model')
    summary.add_argument('model', help='a .keras model with H-layers')
    summary.set_defaults(func=_summary)

    register_converter_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hgq`` command."""
    from hgq.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f'hgq {args.command}: error: {err}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
