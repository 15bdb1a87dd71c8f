"""The ``hgq convert`` and ``hgq report`` sub-commands (registered into :mod:`hgq.cli` by :func:`register`).

Examples
--------
::

    hgq convert model.keras -o prj/ --backend Vitis --part xcvu13p-flga2577-2-e --clock-period 5 \\
        --io-type io_parallel --calibration x_train.npy --check x_test.npy
    hgq report prj/            # latency, II, LUT/FF/DSP/BRAM next to the model's EBOPs
    hgq report prj/ --json

Exit codes: 0 success, 1 ``--check`` found outputs that differ from Keras, 2 error (missing file, uncalibrated
model, unsupported layer, bad setting, missing reports).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from hgq.convert.project import BACKENDS, IO_TYPES, STRATEGIES, ConversionError

__all__ = ['register', 'convert_command', 'report_command', 'load_data', 'count_mismatches']

EXIT_MISMATCH = 1
EXIT_ERROR = 2


def load_data(path: str | Path) -> np.ndarray | list[np.ndarray]:
    """Inputs from ``.npy`` (one input) or ``.npz`` (one array per model input, in file order)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'data file {path} does not exist')
    if path.suffix == '.npy':
        return np.load(path)
    if path.suffix == '.npz':
        with np.load(path) as arrays:
            values = [arrays[name] for name in arrays.files]
        return values[0] if len(values) == 1 else values
    raise ValueError(f'data file {path} must be .npy (one input) or .npz (one array per input)')


def _as_list(outputs: Any) -> list[np.ndarray]:
    return [np.asarray(o) for o in outputs] if isinstance(outputs, list | tuple) else [np.asarray(outputs)]


def count_mismatches(keras_outputs: Any, hls_outputs: Any) -> tuple[int, int]:
    """``(samples with any differing output, differing output values)``, comparing exactly.

    Examples
    --------
    >>> count_mismatches(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, 2.0, 3.0, 4.5]))
    (1, 1)
    """
    bad_samples, bad_values = None, 0
    for k, h in zip(_as_list(keras_outputs), _as_list(hls_outputs), strict=True):
        k = k.astype(np.float64)
        h = np.asarray(h, dtype=np.float64).reshape(k.shape)
        diff = (k != h).reshape(len(k), -1)
        bad_values += int(diff.sum())
        bad_samples = diff.any(axis=1) if bad_samples is None else bad_samples | diff.any(axis=1)
    return int(bad_samples.sum()), bad_values


def _as_float64(data: Any) -> Any:
    return [np.asarray(d, dtype=np.float64) for d in data] if isinstance(data, list) else data.astype(np.float64)


def convert_command(args: argparse.Namespace) -> int:
    """``hgq convert``: load, optionally calibrate, convert; with ``--check``, compile and compare with Keras."""
    import keras

    import hgq

    model_path = Path(args.model)
    if not model_path.is_file():
        raise FileNotFoundError(f'model file {model_path} does not exist')
    model = keras.saving.load_model(model_path, compile=False)
    if args.calibration:
        hgq.calibrate(model, load_data(args.calibration))
    hls_model = hgq.to_hls(
        model,
        args.output_dir,
        backend=args.backend,
        part=args.part,
        clock_period=args.clock_period,
        io_type=args.io_type,
        strategy=args.strategy,
        project_name=args.project_name,
        allow_uncalibrated=args.allow_uncalibrated,
    )
    print(f'wrote {args.output_dir} ({args.backend}, {args.io_type}, {args.strategy}); EBOPs {hgq.ebops(model):.6g}')
    if not (args.compile or args.check):
        return 0
    hls_model.compile()
    print('compiled the C simulation library')
    if not args.check:
        return 0
    data = load_data(args.check)
    expected = model.predict(data, batch_size=4096, verbose=0)
    samples, values = count_mismatches(expected, hls_model.predict(_as_float64(data)))
    total = len(data[0] if isinstance(data, list) else data)
    print(f'bit-exact check: {samples} of {total} samples differ from Keras ({values} output values)')
    return EXIT_MISMATCH if samples else 0


def report_command(args: argparse.Namespace) -> int:
    """``hgq report``: synthesis results of a project next to the model's EBOPs."""
    from hgq.report import format_json, format_table, read_report

    report = read_report(args.project_dir)
    print(format_json(report) if args.json else format_table(report))
    return 0


def _guarded(command: Any, name: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from hgq.report import ReportError

        try:
            return command(args)
        except (ConversionError, ReportError, FileNotFoundError, ValueError) as err:
            print(f'hgq {name}: error: {err}', file=sys.stderr)
            return EXIT_ERROR

    return run


def register(subparsers: Any) -> None:
    """Add the ``convert`` and ``report`` sub-commands to the ``hgq`` argument parser."""
    convert = subparsers.add_parser('convert', help='convert a .keras model of H-layers to an hls4ml HLS project')
    convert.add_argument('model', help='a .keras model of H-layers')
    convert.add_argument('-o', '--output-dir', required=True, help='project directory to write')
    convert.add_argument('--backend', default='Vitis', help=f'one of {BACKENDS} (default Vitis)')
    convert.add_argument('--part', default='xcvu13p-flga2577-2-e', help='Xilinx part (default xcvu13p-flga2577-2-e)')
    convert.add_argument('--clock-period', type=float, default=5.0, help='target clock period in ns (default 5)')
    convert.add_argument('--io-type', default='io_parallel', help=f'one of {IO_TYPES} (default io_parallel)')
    convert.add_argument('--strategy', default='Latency', help=f'one of {STRATEGIES} (default Latency)')
    convert.add_argument('--project-name', default='myproject', help='top function name (default myproject)')
    convert.add_argument('--calibration', help='.npy/.npz inputs to calibrate the model with before converting')
    convert.add_argument(
        '--allow-uncalibrated', action='store_true', help='convert even if WRAP quantizers are not calibrated'
    )
    convert.add_argument('--compile', action='store_true', help='compile the C simulation library (g++)')
    convert.add_argument(
        '--check', metavar='DATA', help='.npy/.npz inputs: compile, run, count outputs that differ from Keras'
    )
    convert.set_defaults(func=_guarded(convert_command, 'convert'))

    report = subparsers.add_parser('report', help='latency, II and resources of a synthesized project, with EBOPs')
    report.add_argument('project_dir', help='project directory written by hgq convert / hgq.to_hls')
    report.add_argument('--json', action='store_true', help='print JSON instead of a table')
    report.set_defaults(func=_guarded(report_command, 'report'))
