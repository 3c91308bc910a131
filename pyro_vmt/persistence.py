r"""The teacher's state (PyTorch): `state_dict()`, `load_state_dict()`, `save()` and `load()`.

[`PersistenceMixin`][pyro_vmt.persistence.PersistenceMixin] holds the methods of
[`VariationalMCMCTeaching`][pyro_vmt.teaching.VariationalMCMCTeaching] that write and restore everything
training depends on: networks, optimisers, the training RNG, the replay buffer, the persistent
chains and the iteration count. Restoring is transactional (a failed
[`load()`][pyro_vmt.teaching.VariationalMCMCTeaching.load] changes nothing) and
[`save()`][pyro_vmt.teaching.VariationalMCMCTeaching.save] refuses non-finite state. On a mesh
([`pyro_vmt.distributed`][pyro_vmt.distributed]) the state is gathered from every rank.
"""

from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Dict, Union

import numpy as np
import torch

from pyro_vmt import correction, distributed
from pyro_vmt.checkpoint import check_modules, nonfinite_entries, read_checkpoint, write_checkpoint
from vmt.core.checkpoint import config_mismatch, one_line
from vmt.core.config import TeachingConfig
from vmt.core.errors import CheckpointError

__all__ = ["PersistenceMixin"]


class PersistenceMixin:
    """State, checkpoint writing and restoring of [`VariationalMCMCTeaching`][pyro_vmt.teaching.VariationalMCMCTeaching]."""

    def state_dict(self) -> Dict[str, Any]:
        """Everything training depends on: networks, optimisers, RNG, buffer, iteration.

        On a mesh this is collective (call it on every rank): it holds every rank's
        generator (``rank_rngs``), the whole replay buffer and every rank's chains.
        """
        state = self._local_state()
        if self._group is not None:
            state["rank_rngs"], state["buffer"] = distributed.gather(self._group, state["rng"], state["buffer"])
            if state["chains"] is not None:
                state["chains"] = {k: distributed.gather_rows(self._group, v) for k, v in state["chains"].items()}
        return state

    def _local_state(self) -> Dict[str, Any]:
        """`state_dict()` of this rank alone: its generator and its blocks of the buffer and chains."""
        rng, buffer = self.generator.get_state(), self.buffer
        return {
            "config": self.config.to_dict(),
            "energy": self.energy.state_dict(),
            "vae": None if self.vae is None else self.vae.state_dict(),
            "energy_optim": self.energy_optim.state_dict(),
            "vae_optim": None if self.vae_optim is None else self.vae_optim.state_dict(),
            "rng": rng,
            "rng_device": self.generator.device.type,
            "buffer": buffer,
            "chains": None if self.chains is None else self.chains._asdict(),
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore `state_dict()`; raises [`CheckpointError`][vmt.core.errors.CheckpointError] on any mismatch.

        Transactional: everything is checked first (configuration, networks' names,
        shapes and dtypes, optimiser states, RNG state, buffer, iteration count,
        finiteness), and if restoring still fails the object is put back as it was.
        """
        if not isinstance(state, dict):
            raise CheckpointError(f"checkpoint state must be a dict, got {type(state).__name__}")
        diff = config_mismatch(state.get("config", {}), self.config.to_dict(), TeachingConfig().to_dict())
        if diff:
            raise CheckpointError(f"checkpoint was written with another configuration: {diff}")
        check_modules(state, [("energy", self.energy), ("vae", self.vae)])
        for key, optim in [("energy_optim", self.energy_optim), ("vae_optim", self.vae_optim)]:
            if optim is not None and not isinstance(state.get(key), dict):
                raise CheckpointError(f"checkpoint does not match these networks: no {key} state")
        iteration = state.get("iteration")
        if isinstance(iteration, torch.Tensor) and iteration.numel() == 1 and not iteration.is_floating_point():
            iteration = int(iteration)
        if isinstance(iteration, bool) or not isinstance(iteration, (int, np.integer)) or iteration < 0:
            raise CheckpointError(f"checkpoint has no valid iteration count: {iteration!r}")
        buffer = state.get("buffer")
        if self.buffer is not None:
            if not isinstance(buffer, torch.Tensor) or buffer.shape[1:] != self.buffer.shape[1:] or \
                    buffer.shape[0] != self.buffer.shape[0] * distributed.num_shards(self._group):
                raise CheckpointError("checkpoint's replay buffer does not match this configuration")
        bad = nonfinite_entries({k: state.get(k) for k in ("energy", "vae", "energy_optim", "vae_optim", "buffer")})
        if bad:
            raise CheckpointError(f"checkpoint holds non-finite values in {', '.join(bad[:3])}")
        rng = state.get("rng")
        if not isinstance(rng, torch.Tensor) or rng.dtype != torch.uint8:
            raise CheckpointError(f"checkpoint has no valid training RNG state: {type(rng).__name__}")
        rank_rngs = state.get("rank_rngs")
        if rank_rngs is not None and (not isinstance(rank_rngs, (list, tuple)) or not all(
                isinstance(r, torch.Tensor) and r.dtype == torch.uint8 for r in rank_rngs)):
            raise CheckpointError("checkpoint has no valid per-rank training RNG states (rank_rngs)")
        if self.config.correction:
            chains = state.get("chains")
            if chains is not None:
                try:
                    chains = correction.Path(**{k: v.to(self.device, self.dtype) for k, v in chains.items()})
                except (TypeError, AttributeError) as e:
                    raise CheckpointError(f"checkpoint's persistent chains do not match: {e}") from e
                if chains.position.shape[1:] != self.energy.event_shape:
                    raise CheckpointError("checkpoint's persistent chains (correction='mh') do not match this "
                                          "configuration")
                if chains.position.shape[0] % distributed.num_shards(self._group):
                    raise CheckpointError(f"checkpoint's {chains.position.shape[0]} persistent chains do not split "
                                          f"over {distributed.num_shards(self._group)} ranks")
        # this rank's own state (no collective: the rollback must not wait for other ranks)
        before = self._local_state()
        before = {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in before.items()}
        try:
            self._load(state, int(iteration))
        except Exception as e:
            self._load(before, before["iteration"], local=True)
            raise CheckpointError(f"checkpoint does not match these networks: {one_line(e)}") from e

    def _load(self, state: Dict[str, Any], iteration: int, local: bool = False) -> None:
        """Restore a validated state; ``local``: this rank's own snapshot (its buffer block, its generator)."""
        self.energy.load_state_dict(state["energy"])
        if self.vae is not None:
            self.vae.load_state_dict(state["vae"])
        self.energy_optim.load_state_dict(state["energy_optim"])
        if self.vae_optim is not None:
            self.vae_optim.load_state_dict(state["vae_optim"])
        if local:
            self.generator.set_state(state["rng"])
        else:
            self._restore_rng(state)
        if self.buffer is not None:
            buffer = state["buffer"] if local else distributed.split_batch(self._group, None, state["buffer"], None)[1]
            self.buffer = buffer.to(self.device, self.dtype)
        if self.config.correction:
            chains = state.get("chains")
            if chains is not None and not local:  # this rank's block of the chains
                chains = {k: distributed.split_batch(self._group, None, v, None)[1] for k, v in chains.items()}
            self.chains = None if chains is None else correction.Path(
                **{k: v.to(self.device, self.dtype) for k, v in chains.items()})
        self.iteration = iteration

    def _restore_rng(self, state: Dict[str, Any]) -> None:
        """Restore the training RNG. A CPU and a CUDA generator have different states, so a
        checkpoint moved between the two keeps its weights but restarts the RNG from a
        seed made of its own (and warns: the resumed run will not repeat the original)."""
        saved = state.get("rng_device", "cpu")
        rng = distributed.rank_rng_state(self._group, state)  # None: written by another number of ranks
        if saved == self.generator.device.type and rng is not None:
            self.generator.set_state(rng.cpu())
            return
        seed = (self.generator.initial_seed() * 1_000_003 + int(state["iteration"])) % 2 ** 63
        self.generator.manual_seed(seed)
        why = (f"a {saved} generator and this run's is a {self.generator.device.type} one" if rng is not None else
               f"the generators of {len(state.get('rank_rngs') or [0])} ranks and this run has "
               f"{distributed.num_shards(self._group)}")
        warnings.warn(f"checkpoint's training RNG is {why}: the RNG is reseeded, so training resumed "
                      "here will not repeat the uninterrupted run", RuntimeWarning, stacklevel=3)

    def save(self, path: Union[str, os.PathLike], **metadata: Any) -> None:
        """Write a checkpoint atomically (an interrupted save leaves the old file intact).

        A ``torch.save`` archive with a SHA-256 checksum of its content
        ([`pyro_vmt.checkpoint`][pyro_vmt.checkpoint]); a state holding non-finite values is refused
        with [`CheckpointError`][vmt.core.errors.CheckpointError] and nothing is written.
        On a mesh, call it on every rank: rank 0 writes (see `state_dict()`).
        """
        state = self.state_dict()
        if distributed.is_writer(self._group):
            write_checkpoint(path, state, metadata)
        else:  # the same refusal on every rank (the state is the same gathered one)
            bad = nonfinite_entries(state)
            if bad:
                raise CheckpointError(f"refusing to save: non-finite values in {', '.join(bad[:3])}; "
                                      "nothing was written")

    def load(self, path: Union[str, os.PathLike]) -> Dict[str, Any]:
        """Restore a checkpoint written by `save()` into this object; returns its metadata.

        The object must have been built with the same configuration and networks.
        """
        payload = read_checkpoint(path, self.device)
        self.load_state_dict(payload["state"])
        return payload.get("metadata", {})
