"""Data-parallel training equals training on one device.

``tests/distribution_worker.py`` trains one model on one device and data-parallel (TensorFlow: MirroredStrategy
over 2 logical CPU devices; JAX: DataParallel over 4 host devices), in a process per backend because the devices
are fixed when the backend starts. What must hold:

- Tracked ranges are reduced over all replicas (``hgq.backend.max_over_replicas``): with the weights held still
  (learning rate 0) every tracked range equals the one-device range exactly, and in real training the ranges of
  the input quantizer (which sees the data only) do too.
- Weights differ only by the float summation order of gradients over replicas (tiny differences, not equality).
- Calibration inside the distribution scope equals calibration of the same weights outside it, exactly.
- ``hgq run`` refuses a batch that does not split evenly over the devices, before building anything.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hgq.config import ConfigError, parse_config

WORKER = Path(__file__).parent / 'distribution_worker.py'
CASES = {'tensorflow': 2, 'jax': 4}


def _train(backend: str, tmp_path: Path) -> dict[str, np.ndarray]:
    replicas = CASES[backend]
    out = tmp_path / f'{backend}.npz'
    env = {**os.environ, 'KERAS_BACKEND': backend, 'CUDA_VISIBLE_DEVICES': '', 'JAX_PLATFORMS': 'cpu'}
    env['XLA_FLAGS'] = f'{env.get("XLA_FLAGS", "")} --xla_force_host_platform_device_count={replicas}'.strip()
    done = subprocess.run(
        [sys.executable, str(WORKER), str(out), str(replicas)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f'{backend} worker failed:\n{done.stderr[-4000:]}'
    return dict(np.load(out))


@pytest.mark.parametrize('backend', sorted(CASES))
def test_data_parallel_training_equals_one_device(backend, tmp_path):
    if backend == 'jax':
        pytest.importorskip('jax')
    found = _train(backend, tmp_path)
    single = {k.split('/', 1)[1]: v for k, v in found.items() if k.startswith('single/')}
    parallel = {k.split('/', 1)[1]: v for k, v in found.items() if k.startswith('parallel/')}
    assert sorted(single) == sorted(parallel)
    frozen = [key for key in single if key.startswith('frozen/ranges/')]
    assert len(frozen) == 9  # vmin, vmax, train_peak of 3 WRAP quantizers
    differ = [key for key in frozen if not np.array_equal(single[key], parallel[key])]
    assert not differ, f'tracked ranges differ from one device: {differ}'
    for name in ('vmin', 'vmax', 'train_peak'):
        key = f'trained/ranges/0/{name}'
        assert np.array_equal(single[key], parallel[key]), key
    weights = [key for key in single if key.startswith('weights/')]
    assert weights
    for key in weights:
        np.testing.assert_allclose(parallel[key], single[key], rtol=0, atol=1e-3, err_msg=key)
    kif = [key for key in parallel if key.startswith('calibrated/kif/')]
    assert len(kif) == 9
    for key in kif:
        assert np.array_equal(parallel[key], parallel[key.replace('calibrated/', 'recalibrated/')]), key
    assert parallel['ebops'] > 0
    replicas = CASES[backend]
    assert str(found['uneven_batch_error']) == (
        f'training.batch_size: expected a multiple of the {replicas} devices of data-parallel training '
        f'(each takes an equal share of every batch), got {8 * replicas + 1}'
    )


def test_distribution_key_of_a_run_configuration():
    base = {'name': 'x', 'dataset': 'digits', 'model': {'layers': [{'type': 'HDense', 'units': 2}]}}
    assert parse_config(base).training.distribution == 'none'
    config = parse_config({**base, 'training': {'distribution': 'data_parallel'}})
    assert config.training.distribution == 'data_parallel'
    assert config.to_dict()['training']['distribution'] == 'data_parallel'
    with pytest.raises(ConfigError, match=r"training.distribution: expected one of \['none', 'data_parallel'\]"):
        parse_config({**base, 'training': {'distribution': 'mirrored'}})


def test_pytorch_is_refused_alike_by_the_configuration_and_the_scope():
    """One check (``hgq.backend.check_data_parallel``) behind ``training.distribution`` and ``data_parallel``."""
    script = """
import hgq.backend
from hgq.config import ConfigError, parse_config
base = {'name': 'x', 'dataset': 'digits', 'model': {'layers': [{'type': 'HDense', 'units': 2}]}}
assert parse_config(base).training.distribution == 'none'
try:
    parse_config({**base, 'training': {'distribution': 'data_parallel'}})
except ConfigError as err:
    print(err)
try:
    with hgq.backend.data_parallel():
        pass
except ValueError as err:
    print(err)
"""
    env = {**os.environ, 'KERAS_BACKEND': 'torch', 'CUDA_VISIBLE_DEVICES': ''}
    done = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    reason = (
        'data-parallel training needs the tensorflow or jax Keras backend (KERAS_BACKEND); this process runs torch, '
        'for which Keras has no data-parallel distribution'
    )
    assert done.stdout.splitlines() == [f'training.distribution: {reason}', reason]
