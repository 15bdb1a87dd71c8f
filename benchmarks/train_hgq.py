"""Train this project's HGQ on a benchmark data set with a sweep of ``beta`` and dump every model.

Run in the hgq virtual environment (``/work/venv``)::

    python benchmarks/train_hgq.py --dataset digits --betas 0 1e-6 3e-6 1e-5 3e-5

Model: ``HQuantize -> HDense(hidden, relu) -> HDense(10)``. After training, ``hgq.calibrate`` sets the exact
integer bits from the training set; the dump holds the quantized kernels and the width ``k + i + f`` of every
input element of each ``HDense`` (its input quantizer after calibration). A float Keras model of the same shape
is dumped too, as the accuracy reference.
"""

from __future__ import annotations

import time

import keras
import numpy as np
from bench_common import BETAS, dump_path, save_dump, seed_everything, sweep_parser, sweep_settings

import hgq
from hgq.layers import HDense, HQuantize


def build(n_in: int, hidden: int, n_out: int, beta: float) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((n_in,)),
            HQuantize(),
            HDense(hidden, activation='relu', beta=beta),
            HDense(n_out, beta=beta),
        ]
    )


def build_float(n_in: int, hidden: int, n_out: int) -> keras.Model:
    return keras.Sequential(
        [keras.Input((n_in,)), keras.layers.Dense(hidden, activation='relu'), keras.layers.Dense(n_out)]
    )


def fit(model: keras.Model, data: dict[str, np.ndarray], settings: dict) -> float:
    """Compile and train; returns the wall time in seconds."""
    model.compile(
        keras.optimizers.Adam(settings['learning_rate']),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=['accuracy'],
    )
    start = time.perf_counter()
    model.fit(
        data['x_train'],
        data['y_train'],
        epochs=settings['epochs'],
        batch_size=settings['batch_size'],
        shuffle=True,
        verbose=0,
    )
    return time.perf_counter() - start


def accuracy(model: keras.Model, data: dict[str, np.ndarray]) -> float:
    logits = model.predict(data['x_test'], batch_size=4096, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == data['y_test']))


def run_hgq(dataset: str, beta: float, seed: int, data: dict[str, np.ndarray], settings: dict) -> None:
    seed_everything(seed)
    n_classes = int(data['y_train'].max()) + 1
    model = build(data['x_train'].shape[1], settings['hidden'], n_classes, beta)
    train_s = fit(model, data, settings)
    hgq.calibrate(model, data['x_train'])
    dense = [layer for layer in model.layers if isinstance(layer, HDense)]
    kernels = [keras.ops.convert_to_numpy(layer.qkernel) for layer in dense]
    input_bits = [layer.input_bits_exact() for layer in dense]
    meta = {
        'tool': 'hgq (ours)',
        'config': f'beta={beta:g}',
        'beta': beta,
        'test_accuracy': accuracy(model, data),
        'train_seconds': train_s,
        'own_ebops': hgq.ebops(model),
        'seed': seed,
        'versions': {'hgq': hgq.__version__, 'keras': keras.__version__},
        **settings,
    }
    save_dump(dump_path(dataset, f'hgq_beta{beta:g}_seed{seed}'), meta, kernels, input_bits)
    print(f'hgq beta={beta:g} seed={seed}: acc {meta["test_accuracy"]:.4f}, EBOPs {meta["own_ebops"]:.0f}')


def run_float(dataset: str, seed: int, data: dict[str, np.ndarray], settings: dict) -> None:
    seed_everything(seed)
    n_classes = int(data['y_train'].max()) + 1
    model = build_float(data['x_train'].shape[1], settings['hidden'], n_classes)
    train_s = fit(model, data, settings)
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers]
    meta = {
        'tool': 'float32 Keras',
        'config': 'reference',
        'test_accuracy': accuracy(model, data),
        'train_seconds': train_s,
        'float': True,
        'seed': seed,
        'versions': {'hgq': hgq.__version__, 'keras': keras.__version__},
        **settings,
    }
    save_dump(dump_path(dataset, f'float_seed{seed}'), meta, kernels, [np.zeros(len(k)) for k in kernels])
    print(f'float seed={seed}: acc {meta["test_accuracy"]:.4f}, {train_s:.1f} s')


def main() -> None:
    parser = sweep_parser(__doc__.splitlines()[0])
    parser.add_argument('--betas', type=float, nargs='+', default=list(BETAS))
    args = parser.parse_args()
    settings, data = sweep_settings(args)
    for seed in args.seeds:
        run_float(args.dataset, seed, data, settings)
        for beta in args.betas:
            run_hgq(args.dataset, beta, seed, data, settings)


if __name__ == '__main__':
    main()
