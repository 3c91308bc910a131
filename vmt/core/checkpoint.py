"""Atomic checkpoint files, shared by both backends.

A checkpoint is first written to a temporary file in the target directory, flushed
to disk, then renamed over the target (``os.replace`` is atomic on POSIX and
Windows), so an interrupted save leaves either the old file or the new one, never
a truncated mix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Union

__all__ = ["FORMAT", "VERSION", "atomic_write", "config_mismatch"]

FORMAT = "pyro-vmt"
VERSION = 1


def atomic_write(path: Union[str, os.PathLike], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file, then move it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def config_mismatch(saved: dict, current: dict) -> str:
    """Human-readable list of the options that differ ('' if none)."""
    keys = sorted(set(saved) | set(current))
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs this object {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    return "; ".join(diffs)
