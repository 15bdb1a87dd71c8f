"""The ``hgq`` command line: one parser, one registry of sub-commands, one error policy.

This package sits beside :mod:`hgq`, not inside it: importing anything under ``hgq`` runs ``hgq/__init__.py``,
which imports Keras (and so TensorFlow) to register the H-layers for ``keras.models.load_model``. Kept apart,
``hgq --help`` imports neither TensorFlow nor hls4ml.

Adding a sub-command
--------------------
Every sub-command is one module (here, or in the package it belongs to, e.g. ``hgq.synth.cli``) that exposes
two functions and is registered by one line in :data:`COMMANDS`:

- ``add_arguments(parser: argparse.ArgumentParser) -> None`` adds the command's arguments;
- ``run(args: argparse.Namespace) -> int`` does the work and returns the exit status (0 success).

A :class:`Command` entry holds the command name, the dotted module path and a one-line help text. ``hgq --help``
lists the commands from these entries without importing any command module; ``hgq NAME ...`` imports only the
module of ``NAME``. Command modules should import heavy packages (hls4ml, matplotlib, anything under ``hgq``,
which loads TensorFlow) inside ``run`` where they can, so that ``hgq NAME --help`` stays fast too.

Errors
------
A command signals a user error by raising :class:`~hgq_cli.common.UserError` (or any ``ValueError`` such as
``ConfigError``/``ConversionError``/``ReportError``, or an ``OSError`` such as a missing or unwritable file). The
command line prints one line ``hgq NAME: error: <message>`` to stderr and exits with status 2; the message names
the file, key or layer at fault and what was expected. Status 1 is reserved for a completed check that found a
problem (``hgq convert --check`` found outputs that differ from Keras). ``--traceback`` shows the full traceback
instead, for debugging. Any other exception is a bug and propagates with its traceback.

Examples
--------
::

    hgq demo                                  # digits end to end: train, Pareto, convert, bit-exact check
    hgq run configs/jets_mlp.yaml --out runs/jets
    hgq plot pareto runs/jets -o pareto.png
    hgq summary runs/jets/models/model0-epoch0123.keras
    hgq convert model.keras -o prj/ --io-type io_stream --check x_test.npy
    hgq report prj/
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ['Command', 'COMMANDS', 'EXIT_ERROR', 'build_parser', 'main', 'is_user_error']

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class Command(NamedTuple):
    """One sub-command: its name, the module implementing it and its one-line help."""

    name: str
    module: str
    help: str


# The one place where sub-commands are registered (see the module docstring for the convention).
COMMANDS: tuple[Command, ...] = (
    Command('demo', 'hgq_cli.demo', 'digits end to end: train, Pareto front, calibrate, convert, bit-exact check'),
    Command('run', 'hgq_cli.run', 'run a YAML configuration (train, Pareto front, convert, check)'),
    Command('plot', 'hgq_cli.plot', 'plot a Pareto front or the bitwidths of a model as PNG'),
    Command('summary', 'hgq_cli.summary', 'per-layer bits, pruning and EBOPs of a saved model'),
    Command('convert', 'hgq_cli.convert', 'convert a .keras model of H-layers to an hls4ml HLS project'),
    Command('report', 'hgq_cli.report', 'latency, II and resources of a synthesized project, with EBOPs'),
    Command('synth', 'hgq.rtl.command', 'trace a model to Verilog, check it bit-exact (iverilog), LUTs from yosys'),
    Command('sweep', 'hgq_cli.sweep', 'train a grid of configurations on Ray, merge their Pareto fronts, export'),
    Command('allocate', 'hgq.allocate.command', 'fixed bitwidths within an EBOPs budget: HAWQ-V3, OMPQ or cluster'),
)


def _selected(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first argument that is not an option), if any."""
    names = {command.name for command in COMMANDS}
    for arg in argv:
        if not arg.startswith('-'):
            return arg if arg in names else None
    return None


def build_parser(load: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``hgq`` argument parser.

    Parameters
    ----------
    load : sequence of str, optional
        Commands whose modules are imported to add their arguments; default all. The others are listed with
        their help text only (enough for ``hgq --help``).
    """
    parser = argparse.ArgumentParser(prog='hgq', description='High-Granularity Quantization for FPGA firmware.')
    parser.add_argument('--traceback', action='store_true', help='show the full traceback of errors')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for command in COMMANDS:
        command_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        if load is None or command.name in load:
            module = importlib.import_module(command.module)
            module.add_arguments(command_parser)
            command_parser.set_defaults(func=module.run)
    return parser


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` reports bad input (exit status 2, one line) rather than a bug (traceback)."""
    from hgq_cli.common import UserError

    return isinstance(err, UserError | ValueError | OSError)


def _one_line(err: BaseException) -> str:
    text = ' '.join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hgq`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = _selected(argv)
    args = build_parser(load=[selected] if selected else []).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f'hgq {args.command}: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        if args.traceback or not is_user_error(err):
            raise
        print(f'hgq {args.command}: error: {_one_line(err)}', file=sys.stderr)
        return EXIT_ERROR


if __name__ == '__main__':
    sys.exit(main())
