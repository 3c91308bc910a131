r"""The teacher's state (JAX): `state_dict()`, `load_state_dict()`, `save()` and `load()`.

[`PersistenceMixin`][numpyro_vmt.persistence.PersistenceMixin] holds the methods of
[`VariationalMCMCTeaching`][numpyro_vmt.teaching.VariationalMCMCTeaching] that write and restore its
[`TeachingState`][numpyro_vmt.update.TeachingState] pytree (networks, optimisers, keys, the replay
buffer, the persistent chains, the iteration count) with its configuration. Everything is
checked before the state is replaced, so a failed
[`load()`][numpyro_vmt.teaching.VariationalMCMCTeaching.load] changes nothing, and
[`save()`][numpyro_vmt.teaching.VariationalMCMCTeaching.save] refuses non-finite state.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Union

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_vmt import correction, distributed
from numpyro_vmt.checkpoint import read_state, restore_leaves, write_checkpoint
from numpyro_vmt.update import TeachingState, all_finite
from vmt.core.checkpoint import config_mismatch, one_line
from vmt.core.config import TeachingConfig
from vmt.core.errors import CheckpointError

__all__ = ["PersistenceMixin"]


class PersistenceMixin:
    """State, checkpoint writing and restoring of [`VariationalMCMCTeaching`][numpyro_vmt.teaching.VariationalMCMCTeaching]."""

    def state_dict(self) -> Dict[str, Any]:
        """Everything training depends on: networks, optimisers, RNG, buffer, iteration."""
        out = {"config": self.config.to_dict()}
        out.update(self.state._asdict())
        out["iteration"] = int(self.state.iteration)
        return out

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore `state_dict()`; raises [`CheckpointError`][vmt.core.errors.CheckpointError] on any mismatch.

        Each entry may be the pytree `state_dict()` returns or the list of its
        leaves in flattening order; shapes and dtypes must match this object's.
        """
        diff = config_mismatch(state.get("config", {}), self.config.to_dict(), TeachingConfig().to_dict())
        if diff:
            raise CheckpointError(f"checkpoint was written with another configuration: {diff}")
        cur = self.state
        try:
            restored = {f: restore_leaves(f, state[f], getattr(cur, f))
                        for f in ("energy", "vae", "energy_optim", "vae_optim", "rng", "seed")}
        except KeyError as e:
            raise CheckpointError(f"checkpoint does not match these networks: missing entry {e}") from e
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint does not match these networks: {one_line(e)}") from e
        buffer = None
        if cur.buffer is not None:
            given = state.get("buffer")
            given = given[0] if isinstance(given, (list, tuple)) and len(given) == 1 else given
            if given is None or tuple(np.shape(given)) != cur.buffer.shape:
                raise CheckpointError("checkpoint's replay buffer does not match this configuration")
            buffer = jnp.asarray(given, dtype=cur.buffer.dtype)
        iteration = state.get("iteration")
        iteration = iteration[0] if isinstance(iteration, (list, tuple)) and iteration else iteration
        if (iteration is None or isinstance(iteration, bool) or np.shape(iteration) != ()
                or not np.issubdtype(np.asarray(iteration).dtype, np.integer) or int(iteration) < 0
                or int(iteration) > np.iinfo(np.int32).max):
            raise CheckpointError(f"checkpoint has no valid iteration count: {iteration!r}")
        bad = [f for f in ("energy", "vae", "energy_optim", "vae_optim") if not bool(all_finite(restored[f]))]
        bad += ["buffer"] if buffer is not None and not bool(all_finite(buffer)) else []
        if bad:
            raise CheckpointError(f"checkpoint holds non-finite values in {', '.join(bad)}")
        chains = None
        if cur.chains is not None:
            given = jax.tree.leaves(state.get("chains"))
            event = cur.chains.position.shape[1:]
            if (len(given) != 4 or tuple(np.shape(given[0])[1:]) != event
                    or any(np.shape(a) != (np.shape(given[0])[0],) for a in given[1:])):
                raise CheckpointError("checkpoint's persistent chains (correction='mh') do not match this configuration")
            chains = correction.Path(*(jnp.asarray(a, dtype=self.dtype) for a in given))
            if not bool(all_finite(chains)):
                raise CheckpointError("checkpoint holds non-finite values in chains")
        self.state = distributed.replicate(
            TeachingState(**restored, buffer=buffer, iteration=jnp.asarray(int(iteration), jnp.int32), chains=chains),
            self.mesh)

    def save(self, path: Union[str, os.PathLike], **metadata: Any) -> None:
        """Write a checkpoint atomically (an interrupted save leaves the old file intact).

        The file is an ``.npz`` archive (no pickle): a JSON header (format, version,
        backend, configuration, ``metadata``, leaf shapes and dtypes) and the leaves
        of [`TeachingState`][numpyro_vmt.teaching.TeachingState]. ``metadata`` must be JSON-serialisable. A state
        holding non-finite values is refused with
        [`CheckpointError`][vmt.core.errors.CheckpointError] and nothing is written. On a mesh the
        file holds the one replicated state, so it loads on any number of devices; in a
        multi-host run only process 0 writes.
        """
        bad = [f for f in ("energy", "vae", "energy_optim", "vae_optim", "buffer")
               if not bool(all_finite(getattr(self.state, f)))]
        if bad:
            raise CheckpointError(f"refusing to save: non-finite values in {', '.join(bad)}; nothing was written")
        if distributed.is_writer():
            write_checkpoint(path, distributed.to_host(self.state), self.config.to_dict(), metadata)

    def load(self, path: Union[str, os.PathLike]) -> Dict[str, Any]:
        """Restore a checkpoint written by `save()` into this object; returns its metadata.

        The object must have been built with the same configuration and networks.
        """
        state, metadata = read_state(path)
        self.load_state_dict(state)
        return metadata
