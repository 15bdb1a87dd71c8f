"""``hgq synth``: trace a saved model to Verilog, check it bit for bit with iverilog, count LUTs with yosys.

Exit status: 0 when the Verilog equals ``model.predict`` on every check input, 1 when some differ, 2 on errors
(a layer the tracer cannot express, a missing tool, bad arguments).

Examples
--------
::

    hgq synth model.keras -o synth_out/                  # 10,000 probe inputs, half beyond the calibrated range
    hgq synth model.keras -o synth_out/ --check x_test.npy --json
"""

from __future__ import annotations

import argparse
import json

from hgq_cli.common import add_unsafe_argument, load_data, load_model

__all__ = ['add_arguments', 'run']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('model', help='a calibrated .keras model of H-layers')
    parser.add_argument('-o', '--output', required=True, help='output directory (rtl/ and synth.json)')
    check = parser.add_mutually_exclusive_group()
    check.add_argument('--check', help='.npy inputs on which the Verilog must equal model.predict exactly')
    check.add_argument(
        '--n-check', type=int, default=None, help='without --check: number of probe inputs (default 10000)'
    )
    check.add_argument('--no-check', action='store_true', help='skip the Verilog simulation')
    parser.add_argument('--part-family', default='xcup', help='yosys synth_xilinx family (default xcup: UltraScale+)')
    parser.add_argument('--no-yosys', action='store_true', help='stop after the bit-exact check')
    parser.add_argument('--allow-uncalibrated', action='store_true', help='trace a model not calibrated since training')
    parser.add_argument('--json', action='store_true', help='print synth.json instead of progress and a summary')
    add_unsafe_argument(parser)


def _summary(result: dict) -> str:
    def fmt(value: object) -> str:
        return '-' if value is None else f'{value:,}' if isinstance(value, int) else f'{value:,.0f}'

    checked = 'not checked' if result['n_checked'] is None else f'{result["mismatches"]}/{result["n_checked"]:,}'
    return '\n'.join([
        f'LUTs {fmt(result["lut"])} (estimate {fmt(result["estimate_lut"])}), FFs {fmt(result["ff"])}, '
        f'carry chains {fmt(result["carry"])}, DSPs {fmt(result["dsp"])}, depth {fmt(result["depth"])}',
        f'EBOPs {fmt(result["ebops"])}; mismatches {checked}; {result["seconds"]:.1f} s',
    ])  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from hgq.rtl import SimulationError, SynthesisError, synth

    model = load_model(args.model, unsafe=args.unsafe)
    if args.n_check is not None and args.n_check <= 0:
        raise ValueError(f'--n-check must be a positive number of inputs, got {args.n_check}')
    check = False if args.no_check else load_data(args.check) if args.check else args.n_check
    try:
        result = synth(
            model,
            args.output,
            check=check,
            part_family=args.part_family,
            run_yosys=not args.no_yosys,
            allow_uncalibrated=args.allow_uncalibrated,
            verbose=not args.json,
        )
    except (SimulationError, SynthesisError) as err:
        raise ValueError(str(err)) from err
    print(json.dumps(result, indent=1) if args.json else _summary(result))
    return 1 if result['mismatches'] else 0
