"""Write the benchmark data splits to ``benchmarks/work/`` so every tool trains and tests on identical arrays.

Run in the hgq virtual environment (it needs scikit-learn, and hgq for Fashion-MNIST)::

    python benchmarks/prepare_data.py            # digits
    python benchmarks/prepare_data.py --fashion  # digits and Fashion-MNIST
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_common import SEED, WORK_DIR
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def write_digits() -> None:
    """Digits: 25 % stratified test split with seed 0; pixels 0..16 are scaled by 1/16 when loaded."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    save('digits', x_train, y_train, x_test, y_test, scale=1 / 16)


def write_fashion_mnist() -> None:
    """Fashion-MNIST: the official 60,000 / 10,000 split, flattened to 784 features; scaled by 1/255 when loaded."""
    import hgq

    data = hgq.datasets.fashion_mnist()
    x_train = np.concatenate([data.x_train, data.x_val])
    y_train = np.concatenate([data.y_train, data.y_val])
    save('fashion_mnist', _to_bytes(x_train), y_train, _to_bytes(data.x_test), data.y_test, scale=1 / 255)


def _to_bytes(x: np.ndarray) -> np.ndarray:
    """Undo the loader's division by 255 (exact) and flatten each image."""
    return np.round(x.reshape(len(x), -1) * 255.0)


def save(name: str, x_train, y_train, x_test, y_test, scale: float) -> None:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    path = WORK_DIR / f'{name}.npz'
    np.savez_compressed(
        path,
        x_train=np.asarray(x_train, dtype=np.uint8),
        y_train=np.asarray(y_train, dtype=np.int64),
        x_test=np.asarray(x_test, dtype=np.uint8),
        y_test=np.asarray(y_test, dtype=np.int64),
        scale=np.float64(scale),
    )
    print(f'{path}: train {len(x_train)}, test {len(x_test)}, features {np.asarray(x_train).shape[1]}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--fashion', action='store_true', help='also write Fashion-MNIST')
    args = parser.parse_args()
    write_digits()
    if args.fashion:
        write_fashion_mnist()


if __name__ == '__main__':
    main()
