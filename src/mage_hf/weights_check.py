"""Checking weight files before loading them, so that a truncated or corrupt file fails with its name.

`safetensors` reports a cut-off download as `SafetensorError: ... incomplete metadata, file not fully covered`
without naming the file, and a loader several levels down may turn it into an unrelated message. Opening the
header with `safetensors.safe_open` is cheap (the data is memory-mapped, not read) and validates that the file is
complete: every tensor's byte range lies inside the file and the ranges cover it.
"""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

SAFETENSORS_SUFFIX = ".safetensors"


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise a one-line ValueError naming `path` unless it is a complete, readable safetensors file."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"{name}: not a readable safetensors file (no such file)")
    try:
        with safe_open(name, framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{name}: not a readable safetensors file ({reason}); download or convert it again") from error


def check_safetensors_folder(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Check every `*.safetensors` file in `folder` (and its subfolders when `recursive`, e.g. a pipeline folder's
    `transformer/` and `vqvae/`); returns the files checked. Raises the ValueError of the first bad file."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: expected a model folder, got {'a file' if root.exists() else 'nothing'} there")
    files = sorted(root.rglob(f"*{SAFETENSORS_SUFFIX}") if recursive else root.glob(f"*{SAFETENSORS_SUFFIX}"))
    for path in files:
        check_safetensors_file(path)
    return files


__all__ = ["check_safetensors_file", "check_safetensors_folder"]
