"""Train QKeras 0.9.0 models with uniform bitwidths (a sweep over the width ``b``) and dump every model.

QKeras needs the legacy Keras 2 (``tf_keras``), so it runs in its own virtual environment (see ``run_peers.sh``)::

    TF_USE_LEGACY_KERAS=1 /work/bench_venvs/qkeras/bin/python benchmarks/train_qkeras.py --dataset digits --bits 3 4 6 8

Model: ``QActivation(quantized_relu(b, 0)) -> QDense(hidden) -> QActivation(quantized_relu(b, i_act)) -> QDense(10)``
with kernels and biases ``quantized_bits(b, 0, alpha=1)`` (fixed point ``ap_fixed<b, 1>``, no scale factor), the
usual hls4ml/QKeras recipe. Every input element of a layer has the same width ``b``.
"""

from __future__ import annotations

import os
import time

import numpy as np
from bench_common import (
    dump_path,
    equivalence_inputs,
    learning_rate,
    save_dump,
    seed_everything,
    sweep_parser,
    sweep_settings,
)

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

import qkeras  # noqa: E402 - QKeras reads TF_USE_LEGACY_KERAS at import time
import tensorflow as tf  # noqa: E402
from qkeras import QActivation, QDense, quantized_bits, quantized_relu  # noqa: E402

keras = tf.keras


def build(n_in: int, hidden: int, n_out: int, bits: int, act_int: int) -> keras.Model:
    def weights() -> quantized_bits:
        return quantized_bits(bits, 0, alpha=1)

    return keras.Sequential(
        [
            keras.Input((n_in,)),
            QActivation(quantized_relu(bits, 0), name='q_in'),
            QDense(hidden, kernel_quantizer=weights(), bias_quantizer=weights(), name='dense_0'),
            QActivation(quantized_relu(bits, act_int), name='q_hidden'),
            QDense(n_out, kernel_quantizer=weights(), bias_quantizer=weights(), name='dense_1'),
        ]
    )


def full_formats(model: keras.Model, x_test: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """What ``synth_front.py`` rebuilds the model from: the ``(k, i, f)`` of each ``quantized_relu`` (unsigned,
    ``integer`` integer bits, ``bits - integer`` fractional bits, saturating, rounding half to even as ``tf.round``
    does), biases, and the model's own outputs on ``equivalence_inputs(x_test)``."""
    arrays: dict[str, np.ndarray] = {}
    for n, (act, dense) in enumerate([('q_in', 'dense_0'), ('q_hidden', 'dense_1')]):
        q = model.get_layer(act).quantizer
        if q.negative_slope or q.use_sigmoid or q.relu_upper_bound is not None or not q.is_quantized_clip:
            raise ValueError(f'{act}: only a plain quantized_relu is exported')
        layer = model.get_layer(dense)
        n_in = int(layer.kernel.shape[0])
        arrays[f'kif_{n}'] = np.stack([np.zeros(n_in), np.full(n_in, q.integer), np.full(n_in, q.bits - q.integer)])
        arrays[f'kif_{n}'] = arrays[f'kif_{n}'].astype(np.int64)
        arrays[f'bias_{n}'] = layer.bias_quantizer_internal(layer.bias).numpy().astype(np.float64)
    arrays['equivalence_logits'] = model.predict(equivalence_inputs(x_test), batch_size=4096, verbose=0)
    formats = {
        'layers': "kif_0 -> dense_0 -> kif_1 -> dense_1 (q_in is dense_0's input, q_hidden dense_1's)",
        'quantizers': {n: {'round_mode': 'RND_CONV', 'overflow_mode': 'SAT'} for n in ('0', '1')},
        'activations': [None, None],
    }
    return formats, arrays


def run(dataset: str, bits: int, act_int: int, seed: int, data: dict[str, np.ndarray], settings: dict) -> None:
    seed_everything(seed)
    n_classes = int(data['y_train'].max()) + 1
    model = build(data['x_train'].shape[1], settings['hidden'], n_classes, bits, act_int)
    model.compile(
        keras.optimizers.Adam(learning_rate(settings, len(data['x_train']), keras.optimizers.schedules)),
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
    logits = model.predict(data['x_test'], batch_size=4096, verbose=0)
    dense = [model.get_layer('dense_0'), model.get_layer('dense_1')]
    kernels = [layer.kernel_quantizer_internal(layer.kernel).numpy() for layer in dense]
    # Both dense inputs come from quantized_relu(bits, ...): unsigned, `bits` wide, the same for every element.
    input_bits = [np.full(k.shape[0], bits, dtype=np.int64) for k in kernels]
    meta = {
        'tool': 'QKeras 0.9.0',
        'config': f'b={bits}, i_act={act_int}',
        'bits': bits,
        'act_int': act_int,
        'test_accuracy': float(np.mean(np.argmax(logits, axis=-1) == data['y_test'])),
        'train_seconds': train_s,
        'seed': seed,
        'versions': {'qkeras': qkeras.__version__, 'tensorflow': tf.__version__},
        **settings,
    }
    meta['formats'], extra = full_formats(model, data['x_test'])
    save_dump(dump_path(dataset, f'qkeras_b{bits}_i{act_int}_seed{seed}'), meta, kernels, input_bits, extra)
    print(f'qkeras b={bits} i_act={act_int} seed={seed}: acc {meta["test_accuracy"]:.4f}, {train_s:.1f} s')


def main() -> None:
    parser = sweep_parser(__doc__.splitlines()[0])
    parser.add_argument('--bits', type=int, nargs='+', default=[3, 4, 6, 8])
    parser.add_argument('--act-int', type=int, nargs='+', default=[0, 2], help='integer bits of hidden activations')
    args = parser.parse_args()
    settings, data = sweep_settings(args)
    for seed in args.seeds:
        for act_int in args.act_int:
            for bits in args.bits:
                run(args.dataset, bits, act_int, seed, data, settings)


if __name__ == '__main__':
    main()
