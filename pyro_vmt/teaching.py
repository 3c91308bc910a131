r"""Variational MCMC teaching (PyTorch / Pyro): the joint training of an EBM and a VAE.

One iteration (Xie, Zheng & Li, "Learning Energy-Based Model with Variational
Auto-Encoder as Amortized Sampler", AAAI 2021, https://arxiv.org/abs/2012.14936):

1. :math:`z_i \sim \mathcal N(0, I)`, :math:`x^{(0)}_i = g_\alpha(z_i)`.
2. :math:`K` Langevin steps
   :math:`x^{(k+1)} = x^{(k)} - \tfrac{\delta^2}{2}\nabla_x E_\theta(x^{(k)}) + \delta\sigma\xi_k`,
   :math:`\tilde x = x^{(K)}` (no gradient flows through the chain).
3. Energy step on :math:`\mathcal L(\theta) = \frac1m\sum_j E_\theta(x_j) - \frac1n\sum_i E_\theta(\tilde x_i)
   + \lambda\big(\overline{E(x)^2} + \overline{E(\tilde x)^2}\big)`, the maximum-likelihood gradient.
4. One SVI step of the VAE on the ELBO with :math:`\tilde x` observed.

The option ``init`` swaps step 1 (and 4) for the baselines that share this code path:
uniform noise (short-run EBM), a replay buffer (persistent chains), or the decoder
regressed on :math:`\tilde x` with its own :math:`z` (CoopNets).

The conditional teacher (:mod:`pyro_vmt.conditional`) runs this same code with a
conditioning input ``ctx``: a validated batch is then a pair ``(ctx, data)``, and
:func:`vmt.core.batch.with_context` passes ``ctx`` as the second argument of the energy, the decoder and
the VAE losses.

Both losses are computed and checked before either optimiser steps, so an iteration
that diverges raises :class:`vmt.core.errors.DivergenceError` and changes nothing.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_vmt import distributed
from pyro_vmt.checkpoint import read_checkpoint
from pyro_vmt.energy import EnergyModel
from pyro_vmt.langevin import Langevin
from pyro_vmt.update import energy_loss, revise, start_chains, uniform_points, vae_loss
from pyro_vmt.rng import RNG, as_rng
from pyro_vmt.vae import VAE
from vmt.core.api import TeachingInfo
from vmt.core.batch import context_and_data, with_context
from vmt.core.checkpoint import FORMAT, VERSION, atomic_write, config_mismatch
from vmt.core.checks import as_count
from vmt.core.config import TeachingConfig, resolve_teacher_parts
from vmt.core.errors import CheckpointError, DivergenceError

__all__ = ["VariationalMCMCTeaching", "TeachingInfo"]

Tensor = torch.Tensor


class VariationalMCMCTeaching:
    """Train an :class:`EnergyModel` with a :class:`VAE` as amortised Langevin sampler.

    Parameters
    ----------
    energy : EnergyModel
    vae : VAE or None
        Needed for ``init="vae"`` and ``"generator"``; ignored otherwise.
    config : TeachingConfig, optional
        All options (see :class:`vmt.TeachingConfig`); keyword ``options`` override it.
    rng : int or torch.Generator
        Seed (or generator) of every random draw of training: minibatches, latents,
        Langevin noise, buffer resets and the VAE's reparameterised samples.
    mesh : None, torch.distributed DeviceMesh or ProcessGroup
        Data-parallel teaching over the ranks of a process group (a ``DeviceMesh``'s
        ``"data"`` dimension): every rank revises its block of the chains, gradients are
        averaged (:mod:`pyro_vmt.distributed`, ``docs/scaling.md``). ``rng`` must then be
        an int seed. ``None``: one process.
    **options
        Fields of :class:`~vmt.TeachingConfig`, e.g. ``step_size=0.05``.

    Examples
    --------
    >>> from vmt.data import load_dataset
    >>> from pyro_vmt import EnergyModel, VAE, VariationalMCMCTeaching
    >>> from pyro_vmt.nets import default_networks
    >>> e_net, enc, dec = default_networks((2,), latent_dim=2)
    >>> teacher = VariationalMCMCTeaching(EnergyModel(e_net, (2,)), VAE(enc, dec, 2, (2,)),
    ...                                   rng=0, step_size=0.05, num_steps=10)
    >>> history = teacher.fit(load_dataset("grid25").train, num_iters=2, progress=False)
    >>> teacher.sample(5).shape
    torch.Size([5, 2])
    """

    _energy_cls, _vae_cls = EnergyModel, VAE  # the conditional teacher swaps these

    def __init__(self, energy: EnergyModel, vae: Optional[VAE] = None,
                 config: Optional[TeachingConfig] = None, *, rng: RNG = 0, mesh: Any = None, **options: Any):
        self.mesh, self._group = mesh, distributed.as_group(mesh)
        config, vae = resolve_teacher_parts(energy, vae, config, options, "pyro_vmt", self._energy_cls, self._vae_cls)
        self.config = config
        self.energy = energy
        self.vae = vae
        param = next(energy.parameters(), None)
        if param is None:
            raise ValueError("the energy model has no parameters to train")
        self.device, self.dtype = param.device, param.dtype
        gen = as_rng(rng, self.device) if self._group is None else distributed.rank_generator(rng, self._group,
                                                                                               self.device)
        if gen is None:
            raise ValueError("rng is required: pass a torch.Generator or an int seed")
        self.generator = gen
        self.sampler = Langevin(energy, config.step_size, config.num_steps, config.noise_scale, config.adjust)
        self.energy_optim = torch.optim.Adam(energy.parameters(), lr=config.energy_lr, betas=config.betas)
        self.vae_optim = (torch.optim.Adam(vae.parameters(), lr=config.vae_lr, betas=config.betas)
                          if vae is not None else None)
        if self._group is not None:  # one set of starting parameters; each rank owns a block of the buffer
            distributed.broadcast_parameters(self._group, [energy, vae])
            if config.init == "persistent":
                distributed.check_divisible("buffer_size", config.buffer_size, self._group)
        self.buffer = (uniform_points(config, param, energy.event_shape,
                                      config.buffer_size // distributed.num_shards(self._group), gen)
                       if config.init == "persistent" else None)
        self.iteration = 0

    # ------------------------------------------------------------------ sampling
    def _sampler(self, ctx: Optional[Tensor]) -> Langevin:
        cfg = self.config
        return self.sampler if ctx is None else Langevin(
            with_context(self.energy, ctx), cfg.step_size, cfg.num_steps, cfg.noise_scale, cfg.adjust)

    def sample(self, n: int, num_steps: Optional[int] = None, rng: RNG = None) -> Tensor:
        """``n`` samples of the EBM: the configured initialisation, then ``num_steps`` Langevin steps.

        ``num_steps=0`` returns the starting points (e.g. the VAE's own samples).
        Without ``rng`` the draw is seeded from the training RNG's seed and the
        iteration count, so it is reproducible and leaves training unaffected.
        """
        return self._sample(as_count("n", n), num_steps, rng)

    def _sample(self, n: int, num_steps: Optional[int], rng: RNG, ctx: Optional[Tensor] = None) -> Tensor:
        gen = as_rng(rng, self.device)
        if gen is None:
            seed = (self.generator.initial_seed() * 1_000_003 + self.iteration) % 2 ** 63
            gen = torch.Generator(device=self.device).manual_seed(seed)
        x0 = start_chains(self.config, self.energy, self.vae, self.buffer, n, gen, False, ctx).position
        if num_steps == 0:
            return x0
        return revise(self._sampler(ctx), x0, gen, num_steps)[0].position

    # ------------------------------------------------------------------ training
    def _as_batch(self, batch: Any, name: str = "batch") -> Tensor:
        return self._as_array(batch, name, self.energy.event_shape)

    def _as_array(self, batch: Any, name: str, event: tuple) -> Tensor:
        if not isinstance(batch, Tensor):
            batch = torch.as_tensor(np.asarray(batch))
        if not (batch.is_floating_point()):
            raise ValueError(f"{name} must hold floating-point numbers, got dtype {str(batch.dtype).replace('torch.', '')}")
        if batch.ndim != len(event) + 1 or tuple(batch.shape[1:]) != event or batch.shape[0] == 0:
            raise ValueError(f"{name} must have shape (n, {', '.join(map(str, event))}), got {tuple(batch.shape)}")
        bad = ~torch.isfinite(batch.reshape(batch.shape[0], -1)).all(1)
        if bad.any():
            raise ValueError(f"{name} has non-finite values in {int(bad.sum())} rows (first: row {int(bad.nonzero()[0, 0])})")
        return batch.to(device=self.device, dtype=self.dtype)

    def step(self, batch: Any) -> TeachingInfo:
        """One iteration on a data batch of shape ``(m, *event_shape)``; returns its diagnostics."""
        ctx, batch = context_and_data(self._as_batch(batch))
        cfg, gen = self.config, self.generator
        ctx, batch, n = distributed.split_batch(self._group, ctx, batch, cfg.num_samples)  # this rank's share
        try:
            starts = start_chains(cfg, self.energy, self.vae, self.buffer, n, gen, True, ctx)
            state, sinfo = revise(self._sampler(ctx), starts.position, gen)
        except DivergenceError as e:
            distributed.agree(self._group, e)  # every rank raises
        distributed.agree(self._group)
        x_tilde = state.position
        loss, e_data, e_samp = energy_loss(cfg, with_context(self.energy, ctx), batch, x_tilde)
        v_loss = vae_loss(cfg, self.vae, x_tilde, starts, gen, ctx)

        # both backward passes, then one check of losses and gradients before any update
        self.energy_optim.zero_grad(set_to_none=True)
        loss.backward()
        if self.vae_optim is not None:
            self.vae_optim.zero_grad(set_to_none=True)
            v_loss.backward()
        stats = [loss.detach(), e_data.detach().mean(), e_samp.detach().mean(), v_loss.detach(),
                 sinfo.acceptance_rate.mean(), sinfo.grad_norm[-1].mean()]
        if self._group is not None:  # gradients and reported means, averaged over the ranks
            stats = distributed.average(self._group, [self.energy, self.vae], stats)
        gnorm = torch.nn.utils.clip_grad_norm_(self.energy.parameters(), cfg.grad_clip or math.inf)
        checks = {"energy loss": stats[0], "energy parameter gradient": gnorm}
        if self.vae_optim is not None:
            checks["VAE loss"] = stats[3]
            checks["VAE parameter gradient"] = torch.nn.utils.get_total_norm(
                [p.grad for p in self.vae.parameters() if p.grad is not None])
        _check_finite(checks)
        factor = cfg.lr_factor(self.iteration)
        for optim, lr in [(self.energy_optim, cfg.energy_lr), (self.vae_optim, cfg.vae_lr)]:
            if optim is not None:
                for group in optim.param_groups:
                    group["lr"] = lr * factor
                optim.step()
        if cfg.init == "persistent":
            self.buffer[starts.slots] = x_tilde
        self.iteration += 1
        return TeachingInfo(*stats, gnorm.detach())

    def fit(self, data: Any, num_iters: int = 1000, batch_size: int = 100, progress: bool = True,
            callback: Optional[Callable[["VariationalMCMCTeaching", TeachingInfo], None]] = None
            ) -> Dict[str, np.ndarray]:
        """Run ``num_iters`` iterations on minibatches drawn (with replacement) from ``data``.

        Returns the history: one array per :class:`~vmt.core.api.TeachingInfo` field.
        ``callback(teacher, info)`` is called after every iteration.
        """
        data = self._as_batch(data, "data")
        num_iters, batch_size = as_count("num_iters", num_iters, minimum=0), as_count("batch_size", batch_size)
        distributed.check_divisible("batch_size", batch_size, self._group)
        rows = []
        bar = tqdm(range(num_iters), disable=not progress, desc="vmt", leave=False)
        rows_in_data = context_and_data(data)[1].shape[0]
        for _ in bar:
            idx = torch.randint(rows_in_data, (batch_size,), generator=self.generator, device=self.device)
            info = self.step(_take(data, idx))
            rows.append(torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in info]))
            if callback is not None:
                callback(self, info)
            if progress:
                bar.set_postfix(loss=f"{float(info.loss):.3g}", e_data=f"{float(info.energy_data):.3g}",
                                e_samples=f"{float(info.energy_samples):.3g}", refresh=False)
        table = torch.stack(rows).cpu().numpy() if rows else np.zeros((0, len(TeachingInfo._fields)))
        return {name: table[:, i] for i, name in enumerate(TeachingInfo._fields)}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything training depends on: networks, optimisers, RNG, buffer, iteration.

        On a mesh this is collective (call it on every rank): it holds every rank's
        generator (``rank_rngs``) and the whole replay buffer.
        """
        rng, buffer = self.generator.get_state(), self.buffer
        ranks = {}
        if self._group is not None:
            ranks["rank_rngs"], buffer = distributed.gather(self._group, rng, buffer)
        return ranks | {
            "config": self.config.to_dict(),
            "energy": self.energy.state_dict(),
            "vae": None if self.vae is None else self.vae.state_dict(),
            "energy_optim": self.energy_optim.state_dict(),
            "vae_optim": None if self.vae_optim is None else self.vae_optim.state_dict(),
            "rng": rng,
            "rng_device": self.generator.device.type,
            "buffer": buffer,
            "iteration": self.iteration,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises :class:`~vmt.core.errors.CheckpointError` on any mismatch."""
        diff = config_mismatch(state.get("config", {}), self.config.to_dict())
        if diff:
            raise CheckpointError(f"checkpoint was written with another configuration: {diff}")
        try:
            self.energy.load_state_dict(state["energy"])
            if self.vae is not None:
                self.vae.load_state_dict(state["vae"])
            self.energy_optim.load_state_dict(state["energy_optim"])
            if self.vae_optim is not None:
                self.vae_optim.load_state_dict(state["vae_optim"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint does not match these networks: {e}") from e
        self._restore_rng(state)
        if self.buffer is not None:
            buffer = state["buffer"]
            if buffer is None or buffer.shape[1:] != self.buffer.shape[1:] or \
                    buffer.shape[0] != self.buffer.shape[0] * distributed.num_shards(self._group):
                raise CheckpointError("checkpoint's replay buffer does not match this configuration")
            self.buffer = distributed.split_batch(self._group, None, buffer, None)[1].to(self.device, self.dtype)
        self.iteration = int(state["iteration"])

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

        On a mesh, call it on every rank: rank 0 writes (see :meth:`state_dict`).
        """
        payload = {"format": FORMAT, "version": VERSION, "backend": "pyro",
                   "state": self.state_dict(), "metadata": metadata}
        if distributed.is_writer(self._group):
            atomic_write(path, lambda f: torch.save(payload, f))

    def load(self, path: Union[str, os.PathLike]) -> Dict[str, Any]:
        """Restore a checkpoint written by :meth:`save` into this object; returns its metadata.

        The object must have been built with the same configuration and networks.
        """
        payload = read_checkpoint(path, self.device)
        self.load_state_dict(payload["state"])
        return payload["metadata"]


def _take(data: Any, idx: Tensor) -> Any:
    return tuple(a[idx] for a in data) if isinstance(data, tuple) else data[idx]


def _check_finite(values: Dict[str, Tensor]) -> None:
    """Raise :class:`DivergenceError` naming the first non-finite value (one host sync when all are finite)."""
    if bool(torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in values.values()])).all()):
        return
    for what, value in values.items():  # float32 can overflow where the value's own dtype does not
        if not torch.isfinite(value).all():
            raise DivergenceError(f"{what} is not finite ({float(value):g}); no parameter was updated")
