"""HGQ under every Keras backend (TensorFlow, JAX, PyTorch).

Tests marked ``backends`` run under whatever ``KERAS_BACKEND`` selects; CI runs them under JAX and PyTorch as well
(README, "Development"). ``test_model_from_any_backend_is_identical_under_every_backend`` trains a model under each
backend in a process of its own, then loads every model under every backend and requires the same predictions
(calibrated, uncalibrated and overflowing), the same ``k, i, f`` of every quantizer, the same quantized weights and
EBOPs, and byte-identical hls4ml firmware sources; each model reloaded under the backend that trained it predicts
what it predicted before it was saved.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest

import hgq
from hgq.backend import exact_float32
from hgq.ebops import h_layers
from hgq.layers import HDense, HQuantize
from hgq.quantizer import ActivationQuantizer

sys.path.insert(0, str(Path(__file__).parent))
from backend_worker import build_model  # noqa: E402

BACKENDS = ('tensorflow', 'jax', 'torch')
WORKER = Path(__file__).parent / 'backend_worker.py'


def _data(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 1)).astype('float32')
    y = keras.utils.to_categorical(rng.integers(0, 3, n), 3).astype('float32')
    return x, y


def test_train_calibrate_save_load_predict_identically(tmp_path: Path) -> None:
    # Under JAX and PyTorch the same steps run in the subprocesses of the cross-backend test below.
    x, y = _data()
    keras.utils.set_random_seed(1)
    model = build_model()
    model.compile(keras.optimizers.Adam(0.01), 'categorical_crossentropy')
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history['loss']))
    # 16 optimizer steps of about 0.01 (times bits_lr_scale) cannot take any bitwidth far from its start.
    for layer in h_layers(model):
        for quantizer in layer.quantizers:
            f = keras.ops.convert_to_numpy(quantizer.f)
            assert np.all(np.abs(f) < 20), f'{quantizer.name}: f ran away during training: {f.max()}'
    ebops = hgq.calibrate(model, x)
    assert np.isfinite(ebops) and ebops > 0
    predictions = model.predict(x, verbose=0)
    path = tmp_path / 'model.keras'
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert np.array_equal(loaded.predict(x, verbose=0), predictions)
    assert np.array_equal(loaded.predict(x * 4.0, verbose=0), model.predict(x * 4.0, verbose=0))
    assert hgq.ebops(loaded) == ebops
    for original, reloaded in zip(h_layers(model), h_layers(loaded), strict=True):
        for q0, q1 in zip(original.activation_quantizers, reloaded.activation_quantizers, strict=True):
            assert all(np.array_equal(a, b) for a, b in zip(q0.kif(), q1.kif(), strict=True))


@pytest.mark.backends
def test_bits_step_is_scaled_on_every_backend() -> None:
    """One Adam step moves every bitwidth by about the learning rate times ``bits_lr_scale``; pace 0 holds them."""
    lr, scale = 2.0**-6, 4.0
    # bits_l1 gives every f a gradient near 1, so that Adam's first step is the learning rate (up to epsilon).
    quantizer = ActivationQuantizer(f_init=3.0, overflow_mode='SAT', i_init=2.0, bits_l1=1.0, bits_lr_scale=scale)
    model = keras.Sequential([keras.Input((8,)), quantizer])
    model.compile(keras.optimizers.Adam(lr, epsilon=1e-12), 'mse')
    x = np.random.default_rng(2).normal(size=(64, 8)).astype('float32')
    before = keras.ops.convert_to_numpy(quantizer.f).copy()
    model.fit(x, x, epochs=1, batch_size=64, verbose=0)  # one step
    step = np.abs(keras.ops.convert_to_numpy(quantizer.f) - before)
    np.testing.assert_allclose(step, lr * scale, rtol=1e-3)
    quantizer.set_bits_pace(0.0)
    model.make_train_function(force=True)  # JAX compiles the pace into the step
    before = keras.ops.convert_to_numpy(quantizer.f).copy()
    model.fit(x, x, epochs=1, batch_size=64, verbose=0)
    assert np.array_equal(keras.ops.convert_to_numpy(quantizer.f), before)


@pytest.mark.backends
def test_h_layer_products_keep_every_float32_bit() -> None:
    """Inputs of 12 significant bits (TF32 keeps 11) times 7-bit weights: the dense layer equals the float64 sum."""
    rng = np.random.default_rng(3)
    x = rng.integers(-(2**12), 2**12, size=(32, 16)) * 2.0**-14
    kernel = rng.integers(-(2**7), 2**7, size=(16, 4)) * 2.0**-14
    model = keras.Sequential(
        [
            keras.Input((16,)),
            HQuantize(input_quantizer={'f_init': 14, 'i_init': 0}),
            HDense(4, use_bias=False, kernel_quantizer={'f_init': 14}, input_quantizer={'f_init': 14, 'i_init': 0}),
        ]
    )
    model.layers[-1].kernel.assign(kernel.astype('float32'))
    hgq.calibrate(model, x.astype('float32'))
    with exact_float32():
        y = keras.ops.convert_to_numpy(model(x.astype('float32')))
    assert np.array_equal(y.astype(np.float64), x @ kernel)


def _run(backend: str, *args: str) -> None:
    env = {**os.environ, 'KERAS_BACKEND': backend, 'CUDA_VISIBLE_DEVICES': '', 'JAX_PLATFORMS': 'cpu'}
    done = subprocess.run([sys.executable, str(WORKER), *args], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f'{backend} {args[0]} failed:\n{done.stderr[-4000:]}'


def test_model_from_any_backend_is_identical_under_every_backend() -> None:
    # A directory of its own: this test runs for minutes, longer than pytest keeps the temporary directories of
    # earlier runs when other pytest runs start meanwhile.
    with tempfile.TemporaryDirectory(prefix='hgq_backends_') as tmp:
        _check_identical_under_every_backend(Path(tmp))


def _check_identical_under_every_backend(tmp_path: Path) -> None:
    x, y = _data()
    data = tmp_path / 'data.npz'
    np.savez(data, x=x, y=y)
    models = [tmp_path / f'trained_{backend}.keras' for backend in BACKENDS]
    for backend, model in zip(BACKENDS, models, strict=True):
        _run(backend, 'train', str(model), str(data))
    for backend in BACKENDS:
        (tmp_path / backend).mkdir()
        _run(backend, 'inspect', str(data), str(tmp_path / backend), *map(str, models))
    for backend, model in zip(BACKENDS, models, strict=True):  # reloaded under its own backend: as trained
        reloaded = np.load(tmp_path / backend / f'{model.stem}.npz')['before_calibration']
        assert np.array_equal(reloaded, np.load(model.with_suffix('.npy'))), f'{model.stem} reloaded'
    for model in models:
        reference = dict(np.load(tmp_path / 'tensorflow' / f'{model.stem}.npz'))
        assert any(key.startswith('firmware/weights/') for key in reference)
        for backend in BACKENDS[1:]:
            found = dict(np.load(tmp_path / backend / f'{model.stem}.npz'))
            assert sorted(found) == sorted(reference), f'{model.stem} under {backend}'
            differ = [key for key in reference if not np.array_equal(found[key], reference[key])]
            assert not differ, f'{model.stem}: {backend} differs from tensorflow in {differ}'
