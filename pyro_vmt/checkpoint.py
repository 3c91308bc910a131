"""The torch backend's checkpoint files: written and read for ``VariationalMCMCTeaching``.

A ``torch.save`` archive read back with ``weights_only=True`` (no arbitrary pickle
runs): format, version, backend, the teacher's ``state_dict()``, user metadata and,
since format version 2, ``checksum``: the SHA-256 of the content (every tensor's
dtype, shape and bytes, every other value's ``repr``, in order), so a flipped or
truncated byte anywhere in the content is reported instead of loaded (the JAX
format has zip's CRC-32 per array for this). Nothing non-finite is written, and a
file holding non-finite values is refused. Shared by the unconditional and the
conditional teacher.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from typing import Any, Dict, Iterator, Tuple

import torch

from vmt.core.checkpoint import FORMAT, VERSION, atomic_write, check_header, one_line, sniff_backend
from vmt.core.errors import CheckpointError

__all__ = ["read_checkpoint", "write_checkpoint", "checksum", "nonfinite_entries", "check_modules"]


def _walk(obj: Any, prefix: str = "") -> Iterator[Tuple[str, Any]]:
    """``(name, leaf)`` of a nested dict/list/tuple, in order."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def checksum(obj: Any) -> str:
    """SHA-256 of a nested state: names, tensors' dtypes, shapes and bytes, other leaves' ``repr``."""
    h = hashlib.sha256()
    for name, leaf in _walk(obj):
        h.update(name.encode() + b"\0")
        if isinstance(leaf, torch.Tensor):
            t = leaf.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(leaf).encode())
    return h.hexdigest()


def nonfinite_entries(state: Any) -> list:
    """Names of the floating-point tensors of ``state`` that hold a NaN or an infinity."""
    bad = []
    for name, leaf in _walk(state):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.numel():
            if not math.isfinite(float(torch.linalg.vector_norm(leaf.detach().float().reshape(-1), math.inf))):
                bad.append(name)
    return bad


def write_checkpoint(path, state: Dict[str, Any], metadata: Dict[str, Any]) -> None:
    """Write a teacher's ``state_dict()`` and ``metadata`` atomically; refuse non-finite values."""
    bad = nonfinite_entries(state)
    if bad:
        raise CheckpointError(f"refusing to save: non-finite values in {', '.join(bad[:3])}"
                              f"{f' and {len(bad) - 3} more' if len(bad) > 3 else ''}; nothing was written")
    payload = {"format": FORMAT, "version": VERSION, "backend": "pyro", "state": state, "metadata": metadata}
    payload["checksum"] = checksum({"state": state, "metadata": metadata})
    atomic_write(path, lambda f: torch.save(payload, f))


def read_checkpoint(path, device=None) -> Dict[str, Any]:
    """Read and check a checkpoint file written by [`pyro_vmt.VariationalMCMCTeaching.save()`][pyro_vmt.teaching.VariationalMCMCTeaching.save].

    Raises [`CheckpointError`][vmt.core.errors.CheckpointError] (one line naming the cause) for
    a file of the other backend, another format version, a truncated or altered
    file, or non-finite values.
    """
    backend = sniff_backend(path)
    if backend == "numpyro":
        raise CheckpointError(f"{str(path)!r} was written by the 'numpyro' backend, not 'pyro'")
    if backend is None:
        raise CheckpointError(f"{str(path)!r} is not a pyro-vmt checkpoint")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # a damaged archive or pickle
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {one_line(e)}") from e
    check_header(path, payload, "pyro")
    if not isinstance(payload.get("state"), dict):
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: it holds no training state")
    if "checksum" in payload:
        if payload["checksum"] != checksum({"state": payload["state"], "metadata": payload.get("metadata")}):
            raise CheckpointError(f"checkpoint {str(path)!r} is damaged: its content does not match its "
                                  "checksum (the file was altered after it was written)")
    elif payload["version"] >= 2:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: its checksum is missing")
    else:
        warnings.warn(f"checkpoint {str(path)!r} has format version 1, without a checksum: its integrity is "
                      "not verified (save it again to add one)", RuntimeWarning, stacklevel=3)
    bad = nonfinite_entries(payload["state"])
    if bad:
        raise CheckpointError(f"checkpoint {str(path)!r} holds non-finite values in {', '.join(bad[:3])}")
    return payload


def check_modules(state: Dict[str, Any], modules) -> None:
    """Names, shapes and dtypes of the modules' entries in ``state`` against the modules' own."""
    for key, module in modules:
        if module is None:
            continue
        given = state.get(key)
        if not isinstance(given, dict):
            raise CheckpointError(f"checkpoint does not match these networks: no {key} weights")
        own = module.state_dict()
        missing, extra = sorted(set(own) - set(given)), sorted(set(given) - set(own))
        if missing or extra:
            raise CheckpointError(f"checkpoint does not match these networks: {key} "
                                  f"{'lacks ' + ', '.join(missing[:3]) if missing else ''}"
                                  f"{'; ' if missing and extra else ''}"
                                  f"{'has unexpected ' + ', '.join(extra[:3]) if extra else ''}")
        for name, t in own.items():
            g = given[name]
            if not isinstance(g, torch.Tensor) or g.shape != t.shape or g.dtype != t.dtype:
                what = (f"shape {tuple(g.shape)} and dtype {str(g.dtype).replace('torch.', '')}"
                        if isinstance(g, torch.Tensor) else type(g).__name__)
                raise CheckpointError(f"checkpoint does not match these networks: {key} {name} has {what}, "
                                      f"expected shape {tuple(t.shape)} and dtype {str(t.dtype).replace('torch.', '')}")
