"""Data set loaders: real digits, the Fashion-MNIST IDX reader, the jets loader's files and error messages.

No test fabricates data: file-format tests write real digits samples in the format a loader reads.
"""

import gzip
import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from hgq import datasets


def test_digits_splits_are_fixed_stratified_and_scaled():
    data = datasets.digits()
    again = datasets.digits()
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (1149, 288, 360)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.input_shape == (64,) and data.n_classes == 10 and data.task == 'classification'
    for split in ('x_train', 'y_train', 'x_val', 'y_val', 'x_test', 'y_test'):
        assert np.array_equal(getattr(data, split), getattr(again, split))
    for y in (data.y_train, data.y_val, data.y_test):
        assert set(np.unique(y)) == set(range(10))
    x_all = np.concatenate([data.x_train, data.x_val, data.x_test])
    assert x_all.min() == 0.0 and x_all.max() == 1.0
    raw = load_digits().data / 16.0
    assert np.array_equal(np.sort(x_all.sum(axis=1)), np.sort(raw.sum(axis=1).astype(np.float32)))
    assert not np.array_equal(datasets.digits(seed=1).y_test, data.y_test)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(s).to_bytes(4, 'big') for s in array.shape)
    with gzip.open(path, 'wb') as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_reads_idx_files_from_a_directory(tmp_path):
    images, labels = load_digits(return_X_y=True)
    images = (images * 16).clip(0, 255).reshape(-1, 8, 8)
    _write_idx(tmp_path / 'train-images-idx3-ubyte.gz', images[:1500])
    _write_idx(tmp_path / 'train-labels-idx1-ubyte.gz', labels[:1500])
    _write_idx(tmp_path / 't10k-images-idx3-ubyte.gz', images[1500:])
    _write_idx(tmp_path / 't10k-labels-idx1-ubyte.gz', labels[1500:])
    data = datasets.fashion_mnist(tmp_path)
    assert data.input_shape == (8, 8, 1) and data.n_classes == 10
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (1350, 150, 297)
    assert np.array_equal(data.x_test[..., 0], (images[1500:] / 255.0).astype(np.float32))
    assert np.array_equal(data.y_test, labels[1500:])
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0


def test_fashion_mnist_absent_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'apt-get install dataset-fashion-mnist.*path='):
        datasets.fashion_mnist(tmp_path)
    (tmp_path / 'train-images-idx3-ubyte').write_bytes(b'\x00\x00\x0d\x01')
    for stem in ('train-labels-idx1-ubyte', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        (tmp_path / stem).write_bytes(b'')
    with pytest.raises(ValueError, match='not an IDX file'):
        datasets.fashion_mnist(tmp_path)


def test_jets_without_cache_or_network_raises_and_never_substitutes(tmp_path):
    with pytest.raises(FileNotFoundError, match=r'hls4ml_lhc_jets_hlf\.npz is absent and download=False'):
        datasets.jets(data_home=tmp_path, download=False)
    with pytest.raises(FileNotFoundError, match=r'jets: no file at .*missing\.npz'):
        datasets.jets(path=tmp_path / 'missing.npz')
    with pytest.raises(ValueError, match='unsupported file type'):
        (tmp_path / 'jets.txt').write_text('')
        datasets.jets(path=tmp_path / 'jets.txt')


def _digits_as_jets_file(path, n_features=16):
    """Real digits pixels and labels 0-4 in the jets file layout, to exercise the file reader only."""
    x, y = load_digits(return_X_y=True)
    keep = y < 5
    names = np.array(datasets.JETS_CLASSES)[y[keep]]
    np.savez(path, x=x[keep][:, 20 : 20 + n_features], y=names)
    return x[keep][:, 20 : 20 + n_features], y[keep]


def test_jets_reads_a_local_file_standardised_on_the_training_split(tmp_path):
    x, y = _digits_as_jets_file(tmp_path / 'jets.npz')
    data = datasets.jets(path=tmp_path / 'jets.npz')
    assert data.input_shape == (16,) and data.n_classes == 5 and data.class_names == ('g', 'q', 't', 'w', 'z')
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == len(x)
    assert len(data.x_test) == math.ceil(0.2 * len(x))
    mean, std = data.x_train.mean(axis=0), data.x_train.std(axis=0)
    varying = x.std(axis=0) > 0
    assert np.allclose(mean, 0, atol=1e-5) and np.allclose(std[varying], 1, atol=1e-4)
    assert np.bincount(data.y_test, minlength=5).sum() == len(data.y_test)
    csv = tmp_path / 'jets.csv'
    header = ','.join([f'f{j}' for j in range(16)] + ['class'])
    rows = [','.join([*map(str, row), f'"{datasets.JETS_CLASSES[c]}"']) for row, c in zip(x, y, strict=True)]
    csv.write_text('\n'.join([header, *rows]) + '\n')
    from_csv = datasets.jets(path=csv)
    assert np.array_equal(from_csv.x_test, data.x_test) and np.array_equal(from_csv.y_test, data.y_test)


def test_jets_rejects_files_of_another_shape(tmp_path):
    _digits_as_jets_file(tmp_path / 'jets.npz', n_features=12)
    with pytest.raises(ValueError, match='expected 16 features per sample'):
        datasets.jets(path=tmp_path / 'jets.npz')
    np.savez(tmp_path / 'other.npz', data=np.zeros(3))
    with pytest.raises(ValueError, match='must hold arrays "x" and "y"'):
        datasets.jets(path=tmp_path / 'other.npz')


def test_load_by_name():
    assert datasets.load('digits').name == 'digits'
    with pytest.raises(ValueError, match=r"unknown data set 'mnist'; expected one of \['digits'"):
        datasets.load('mnist')
