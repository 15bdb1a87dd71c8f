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
    'model_ebops',
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
    'fashion_mnist': {'hidden': 64, 'epochs': 15, 'batch_size': 128, 'learning_rate': 2e-3},
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


def model_ebops(dump: dict[str, Any]) -> list[float]:
    """Per-layer EBOPs of a dumped model (see :func:`save_dump`)."""
    return [dense_ebops(b, k) for b, k in zip(dump['input_bits'], dump['kernels'], strict=True)]


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
    """The shared training settings of ``args.dataset`` (with any ``--epochs`` override) and its data split."""
    settings = dict(SETTINGS[args.dataset])
    if args.epochs is not None:
        settings['epochs'] = args.epochs
    return settings, load_split(args.dataset)
