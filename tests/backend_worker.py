"""Run one step of the cross-backend test in a process of its own (the Keras backend is fixed at import).

``python tests/backend_worker.py train OUT.keras DATA.npz``: build, train (two epochs) and save an uncalibrated
model, and its predictions before saving to ``OUT.npy``. ``python tests/backend_worker.py inspect DATA.npz OUT_DIR
MODEL.keras ...``: load each model, predict, calibrate, predict again (also on overflowing inputs), write its hls4ml
project and save every number the hardware depends on to ``OUT_DIR/<model>.npz``. Used by tests/test_backends.py
with ``KERAS_BACKEND`` set per process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np

import hgq
from hgq.ebops import h_layers
from hgq.layers import HActivation, HAdd, HConv2D, HDense, HDenseBatchNorm, HMaxPooling2D, HQuantize, HSoftmax


def build_model() -> keras.Model:
    """A small model with every kind of operation whose numbers could depend on the backend."""
    inp = keras.Input((6, 6, 1))
    h = HQuantize(beta=1e-5)(inp)
    h = HConv2D(4, 3, activation='relu', beta=1e-5)(h)
    h = HMaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    a = HDense(8, beta=1e-5)(h)
    b = HDenseBatchNorm(8, beta=1e-5)(h)
    h = HAdd()([a, b])
    h = HActivation('tanh', beta=1e-5)(h)
    return keras.Model(inp, HSoftmax(beta=1e-5)(HDense(3, beta=1e-5)(h)))


def train(out: Path, data: Path) -> None:
    arrays = np.load(data)
    keras.utils.set_random_seed(0)
    model = build_model()
    model.compile(keras.optimizers.Adam(0.01), 'categorical_crossentropy')
    model.fit(arrays['x'], arrays['y'], epochs=2, batch_size=32, verbose=0)
    np.save(out.with_suffix('.npy'), model.predict(arrays['x'], verbose=0))
    model.save(out)


def inspect(data: Path, out_dir: Path, *models: Path) -> None:
    """For each model: ``out_dir/<model stem>.npz`` with every number the hardware depends on."""
    arrays = np.load(data)
    for model_path in models:
        # compile=False: Keras saves the optimizer of a compiled model under its backend's own class (PyTorch's
        # Adam lives in keras.src.backend.torch); restoring it under TensorFlow imports torch, which crashes here.
        model = keras.saving.load_model(model_path, compile=False)
        found = {'before_calibration': model.predict(arrays['x'], verbose=0)}
        hgq.calibrate(model, arrays['x'])
        found['calibrated'] = model.predict(arrays['x'], verbose=0)
        # Inputs beyond the calibration range overflow (wrap) in the quantizers that see them.
        found['overflowing'] = model.predict(arrays['x'] * 4.0, verbose=0)
        found['ebops'] = np.float64(hgq.ebops(model))
        found['ebops_estimate'] = np.float64(hgq.ebops(model, exact=False))
        for layer in h_layers(model):
            for n, quantizer in enumerate(layer.activation_quantizers):
                for name, value in zip('kif', quantizer.kif(), strict=True):
                    found[f'{layer.name}/in{n}/{name}'] = value
            for name, (values, _) in layer.quantized_weights().items():
                found[f'{layer.name}/{name}'] = values
        project = out_dir / f'{model_path.stem}_prj'
        hgq.to_hls(model, project, backend='Vitis')
        firmware = project / 'firmware'
        for path in sorted([*firmware.glob('*.*'), *(firmware / 'weights').glob('*')]):
            found[f'firmware/{path.relative_to(firmware)}'] = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        np.savez(out_dir / f'{model_path.stem}.npz', **found)


if __name__ == '__main__':
    command, *args = sys.argv[1:]
    {'train': train, 'inspect': inspect}[command](*map(Path, args))
