"""Train this project's HGQ on a benchmark data set with a sweep of ``beta`` and dump every model.

Run in the hgq virtual environment (``/work/main/.venv``)::

    python benchmarks/train_hgq.py --dataset digits --betas 0 1e-6 3e-6 1e-5 3e-5 --ramps 1e-6:1e-3

Model: ``HQuantize -> HDense(hidden, relu) -> HDense(10)``, every layer with the same ``beta``; for
``--dataset fashion_mnist_cnn`` the CNN of ``configs/fashion_mnist_cnn.yaml``: ``HQuantize -> HConv2D(8, 3x3, relu)
-> HMaxPooling2D(2) -> HConv2D(12, 3x3, relu) -> HMaxPooling2D(2) -> Flatten -> HDense(32, relu) -> HDense(10)``,
every convolution with ``parallelization_factor=-1`` (every output position has its own multipliers, so its EBOPs
count every multiplication, as the common counter and HGQ2's default do). Two ways to train, as users do:

- constant ``beta`` (``--betas``): the final model is dumped;
- a log ramp of ``beta`` (``--ramps START:END``, :class:`hgq.callbacks.BetaSchedule` from START at the first epoch
  to END at the last) with :class:`hgq.callbacks.ParetoFront` keeping the checkpoints that no other beats in both
  accuracy on the training set and EBOPs, each epoch's model calibrated on the training set before it is scored
  and saved (``calibration_data``); every checkpoint of the front is dumped. Checkpoints are chosen on training
  data, never on the test set.

Both end with :class:`hgq.callbacks.SettleBits`: the activation bitwidths are frozen for the last ``--settle``
epochs (default: a fifth of the run, ``SETTLE_EPOCHS``), so that the weights adapt to the final formats; runs
with another number are named ``..., settle N`` (``--settle 0``: no ``SettleBits``); ``--settle-weights`` freezes
the weight bitwidths too (``SettleBits(weights=True)``, setting ``..., weight bits settled``). ``--bits-lr-scale``
sets the bit pace of every quantizer (``..., bit pace S``), ``--f-init`` the initial fractional bits of every
activation quantizer (``..., f_init F``).
Constant-``beta`` runs of ``--warmup-betas`` start with :class:`hgq.callbacks.BetaWarmup` (setting
``beta=B, warm-up N``): ``beta`` rises linearly from 0 over the first ``--warmup`` epochs (default
``WARMUP_EPOCHS``: a sixth of the run), so that no input or hidden unit is pruned before the weights have learnt
(a ramp starts low by itself); ``--betas`` runs start at their full ``beta``.

After training, ``hgq.calibrate`` sets the exact integer bits from the training set; the dump holds the quantized
kernels and the width ``k + i + f`` of every input element of each ``HDense`` (its input quantizer after
calibration), and the firmware input width (sum of the ``HQuantize`` widths). A float Keras model of the same
shape is dumped too, as the accuracy reference.
"""

from __future__ import annotations

import tempfile
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
from hgq.layers import HConv2D, HDense, HKernelLayer, HMaxPooling2D, HQuantize

# Final epochs with frozen activation bitwidths (hgq.callbacks.SettleBits): a fifth of each data set's run
# (None: a fifth of the epochs run).
SETTLE_EPOCHS = {'digits': 12, 'digits_cosine': 12, 'fashion_mnist': 3, 'fashion_mnist_cnn': None}
# First epochs of a constant-beta run over which beta rises from 0 (hgq.callbacks.BetaWarmup); None: a sixth.
WARMUP_EPOCHS = {'digits': 10, 'digits_cosine': 10, 'fashion_mnist': 3, 'fashion_mnist_cnn': None}


def quantizer_options(bits_lr_scale: float | None, kernel: bool, f_init: float | None = None) -> dict:
    """Quantizer arguments of one H-layer: every quantizer at the bit pace ``bits_lr_scale``, activation
    quantizers starting at ``f_init`` fractional bits (``None``: the package defaults)."""
    names = ('input_quantizer', 'kernel_quantizer', 'bias_quantizer') if kernel else ('input_quantizer',)
    options: dict[str, dict] = {name: {} for name in names}
    if bits_lr_scale is not None:
        for name in names:
            options[name]['bits_lr_scale'] = bits_lr_scale
    if f_init is not None:
        options['input_quantizer']['f_init'] = f_init
    return {name: value for name, value in options.items() if value}


def build(
    n_in: int, hidden: int, n_out: int, beta: float, bits_lr_scale: float | None = None, f_init: float | None = None
) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((n_in,)),
            HQuantize(beta=beta, **quantizer_options(bits_lr_scale, False, f_init)),
            HDense(hidden, activation='relu', beta=beta, **quantizer_options(bits_lr_scale, True, f_init)),
            HDense(n_out, beta=beta, **quantizer_options(bits_lr_scale, True, f_init)),
        ]
    )


def build_float(n_in: int, hidden: int, n_out: int) -> keras.Model:
    return keras.Sequential(
        [keras.Input((n_in,)), keras.layers.Dense(hidden, activation='relu'), keras.layers.Dense(n_out)]
    )


def build_cnn(settings: dict, n_out: int, beta: float | None) -> keras.Model:
    """The CNN of ``configs/fashion_mnist_cnn.yaml``; ``beta=None``: its float32 Keras twin (the reference)."""
    size, pool = settings['kernel_size'], settings['pool_size']
    layers: list[keras.layers.Layer] = [] if beta is None else [HQuantize(beta=beta)]
    for filters in settings['filters']:
        if beta is None:
            layers += [keras.layers.Conv2D(filters, size, activation='relu'), keras.layers.MaxPooling2D(pool)]
        else:
            conv = HConv2D(filters, size, activation='relu', parallelization_factor=-1, beta=beta)
            layers += [conv, HMaxPooling2D(pool, beta=beta)]
    layers.append(keras.layers.Flatten())
    if beta is None:
        layers += [keras.layers.Dense(settings['hidden'], activation='relu'), keras.layers.Dense(n_out)]
    else:
        layers += [HDense(settings['hidden'], activation='relu', beta=beta), HDense(n_out, beta=beta)]
    return keras.Sequential([keras.Input(settings['image_shape']), *layers])


def make_model(settings: dict, data: dict[str, np.ndarray], beta: float | None) -> keras.Model:
    """The benchmark's H-model with ``beta`` on every layer, or (``beta=None``) the float32 reference."""
    n_classes = int(data['y_train'].max()) + 1
    if settings.get('model') == 'cnn':
        return build_cnn(settings, n_classes, beta)
    if beta is None:
        return build_float(data['x_train'].shape[1], settings['hidden'], n_classes)
    pace, f_init = settings.get('bits_lr_scale'), settings.get('f_init')
    return build(data['x_train'].shape[1], settings['hidden'], n_classes, beta, pace, f_init)


def fit(model: keras.Model, data: dict[str, np.ndarray], settings: dict, callbacks: list | None = None) -> float:
    """Compile and train; returns the wall time in seconds."""
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
        callbacks=callbacks,
    )
    return time.perf_counter() - start


def accuracy(model: keras.Model, data: dict[str, np.ndarray]) -> float:
    logits = model.predict(data['x_test'], batch_size=4096, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == data['y_test']))


def full_formats(model: keras.Model, x_test: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """What ``synth_front.py`` rebuilds the model from: per-element ``(k, i, f)`` and modes of the ``HQuantize``
    and of each ``HDense`` input quantizer, biases, activations, and the model's own outputs on
    ``equivalence_inputs(x_test)``."""
    dense = [layer for layer in model.layers if isinstance(layer, HDense)]
    quantize = [layer for layer in model.layers if isinstance(layer, HQuantize)]
    named = [('input', q.input_quantizer) for q in quantize[:1]]
    named += [(str(n), layer.input_quantizer) for n, layer in enumerate(dense)]
    arrays = {f'kif_{name}': np.stack([a.reshape(-1) for a in q.kif()]).astype(np.int64) for name, q in named}
    for n, layer in enumerate(dense):
        arrays[f'bias_{n}'] = keras.ops.convert_to_numpy(layer.qbias).astype(np.float64)
    arrays['equivalence_logits'] = model.predict(equivalence_inputs(x_test), batch_size=4096, verbose=0)
    formats = {
        'layers': 'kif_input -> kif_0 -> dense_0 -> kif_1 -> dense_1 (HQuantize, then each HDense input quantizer)',
        'quantizers': {name: {'round_mode': q.round_mode, 'overflow_mode': q.overflow_mode} for name, q in named},
        'activations': [layer.activation for layer in dense],
    }
    return formats, arrays


def cnn_formats(model: keras.Model, x_test: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """Per-element ``(k, i, f)`` of every activation quantizer (``kif_<layer name>``, shape ``(3, *element
    shape)``), the quantized biases, and the model's own outputs on ``equivalence_inputs(x_test)``."""
    arrays: dict[str, np.ndarray] = {}
    quantizers = {}
    for layer in model.layers:
        if hasattr(layer, 'input_quantizer'):
            q = layer.input_quantizer
            arrays[f'kif_{layer.name}'] = np.stack(q.kif()).astype(np.int64)
            quantizers[layer.name] = {'round_mode': q.round_mode, 'overflow_mode': q.overflow_mode}
        if isinstance(layer, HKernelLayer) and layer.use_bias:
            arrays[f'bias_{layer.name}'] = keras.ops.convert_to_numpy(layer.qbias).astype(np.float64)
    arrays['equivalence_logits'] = model.predict(equivalence_inputs(x_test), batch_size=4096, verbose=0)
    formats = {'layers': [layer.name for layer in model.layers], 'quantizers': quantizers}
    return formats, arrays


def dump_model(model: keras.Model, data: dict[str, np.ndarray], stem: str, dataset: str, meta: dict) -> dict:
    """Calibrate ``model`` on the training set, measure it and dump it; returns the metadata written.

    The MLP dumps the kernel and input widths of each ``HDense``; the CNN those of each ``HConv2D`` and ``HDense``
    in order (input widths per element, shape ``(height, width, channels)`` for a convolution), with the strides
    and padding of each convolution in ``meta['conv']``.
    """
    hgq.calibrate(model, data['x_train'])
    cnn = any(isinstance(layer, HConv2D) for layer in model.layers)
    kinds = (HConv2D, HDense) if cnn else (HDense,)
    dense = [layer for layer in model.layers if isinstance(layer, kinds)]
    kernels = [keras.ops.convert_to_numpy(layer.qkernel) for layer in dense]
    input_bits = [layer.input_bits_exact() for layer in dense]
    quantize = [layer for layer in model.layers if isinstance(layer, HQuantize)]
    if cnn:
        meta = {
            **meta,
            'conv': [
                {'strides': list(layer.strides), 'padding': layer.padding, 'parallelization_factor': -1}
                for layer in dense
                if isinstance(layer, HConv2D)
            ],
        }
    meta = {
        'tool': 'hgq (ours)',
        **meta,
        'test_accuracy': accuracy(model, data),
        'own_ebops': hgq.ebops(model),
        'input_width': int(quantize[0].input_bits_exact().sum()) if quantize else None,
        'versions': {'hgq': hgq.__version__, 'keras': keras.__version__},
    }
    meta['formats'], extra = (cnn_formats if cnn else full_formats)(model, data['x_test'])
    save_dump(dump_path(dataset, stem), meta, kernels, input_bits, extra)
    return meta


def pace_label(settings: dict) -> str:
    """``', bit pace S'`` for a run at a bit pace set by ``--bits-lr-scale``, ``', f_init F'`` for initial
    activation widths set by ``--f-init``, ``', weight bits settled'`` for ``--settle-weights``; ``''`` for the
    defaults."""
    scale, f_init = settings.get('bits_lr_scale'), settings.get('f_init')
    label = ('' if scale is None else f', bit pace {scale:g}') + ('' if f_init is None else f', f_init {f_init:g}')
    return label + (', weight bits settled' if settings.get('settle_weights') else '')


def pace_stem(settings: dict) -> str:
    scale, f_init = settings.get('bits_lr_scale'), settings.get('f_init')
    stem = ('' if scale is None else f'_pace{scale:g}') + ('' if f_init is None else f'_finit{f_init:g}')
    return stem + ('_settlew' if settings.get('settle_weights') else '')


def settle_callbacks(settle: int, settings: dict) -> list:
    """``SettleBits`` for the last ``settle`` epochs (weight bitwidths too with ``--settle-weights``)."""
    weights = bool(settings.get('settle_weights'))
    return [hgq.callbacks.SettleBits(settle, weights=weights)] if settle else []


def settle_tags(settle: int, settle_default: int | None) -> tuple[str, str]:
    """``(', settle N', '_settleN')`` for a run whose settled epochs differ from the data set's default (``None``:
    no default known), else ``('', '')``, so that such runs get their own setting name and dump."""
    if settle_default is None or settle == settle_default:
        return '', ''
    return f', settle {settle}', f'_settle{settle}'


def run_hgq(
    dataset: str,
    beta: float,
    seed: int,
    data: dict[str, np.ndarray],
    settings: dict,
    settle: int = 0,
    warmup: int = 0,
    settle_default: int | None = None,
) -> None:
    seed_everything(seed)
    model = make_model(settings, data, beta)
    callbacks = [hgq.callbacks.BetaWarmup(warmup)] if warmup else []
    train_s = fit(model, data, settings, callbacks=callbacks + settle_callbacks(settle, settings))
    settle_label, settle_stem = settle_tags(settle, settle_default)
    meta = {
        'config': f'beta={beta:g}' + (f', warm-up {warmup}' if warmup else '') + pace_label(settings) + settle_label,
        'beta': beta,
        'train_seconds': train_s,
        'seed': seed,
        'settle_epochs': settle,
        'warmup_epochs': warmup,
        **settings,
    }
    try:
        stem = f'hgq_beta{beta:g}' + (f'_warmup{warmup}' if warmup else '') + pace_stem(settings) + settle_stem
        stem += f'_seed{seed}'
        meta = dump_model(model, data, stem, dataset, meta)
    except hgq.exactness.InexactError as err:
        print(f'hgq {meta["config"]} seed={seed}: not dumped, calibration refused the model: {err}', flush=True)
        return
    print(
        f'hgq {meta["config"]} seed={seed}: acc {meta["test_accuracy"]:.4f}, EBOPs {meta["own_ebops"]:.0f}', flush=True
    )


def run_ramp(
    dataset: str, ramp: tuple[float, float], seed: int, data: dict[str, np.ndarray], settings: dict, settle: int = 0
) -> None:
    """Log ramp of beta with a Pareto front of calibrated checkpoints; dump every checkpoint.

    The front (``ParetoFront`` with ``calibration_data``) calibrates each epoch's model on the training set and
    ranks it by the training accuracy of the calibrated model in inference mode (the running training accuracy of
    an epoch is not that of its final model) and its exact EBOPs, so every checkpoint is ranked as it is deployed;
    ranked on the uncalibrated epoch-end evaluation, inputs whose tracked range decayed in the last batch wrap.
    """
    seed_everything(seed)
    start, end = ramp
    model = make_model(settings, data, start)
    schedule = hgq.callbacks.BetaSchedule([(0, start), (settings['epochs'] - 1, end)], interpolation='log')
    config = f'ramp {start:g}->{end:g}' + pace_label(settings)
    with tempfile.TemporaryDirectory() as directory:
        front = hgq.callbacks.ParetoFront(
            directory,
            metrics=('val_accuracy', 'ebops'),
            sides=('max', 'min'),
            calibration_data=data['x_train'],
            validation_data=(data['x_train'], data['y_train']),
        )
        train_s = fit(model, data, settings, callbacks=[schedule, *settle_callbacks(settle, settings), front])
        points = hgq.callbacks.read_front(directory)
        for point in points:
            checkpoint = keras.models.load_model(point.path)
            meta = {
                'config': config,
                'ramp': [start, end],
                'beta': schedule(point.epoch - 1),
                'epoch': point.epoch,
                'train_accuracy': point.values['val_accuracy'],
                'train_seconds': train_s,
                'seed': seed,
                'settle_epochs': settle,
                **settings,
            }
            stem = f'hgq_ramp{start:g}-{end:g}{pace_stem(settings)}_seed{seed}_epoch{point.epoch:04d}'
            try:
                dump_model(checkpoint, data, stem, dataset, meta)
            except hgq.exactness.InexactError as err:
                print(f'hgq {config} seed={seed} epoch {point.epoch}: not dumped, calibration refused it: {err}')
        print(f'hgq {config} seed={seed}: {len(points)} checkpoints on the front, {train_s:.0f} s', flush=True)


def parse_ramp(text: str) -> tuple[float, float]:
    """``'1e-6:1e-3'`` -> ``(1e-6, 1e-3)``."""
    try:
        start, end = (float(v) for v in text.split(':'))
    except ValueError:
        raise SystemExit(f'--ramps: expected START:END (e.g. 1e-6:1e-3), got {text!r}') from None
    if not 0 < start < end:
        raise SystemExit(f'--ramps: need 0 < START < END, got {text!r}')
    return start, end


def run_float(dataset: str, seed: int, data: dict[str, np.ndarray], settings: dict) -> None:
    seed_everything(seed)
    model = make_model(settings, data, None)
    train_s = fit(model, data, settings)
    kernels = [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers if hasattr(layer, 'kernel')]
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
    print(f'float seed={seed}: acc {meta["test_accuracy"]:.4f}, {train_s:.1f} s', flush=True)


def main() -> None:
    parser = sweep_parser(__doc__.splitlines()[0])
    parser.add_argument('--betas', type=float, nargs='*', default=list(BETAS))
    parser.add_argument('--ramps', type=parse_ramp, nargs='*', default=[], help='log beta ramps START:END')
    parser.add_argument('--no-float', action='store_true', help='skip the float32 reference')
    parser.add_argument(
        '--settle', type=int, default=None, help='final epochs with frozen activation bitwidths (SettleBits)'
    )
    parser.add_argument('--warmup-betas', type=float, nargs='*', default=[], help='constant betas with a warm-up')
    parser.add_argument('--warmup', type=int, default=None, help='epochs of the warm-up of --warmup-betas runs')
    parser.add_argument(
        '--bits-lr-scale', type=float, default=None, help='bit pace of every quantizer (default: the package default)'
    )
    parser.add_argument(
        '--f-init', type=float, default=None, help='initial fractional bits of every activation quantizer (f_init)'
    )
    parser.add_argument(
        '--settle-weights', action='store_true', help='SettleBits also freezes the weight bitwidths (weights=True)'
    )
    args = parser.parse_args()
    if args.bits_lr_scale is not None and not args.bits_lr_scale > 0:
        raise SystemExit(f'--bits-lr-scale: need a number > 0, got {args.bits_lr_scale}')
    if args.f_init is not None and not 0 <= args.f_init <= 12:
        raise SystemExit(f'--f-init: need 0 <= F_INIT <= 12 fractional bits, got {args.f_init}')
    settings, data = sweep_settings(args)
    if args.bits_lr_scale is not None:
        settings['bits_lr_scale'] = args.bits_lr_scale
    if args.f_init is not None:
        settings['f_init'] = args.f_init
    if args.settle_weights:
        settings['settle_weights'] = True
    settle_default = SETTLE_EPOCHS[args.dataset]
    settle_default = settings['epochs'] // 5 if settle_default is None else settle_default
    settle = settle_default if args.settle is None else args.settle
    if not 0 <= settle < settings['epochs']:
        raise SystemExit(f'--settle: need 0 <= SETTLE < epochs ({settings["epochs"]}), got {settle}')
    warmup = WARMUP_EPOCHS[args.dataset] if args.warmup is None else args.warmup
    warmup = max(settings['epochs'] // 6, 1) if warmup is None else warmup
    if not 0 < warmup < settings['epochs'] - settle:
        raise SystemExit(f'--warmup: need 0 < WARMUP < epochs - settle ({settings["epochs"] - settle}), got {warmup}')
    for seed in args.seeds:
        if not args.no_float:
            run_float(args.dataset, seed, data, settings)
        for beta in args.betas:
            run_hgq(args.dataset, beta, seed, data, settings, settle, settle_default=settle_default)
        for beta in args.warmup_betas:
            run_hgq(args.dataset, beta, seed, data, settings, settle, warmup, settle_default)
        for ramp in args.ramps:
            run_ramp(args.dataset, ramp, seed, data, settings, settle)


if __name__ == '__main__':
    main()
