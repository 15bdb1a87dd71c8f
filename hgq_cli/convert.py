"""``hgq convert``: load a ``.keras`` model, optionally calibrate it, convert it to an hls4ml project, and with
``--check`` compile the C simulation and compare it with Keras bit for bit.

Exit status: 0 success, 1 ``--check`` found outputs that differ from Keras, 2 bad input (see :mod:`hgq_cli`).
"""

from __future__ import annotations

import argparse

from hgq.conversion import BACKENDS, IO_TYPES, STRATEGIES, ConversionSettings
from hgq_cli.common import add_unsafe_argument, load_data, load_model

__all__ = ['add_arguments', 'run', 'EXIT_MISMATCH']

EXIT_MISMATCH = 1
DEFAULTS = ConversionSettings()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', help='a .keras model of H-layers')
    parser.add_argument('-o', '--output-dir', required=True, help='project directory to write')
    parser.add_argument('--backend', help=f'one of {BACKENDS} (default {DEFAULTS.backend})')
    parser.add_argument('--part', help=f'Xilinx part (default {DEFAULTS.part})')
    period_help = f'target clock period in ns (default {DEFAULTS.clock_period})'
    parser.add_argument('--clock-period', type=float, help=period_help)
    parser.add_argument('--io-type', help=f'one of {IO_TYPES} (default {DEFAULTS.io_type})')
    parser.add_argument('--strategy', help=f'one of {STRATEGIES} (default {DEFAULTS.strategy})')
    parser.add_argument('--project-name', help=f'top function name (default {DEFAULTS.project_name})')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace an hls4ml project of another name in OUTPUT_DIR (its content is deleted first)',
    )
    parser.add_argument('--calibration', help='.npy/.npz inputs to calibrate the model with before converting')
    parser.add_argument(
        '--allow-uncalibrated', action='store_true', help='convert even if WRAP quantizers are not calibrated'
    )
    parser.add_argument('--compile', action='store_true', help='compile the C simulation library (g++)')
    parser.add_argument(
        '--check', metavar='DATA', help='.npy/.npz inputs: compile, run, count outputs that differ from Keras'
    )
    add_unsafe_argument(parser)


def settings_from_args(args: argparse.Namespace) -> ConversionSettings:
    """The conversion settings given on the command line, the others at their defaults."""
    given = {name: getattr(args, name) for name in ConversionSettings.field_names()}
    return ConversionSettings(**{name: value for name, value in given.items() if value is not None})


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    calibration = load_data(args.calibration) if args.calibration else None
    check = load_data(args.check) if args.check else None
    model = load_model(args.model, unsafe=args.unsafe)

    import hgq
    from hgq.conversion import check_bit_exact

    if calibration is not None:
        hgq.calibrate(model, calibration)
    hls_model = hgq.to_hls(
        model, args.output_dir, settings, allow_uncalibrated=args.allow_uncalibrated, overwrite=args.overwrite
    )
    print(
        f'wrote {args.output_dir} ({settings.backend}, {settings.io_type}, {settings.strategy}); '
        f'EBOPs {hgq.ebops(model):.6g}'
    )
    if not (args.compile or check is not None):
        return 0
    hls_model.compile()
    print('compiled the C simulation library')
    if check is None:
        return 0
    result, _ = check_bit_exact(model, hls_model, check, batch_size=4096)
    print(result.describe())
    return 0 if result.exact else EXIT_MISMATCH
