r"""The steps of one training iteration of variational MCMC teaching (Torch).

The pieces the host-side class (:class:`pyro_vmt.teaching.VariationalMCMCTeaching`)
runs in order, each a function of the parts it needs; :mod:`numpyro_vmt.update` holds
the same steps for JAX. After Xie, Zheng & Li, AAAI 2021
(https://arxiv.org/abs/2012.14936):

1. :func:`start_chains`: :math:`x^{(0)}_i = g_\alpha(z_i)`, :math:`z_i \sim \mathcal N(0, I)`
   (or noise, or a replay buffer, per ``init``).
2. :func:`revise`: :math:`K` Langevin steps
   :math:`x^{(k+1)} = x^{(k)} - \tfrac{\delta^2}{2}\nabla_x E_\theta(x^{(k)}) + \delta\sigma\xi_k`.
3. :func:`energy_loss`: :math:`\frac1m\sum_j E_\theta(x_j) - \frac1n\sum_i E_\theta(\tilde x_i)`
   (+ penalty), the maximum-likelihood gradient.
4. :func:`vae_loss`: the negative ELBO of the VAE with :math:`\tilde x` observed (or
   the generator's regression on :math:`\tilde x` for CoopNets).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch

from pyro_vmt.langevin import Langevin, LangevinInfo, LangevinState
from vmt.core.batch import with_context
from vmt.core.config import TeachingConfig
from vmt.core.errors import DivergenceError, divergence_message

__all__ = ["ChainStarts", "Draws", "uniform_points", "start_chains", "revise", "energy_loss", "vae_loss"]

Tensor = torch.Tensor


class ChainStarts(NamedTuple):
    """Where ``n`` chains start, and what the update needs to know about it."""

    position: Tensor             # x⁽⁰⁾, (n, *event_shape)
    latents: Optional[Tensor]    # the z the decoder started from (init "vae"/"generator")
    slots: Optional[Tensor]      # the replay-buffer rows they came from (init "persistent")


class Draws(NamedTuple):
    """Random draws of one iteration given instead of drawn from the training RNG.

    The hook of the cross-backend conformance test of a whole iteration
    (``tests/conformance/test_iteration.py``): the same draws in both backends give
    the same numbers. A field left ``None`` is drawn as usual.
    """

    latents: Optional[Tensor] = None  # z ~ N(0, I), (n, latent_dim): init "vae" / "generator"
    uniform: Optional[Tensor] = None  # u ~ U(0, 1), (n, *event_shape): noise starts, buffer resets
    slots: Optional[Tensor] = None    # replay-buffer rows, (n,): init "persistent"
    reset: Optional[Tensor] = None    # U(0, 1), (n,): a buffer chain restarts where < reinit_prob
    noise: Optional[Tensor] = None    # ξ, (K, n, *event_shape): the Langevin noise


def uniform_points(config: TeachingConfig, like: Tensor, event_shape: tuple, n: int,
                   gen: torch.Generator, u: Optional[Tensor] = None) -> Tensor:
    """``n`` points uniform on ``config.init_bounds``, with ``like``'s device and dtype
    (from the standard uniforms ``u`` if given)."""
    low, high = config.init_bounds
    if u is None:
        u = torch.rand((n,) + tuple(event_shape), generator=gen, device=like.device, dtype=like.dtype)
    return low + (high - low) * u[:n]


def start_chains(config: TeachingConfig, energy, vae, buffer: Optional[Tensor], n: int, gen: torch.Generator,
                 training: bool, ctx: Optional[Tensor] = None, draws: Optional[Draws] = None) -> ChainStarts:
    """Starting points ``x⁽⁰⁾`` of ``n`` chains, with the latents or buffer slots they came from."""
    like = next(energy.parameters())
    event = energy.event_shape
    d = Draws() if draws is None else draws
    if config.init in ("vae", "generator"):
        m = config.num_noise_chains(n) if training else 0
        z = vae.sample_latent(n - m, gen) if d.latents is None else d.latents
        with torch.no_grad():
            x0 = with_context(vae.decode, None if ctx is None else ctx[:n - m])(z)
        return ChainStarts(torch.cat([x0, uniform_points(config, like, event, m, gen, d.uniform)]) if m else x0,
                           z, None)
    if config.init == "noise":
        return ChainStarts(uniform_points(config, like, event, n, gen, d.uniform), None, None)
    idx = torch.randint(buffer.shape[0], (n,), generator=gen, device=like.device) if d.slots is None else d.slots
    x0 = buffer[idx]
    if training:
        u = torch.rand(n, generator=gen, device=like.device) if d.reset is None else d.reset
        mask = (u < config.reinit_prob).reshape((-1,) + (1,) * len(event))
        x0 = torch.where(mask, uniform_points(config, like, event, n, gen, d.uniform), x0)
    return ChainStarts(x0, None, idx)


def revise(sampler: Langevin, x0: Tensor, gen: torch.Generator, num_steps: Optional[int] = None,
           noise: Optional[Tensor] = None) -> Tuple[LangevinState, LangevinInfo]:
    """The Langevin revision (with the noise ``ξ`` if given); :class:`~vmt.core.errors.DivergenceError`
    if any chain diverged."""
    state, info = sampler.run(gen, x0, num_steps, noise=noise)
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
