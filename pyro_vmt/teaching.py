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
from typing import Any, Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_vmt import correction, distributed
from pyro_vmt.checkpoint import read_checkpoint
from pyro_vmt.energy import EnergyModel
from pyro_vmt.langevin import Langevin
from pyro_vmt.update import ChainStarts, energy_loss, revise, start_chains, uniform_points, vae_loss
from pyro_vmt.rng import RNG, as_rng
from pyro_vmt.vae import VAE
from vmt.core.api import TeachingInfo
from vmt.core.batch import context_and_data, with_context
from vmt.core.checkpoint import FORMAT, VERSION, atomic_write, config_mismatch
from vmt.core.checks import as_count, check_num_steps
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
        if self._group is not None and config.correction:
            raise NotImplementedError("correction='mh' with mesh= is not implemented: the persistent chains are not "
                                      "split over the ranks yet")
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
        self.chains: Optional[correction.Path] = None  # correction="mh": set by the first iteration
        self.iteration = 0

    # ------------------------------------------------------------------ sampling
    def _sampler(self, ctx: Optional[Tensor]) -> Langevin:
        cfg = self.config
        return self.sampler if ctx is None else Langevin(
            with_context(self.energy, ctx), cfg.step_size, cfg.num_steps, cfg.noise_scale, cfg.adjust)

    def sample(self, n: int, num_steps: Optional[int] = None, rng: RNG = None, mh_steps: int = 0) -> Tensor:
        """``n`` samples of the EBM: the configured initialisation, then ``num_steps`` Langevin steps.

        ``num_steps=0`` returns the starting points (e.g. the VAE's own samples).
        Without ``rng`` the draw is seeded from the training RNG's seed and the
        iteration count, so it is reproducible and leaves training unaffected.
        ``mh_steps > 0`` makes the samples exact: ``n`` independence-sampler chains on
        whole proposal paths, ``mh_steps`` accept tests each (see
        :func:`pyro_vmt.correction.independent_mh`).
        """
        if mh_steps:
            vae, opts = self._proposal(num_steps)
            path, _ = correction.independent_mh(self._generator(rng, 1), self.energy, vae, as_count("n", n),
                                                as_count("mh_steps", mh_steps), *opts, 0,
                                                self.config.wide_proposal(), anneal=self.config.path_anneal)
            return path.position
        return self._sample(as_count("n", n), num_steps, rng)

    def _proposal(self, num_steps: Optional[int]):
        cfg = self.config
        vae = self.vae if cfg.init == "vae" else None
        num_steps = cfg.num_steps if num_steps is None else check_num_steps(num_steps)
        noise_scale = cfg.noise_scale if cfg.noise_scale > 0 else 1.0
        return vae, (cfg.step_size, num_steps, noise_scale, cfg.adjust)

    def _generator(self, rng: RNG, salt: int) -> torch.Generator:
        gen = as_rng(rng, self.device)
        if gen is None:
            seed = (self.generator.initial_seed() * 1_000_003 + self.iteration * 7 + salt) % 2 ** 63
            gen = torch.Generator(device=self.device).manual_seed(seed)
        return gen

    def log_partition(self, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None,
                      batch_size: int = 2000) -> Tuple[float, float]:
        r"""Estimate :math:`\log Z` and its standard error from this teacher's proposal paths.

        See :meth:`numpyro_vmt.VariationalMCMCTeaching.log_partition`: the decoder with
        its observation noise (``init="vae"``) or the Gaussian over ``init_bounds``,
        then the Langevin run; biased *low*, so likelihoods from it are biased *high*.
        """
        vae, opts = self._proposal(num_steps)
        return correction.log_partition(self._generator(rng, 2), self.energy, vae,
                                        as_count("num_samples", num_samples), *opts, 0,
                                        self.config.wide_proposal(), batch_size, anneal=self.config.path_anneal)

    def log_prob(self, x: Any, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None
                 ) -> Tuple[np.ndarray, float]:
        """``log p(x) = −E(x) − log Ẑ`` per row of ``x`` (numpy), and the standard error of
        ``log Ẑ`` (see :meth:`log_partition` for the bias)."""
        x = self._as_batch(x, "x")
        log_z, se = self.log_partition(num_samples, rng, num_steps)
        return -self.energy.numpy_energy(x.detach().cpu().numpy()) - log_z, se

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
        chains, minfo = self.chains, None
        if cfg.correction:  # exact MH teaching: the persistent chains are the negative samples
            if ctx is not None:
                raise NotImplementedError("correction='mh' is not implemented for the conditional teacher")
            chains, minfo = correction.update_chains(gen, self.chains, self.energy,
                                                     self.vae if cfg.init == "vae" else None, n, cfg)
            x_tilde, starts = chains.position, ChainStarts(chains.position, None, None)
            nan = torch.full((), math.nan, dtype=self.dtype, device=self.device)
            langevin = (nan, nan)
        else:
            try:
                starts = start_chains(cfg, self.energy, self.vae, self.buffer, n, gen, True, ctx)
                state, sinfo = revise(self._sampler(ctx), starts.position, gen)
            except DivergenceError as e:
                distributed.agree(self._group, e)  # every rank raises
            distributed.agree(self._group)
            x_tilde = state.position
            langevin = (sinfo.acceptance_rate.mean(), sinfo.grad_norm[-1].mean())
        loss, e_data, e_samp = energy_loss(cfg, with_context(self.energy, ctx), batch, x_tilde)
        v_loss = vae_loss(cfg, self.vae, x_tilde, starts, gen, ctx)

        # both backward passes, then one check of losses and gradients before any update
        self.energy_optim.zero_grad(set_to_none=True)
        loss.backward()
        if self.vae_optim is not None:
            self.vae_optim.zero_grad(set_to_none=True)
            v_loss.backward()
        stats = [loss.detach(), e_data.detach().mean(), e_samp.detach().mean(), v_loss.detach(), *langevin]
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
        self.chains = chains
        self.iteration += 1
        nan = torch.full((), math.nan, dtype=loss.dtype, device=loss.device)
        mh = (nan, nan, nan) if minfo is None else (minfo.acceptance_rate, minfo.weight_ess, minfo.crossing_rate)
        return TeachingInfo(*stats, gnorm.detach(), *mh)

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
                extra = ({} if not self.config.correction else
                         dict(acc=f"{float(info.path_acceptance):.2f}", ess=f"{float(info.weight_ess):.2f}",
                              cross=f"{float(info.crossing_rate):.2f}"))
                bar.set_postfix(loss=f"{float(info.loss):.3g}", e_data=f"{float(info.energy_data):.3g}",
                                e_samples=f"{float(info.energy_samples):.3g}", **extra, refresh=False)
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
            "chains": None if self.chains is None else self.chains._asdict(),
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
            self.chains = chains
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
