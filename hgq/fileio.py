"""Writing files so that readers never see half of one: write a sibling file, then rename it into place.

Examples
--------
>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / 'results.json'
>>> write_text_atomic(path, '{}\\n')
>>> path.read_text()
'{}\\n'
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ['make_writable_dir', 'partial_path', 'write_atomic', 'write_text_atomic']


def partial_path(path: Path) -> Path:
    """The temporary sibling of ``path``: hidden, same suffix (savers that check the extension accept it).

    Examples
    --------
    >>> partial_path(Path('runs/model.keras')).as_posix()
    'runs/.partial-model.keras'
    """
    return path.with_name(f'.partial-{path.name}')


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> None:
    """Call ``write(partial)`` and rename the partial file to ``path``; on error the partial file is removed."""
    path = Path(path)
    partial = partial_path(path)
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    write_atomic(path, lambda partial: partial.write_text(text))


def make_writable_dir(path: str | os.PathLike) -> None:
    """Create the directory ``path`` (with parents) and prove it can be written; an ``OSError`` says why not.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / 'runs' / 'a'
    >>> make_writable_dir(target)
    >>> sorted(target.iterdir())
    []
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / '.hgq-write-test'
    probe.write_text('')
    probe.unlink()
