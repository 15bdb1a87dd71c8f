"""What every benchmark script shares: the data split, the dump format and the reference EBOPs.

numpy only, so that each tool's script can import it from its own virtual environment.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    'WORK_DIR',
    'RESULTS_DIR',
    'SEED',
    'SETTINGS',
    'sweep_parser',
    'sweep_settings',
    'BETAS',
    'load_split',
    'seed_everything',
    'effective_bits',
    'dense_ebops',
    'conv2d_ebops',
    'model_ebops',
    'learning_rate',
    'dump_path',
    'save_dump',
    'load_dump',
    'equivalence_inputs',
]

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / 'work'
RESULTS_DIR = BENCH_DIR / 'results'
SEED = 0

# Training settings shared by every tool, per data set: same split, model size, optimizer, epochs and batch size.
SETTINGS = {
    'digits': {'hidden': 32, 'epochs': 60, 'batch_size': 32, 'learning_rate': 3e-3},
    # digits with the learning rate decaying along a cosine to 5 % of it over the run (``learning_rate``)
    'digits_cosine': {
        'data': 'digits',
        'hidden': 32,
        'epochs': 60,
        'batch_size': 32,
        'learning_rate': 3e-3,
        'lr_final': 0.05,
    },
    'fashion_mnist': {'hidden': 64, 'epochs': 15, 'batch_size': 128, 'learning_rate': 2e-3},
    # configs/fashion_mnist_cnn.yaml: Fashion-MNIST images 28x28x1, conv 8 -> pool -> conv 12 -> pool -> 32 -> 10,
    # Adam 3e-3 decaying along a cosine to 5 % of it (``learning_rate``); the config's 40 epochs cut to what fits.
    'fashion_mnist_cnn': {
        'data': 'fashion_mnist',
        'model': 'cnn',
        'image_shape': (28, 28, 1),
        'filters': (8, 12),
        'kernel_size': 3,
        'pool_size': 2,
        'hidden': 32,
        'epochs': 10,
        'batch_size': 256,
        'learning_rate': 3e-3,
        'lr_final': 0.05,
    },
}
# beta values swept for both HGQ tools (the same numbers: both add beta * EBOPs to the loss)
BETAS = (0.0, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4)


def load_split(name: str = 'digits') -> dict[str, np.ndarray]:
    """The train/test arrays written by ``prepare_data.py`` (identical for every tool)."""
    path = WORK_DIR / f'{name}.npz'
    if not path.is_file():
        raise FileNotFoundError(f'{path} is missing; run `python benchmarks/prepare_data.py` in the hgq venv first')
    with np.load(path) as data:
        scale = float(data['scale'])
        return {
            'x_train': (data['x_train'] * scale).astype(np.float32),
            'y_train': data['y_train'],
            'x_test': (data['x_test'] * scale).astype(np.float32),
            'y_test': data['y_test'],
        }


def seed_everything(seed: int) -> None:
    """Reset every random state a run uses (Python, numpy, TensorFlow, Keras 3 and legacy Keras).

    Called at the start of every run, so that a run does not depend on the runs before it in the same process.
    """
    os.environ['PYTHONHASHSEED'] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    for module in ('keras', 'tf_keras'):
        try:
            importlib.import_module(module).utils.set_random_seed(seed)
        except (ImportError, AttributeError):
            pass
    try:
        import tensorflow as tf

        tf.random.set_seed(seed)
    except ImportError:
        pass


def effective_bits(values: Any) -> np.ndarray:
    """MSB-to-LSB span of ``|values|`` (exact binary fractions); 0 for zeros.

    A weight ``0.75 = 0b0.11`` spans 2 bits, ``-6 = -0b110`` spans 2 bits, ``0.5`` spans 1 bit.

    Examples
    --------
    >>> effective_bits([0.0, 1.0, 0.75, -6.0, 0.3125]).tolist()
    [0, 1, 2, 2, 3]
    """
    mag = np.abs(np.asarray(values, dtype=np.float64))
    out = np.zeros(mag.shape, dtype=np.int64)
    nonzero = mag > 0
    mant, _ = np.frexp(mag[nonzero])  # mag = mant * 2**exp with mant in [0.5, 1)
    codes = np.round(np.ldexp(mant, 53)).astype(np.int64)  # 53-bit integer mantissa, top bit set
    lowest_set = codes & -codes  # a power of two: 2**(number of trailing zeros)
    out[nonzero] = 53 - np.round(np.log2(lowest_set.astype(np.float64))).astype(np.int64)
    return out


def dense_ebops(input_bits: np.ndarray, kernel: np.ndarray) -> float:
    """EBOPs of one dense layer: ``sum_{j,o} bits(a_j) * bits(w_jo)``.

    Parameters
    ----------
    input_bits : array of shape (n_in,)
        Width ``k + i + f`` of the fixed-point format of each input element (clipped at 0).
    kernel : array of shape (n_in, n_out)
        The quantized kernel values as the hardware holds them.
    """
    input_bits = np.maximum(np.asarray(input_bits, dtype=np.int64).reshape(-1), 0)
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 2 or kernel.shape[0] != input_bits.size:
        raise ValueError(f'kernel shape {kernel.shape} does not match {input_bits.size} input elements')
    return float(input_bits.astype(np.float64) @ effective_bits(kernel).astype(np.float64) @ np.ones(kernel.shape[1]))


def conv2d_ebops(
    input_bits: np.ndarray, kernel: np.ndarray, strides: tuple[int, int] = (1, 1), padding: str = 'valid'
) -> float:
    """EBOPs of one 2D convolution (channels last), every output position with its own multipliers.

    ``sum over output positions p, kernel offsets d, input channels c and filters o of bits(a[p*s + d, c]) *
    bits(w[d, c, o])``: every multiplication the convolution performs, each input element with its own width.
    Padded positions (``'same'``) hold zeros, which cost nothing. Divide by the number of output positions for
    one multiplier array shared by all of them (a streamed implementation).

    Parameters
    ----------
    input_bits : array of shape (height, width, channels)
        Width ``k + i + f`` (clipped at 0) of the fixed-point format of each input element.
    kernel : array of shape (kernel_height, kernel_width, channels, filters)
        The quantized kernel values as the hardware holds them.
    strides, padding
        As in ``keras.layers.Conv2D``.

    Examples
    --------
    >>> conv2d_ebops(np.full((4, 4, 1), 3), np.full((3, 3, 1, 2), 0.75))  # 2 x 2 positions, 9 taps, 2 filters
    432.0
    """
    bits = np.maximum(np.asarray(input_bits, dtype=np.int64), 0).astype(np.float64)
    kernel = np.asarray(kernel, dtype=np.float64)
    if bits.ndim != 3 or kernel.ndim != 4 or kernel.shape[2] != bits.shape[2]:
        raise ValueError(f'kernel shape {kernel.shape} does not match input bits of shape {bits.shape} (H, W, C)')
    if padding not in ('valid', 'same'):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    (kh, kw), (sh, sw) = kernel.shape[:2], strides
    if padding == 'same':  # Keras: output ceil(size / stride), the odd padding element at the end
        pads = []
        for size, k, s in ((bits.shape[0], kh, sh), (bits.shape[1], kw, sw)):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        bits = np.pad(bits, [*pads, (0, 0)])
    out_h, out_w = (bits.shape[0] - kh) // sh + 1, (bits.shape[1] - kw) // sw + 1
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f'kernel {kernel.shape[:2]} is larger than the input {bits.shape[:2]}')
    weight_bits = effective_bits(kernel).sum(axis=3).astype(np.float64)  # (kh, kw, C): bits summed over filters
    total = 0.0
    for dy in range(kh):
        for dx in range(kw):
            window = bits[dy : dy + sh * (out_h - 1) + 1 : sh, dx : dx + sw * (out_w - 1) + 1 : sw]
            total += float(window.sum(axis=(0, 1)) @ weight_bits[dy, dx])
    return total


def model_ebops(dump: dict[str, Any]) -> list[float]:
    """Per-layer EBOPs of a dumped model (see :func:`save_dump`).

    A 2-D kernel is a dense layer, a 4-D one a 2D convolution with the strides and padding listed in the
    metadata's ``conv`` (one entry per convolution, in order; stride 1, ``'valid'`` where absent).
    """
    convs = iter(dump['meta'].get('conv', []))
    out = []
    for bits, kernel in zip(dump['input_bits'], dump['kernels'], strict=True):
        if np.ndim(kernel) == 4:
            spec = next(convs, {})
            out.append(conv2d_ebops(bits, kernel, tuple(spec.get('strides', (1, 1))), spec.get('padding', 'valid')))
        else:
            out.append(dense_ebops(bits, kernel))
    return out


def learning_rate(settings: dict[str, Any], n_train: int, schedules: Any = None) -> Any:
    """The optimizer's learning rate: a constant, or with ``lr_final`` a cosine decay from ``learning_rate`` to
    ``lr_final * learning_rate`` over the whole run (``CosineDecay`` of ``schedules``: Keras's by default, imported
    here so that this module stays numpy-only for the data preparation; QKeras passes the legacy Keras's)."""
    if 'lr_final' not in settings:
        return settings['learning_rate']
    if schedules is None:
        import keras

        schedules = keras.optimizers.schedules
    steps = settings['epochs'] * -(-n_train // settings['batch_size'])
    return schedules.CosineDecay(settings['learning_rate'], steps, alpha=settings['lr_final'])


def dump_path(dataset: str, stem: str) -> Path:
    """Where a trained model of ``dataset`` is dumped (``benchmarks/work/dumps/<dataset>/<stem>.npz``)."""
    return WORK_DIR / 'dumps' / dataset / f'{stem}.npz'


def save_dump(
    path: Path,
    meta: dict[str, Any],
    kernels: list[np.ndarray],
    input_bits: list[np.ndarray],
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write one trained model: ``meta`` (tool, settings, accuracy, times), quantized kernels and input widths.

    ``extra``: further arrays (stored as ``extra_<name>``), e.g. the complete fixed-point formats, biases and the
    tool's own outputs on :func:`equivalence_inputs` that ``synth_front.py`` rebuilds and checks the model from.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f'kernel_{n}': np.asarray(k, dtype=np.float64) for n, k in enumerate(kernels)}
    arrays.update({f'input_bits_{n}': np.asarray(b, dtype=np.int64) for n, b in enumerate(input_bits)})
    arrays.update({f'extra_{name}': np.asarray(v) for name, v in (extra or {}).items()})
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)


def load_dump(path: Path) -> dict[str, Any]:
    """Read a file written by :func:`save_dump` (``extra``: the extra arrays by name, empty in older dumps)."""
    with np.load(path) as data:
        n = sum(1 for key in data.files if key.startswith('kernel_'))
        return {
            'meta': json.loads(str(data['meta'])),
            'kernels': [data[f'kernel_{i}'] for i in range(n)],
            'input_bits': [data[f'input_bits_{i}'] for i in range(n)],
            'extra': {key[len('extra_') :]: data[key] for key in data.files if key.startswith('extra_')},
        }


def equivalence_inputs(x_test: np.ndarray, seed: int = 0) -> np.ndarray:
    """Inputs on which a model rebuilt from a dump must equal the tool's own model, output for output.

    The test set, then as many random inputs spread up to 1.5 spans beyond the test set's range (they overflow
    the first quantizers: wrap or saturate), then as many on a grid of ``2**-8`` over the same span (exact halves
    of coarser formats: they tell rounding modes apart). float32, deterministic.

    Examples
    --------
    >>> equivalence_inputs(np.zeros((5, 3), dtype=np.float32)).shape
    (15, 3)
    """
    x_test = np.asarray(x_test, dtype=np.float32)
    rng = np.random.default_rng(seed)
    lo, hi = float(x_test.min()), float(x_test.max())
    span = max(hi - lo, 1.0)
    beyond = rng.uniform(lo - 1.5 * span, hi + 1.5 * span, size=x_test.shape)
    grid = np.round(rng.uniform(lo - 1.5 * span, hi + 1.5 * span, size=x_test.shape) * 256) / 256
    return np.concatenate([x_test, beyond, grid]).astype(np.float32)


def sweep_parser(description: str) -> argparse.ArgumentParser:
    """Command-line options every training script shares (data set, seeds, epochs); scripts add their sweep."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('--dataset', default='digits', choices=sorted(SETTINGS))
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2], help='training seeds')
    parser.add_argument('--epochs', type=int, default=None, help='override the shared number of epochs')
    return parser


def sweep_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The shared training settings of ``args.dataset`` (with any ``--epochs`` override) and its data split.

    A benchmark with an ``image_shape`` (the CNN) reads the split of its ``data`` set and reshapes the images.
    """
    settings = dict(SETTINGS[args.dataset])
    if args.epochs is not None:
        settings['epochs'] = args.epochs
    data = load_split(settings.get('data', args.dataset))
    if 'image_shape' in settings:
        for key in ('x_train', 'x_test'):
            data[key] = data[key].reshape(-1, *settings['image_shape'])
    return settings, data
