"""A small built-in end-to-end example on scikit-learn's digits data set."""

from __future__ import annotations

import keras
import numpy as np

__all__ = ['run_demo']


def run_demo(epochs: int = 60, beta: float = 3e-6, seed: int = 0) -> int:
    """Train an HGQ MLP on digits, calibrate it and print accuracy and EBOPs."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    import hgq
    from hgq.layers import HDense, HQuantize

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            HQuantize(beta=beta),
            HDense(32, activation='relu', beta=beta),
            HDense(10, beta=beta),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=['accuracy'],
    )
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=2)
    exact = hgq.calibrate(model, x_train)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f'test accuracy {accuracy:.4f}, EBOPs {exact:.0f}')
    return 0
