"""GPU against CPU: does an H-layer model predict bit-identically on both, per Keras backend?

The model has 14 fractional bits on its inputs and kernels, inputs of 12 significant bits (TensorFloat-32 keeps 11)
and weights small enough that every partial sum is exact in float32 (:func:`hgq.calibrate` checks it), so the CPU
result is the firmware's and any GPU difference is a rounding the GPU added. Two outputs: an ``HConv1D`` and an
``HDense`` on the same quantized input. Next to it, plain Keras ``Conv1D``/``Dense`` layers with the same quantized
weights on the same quantized inputs show what the GPU's default float32 path does without HGQ's precision scope.

Every backend runs in processes of its own: one with no GPU visible builds, calibrates, saves and predicts; one
with the GPU visible loads and predicts. Without a GPU the script says so and checks nothing on a GPU.

Usage::

    python benchmarks/gpu_check.py                      # every installed backend
    python benchmarks/gpu_check.py --backend jax --samples 8192

Prints per backend and output: the device (card name), samples compared, mismatching samples (``np.array_equal``
per sample) and the largest difference, for the H-layers and for the plain Keras reference.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BACKENDS = ('tensorflow', 'jax', 'torch')
FRACTIONAL_BITS = 14
INPUT_CODES = 2**12  # |x| < 2**-2 with 14 fractional bits: 12 significant bits
KERNEL_CODES = 2**7  # |w| < 2**-7 with 14 fractional bits: every partial sum stays within float32's 24 bits
SHAPE = (8, 4)


def _build(out: Path, samples: int) -> None:
    """CPU process: build the model with fixed weights, calibrate it, save it with inputs and CPU predictions."""
    import keras

    import hgq
    from hgq.layers import HConv1D, HDense, HQuantize

    rng = np.random.default_rng(0)
    fixed = {'f_init': FRACTIONAL_BITS, 'f_trainable': False}
    inp = keras.Input(SHAPE)
    xq = HQuantize(input_quantizer=fixed, name='quantize')(inp)
    conv = HConv1D(4, 4, use_bias=False, kernel_quantizer=fixed, input_quantizer=fixed, name='conv')(xq)
    dense = HDense(4, use_bias=False, kernel_quantizer=fixed, input_quantizer=fixed, name='dense')(
        keras.layers.Flatten()(xq)
    )
    model = keras.Model(inp, [conv, dense])
    for name in ('conv', 'dense'):
        kernel = model.get_layer(name).kernel
        codes = rng.integers(-KERNEL_CODES + 1, KERNEL_CODES, size=kernel.shape)
        kernel.assign((codes * 2.0**-FRACTIONAL_BITS).astype('float32'))
    x = (rng.integers(-INPUT_CODES + 1, INPUT_CODES, size=(samples, *SHAPE)) * 2.0**-FRACTIONAL_BITS).astype('float32')
    hgq.calibrate(model, x)  # raises if any sum could be inexact in float32
    model.save(out / 'model.keras')
    quantized = keras.ops.convert_to_numpy(keras.Model(inp, xq)(x))
    weights = {name: keras.ops.convert_to_numpy(model.get_layer(name).qkernel) for name in ('conv', 'dense')}
    np.savez(out / 'inputs.npz', x=x, quantized=quantized, **weights)
    _predict(out, 'cpu')


def _reference(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """Plain Keras layers (no precision scope) on the quantized inputs with the quantized kernels."""
    import keras

    arrays = np.load(out / 'inputs.npz')
    inp = keras.Input(SHAPE)
    conv = keras.layers.Conv1D(4, 4, use_bias=False)
    dense = keras.layers.Dense(4, use_bias=False)
    model = keras.Model(inp, [conv(inp), dense(keras.layers.Flatten()(inp))])
    conv.kernel.assign(arrays['conv'])
    dense.kernel.assign(arrays['dense'])
    return tuple(model.predict(arrays['quantized'], batch_size=1024, verbose=0))


def _predict(out: Path, device: str) -> None:
    import keras

    reference = _reference(out)  # first: under TensorFlow the H-layers switch TF32 off for the whole process
    model = keras.saving.load_model(out / 'model.keras')
    conv, dense = model.predict(np.load(out / 'inputs.npz')['x'], batch_size=1024, verbose=0)
    np.savez(out / f'{device}.npz', conv=conv, dense=dense, ref_conv=reference[0], ref_dense=reference[1])


def _gpu_name() -> str | None:
    """Name of the first GPU the current backend computes on, or None."""
    import keras

    backend = keras.backend.backend()
    if backend == 'tensorflow':
        import tensorflow as tf

        gpus = tf.config.list_physical_devices('GPU')
        return tf.config.experimental.get_device_details(gpus[0]).get('device_name', 'GPU') if gpus else None
    if backend == 'jax':
        import jax

        gpus = [d for d in jax.devices() if d.platform == 'gpu']
        return gpus[0].device_kind if gpus else None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _stage(stage: str, out: Path, samples: int) -> None:
    if stage == 'build':
        _build(out, samples)
        return
    name = _gpu_name()
    (out / 'gpu.json').write_text(json.dumps({'name': name}))
    if name is not None:
        _predict(out, 'gpu')


def _run_stage(backend: str, stage: str, out: Path, samples: int) -> None:
    env = {**os.environ, 'KERAS_BACKEND': backend}
    if stage == 'build':
        env.update(CUDA_VISIBLE_DEVICES='', JAX_PLATFORMS='cpu')
    args = [sys.executable, __file__, '--stage', stage, '--out', str(out), '--samples', str(samples)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f'{backend}: the {stage} process failed:\n{done.stderr[-3000:]}')


def _compare(cpu: np.ndarray, gpu: np.ndarray) -> tuple[int, float]:
    """Samples whose outputs differ (np.array_equal per sample) and the largest absolute difference."""
    rows = [not np.array_equal(a, b) for a, b in zip(cpu, gpu, strict=True)]
    return int(sum(rows)), float(np.max(np.abs(cpu.astype(np.float64) - gpu.astype(np.float64))))


def check(backend: str, samples: int) -> dict:
    """Run the check for one backend; returns the device and the mismatch counts."""
    with tempfile.TemporaryDirectory(prefix=f'gpu_check_{backend}_') as tmp:
        out = Path(tmp)
        _run_stage(backend, 'build', out, samples)
        _run_stage(backend, 'gpu', out, samples)
        name = json.loads((out / 'gpu.json').read_text())['name']
        result = {'backend': backend, 'gpu': name, 'samples': samples}
        if name is not None:
            cpu, gpu = np.load(out / 'cpu.npz'), np.load(out / 'gpu.npz')
            for key in ('conv', 'dense', 'ref_conv', 'ref_dense'):
                result[key] = _compare(cpu[key], gpu[key])
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backend', choices=(*BACKENDS, 'all'), default='all')
    parser.add_argument('--samples', type=int, default=4096)
    parser.add_argument('--stage', choices=('build', 'gpu'), help=argparse.SUPPRESS)
    parser.add_argument('--out', type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        _stage(args.stage, args.out, args.samples)
        return
    backends = BACKENDS if args.backend == 'all' else (args.backend,)
    missing = [b for b in backends if importlib.util.find_spec(b) is None]
    for backend in backends:
        if backend in missing:
            print(f'{backend:10s}  not installed, skipped')
            continue
        result = check(backend, args.samples)
        if result['gpu'] is None:
            print(f'{backend:10s}  no GPU found: CPU build and prediction ran, nothing compared')
            continue
        print(f'{backend:10s}  GPU: {result["gpu"]}, {result["samples"]} samples, mismatching samples (largest diff)')
        for key, label in (
            ('conv', 'HConv1D'),
            ('dense', 'HDense'),
            ('ref_conv', 'Keras Conv1D'),
            ('ref_dense', 'Keras Dense'),
        ):
            mismatches, largest = result[key]
            print(f'{"":10s}  {label:13s} {mismatches:6d}  ({largest:.3g})')


if __name__ == '__main__':
    main()
