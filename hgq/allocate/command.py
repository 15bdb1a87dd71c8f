"""``hgq allocate``: fixed bitwidths for a trained model within an EBOPs budget, in seconds, without training.

Examples
--------
::

    hgq allocate float_model.keras --method hawq_v3 --budget-ebops 5000 --data x_train.npy --targets y_train.npy \\
        -o allocated.keras
    hgq allocate float_model.keras --method cluster --bits 2 --data x_train.npy -o ternary.keras
"""

from __future__ import annotations

import argparse

__all__ = ['add_arguments', 'run']

METHOD_CHOICES = ('hawq_v3', 'ompq', 'cluster')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hgq allocate``."""
    from hgq_cli.common import add_unsafe_argument

    parser.add_argument('model', help='a trained .keras model: float (Dense/Conv/BatchNorm/pooling) or H-layers')
    parser.add_argument('--method', required=True, choices=METHOD_CHOICES, help='allocation method')
    parser.add_argument('--budget-ebops', type=float, help='upper bound on EBOPs (required by hawq_v3 and ompq)')
    parser.add_argument('--data', required=True, help='calibration inputs (.npy), typically the training set')
    parser.add_argument('--targets', help='targets of --data (.npy): HAWQ-V3 loss and fine-tuning')
    parser.add_argument('-o', '--output', required=True, help='the allocated H-model (.keras) to write')
    parser.add_argument('--bits', type=int, nargs='+', help='weight bit options (default: per method)')
    parser.add_argument('--act-bits', type=int, nargs='+', help='input bit options (default: per method)')
    parser.add_argument('--granularity', choices=('tensor', 'channel'), default='tensor', help='weight formats')
    parser.add_argument('--cluster-size', type=int, default=4, help='output channels per shared scale (cluster)')
    parser.add_argument('--finetune-epochs', type=int, default=0, help='fine-tuning epochs with frozen formats')
    parser.add_argument('--seed', type=int, default=0, help='seed of the sensitivity sample')
    parser.add_argument('--quiet', action='store_true', help='no progress output')
    add_unsafe_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Load, allocate, save; prints the per-layer choices and the EBOPs."""
    from pathlib import Path

    import numpy as np

    from hgq.allocate import allocate
    from hgq_cli.common import UserError, load_data, load_model

    output = Path(args.output)
    if output.suffix != '.keras':
        raise UserError(f'--output {output} must end in .keras')
    if not output.parent.is_dir():
        raise UserError(f'--output {output}: directory {output.parent} does not exist')
    model = load_model(args.model, args.unsafe)
    x = load_data(args.data)
    if isinstance(x, list):
        if len(x) != 1:
            raise UserError(f'--data {args.data}: the model has one input, the file holds {len(x)} arrays')
        x = x[0]
    y = None
    if args.targets:
        y = load_data(args.targets)
        y = y[0] if isinstance(y, list) else y
    model = allocate(
        model,
        np.asarray(x),
        y,
        method=args.method,
        budget_ebops=args.budget_ebops,
        bits=args.bits,
        act_bits=args.act_bits,
        granularity=args.granularity,
        cluster_size=args.cluster_size,
        finetune_epochs=args.finetune_epochs,
        seed=args.seed,
        verbose=0 if args.quiet else 1,
    )
    model.save(output)
    if not args.quiet:
        print(f'wrote {output}')
    return 0
