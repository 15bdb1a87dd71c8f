"""End-to-end training on real data (scikit-learn's 8x8 digits): accuracy, and EBOPs that fall under beta > 0."""

import time

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import hgq
from hgq.layers import HAveragePooling2D, HConv2D, HDense, HMaxPooling2D, HQuantize

EPOCHS = 30


@pytest.fixture(scope='module')
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype('float32')
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def _train(model: keras.Model, x_train, y_train, x_test, y_test) -> tuple[float, float, float]:
    """Train, calibrate; return test accuracy, exact EBOPs and seconds taken."""
    start = time.perf_counter()
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=['accuracy'],
    )
    model.fit(x_train, y_train, epochs=EPOCHS, batch_size=64, verbose=0)
    exact = hgq.calibrate(model, x_train)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return accuracy, exact, time.perf_counter() - start


def _mlp(beta: float) -> keras.Model:
    return keras.Sequential(
        [
            keras.Input((64,)),
            HQuantize(beta=beta),
            HDense(32, activation='relu', beta=beta),
            HDense(10, beta=beta),
        ]
    )


def test_mlp_reaches_high_accuracy_and_beta_cuts_exact_ebops(digits):
    x_train, x_test, y_train, y_test = digits
    keras.utils.set_random_seed(0)
    accuracy_0, ebops_0, seconds_0 = _train(_mlp(0.0), x_train, y_train, x_test, y_test)
    keras.utils.set_random_seed(0)
    accuracy_b, ebops_b, seconds_b = _train(_mlp(1e-5), x_train, y_train, x_test, y_test)
    print(f'\nMLP beta=0:    accuracy {accuracy_0:.4f}, exact EBOPs {ebops_0:.0f} ({seconds_0:.1f} s)')
    print(f'MLP beta=1e-5: accuracy {accuracy_b:.4f}, exact EBOPs {ebops_b:.0f} ({seconds_b:.1f} s)')
    assert accuracy_0 >= 0.90
    assert accuracy_b >= 0.85
    assert ebops_b < 0.6 * ebops_0


@pytest.mark.parametrize('pooling', [HMaxPooling2D, HAveragePooling2D])
def test_cnn_with_pooling_trains(digits, pooling):
    x_train, x_test, y_train, y_test = digits
    x_train, x_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
    keras.utils.set_random_seed(0)
    beta = 1e-6
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            HQuantize(beta=beta),
            HConv2D(8, 3, activation='relu', beta=beta),
            pooling((2, 2)),
            keras.layers.Flatten(),
            HDense(10, beta=beta),
        ]
    )
    accuracy, exact, seconds = _train(model, x_train, y_train, x_test, y_test)
    per_layer = {name: round(value) for name, value in hgq.layer_ebops(model).items()}
    print(f'\nCNN + {pooling.__name__}: accuracy {accuracy:.4f}, exact EBOPs {exact:.0f} {per_layer} ({seconds:.1f} s)')
    assert accuracy >= 0.85
    assert exact > 0 and np.isclose(sum(per_layer.values()), exact, atol=len(per_layer))
