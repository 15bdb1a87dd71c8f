"""What several sub-commands share: the user-error type, loading a saved model, loading input data.

Nothing here imports Keras at module level (``hgq --help`` must stay fast).
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras
    import numpy as np

__all__ = ['UserError', 'add_unsafe_argument', 'load_model', 'load_data']


class UserError(Exception):
    """Bad input to a command: the message names the file, key or layer at fault and what was expected."""


def add_unsafe_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--unsafe`` flag of commands that load a saved model."""
    parser.add_argument(
        '--unsafe',
        action='store_true',
        help='load models that hold Python code (e.g. a lambda in HActivation): keras safe_mode=False; '
        'only for files you trust',
    )


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f'{what} {path} does not exist')
    if not path.is_file():
        raise UserError(f'{what} {path} is not a file')


def load_model(path: str | Path, unsafe: bool = False) -> keras.Model:
    """Load a ``.keras`` model of H-layers, turning every way it can fail into a :class:`UserError`.

    Parameters
    ----------
    path : str or Path
        The ``.keras`` file.
    unsafe : bool
        Load with ``safe_mode=False`` (allows Python lambdas in the model; only for trusted files).
    """
    import keras

    import hgq.layers  # noqa: F401  (registers the H-layers with Keras)

    path = Path(path)
    _check_file(path, 'model file')
    if not zipfile.is_zipfile(path):
        raise UserError(f'model file {path} is not a .keras archive (truncated or corrupt: not a zip file)')
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=not unsafe)
    except (TypeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as err:
        if 'safe_mode' in str(err):
            raise UserError(
                f'model file {path} holds Python code (a lambda, e.g. in HActivation) that Keras loads only with '
                'safe_mode=False; pass --unsafe if you trust the file'
            ) from None
        stale = _stale_variables(str(err))
        if stale:
            raise UserError(f'model file {path} {stale}') from None
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise UserError(f'model file {path} could not be loaded: {first[:300]}') from None


def _stale_variables(message: str) -> str | None:
    """A loading error about a quantizer's variables, as the format difference it means (else None)."""
    import re

    # the quantizers' own check (hgq.quantizer, load_own_variables)
    m = re.search(r'(\S+): the saved quantizer holds \d+ variables, expected (\d+) (\([^)]*\))', message)
    if m is None:
        return None
    name, expected, names = m.groups()
    return (
        f'was saved by another hgq version: quantizer {name!r} does not hold the {expected} variables {names} '
        f'this version stores; files saved before WRAP quantizers gained range_started '
        'and train_peak (4 variables: f, vmin, vmax, calibrated) do not load: load and export them with the '
        'version that saved them, or train again'
    )


def load_data(path: str | Path) -> np.ndarray | list[np.ndarray]:
    """Inputs from ``.npy`` (one input) or ``.npz`` (one array per model input, in file order).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> file = os.path.join(tempfile.mkdtemp(), 'x.npy')
    >>> np.save(file, np.zeros((3, 4)))
    >>> load_data(file).shape
    (3, 4)
    """
    import numpy as np

    path = Path(path)
    _check_file(path, 'data file')
    if path.suffix not in ('.npy', '.npz'):
        raise UserError(f'data file {path} must be .npy (one input) or .npz (one array per input)')
    try:
        if path.suffix == '.npy':
            return np.load(path)
        with np.load(path) as arrays:
            values = [arrays[name] for name in arrays.files]
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f'data file {path} could not be read: {err}') from None
    if not values:
        raise UserError(f'data file {path} holds no arrays')
    return values[0] if len(values) == 1 else values
