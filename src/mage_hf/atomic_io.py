"""Writing a file so that it is either complete or absent: write to a temporary file beside it, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_output_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path in `path`'s folder (created if needed) ending in `path`'s suffix, so writers that
    pick a format by extension still work. On a clean exit it is renamed onto `path` (`os.replace`, atomic); on an
    error it is removed and `path` is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    name, suffix = os.path.basename(path), os.path.splitext(path)[1]
    handle, partial = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=f".partial{suffix}")
    os.close(handle)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
