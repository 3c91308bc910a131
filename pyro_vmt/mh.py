r"""Metropolis–Hastings on proposal paths: VMT teaching made exact (PyTorch).

The same functions, with the same names and signatures, as [`numpyro_vmt.mh`][numpyro_vmt.mh]
(see there): persistent chains take a fresh weighted path with probability
$\min(1, w'/w)$, an independence Metropolis–Hastings step on the extended space whose
chain states are exact samples of $e^{-E(x)}/Z$ once mixed (Xie, Zheng & Li, AAAI 2021,
https://arxiv.org/abs/2012.14936, made exact).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import torch

from pyro_vmt.correction import Path, PotentialFn, _like, propose, refresh, restale, weight_ess
from pyro_vmt.langevin import LangevinState, _flat_sum, _step, energy_and_grad
from pyro_vmt.rng import RNG, as_rng

__all__ = ["MHInfo", "crossing_radius", "accept", "update_chains", "local_moves", "independent_mh"]

Tensor = torch.Tensor


class MHInfo(NamedTuple):
    r"""Diagnostics of one [`accept()`][pyro_vmt.mh.accept] (0-d tensors, except ``is_accepted``).

    Attributes
    ----------
    acceptance_rate : mean of ``min(1, w'/w)`` over chains.
    is_accepted : bool tensor, shape ``(n,)``.
    weight_ess : effective sample size of the proposals' weights over ``n``,
        $(\sum w)^2 / (n \sum w^2) \in [1/n, 1]$.
    crossing_rate : fraction of chains whose accepted path ends farther from the old
        state than ``radius`` (see [`crossing_radius()`][pyro_vmt.mh.crossing_radius]).
    local_acceptance : mean acceptance of the MALA moves of [`local_moves()`][pyro_vmt.mh.local_moves]
        before the test (NaN without them).
    """

    acceptance_rate: Tensor
    is_accepted: Tensor
    weight_ess: Tensor
    crossing_rate: Tensor
    local_acceptance: Tensor


def crossing_radius(step_size: float, noise_scale: float, num_steps: int, dim: int) -> float:
    r"""Three times the distance ``K`` Langevin steps diffuse: $3\,\delta\sigma\sqrt{Kd}$."""
    return 3.0 * step_size * noise_scale * math.sqrt(num_steps * dim)


def accept(rng: RNG, current: Path, proposal: Path, radius: float = 0.0,
           uniform: Optional[Tensor] = None) -> Tuple[Path, MHInfo]:
    r"""Independence Metropolis–Hastings on paths: accept with $\min(1, w'/w)$.

    A current state of weight ``-inf`` takes any finite proposal; a proposal of
    weight ``-inf`` is never taken.
    """
    log_alpha = proposal.log_weight - current.log_weight
    log_alpha = torch.where(torch.isneginf(current.log_weight), torch.zeros_like(log_alpha), log_alpha)
    log_alpha = torch.where(torch.isneginf(proposal.log_weight), torch.full_like(log_alpha, -math.inf), log_alpha)
    log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf, posinf=0.0).clamp(max=0.0)
    if uniform is None:
        gen = as_rng(rng, current.position.device)
        if gen is None:
            raise ValueError("rng is required: pass a torch.Generator or an int seed")
        uniform = torch.rand(log_alpha.shape, generator=gen, dtype=current.energy.dtype,
                             device=current.energy.device)
    taken = torch.log(uniform) < log_alpha
    mask = taken.reshape((-1,) + (1,) * (current.position.ndim - 1))
    new = Path(torch.where(mask, proposal.position, current.position),
               *(torch.where(taken, p, c) for p, c in zip(proposal[1:], current[1:])))
    dist = _flat_sum((proposal.position - current.position) ** 2).sqrt()
    nan = torch.full((), math.nan, dtype=current.energy.dtype, device=current.energy.device)
    info = MHInfo(log_alpha.exp().mean(), taken, weight_ess(proposal.log_weight),
                  (taken & (dist > radius)).to(current.energy.dtype).mean(), nan)
    return new, info


def update_chains(rng: RNG, chains: Optional[Path], potential_fn: PotentialFn, vae: Any, n: int,
                  config: Any) -> Tuple[Path, MHInfo]:
    """The sampler of ``correction="mh"`` teaching: one MH-on-paths update of ``n`` persistent
    chains (see [`numpyro_vmt.mh.update_chains()`][numpyro_vmt.mh.update_chains])."""
    cfg = config
    gen = as_rng(rng, _like(potential_fn)["device"])
    if gen is None:
        raise ValueError("rng is required: pass a torch.Generator or an int seed")
    m = n if vae is None else cfg.num_noise_chains(n)
    opts = (cfg.step_size, cfg.num_steps, cfg.noise_scale, cfg.adjust, m, cfg.wide_proposal(), cfg.path_anneal)
    proposal = propose(gen, potential_fn, vae, n, *opts)
    if chains is None or chains.position.shape[0] == 0:
        ones = torch.ones((), dtype=proposal.energy.dtype, device=proposal.energy.device)
        taken = torch.ones(n, dtype=torch.bool, device=ones.device)
        return proposal, MHInfo(ones, taken, weight_ess(proposal.log_weight), 0 * ones, math.nan * ones)
    if chains.position.shape[0] != n:
        raise ValueError(f"{chains.position.shape[0]} persistent chains, but {n} negative samples per iteration")
    radius = crossing_radius(cfg.step_size, cfg.noise_scale, cfg.num_steps, math.prod(chains.position.shape[1:]))
    position, local = chains.position, None
    if cfg.local_steps:
        position, local = local_moves(gen, potential_fn, position, cfg.step_size, cfg.local_steps, cfg.noise_scale)
    current = (refresh(gen, potential_fn, vae, position, *opts) if cfg.path_refresh
               else restale(potential_fn, chains))
    new, info = accept(gen, current, proposal, radius)
    return new, info if local is None else info._replace(local_acceptance=local)


def local_moves(rng: RNG, potential_fn: PotentialFn, position: Tensor, step_size: float, num_steps: int,
                noise_scale: float = 1.0) -> Tuple[Tensor, Tensor]:
    """``num_steps`` MALA steps on chain states; returns ``(position, mean acceptance)`` (see
    [`numpyro_vmt.mh.local_moves()`][numpyro_vmt.mh.local_moves])."""
    gen = as_rng(rng, position.device)
    if gen is None:
        raise ValueError("rng is required: pass a torch.Generator or an int seed")
    state = LangevinState(position.detach(), *energy_and_grad(potential_fn, position))
    h, scale = 0.5 * step_size * step_size, step_size * noise_scale
    total = torch.zeros((), dtype=position.dtype, device=position.device)
    for _ in range(int(num_steps)):
        state, info = _step(gen, state, potential_fn, h, scale, True, None, None)
        total = total + info.acceptance_rate.mean()
    return state.position, total / int(num_steps)


def independent_mh(rng: RNG, potential_fn: PotentialFn, vae: Any, n: int, num_iters: int, step_size: float,
                   num_steps: int, noise_scale: float = 1.0, adjust: bool = False, num_wide: int = 0,
                   wide: Tuple[float, float] = (0.0, 1.0), anneal: bool = False,
                   local_steps: int = 0) -> Tuple[Path, Tensor]:
    """``n`` chains of the independence sampler on paths for a *fixed* energy, with
    ``local_steps`` MALA moves and a path refresh before each test (see
    [`numpyro_vmt.mh.independent_mh()`][numpyro_vmt.mh.independent_mh])."""
    gen = as_rng(rng, _like(potential_fn)["device"])
    if gen is None:
        raise ValueError("rng is required: pass a torch.Generator or an int seed")
    opts = (step_size, num_steps, noise_scale, adjust, num_wide, wide, anneal)
    chains = propose(gen, potential_fn, vae, n, *opts)
    rates = []
    for _ in range(int(num_iters)):
        if local_steps:
            moved, _ = local_moves(gen, potential_fn, chains.position, step_size, local_steps, noise_scale)
            chains = refresh(gen, potential_fn, vae, moved, *opts)
        chains, info = accept(gen, chains, propose(gen, potential_fn, vae, n, *opts))
        rates.append(info.acceptance_rate)
    return chains, torch.stack(rates) if rates else chains.energy.new_zeros(0)
