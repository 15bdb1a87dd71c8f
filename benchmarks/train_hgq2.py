"""Train HGQ2 (``hgq2==0.2.0``, the successor project of the original HGQ) with a sweep of ``beta``; dump every model.

HGQ2 also imports as ``hgq``, so it runs in its own virtual environment (see ``run_peers.sh``)::

    /work/bench_venvs/hgq2/bin/python benchmarks/train_hgq2.py --dataset digits --betas 0 1e-6 3e-6 1e-5 3e-5

Model: ``QDense(hidden, relu) -> QDense(10)`` with HGQ2's default quantizers (per-element ``kif`` WRAP input
quantizers, per-weight ``kbi`` SAT_SYM kernel quantizers), ``beta0`` set per run; for ``--dataset
fashion_mnist_cnn`` the CNN of ``configs/fashion_mnist_cnn.yaml`` in HGQ2's layers: ``QConv2D(8, 3x3, relu) ->
QMaxPooling2D(2) -> QConv2D(12, 3x3, relu) -> QMaxPooling2D(2) -> Flatten -> QDense(32, relu) -> QDense(10)`` (the
first convolution's input quantizer quantizes the image; every layer with its default quantizers and HGQ2's
default ``parallelization_factor=-1``). After training, ``hgq.utils.trace_minmax`` sets the exact integer bits from
the training set (HGQ2's own calibration).
"""

from __future__ import annotations

import time

import keras
import numpy as np
from bench_common import (
    BETAS,
    dump_path,
    equivalence_inputs,
    learning_rate,
    save_dump,
    seed_everything,
    sweep_parser,
    sweep_settings,
)

import hgq
from hgq.config import LayerConfigScope
from hgq.layers import QConv2D, QDense, QMaxPooling2D


def build(n_in: int, hidden: int, n_out: int, beta: float) -> keras.Model:
    with LayerConfigScope(enable_ebops=True, beta0=beta):
        return keras.Sequential(
            [keras.Input((n_in,)), QDense(hidden, activation='relu'), QDense(n_out)],
        )


def build_cnn(settings: dict, n_out: int, beta: float) -> keras.Model:
    """The CNN of ``configs/fashion_mnist_cnn.yaml`` in HGQ2's layers."""
    size, pool = settings['kernel_size'], settings['pool_size']
    with LayerConfigScope(enable_ebops=True, beta0=beta):
        layers = []
        for filters in settings['filters']:
            layers += [QConv2D(filters, size, activation='relu'), QMaxPooling2D(pool)]
        layers += [keras.layers.Flatten(), QDense(settings['hidden'], activation='relu'), QDense(n_out)]
        return keras.Sequential([keras.Input(settings['image_shape']), *layers])


def element_kif(layer: keras.layers.Layer) -> list[np.ndarray]:
    """``(k, i, f)`` of the input quantizer of ``layer`` for every element of one input sample."""
    shape = tuple(int(n) for n in layer.input.shape[1:])
    return [
        np.broadcast_to(keras.ops.convert_to_numpy(v).astype(np.int64), (1, *shape)).reshape(shape)
        for v in layer.iq.quantizer.kif
    ]


def cnn_formats(model: keras.Model, x_test: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """Per-element ``(k, i, f)`` of every input quantizer after ``trace_minmax`` (``kif_<layer name>``, shape
    ``(3, *element shape)``), the quantized biases, and the model's own outputs on ``equivalence_inputs``."""
    arrays: dict[str, np.ndarray] = {}
    quantizers = {}
    for layer in model.layers:
        if getattr(layer, 'enable_iq', False):
            arrays[f'kif_{layer.name}'] = np.stack(element_kif(layer))
            q = layer.iq.quantizer
            quantizers[layer.name] = {'round_mode': q.round_mode, 'overflow_mode': q.overflow_mode}
        if isinstance(layer, (QConv2D, QDense)) and layer.use_bias:
            arrays[f'bias_{layer.name}'] = keras.ops.convert_to_numpy(layer.qbias).astype(np.float64)
    arrays['equivalence_logits'] = model.predict(equivalence_inputs(x_test), batch_size=4096, verbose=0)
    formats = {'layers': [layer.name for layer in model.layers], 'quantizers': quantizers}
    return formats, arrays


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
    cnn = settings.get('model') == 'cnn'
    if cnn:
        model = build_cnn(settings, n_classes, beta)
    else:
        model = build(data['x_train'].shape[1], settings['hidden'], n_classes, beta)
    model.compile(
        keras.optimizers.Adam(learning_rate(settings, len(data['x_train']))),
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
    dense = [layer for layer in model.layers if isinstance(layer, (QConv2D, QDense) if cnn else QDense)]
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
    if cnn:
        meta['conv'] = [
            {'strides': list(layer.strides), 'padding': layer.padding, 'parallelization_factor': -1}
            for layer in dense
            if isinstance(layer, QConv2D)
        ]
        meta['formats'], extra = cnn_formats(model, data['x_test'])
        widths = [np.maximum(sum(element_kif(layer)), 0) for layer in dense]
    else:
        meta['formats'], extra = full_formats(model, dense, data['x_test'])
        widths = [input_widths(d) for d in dense]
    save_dump(dump_path(dataset, f'hgq2_beta{beta:g}_seed{seed}'), meta, kernels, widths, extra)
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
