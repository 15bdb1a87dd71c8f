"""``hgq report``: synthesis results of a project (latency, II, LUT/FF/DSP/BRAM) next to the model's EBOPs."""

from __future__ import annotations

import argparse

__all__ = ['add_arguments', 'run']


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('project_dir', help='project directory written by hgq convert / hgq.to_hls')
    parser.add_argument('--json', action='store_true', help='print JSON instead of a table')


def run(args: argparse.Namespace) -> int:
    from hgq.report import format_json, format_table, read_report

    report = read_report(args.project_dir)
    print(format_json(report) if args.json else format_table(report))
    return 0
