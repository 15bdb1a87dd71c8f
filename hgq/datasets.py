"""Real data sets for HGQ examples and benchmarks, split and scaled the way the field does.

Every loader returns a :class:`Dataset` with fixed-seed train/validation/test splits. Nothing here ever invents
data: a data set that is not on this machine (and cannot be fetched) raises an error saying how to get it.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hgq.fileio import write_atomic

__all__ = ['Dataset', 'digits', 'fashion_mnist', 'jets', 'load', 'DATASETS', 'FASHION_MNIST_DIR', 'JETS_OPENML_NAME']

SEED = 42
FASHION_MNIST_DIR = Path('/usr/share/datasets/fashion-mnist')
FASHION_MNIST_FILES = {
    'x_train': 'train-images-idx3-ubyte',
    'y_train': 'train-labels-idx1-ubyte',
    'x_test': 't10k-images-idx3-ubyte',
    'y_test': 't10k-labels-idx1-ubyte',
}
JETS_OPENML_NAME = 'hls4ml_lhc_jets_hlf'
JETS_N_FEATURES = 16
JETS_CLASSES = ('g', 'q', 't', 'w', 'z')
JETS_CACHE_FILE = 'hgq/hls4ml_lhc_jets_hlf.npz'


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits of one data set.

    Attributes
    ----------
    name : str
        Data set name (``digits``, ``fashion_mnist``, ``jets``).
    x_train, y_train, x_val, y_val, x_test, y_test : np.ndarray
        Inputs as ``float32`` and labels as integer class indices (classification) or ``float32`` targets.
    n_classes : int or None
        Number of classes; ``None`` for regression.
    class_names : tuple of str
        Names of the classes (empty for regression).

    Examples
    --------
    >>> data = digits()
    >>> data.x_train.shape[1:], data.n_classes, data.task
    ((64,), 10, 'classification')
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None
    class_names: tuple[str, ...] = ()

    @property
    def task(self) -> str:
        """``'classification'`` or ``'regression'``."""
        return 'regression' if self.n_classes is None else 'classification'

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        sizes = f'train={len(self.x_train)}, val={len(self.x_val)}, test={len(self.x_test)}'
        return f'Dataset({self.name!r}, input_shape={self.input_shape}, {sizes}, n_classes={self.n_classes})'


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, stratify: bool = True):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=fraction, random_state=seed, stratify=y if stratify else None)


def digits(val_fraction: float = 0.2, test_fraction: float = 0.2, seed: int = SEED) -> Dataset:
    """scikit-learn's 8x8 handwritten digits (1,797 samples, 64 features, 10 classes).

    Pixels (0-16) are scaled to ``[0, 1]``. The test set is ``test_fraction`` of all samples and the validation
    set ``val_fraction`` of the rest, stratified, with a fixed seed.

    Examples
    --------
    >>> data = digits()
    >>> len(data.x_train), len(data.x_val), len(data.x_test)
    (1149, 288, 360)
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int64)
    x_rest, x_test, y_rest, y_test = _split(x, y, test_fraction, seed)
    x_train, x_val, y_train, y_val = _split(x_rest, y_rest, val_fraction, seed)
    names = tuple(str(c) for c in range(10))
    return Dataset('digits', x_train, y_train, x_val, y_val, x_test, y_test, 10, names)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as stream:
        raw = stream.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f'{path}: not an IDX file of unsigned bytes')
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * a : 8 + 4 * a], 'big') for a in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f'{path}: expected {int(np.prod(shape))} values for shape {shape}, found {data.size}')
    return data.reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (f'{stem}.gz', stem):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist(path: str | os.PathLike | None = None, val_fraction: float = 0.1, seed: int = SEED) -> Dataset:
    """Fashion-MNIST (28x28 grey images, 10 classes) from Debian's ``dataset-fashion-mnist`` files.

    Images are scaled to ``[0, 1]`` with shape ``(28, 28, 1)``. The official 10,000 test images are the test
    set; the validation set is ``val_fraction`` of the 60,000 training images (stratified, fixed seed).

    Parameters
    ----------
    path : path, optional
        Directory holding ``train-images-idx3-ubyte(.gz)`` and the three other IDX files. Default:
        ``/usr/share/datasets/fashion-mnist``, where ``apt-get install dataset-fashion-mnist`` puts them.

    Examples
    --------
    >>> data = fashion_mnist()  # doctest: +SKIP
    >>> data.input_shape  # doctest: +SKIP
    (28, 28, 1)
    """
    directory = Path(path) if path is not None else FASHION_MNIST_DIR
    files = {key: _find_idx(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
    missing = [FASHION_MNIST_FILES[key] for key, found in files.items() if found is None]
    if missing:
        raise FileNotFoundError(
            f"fashion_mnist: {directory} lacks {', '.join(missing)} (.gz). Install Debian's data set with "
            '`apt-get install dataset-fashion-mnist` (files under /usr/share/datasets/fashion-mnist), or pass '
            'path= to a directory holding the four IDX files'
        )
    arrays = {key: _read_idx(file) for key, file in files.items()}
    x_all = (arrays['x_train'][..., None] / 255.0).astype(np.float32)
    y_all = arrays['y_train'].astype(np.int64)
    x_test = (arrays['x_test'][..., None] / 255.0).astype(np.float32)
    x_train, x_val, y_train, y_val = _split(x_all, y_all, val_fraction, seed)
    names = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
    return Dataset(
        'fashion_mnist', x_train, y_train, x_val, y_val, x_test, arrays['y_test'].astype(np.int64), 10, names
    )


def _jets_arrays_from_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and string labels from an ``.npz`` (arrays ``x``, ``y``) or ``.csv`` (last column: class)."""
    if not path.is_file():
        raise FileNotFoundError(f'jets: no file at {path}; expected an .npz (arrays x, y) or a .csv (class last)')
    if path.suffix == '.npz':
        with np.load(path, allow_pickle=False) as archive:
            if 'x' not in archive or 'y' not in archive:
                raise ValueError(f'jets: {path} must hold arrays "x" and "y", found {sorted(archive.files)}')
            x, y = archive['x'], archive['y']
    elif path.suffix == '.csv':
        table = np.genfromtxt(path, delimiter=',', dtype=str, skip_header=1)
        x, y = table[:, :-1].astype(np.float64), table[:, -1]
    else:
        raise ValueError(f'jets: unsupported file type {path.suffix!r} ({path}); use .npz or .csv')
    return np.asarray(x, dtype=np.float32), np.char.strip(np.asarray(y).astype(str), '"\'')


def _fetch_jets(cache: Path, data_home: str | os.PathLike | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import fetch_openml

    try:
        bunch = fetch_openml(JETS_OPENML_NAME, version=1, data_home=data_home, as_frame=False, parser='liac-arff')
    except (OSError, ValueError) as err:  # no network, OpenML down, or a broken cache
        raise FileNotFoundError(
            f'jets: {cache} is absent and OpenML {JETS_OPENML_NAME!r} could not be fetched ({type(err).__name__}: '
            f'{err}). Run hgq.datasets.jets() once on a machine with network access and copy {cache}, or pass '
            'path= to an .npz (arrays x, y) or .csv file of the data set'
        ) from None
    x, y = np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target).astype(str)
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, lambda partial: np.savez_compressed(partial, x=x, y=y))
    return x, y


def jets(
    path: str | os.PathLike | None = None,
    data_home: str | os.PathLike | None = None,
    download: bool = True,
    val_fraction: float = 0.25,
    test_fraction: float = 0.2,
    seed: int = SEED,
) -> Dataset:
    """The LHC jet-tagging data set (OpenML ``hls4ml_lhc_jets_hlf``: 16 high-level features, 5 classes).

    Splits and scaling follow the hls4ml tutorial: ``test_fraction`` held out with ``random_state=42``, then a
    validation split of the rest; features standardised with mean and deviation fitted on the training split.
    Labels ``g, q, t, w, z`` become class indices 0-4.

    Parameters
    ----------
    path : path, optional
        A local copy: ``.npz`` with arrays ``x`` (N, 16) and ``y`` (N,) of class names, or a ``.csv`` whose last
        column is the class. Without it, the cache ``<data_home>/hgq/hls4ml_lhc_jets_hlf.npz`` is read.
    data_home : path, optional
        scikit-learn's data directory (default ``~/scikit_learn_data``); caches the OpenML download.
    download : bool
        Fetch from OpenML (``sklearn.datasets.fetch_openml``) when the cache is absent. Without network the
        loader raises an error; it never substitutes other data.

    Examples
    --------
    >>> data = jets()  # doctest: +SKIP
    >>> data.input_shape, data.class_names  # doctest: +SKIP
    ((16,), ('g', 'q', 't', 'w', 'z'))
    """
    from sklearn.datasets import get_data_home

    if path is not None:
        x, labels = _jets_arrays_from_file(Path(path))
    else:
        cache = Path(get_data_home(data_home)) / JETS_CACHE_FILE
        if cache.is_file():
            x, labels = _jets_arrays_from_file(cache)
        elif download:
            x, labels = _fetch_jets(cache, data_home)
        else:
            raise FileNotFoundError(
                f'jets: {cache} is absent and download=False; call hgq.datasets.jets() with network access once '
                'to cache OpenML hls4ml_lhc_jets_hlf, or pass path= to an .npz or .csv copy'
            )
    return _jets_dataset(x, labels, val_fraction, test_fraction, seed)


def _jets_dataset(x: np.ndarray, labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    if x.ndim != 2 or x.shape[1] != JETS_N_FEATURES or len(x) != len(labels):
        raise ValueError(
            f'jets: expected {JETS_N_FEATURES} features per sample and one label each, got x {x.shape} and '
            f'{len(labels)} labels'
        )
    unknown = sorted(set(np.unique(labels)) - set(JETS_CLASSES))
    if unknown:
        raise ValueError(f'jets: unknown class labels {unknown[:5]}; expected {JETS_CLASSES}')
    y = np.searchsorted(np.asarray(JETS_CLASSES), labels).astype(np.int64)
    x_rest, x_test, y_rest, y_test = _split(x, y, test_fraction, seed, stratify=False)
    x_train, x_val, y_train, y_val = _split(x_rest, y_rest, val_fraction, seed, stratify=False)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def scale(a: np.ndarray) -> np.ndarray:
        return ((a - mean) / std).astype(np.float32)

    return Dataset('jets', scale(x_train), y_train, scale(x_val), y_val, scale(x_test), y_test, 5, JETS_CLASSES)


DATASETS = {'digits': digits, 'fashion_mnist': fashion_mnist, 'jets': jets}


def load(name: str, **kwargs) -> Dataset:
    """Load a data set by name (``digits``, ``fashion_mnist``, ``jets``) with the loader's keyword arguments.

    Examples
    --------
    >>> load('digits').n_classes
    10
    """
    if name not in DATASETS:
        raise ValueError(f'unknown data set {name!r}; expected one of {sorted(DATASETS)}')
    return DATASETS[name](**kwargs)
