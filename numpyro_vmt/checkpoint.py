"""The JAX backend's checkpoint files: written and read for ``VariationalMCMCTeaching``.

An ``.npz`` archive (no pickle): a JSON header (format, version, backend,
configuration, metadata, leaf shapes and dtypes) and the leaves of the
``TeachingState`` pytree. Shared by the unconditional and the conditional teacher.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vmt.core.checkpoint import FORMAT, VERSION, atomic_write, check_header, one_line, sniff_backend
from vmt.core.errors import CheckpointError

__all__ = ["read_checkpoint", "read_state", "restore_leaves", "write_checkpoint"]


def read_checkpoint(path) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Read and check a checkpoint file written by [`numpyro_vmt.VariationalMCMCTeaching.save()`][numpyro_vmt.teaching.VariationalMCMCTeaching.save].

    Returns the JSON header and the arrays by name. Raises
    [`CheckpointError`][vmt.core.errors.CheckpointError] (one line naming the cause) for a file of
    the other backend, another format version, or a truncated or altered file (zip's
    CRC-32 of every array is checked as it is read).
    """
    backend = sniff_backend(path)
    if backend == "pyro":
        raise CheckpointError(f"{str(path)!r} was written by the 'pyro' backend, not 'numpyro'")
    if backend is None:
        raise CheckpointError(f"{str(path)!r} is not a pyro-vmt checkpoint")
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"][()]))
            arrays = {k: z[k] for k in z.files if k != "header"}
    except FileNotFoundError:
        raise
    except Exception as e:  # a damaged archive (e.g. a CRC mismatch) or header
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {one_line(e)}") from e
    return check_header(path, header, "numpyro"), arrays


def write_checkpoint(path, state: Any, config: Dict[str, Any], metadata: Dict[str, Any]) -> None:
    """Write a ``TeachingState`` (a NamedTuple of pytrees) and its header, atomically."""
    arrays, shapes = {}, {}
    for field in state._fields:
        leaves = [np.asarray(a) for a in jax.tree.leaves(getattr(state, field))]
        shapes[field] = [[list(a.shape), a.dtype.str] for a in leaves]
        arrays.update({f"{field}.{i}": a for i, a in enumerate(leaves)})
    header = json.dumps({"format": FORMAT, "version": VERSION, "backend": "numpyro",
                         "config": config, "metadata": metadata, "leaves": shapes})
    atomic_write(path, lambda f: np.savez(f, header=np.array(header), **arrays))


def read_state(path) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The state dict (``config`` and each field's list of leaves) and the metadata of a checkpoint."""
    header, arrays = read_checkpoint(path)
    state = {"config": header.get("config", {})}
    try:
        for field, leaves in header.get("leaves", {}).items():
            state[field] = [arrays[f"{field}.{i}"] for i in range(len(leaves))]
    except KeyError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: array {e} is missing") from e
    state["buffer"] = state.get("buffer") or None
    return state, header.get("metadata", {})


def restore_leaves(field: str, given: Any, current: Any) -> Any:
    """``given`` (a pytree or a list of leaves) in the structure of ``current``; ``ValueError`` on mismatch."""
    cur_leaves, treedef = jax.tree.flatten(current)
    new_leaves = jax.tree.leaves(given)
    if len(new_leaves) != len(cur_leaves):
        raise ValueError(f"{field} has {len(new_leaves)} arrays, expected {len(cur_leaves)}")
    out = []
    for i, (a, b) in enumerate(zip(new_leaves, cur_leaves)):
        a = np.asarray(a)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"{field} array {i} has shape {a.shape} and dtype {a.dtype}, "
                             f"expected {tuple(b.shape)} and {b.dtype}")
        out.append(jnp.asarray(a))
    return jax.tree.unflatten(treedef, out)
