"""Checkpoint files, shared by both backends: atomic writes, the format version, and
telling the two backends' files apart.

A checkpoint is first written to a temporary file in the target directory, flushed
to disk, then renamed over the target (``os.replace`` is atomic on POSIX and
Windows), so an interrupted save leaves either the old file or the new one, never
a truncated mix. A write that fails (a full disk, an I/O error, torch's
``PytorchStreamWriter failed writing file``) removes the temporary file and raises
one ``OSError`` naming the path and the cause, nothing written there (`write_error()`), whichever backend
wrote.

Both formats are zip archives: the Torch backend's is a ``torch.save`` archive (a
pickle read with ``weights_only=True``, its content hashed with SHA-256 since format
version 2), the JAX backend's an ``.npz`` archive (no pickle; zip's CRC-32 per
array). [`sniff_backend()`][vmt.core.checkpoint.sniff_backend] tells them apart by their member names, so each
backend names the other one when handed its file instead of failing inside the
other's reader.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Callable, Optional, Union

from vmt.core.errors import CheckpointError

__all__ = ["FORMAT", "VERSION", "READABLE_VERSIONS", "atomic_write", "write_error", "config_mismatch", "sniff_backend",
           "check_header", "one_line"]

FORMAT = "pyro-vmt"
#: The version written. 2 added the Torch format's content checksum; the JAX format
#: is unchanged from 1, and a Torch file of version 1 is read without one.
VERSION = 2
READABLE_VERSIONS = (1, 2)


def atomic_write(path: Union[str, os.PathLike], write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file, then move it to ``path``.

    A failed write leaves ``path`` as it was, removes the temporary file and raises
    `write_error()`'s ``OSError``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        failed = OSError(f"cannot write {str(path)!r}: its folder cannot be used ({one_line(e)})")
        failed.errno = e.errno
        raise failed from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        failed = write_error(path, e) if isinstance(e, (OSError, RuntimeError)) else e
        if os.path.exists(tmp):
            os.unlink(tmp)
        if failed is not e:
            raise failed from e
        raise
    return path


_TORCH_WRITER = ("PytorchStreamWriter", "inline_container", "file write failed")
_FULL = 1 << 20  # a disk with less free space than this after a failed write counts as full


def write_error(path: Union[str, os.PathLike], error: BaseException) -> BaseException:
    """The one-line ``OSError`` for a failed write of ``path``, or ``error`` itself when it is none.

    ``error`` is an ``OSError`` of the write (``errno`` kept) or torch's ``RuntimeError``
    of its archive writer, which carries no ``errno``: when the disk then has less than
    1 MiB free it is reported as ``ENOSPC``, otherwise as ``EIO`` with torch's first line.
    """
    if isinstance(error, RuntimeError) and not any(s in str(error) for s in _TORCH_WRITER):
        return error  # not a failed write: a bug to see as it is
    code = getattr(error, "errno", None)
    if code is None:
        try:
            code = errno.ENOSPC if shutil.disk_usage(Path(path).parent).free < _FULL else errno.EIO
        except OSError:
            code = errno.EIO
    cause = "no space left on device" if code in (errno.ENOSPC, errno.EDQUOT) else f"write failed ({one_line(error)})"
    failed = OSError(f"cannot write {str(path)!r}: {cause}")
    failed.errno = code  # (without strerror it prints as the message alone, not "[Errno n] ...")
    return failed


def config_mismatch(saved: dict, current: dict, defaults: Optional[dict] = None) -> str:
    """Human-readable list of the options that differ ('' if none).

    An option the checkpoint does not name (it was written before the option
    existed) counts as its value in ``defaults``, the behaviour of that older version.
    """
    saved = {**(defaults or {}), **saved}
    keys = sorted(set(saved) | set(current))
    diffs = [f"{k}: checkpoint {saved.get(k)!r} vs this object {current.get(k)!r}"
             for k in keys if saved.get(k) != current.get(k)]
    return "; ".join(diffs)


def one_line(error: BaseException) -> str:
    """The first line of an exception's message (C++ errors of torch carry a stack trace)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def sniff_backend(path: Union[str, os.PathLike]) -> Optional[str]:
    """``"pyro"`` or ``"numpyro"`` for the zip archive each backend writes, ``None`` otherwise.

    Raises [`CheckpointError`][vmt.core.errors.CheckpointError] for a file that is not a complete zip archive (e.g.
    truncated) and ``FileNotFoundError`` for a missing one.
    """
    if not Path(path).exists():
        raise FileNotFoundError(f"no checkpoint file {str(path)!r}")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: not a complete checkpoint archive "
                              f"(truncated or another kind of file: {one_line(e)})") from e
    if "header.npy" in names:
        return "numpyro"
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "pyro"
    return None


def check_header(path: Union[str, os.PathLike], header: object, backend: str) -> dict:
    """Check a checkpoint's format, backend and version; return the header (a dict)."""
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a pyro-vmt checkpoint")
    if header.get("backend") != backend:
        raise CheckpointError(f"{str(path)!r} was written by the {header.get('backend')!r} backend, not {backend!r}")
    if header.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{str(path)!r} has checkpoint format version {header.get('version')!r}; this "
                              f"pyro-vmt reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    return header
