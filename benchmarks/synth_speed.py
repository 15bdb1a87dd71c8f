"""Time ``hgq.synth`` (trace, Verilog, iverilog check, yosys) on a 16-64-32-32-5 MLP with up to 6-bit weights.

The model has random per-element bitwidths (activations -1..4 fractional bits, weights 1..4 fractional bits, so
weights span at most 6 bits) and is calibrated on normal samples; the check uses 1,000 probe inputs (half beyond
the calibrated range). Prints the time of every step and the machine's load average (the box may be shared).

    python benchmarks/synth_speed.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import keras
import numpy as np

import hgq
from hgq.layers import HDense, HQuantize
from hgq.quantizer import ActivationQuantizer


def build(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((16,)),
        HQuantize(),
        HDense(64, activation='relu'),
        HDense(32, activation='relu'),
        HDense(32, activation='relu'),
        HDense(5),
    ])  # fmt: skip
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for q in layer.quantizers:
            low, high = (-1, 4) if isinstance(q, ActivationQuantizer) else (1, 4)
            q.f.assign(rng.integers(low, high + 1, q.f.shape).astype('float32'))
    hgq.calibrate(model, rng.normal(size=(4000, 16)).astype('float32'))
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=None, help='output directory (default: a temporary one)')
    parser.add_argument('--n-check', type=int, default=1000)
    args = parser.parse_args()
    model = build()
    out = args.out or tempfile.mkdtemp(prefix='hgq_synth_speed_')
    load_before = os.getloadavg()
    result = hgq.synth(model, out, check=args.n_check)
    summary = {k: result[k] for k in ('lut', 'carry', 'estimate_lut', 'ebops', 'mismatches', 'n_checked', 'seconds')}
    summary['step_seconds'] = result['step_seconds']
    summary['trace_verilog_yosys_seconds'] = round(
        sum(result['step_seconds'][k] for k in ('trace', 'write_verilog', 'yosys')), 1
    )
    summary['load_average_before_after'] = [round(load_before[0], 1), round(os.getloadavg()[0], 1)]
    summary['cpus'] = os.cpu_count()
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    main()
