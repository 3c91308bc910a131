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

None of them waits for the device: what the host must check (the [`Diagnosis`][pyro_vmt.update.Diagnosis]
of the run, the losses, the gradient and parameter norms) stays on the device until
the teacher fetches it once per iteration. [`Undo`][pyro_vmt.update.Undo] keeps bitwise copies of the
parameters and optimiser states taken before the optimisers step, so an iteration
whose check fails is undone exactly.
"""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

from pyro_vmt.langevin import (Langevin, LangevinInfo, LangevinState, _check_position, check_start, energy_and_grad,
                               start_flags)
from vmt.core.batch import context_and_data, with_context
from vmt.core.config import TeachingConfig
from vmt.core.errors import DivergenceError, divergence_message

__all__ = ["ChainStarts", "Diagnosis", "Draws", "Undo", "adam", "raise_if_diverged", "uniform_points",
           "start_chains", "revise", "energy_loss", "vae_loss", "max_abs", "keyed", "KEYED"]

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


class Diagnosis(NamedTuple):
    """What the host checks before an iteration counts (0-d device tensors; as [`numpyro_vmt.update`][numpyro_vmt.update])."""

    bad_start: Tensor         # chains with a non-finite starting point
    bad_start_energy: Tensor  # chains with a non-finite energy or gradient there
    num_divergent: Tensor     # chains flagged divergent at any step
    first_divergent: Tensor   # first step with a divergent chain (-1: none)


def revise(sampler: Langevin, x0: Tensor, gen: torch.Generator, num_steps: Optional[int] = None,
           runner=None, noise: Optional[Tensor] = None) -> Tuple[LangevinState, LangevinInfo, Diagnosis]:
    """The Langevin revision from ``x0``, and the [`Diagnosis`][pyro_vmt.update.Diagnosis] the host checks (no host sync).

    ``runner``: the loop to run instead of the sampler's own, e.g. a
    [`pyro_vmt.capture.CompiledRun`][pyro_vmt.capture.CompiledRun] of it; ``noise``: the ``ξ`` of every step,
    ``(num_steps, n, *event_shape)`` (given draws, see [`Draws`][pyro_vmt.update.Draws]; runs eagerly).
    """
    _check_position(x0)
    energy, grad = energy_and_grad(sampler.potential_fn, x0)
    start = LangevinState(x0.detach(), energy, grad)
    if noise is not None:
        state, info = sampler._run_from(gen, start, num_steps, noise)
    else:
        state, info = (runner or sampler._run_from)(gen, start, num_steps)
    bad_any = info.is_divergent.any(1)
    first = torch.where(bad_any.any(), bad_any.to(torch.uint8).argmax(), torch.full_like(bad_any[0], -1, dtype=torch.long))
    return state, info, Diagnosis(*start_flags(x0, energy, grad), info.is_divergent.any(0).sum(), first)


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


def max_abs(tensors: Sequence[Tensor], like: Tensor) -> Tensor:
    """``max |t|`` over floating-point ``tensors`` as a 0-d device tensor: finite exactly when every
    value is (a maximum, unlike a sum or a 2-norm, cannot overflow); 0 for none."""
    floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return torch.zeros((), device=like.device)
    return torch.stack([n.float() for n in torch._foreach_norm(floats, math.inf)]).max()


class Undo:
    """Bitwise copies of modules' parameters and buffers and of optimisers' states, to undo one update.

    `save()` before the optimisers step (one fused copy into buffers allocated
    once), `restore()` if the iteration's check fails: parameters and buffers are
    copied back in place (the optimisers keep referring to them), optimiser states
    and learning rates are put back as they were, state created by the failed step
    is dropped.
    """

    def __init__(self, modules: Sequence[torch.nn.Module], optims: Sequence[Optional[torch.optim.Optimizer]]):
        self.modules = [m for m in modules if m is not None]
        self.optims = [o for o in optims if o is not None]
        self._layout: Optional[list] = None
        self._backup: List[Tensor] = []

    def _live(self):
        tensors = [t for m in self.modules for t in list(m.parameters()) + list(m.buffers())]
        entries = [(o, p, k) for o in self.optims for p, s in o.state.items()
                   for k, v in s.items() if isinstance(v, Tensor)]
        return tensors, entries

    def save(self) -> None:
        tensors, entries = self._live()
        live = [t.detach() for t in tensors] + [o.state[p][k] for o, p, k in entries]
        layout = [(t.shape, t.dtype, t.device) for t in live]
        if layout != self._layout:
            self._backup, self._layout = [t.clone() for t in live], layout
        else:
            torch._foreach_copy_(self._backup, live)
        self._entries = entries
        self._others = [(o, p, {k: v for k, v in s.items() if not isinstance(v, Tensor)})
                        for o in self.optims for p, s in o.state.items()]
        self._lrs = [[g["lr"] for g in o.param_groups] for o in self.optims]
        self._num_tensors = len(tensors)

    def restore(self) -> None:
        tensors, _ = self._live()
        with torch.no_grad():
            torch._foreach_copy_([t.detach() for t in tensors], self._backup[:self._num_tensors])
        for o in self.optims:
            o.state.clear()
        for o, p, others in self._others:
            o.state[p] = dict(others)
        for (o, p, k), saved in zip(self._entries, self._backup[self._num_tensors:]):
            o.state[p][k] = saved  # the backup becomes the state: fresh buffers at the next save
        for o, lrs in zip(self.optims, self._lrs):
            for g, lr in zip(o.param_groups, lrs):
                g["lr"] = lr
        self._layout = None


def adam(module: torch.nn.Module, lr: float, betas) -> torch.optim.Adam:
    """Adam over ``module``'s parameters; the fused kernel where torch has one (CPU, CUDA):
    one launch per step and its step counters on the device, so no host sync."""
    params = list(module.parameters())
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused or None)


def raise_if_diverged(diag: list, n: int, step_size: float, cause: Optional[BaseException] = None) -> None:
    """Raise for a non-finite start or a diverged run, from the fetched [`Diagnosis`][pyro_vmt.update.Diagnosis]."""
    bad_start, bad_energy, num_divergent, first = (int(v) for v in diag)
    try:
        check_start(n, bad_start, bad_energy)
    except ValueError as e:
        raise e from cause
    if num_divergent:
        raise DivergenceError(divergence_message(first, num_divergent, n, step_size)) from cause


#: Why a conditional batch without its training rows cannot be taught with ``correction="mh"``.
KEYED = ("correction='mh' with the conditional teacher keeps one persistent chain per training row, so it trains "
         "with fit() on arrays (x, y), which knows each minibatch's rows; not with step() or a stream of batches")


def keyed(config: TeachingConfig, data) -> bool:
    """Whether training keeps one persistent chain per training row: ``correction="mh"`` on pairs ``(x, y)``."""
    return bool(config.correction) and context_and_data(data)[0] is not None
