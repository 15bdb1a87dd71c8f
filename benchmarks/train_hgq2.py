"""Train HGQ2 (``hgq2==0.2.0``, the successor project of the original HGQ) with a sweep of ``beta``; dump every model.

HGQ2 also imports as ``hgq``, so it runs in its own virtual environment (see ``run_peers.sh``)::

    /work/bench_venvs/hgq2/bin/python benchmarks/train_hgq2.py --dataset digits --betas 0 1e-6 3e-6 1e-5 3e-5

Model: ``QDense(hidden, relu) -> QDense(10)`` with HGQ2's default quantizers (per-element ``kif`` WRAP input
quantizers, per-weight ``kbi`` SAT_SYM kernel quantizers), ``beta0`` set per run. After training,
``hgq.utils.trace_minmax`` sets the exact integer bits from the training set (HGQ2's own calibration).
"""

from __future__ import annotations

import time

import keras
import numpy as np
from bench_common import (
    BETAS,
    dump_path,
    equivalence_inputs,
    save_dump,
    seed_everything,
    sweep_parser,
    sweep_settings,
)

import hgq
from hgq.config import LayerConfigScope
from hgq.layers import QDense


def build(n_in: int, hidden: int, n_out: int, beta: float) -> keras.Model:
    with LayerConfigScope(enable_ebops=True, beta0=beta):
        return keras.Sequential(
            [keras.Input((n_in,)), QDense(hidden, activation='relu'), QDense(n_out)],
        )


def input_widths(layer: QDense) -> np.ndarray:
    """Width ``k + i + f`` (clipped at 0) of every input element, from the layer's input quantizer."""
    k, i, f = (keras.ops.convert_to_numpy(v).astype(np.int64) for v in layer.iq.quantizer.kif)
    shape = (int(layer.kernel.shape[0]),)
    return np.maximum(np.broadcast_to(k + i + f, (1, *shape)).reshape(shape), 0)


def full_formats(model: keras.Model, dense: list[QDense], x_test: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """What ``synth_front.py`` rebuilds the model from: per-element ``(k, i, f)`` and modes of every input
    quantizer, biases, activations, and the model's own outputs on ``equivalence_inputs(x_test)``."""
    arrays: dict[str, np.ndarray] = {}
    quantizers = {}
    for n, layer in enumerate(dense):
        q = layer.iq.quantizer
        shape = (int(layer.kernel.shape[0]),)
        kif = [
            np.broadcast_to(keras.ops.convert_to_numpy(v).astype(np.int64), (1, *shape)).reshape(shape) for v in q.kif
        ]
        arrays[f'kif_{n}'] = np.stack(kif)
        arrays[f'bias_{n}'] = keras.ops.convert_to_numpy(layer.qbias).astype(np.float64)
        quantizers[str(n)] = {'round_mode': q.round_mode, 'overflow_mode': q.overflow_mode}
    arrays['equivalence_logits'] = model.predict(equivalence_inputs(x_test), batch_size=4096, verbose=0)
    formats = {
        'layers': 'kif_0 -> dense_0 -> kif_1 -> dense_1 (input quantizer of each QDense; none at the output)',
        'quantizers': quantizers,
        'activations': [layer.activation.__name__ if layer.activation else None for layer in dense],
    }
    return formats, arrays


def run(dataset: str, beta: float, seed: int, data: dict[str, np.ndarray], settings: dict) -> None:
    seed_everything(seed)
    n_classes = int(data['y_train'].max()) + 1
    model = build(data['x_train'].shape[1], settings['hidden'], n_classes, beta)
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
    train_s = time.perf_counter() - start
    own_ebops = hgq.utils.trace_minmax(model, data['x_train'], batch_size=4096)
    logits = model.predict(data['x_test'], batch_size=4096, verbose=0)
    dense = [layer for layer in model.layers if isinstance(layer, QDense)]
    meta = {
        'tool': 'HGQ2 0.2.0',
        'config': f'beta={beta:g}',
        'beta': beta,
        'test_accuracy': float(np.mean(np.argmax(logits, axis=-1) == data['y_test'])),
        'train_seconds': train_s,
        'own_ebops': float(own_ebops),
        'seed': seed,
        'versions': {'hgq2': hgq.__version__, 'keras': keras.__version__},
        **settings,
    }
    kernels = [keras.ops.convert_to_numpy(layer.qkernel) for layer in dense]
    meta['formats'], extra = full_formats(model, dense, data['x_test'])
    save_dump(
        dump_path(dataset, f'hgq2_beta{beta:g}_seed{seed}'), meta, kernels, [input_widths(d) for d in dense], extra
    )
    print(f'hgq2 beta={beta:g} seed={seed}: acc {meta["test_accuracy"]:.4f}, own EBOPs {own_ebops}')


def main() -> None:
    parser = sweep_parser(__doc__.splitlines()[0])
    parser.add_argument('--betas', type=float, nargs='+', default=list(BETAS))
    args = parser.parse_args()
    settings, data = sweep_settings(args)
    for seed in args.seeds:
        for beta in args.betas:
            run(args.dataset, beta, seed, data, settings)


if __name__ == '__main__':
    main()
