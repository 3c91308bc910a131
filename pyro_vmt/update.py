r"""The steps of one training iteration of variational MCMC teaching (Torch).

The pieces the host-side class ([`pyro_vmt.teaching.VariationalMCMCTeaching`][pyro_vmt.teaching.VariationalMCMCTeaching])
runs in order, each a function of the parts it needs; [`numpyro_vmt.update`][numpyro_vmt.update] holds
the same steps for JAX. After Xie, Zheng & Li, AAAI 2021
(https://arxiv.org/abs/2012.14936):

1. [`start_chains()`][pyro_vmt.update.start_chains]: $x^{(0)}_i = g_\alpha(z_i)$, $z_i \sim \mathcal N(0, I)$
   (or noise, or a replay buffer, per ``init``).
2. [`revise()`][pyro_vmt.update.revise]: $K$ Langevin steps
   $x^{(k+1)} = x^{(k)} - \tfrac{\delta^2}{2}\nabla_x E_\theta(x^{(k)}) + \delta\sigma\xi_k$.
3. [`energy_loss()`][pyro_vmt.update.energy_loss]: $\frac1m\sum_j E_\theta(x_j) - \frac1n\sum_i E_\theta(\tilde x_i)$
   (+ penalty), the maximum-likelihood gradient.
4. [`vae_loss()`][pyro_vmt.update.vae_loss]: the negative ELBO of the VAE with $\tilde x$ observed (or
   the generator's regression on $\tilde x$ for CoopNets).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch

from pyro_vmt.langevin import Langevin, LangevinInfo, LangevinState
from vmt.core.batch import with_context
from vmt.core.config import TeachingConfig
from vmt.core.errors import DivergenceError, divergence_message

__all__ = ["ChainStarts", "uniform_points", "start_chains", "revise", "energy_loss", "vae_loss"]

Tensor = torch.Tensor


class ChainStarts(NamedTuple):
    """Where ``n`` chains start, and what the update needs to know about it."""

    position: Tensor             # x⁽⁰⁾, (n, *event_shape)
    latents: Optional[Tensor]    # the z the decoder started from (init "vae"/"generator")
    slots: Optional[Tensor]      # the replay-buffer rows they came from (init "persistent")


def uniform_points(config: TeachingConfig, like: Tensor, event_shape: tuple, n: int,
                   gen: torch.Generator) -> Tensor:
    """``n`` points uniform on ``config.init_bounds``, with ``like``'s device and dtype."""
    low, high = config.init_bounds
    u = torch.rand((n,) + tuple(event_shape), generator=gen, device=like.device, dtype=like.dtype)
    return low + (high - low) * u


def start_chains(config: TeachingConfig, energy, vae, buffer: Optional[Tensor], n: int, gen: torch.Generator,
                 training: bool, ctx: Optional[Tensor] = None) -> ChainStarts:
    """Starting points ``x⁽⁰⁾`` of ``n`` chains, with the latents or buffer slots they came from."""
    like = next(energy.parameters())
    event = energy.event_shape
    if config.init in ("vae", "generator"):
        m = config.num_noise_chains(n) if training else 0
        z = vae.sample_latent(n - m, gen)
        with torch.no_grad():
            x0 = with_context(vae.decode, None if ctx is None else ctx[:n - m])(z)
        return ChainStarts(torch.cat([x0, uniform_points(config, like, event, m, gen)]) if m else x0, z, None)
    if config.init == "noise":
        return ChainStarts(uniform_points(config, like, event, n, gen), None, None)
    idx = torch.randint(buffer.shape[0], (n,), generator=gen, device=like.device)
    x0 = buffer[idx]
    if training:
        reset = torch.rand(n, generator=gen, device=like.device) < config.reinit_prob
        mask = reset.reshape((-1,) + (1,) * len(event))
        x0 = torch.where(mask, uniform_points(config, like, event, n, gen), x0)
    return ChainStarts(x0, None, idx)


def revise(sampler: Langevin, x0: Tensor, gen: torch.Generator, num_steps: Optional[int] = None
           ) -> Tuple[LangevinState, LangevinInfo]:
    """The Langevin revision; [`DivergenceError`][vmt.core.errors.DivergenceError] if any chain diverged."""
    state, info = sampler.run(gen, x0, num_steps)
    bad = info.is_divergent.any(0)
    if bad.any():
        first = int(info.is_divergent.any(1).nonzero()[0, 0])
        raise DivergenceError(divergence_message(first, int(bad.sum()), x0.shape[0], sampler.step_size))
    return state, info


def energy_loss(config: TeachingConfig, energy, batch: Tensor, x_tilde: Tensor
                ) -> Tuple[Tensor, Tensor, Tensor]:
    """``(loss, E(data), E(x̃))``: the maximum-likelihood loss ``mean E(data) − mean E(x̃)`` (+ penalty)."""
    e_data, e_samp = energy(batch), energy(x_tilde)
    loss = e_data.mean() - e_samp.mean()
    if config.energy_reg:
        loss = loss + config.energy_reg * (e_data.pow(2).mean() + e_samp.pow(2).mean())
    return loss, e_data, e_samp


def vae_loss(config: TeachingConfig, vae, x_tilde: Tensor, starts: ChainStarts, gen: torch.Generator,
             ctx: Optional[Tensor] = None) -> Tensor:
    """The VAE's loss on the revised samples: the negative ELBO (``"vae"``), the generator's
    ``−log p(x̃, z)`` on the chains it started (``"generator"``), NaN otherwise."""
    if config.init == "vae":
        return with_context(vae.elbo_loss, ctx)(x_tilde, gen)
    if config.init == "generator":  # only the chains the generator started (see noise_fraction)
        k = starts.latents.shape[0]
        return with_context(vae.joint_loss, None if ctx is None else ctx[:k])(x_tilde[:k], starts.latents)
    return torch.tensor(math.nan, device=x_tilde.device, dtype=x_tilde.dtype)
