"""Train HGQ models over a beta sweep and measure each with ``hgq.synth``: Verilog checked bit for bit, yosys LUTs.

The models are the benchmark MLPs of ``train_hgq.py`` (same data split, size, optimizer, epochs and batch size)
and small CNNs (digits: ``HConv2D(6, 3) -> HMaxPooling2D(2) -> HDense``; Fashion-MNIST: a strided
``HConv2D(4, 3, strides=2) -> HMaxPooling2D(2) -> HDense``, few filters so that yosys can flatten it), and
``digits_mlp_sat``: the digits MLP with unsigned saturating quantizers that round ties to even (``SAT``,
``RND_CONV``, as QKeras's ``quantized_relu``) whose integer and fractional bits are learned. Each
trained and calibrated model is saved to ``benchmarks/work/synth/<family>/`` and ``hgq.synth`` writes its Verilog
and ``synth.json`` next to it; one line per model is appended to ``benchmarks/results/synth_models.jsonl``
(family, beta, seed, accuracy, EBOPs, yosys LUTs, da4ml's estimate, mismatches, times, and the terms of
``hgq.cost.cost_terms``). ``fit_cost.py`` fits the hardware-cost estimate on these lines.

Run in the hgq venv (needs yosys and iverilog)::

    python benchmarks/prepare_data.py --fashion
    nice python benchmarks/synth_models.py --family digits_mlp --seeds 0 1
    nice python benchmarks/synth_models.py --family digits_mlp_sat --betas 1e-4 1e-5 3e-6 --seeds 0
    nice python benchmarks/synth_models.py --family fashion_mlp --betas 3e-6 1e-5 3e-5 1e-4 3e-4 --seeds 0
    nice python benchmarks/synth_models.py --family digits_cnn --betas 1e-6 1e-5 1e-4 3e-4 --seeds 0
    nice python benchmarks/synth_models.py --family fashion_cnn --betas 1e-4 3e-5 1e-5 --seeds 0

``--reuse`` synthesizes a model already saved under ``work/synth/<family>/`` instead of training it again;
``--saved FILE ...`` synthesizes given ``.keras`` files (e.g. the ``hgq demo`` models) under ``--family``.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
    'digits_mlp_sat': 'digits',
    'fashion_mlp': 'fashion_mnist',
    'digits_cnn': 'digits',
    'fashion_cnn': 'fashion_mnist',
    'demo': 'digits',
}
IMAGE_SHAPES = {'digits': (8, 8, 1), 'fashion_mnist': (28, 28, 1)}
RESULTS_FILE = RESULTS_DIR / 'synth_models.jsonl'
#: activation quantizer of ``digits_mlp_sat`` (its inputs are >= 0: data in [0, 1], relu outputs)
SATURATING = {'overflow_mode': 'SAT', 'round_mode': 'RND_CONV', 'signed': False, 'i_init': 2.0}


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
    if family == 'fashion_cnn':
        return keras.Sequential([
            keras.Input((28, 28, 1)),
            HQuantize(beta=beta),
            HConv2D(4, 3, strides=2, activation='relu', beta=beta),
            HMaxPooling2D(2, beta=beta),
            keras.layers.Flatten(),
            HDense(n_out, beta=beta),
        ])  # fmt: skip
    if family == 'digits_mlp_sat':  # unsigned, saturating, ties to even (QKeras's quantized_relu), learned widths
        return keras.Sequential([
            keras.Input((n_in,)),
            HQuantize(beta=beta, input_quantizer=SATURATING),
            HDense(hidden, activation='relu', beta=beta, input_quantizer=SATURATING),
            HDense(n_out, beta=beta, input_quantizer=SATURATING),
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


def _inputs(model: keras.Model, x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, *(int(d) for d in model.inputs[0].shape[1:]))


def measure(family: str, beta: float | None, seed: int, model: keras.Model, out: Path, data: dict, n_check: int,
            train_s: float | None = None) -> dict:  # fmt: skip
    """``hgq.synth`` on a calibrated model; appends one line to ``RESULTS_FILE``."""
    x_test = _inputs(model, data['x_test'])
    acc = float(np.mean(np.argmax(model.predict(x_test, batch_size=4096, verbose=0), -1) == data['y_test']))
    terms = cost_terms(model)  # here, not from the saved file: it must not depend on a later load
    result = hgq.synth(model, out, check=n_check, verbose=True)
    row = {
        'family': family,
        'beta': beta,
        'seed': seed,
        'model': str((out / 'model.keras').relative_to(WORK_DIR.parent)),
        'test_accuracy': acc,
        'train_seconds': None if train_s is None else round(train_s, 1),
        **{k: result[k] for k in ('ebops', 'lut', 'ff', 'carry', 'dsp', 'inv', 'depth', 'estimate_lut')},
        **{k: result[k] for k in ('latency_estimate', 'mismatches', 'n_checked', 'seconds', 'step_seconds')},
        'terms': terms,
    }
    with open(RESULTS_FILE, 'a') as f:
        f.write(json.dumps(row) + '\n')
    checked = f'{row["mismatches"]}/{row["n_checked"]}'
    print(f'{family} beta={beta} seed={seed}: acc {acc:.4f}, EBOPs {row["ebops"]:.0f}, LUT {row["lut"]}, '
          f'estimate {row["estimate_lut"]:.0f}, mismatches {checked}', flush=True)  # fmt: skip
    return row


def run_one(family: str, beta: float, seed: int, data: dict, settings: dict, n_check: int, reuse: bool) -> dict:
    out = WORK_DIR / 'synth' / family / f'beta{beta:g}_seed{seed}'
    if reuse and (out / 'model.keras').is_file():
        print(f'{family} beta={beta:g} seed={seed}: reusing {out / "model.keras"}', flush=True)
        model = keras.models.load_model(out / 'model.keras', compile=False)
        return measure(family, beta, seed, model, out, data, n_check)
    seed_everything(seed)
    n_classes = int(data['y_train'].max()) + 1
    model = build(family, data['x_train'].shape[1], settings['hidden'], n_classes, beta)
    x_train = _inputs(model, data['x_train'])
    train_s = fit(model, x_train, data['y_train'], settings)
    hgq.calibrate(model, x_train)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / 'model.keras')
    return measure(family, beta, seed, model, out, data, n_check, train_s)


def run_saved(family: str, path: Path, data: dict, n_check: int) -> dict:
    """Copy a saved, calibrated model to ``work/synth/<family>/<stem>/`` and measure it."""
    out = WORK_DIR / 'synth' / family / path.stem
    out.mkdir(parents=True, exist_ok=True)
    if path.resolve() != (out / 'model.keras').resolve():
        shutil.copyfile(path, out / 'model.keras')
    model = keras.models.load_model(out / 'model.keras', compile=False)
    return measure(family, None, 0, model, out, data, n_check)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--family', required=True, choices=sorted(FAMILIES))
    parser.add_argument('--betas', type=float, nargs='+', default=list(BETAS))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0])
    parser.add_argument('--epochs', type=int, default=None)
    parser.add_argument('--n-check', type=int, default=2000, help='probe inputs for the Verilog check')
    parser.add_argument('--reuse', action='store_true', help='synthesize models already saved instead of training')
    parser.add_argument('--saved', type=Path, nargs='+', help='synthesize these calibrated .keras files instead')
    args = parser.parse_args()
    dataset = FAMILIES[args.family]
    settings = dict(SETTINGS[dataset])
    if args.epochs is not None:
        settings['epochs'] = args.epochs
    data = load_split(dataset)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    for path in args.saved or []:
        run_saved(args.family, path, data, args.n_check)
    if args.saved:
        return
    for seed in args.seeds:
        for beta in args.betas:
            run_one(args.family, beta, seed, data, settings, args.n_check, args.reuse)


if __name__ == '__main__':
    Path(WORK_DIR).mkdir(parents=True, exist_ok=True)
    main()
