"""Train HGQ models over a beta sweep and measure each with ``hgq.synth``: Verilog checked bit for bit, yosys LUTs.

The models are the benchmark models of ``train_hgq.py`` (same data split, size, optimizer, epochs and batch size)
plus a small CNN on digits. Each trained and calibrated model is saved to ``benchmarks/work/synth/<family>/`` and
``hgq.synth`` writes its Verilog and ``synth.json`` next to it; one line per model is appended to
``benchmarks/results/synth_models.jsonl`` (family, beta, seed, accuracy, EBOPs, yosys LUTs, da4ml's estimate,
mismatches, times, and the terms of ``hgq.cost.cost_terms``). ``fit_cost.py`` fits the hardware-cost estimate on
these lines.

Run in the hgq venv (needs yosys and iverilog)::

    python benchmarks/prepare_data.py --fashion
    nice python benchmarks/synth_models.py --family digits_mlp --seeds 0 1
    nice python benchmarks/synth_models.py --family fashion_mlp --betas 3e-6 1e-5 3e-5 1e-4 3e-4 --seeds 0
    nice python benchmarks/synth_models.py --family digits_cnn --betas 1e-6 1e-5 1e-4 3e-4 --seeds 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import keras
import numpy as np
from bench_common import BETAS, RESULTS_DIR, SETTINGS, WORK_DIR, load_split, seed_everything

import hgq
from hgq.cost import cost_terms
from hgq.layers import HConv2D, HDense, HMaxPooling2D, HQuantize

FAMILIES = {
    'digits_mlp': 'digits',
    'fashion_mlp': 'fashion_mnist',
    'digits_cnn': 'digits',
}
RESULTS_FILE = RESULTS_DIR / 'synth_models.jsonl'


def build(family: str, n_in: int, hidden: int, n_out: int, beta: float) -> keras.Model:
    if family == 'digits_cnn':
        return keras.Sequential([
            keras.Input((8, 8, 1)),
            HQuantize(beta=beta),
            HConv2D(6, 3, activation='relu', beta=beta),
            HMaxPooling2D(2, beta=beta),
            keras.layers.Flatten(),
            HDense(n_out, beta=beta),
        ])  # fmt: skip
    return keras.Sequential([
        keras.Input((n_in,)),
        HQuantize(beta=beta),
        HDense(hidden, activation='relu', beta=beta),
        HDense(n_out, beta=beta),
    ])  # fmt: skip


def fit(model: keras.Model, x: np.ndarray, y: np.ndarray, settings: dict) -> float:
    model.compile(
        keras.optimizers.Adam(settings['learning_rate']),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=['accuracy'],
    )
    start = time.perf_counter()
    model.fit(x, y, epochs=settings['epochs'], batch_size=settings['batch_size'], shuffle=True, verbose=0)
    return time.perf_counter() - start


def run_one(family: str, beta: float, seed: int, data: dict, settings: dict, n_check: int) -> dict:
    seed_everything(seed)
    x_train, x_test = data['x_train'], data['x_test']
    if family == 'digits_cnn':
        x_train, x_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
    n_classes = int(data['y_train'].max()) + 1
    model = build(family, x_train.shape[1], settings['hidden'], n_classes, beta)
    train_s = fit(model, x_train, data['y_train'], settings)
    hgq.calibrate(model, x_train)
    acc = float(np.mean(np.argmax(model.predict(x_test, batch_size=4096, verbose=0), -1) == data['y_test']))
    stem = f'beta{beta:g}_seed{seed}'
    out = WORK_DIR / 'synth' / family / stem
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / 'model.keras')
    terms = cost_terms(model)  # here, not from the saved file: it must not depend on a later load
    result = hgq.synth(model, out, check=n_check, verbose=True)
    row = {
        'family': family,
        'beta': beta,
        'seed': seed,
        'model': str((out / 'model.keras').relative_to(WORK_DIR.parent)),
        'test_accuracy': acc,
        'train_seconds': round(train_s, 1),
        **{k: result[k] for k in ('ebops', 'lut', 'ff', 'carry', 'dsp', 'inv', 'depth', 'estimate_lut')},
        **{k: result[k] for k in ('latency_estimate', 'mismatches', 'n_checked', 'seconds', 'step_seconds')},
        'terms': terms,
    }
    with open(RESULTS_FILE, 'a') as f:
        f.write(json.dumps(row) + '\n')
    checked = f'{row["mismatches"]}/{row["n_checked"]}'
    print(f'{family} beta={beta:g} seed={seed}: acc {acc:.4f}, EBOPs {row["ebops"]:.0f}, LUT {row["lut"]}, '
          f'estimate {row["estimate_lut"]:.0f}, mismatches {checked}', flush=True)  # fmt: skip
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--family', required=True, choices=sorted(FAMILIES))
    parser.add_argument('--betas', type=float, nargs='+', default=list(BETAS))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--n-check', type=int, default=2000, help='probe inputs for the Verilog check')
    args = parser.parse_args()
    dataset = FAMILIES[args.family]
    settings = dict(SETTINGS[dataset])
    if args.epochs is not None:
        settings['epochs'] = args.epochs
    data = load_split(dataset)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for beta in args.betas:
            run_one(args.family, beta, seed, data, settings, args.n_check)


if __name__ == '__main__':
    Path(WORK_DIR).mkdir(parents=True, exist_ok=True)
    main()
