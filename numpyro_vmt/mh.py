r"""Metropolis–Hastings on proposal paths: VMT teaching made exact (JAX).

Persistent chains carry a whole weighted proposal path each
([`Path`][numpyro_vmt.correction.Path], weights from [`numpyro_vmt.correction`][numpyro_vmt.correction]).
Every round a fresh path is proposed and taken with probability

$$
\alpha = \min\big(1, w'/w\big), \qquad
\log w = -E(x_K) + \text{path term} + \text{start term},
$$

an independence Metropolis–Hastings step on the extended space whose target has
$e^{-E(x)}/Z$ as the marginal of the end point, so the chain states are exact samples
of the EBM once mixed. Before each test the current state may move by MALA steps
([`local_moves()`][numpyro_vmt.mh.local_moves], which leave $e^{-E}$ invariant) and have its
auxiliary path redrawn ([`refresh()`][numpyro_vmt.correction.refresh], a Gibbs step) or
re-weighed ([`restale()`][numpyro_vmt.correction.restale]). This is VMT (Xie, Zheng & Li,
AAAI 2021, https://arxiv.org/abs/2012.14936) with its proposal corrected exactly, in the
manner of non-equilibrium candidate Monte Carlo (Nilmeier et al. 2011, PNAS 108).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp

from numpyro_vmt.correction import Path, PotentialFn, _key, propose, refresh, restale, weight_ess
from numpyro_vmt.langevin import _flat_sum, init, scan_steps
from numpyro_vmt.rng import RNG

__all__ = ["MHInfo", "crossing_radius", "accept", "update_chains", "local_moves", "independent_mh"]

Array = jax.Array


class MHInfo(NamedTuple):
    r"""Diagnostics of one [`accept()`][numpyro_vmt.mh.accept] (0-d arrays, except ``is_accepted``).

    Attributes
    ----------
    acceptance_rate : mean of ``min(1, w'/w)`` over chains.
    is_accepted : Array of bool, shape ``(n,)``.
    weight_ess : effective sample size of the proposals' weights over ``n``,
        $(\sum w)^2 / (n \sum w^2) \in [1/n, 1]$.
    crossing_rate : fraction of chains whose accepted path ends farther from the old
        state than ``radius`` (see [`crossing_radius()`][numpyro_vmt.mh.crossing_radius]): moves a local chain would
        not make in one revision, e.g. between modes.
    local_acceptance : mean acceptance of the MALA moves of [`local_moves()`][numpyro_vmt.mh.local_moves]
        before the test (NaN without them).
    """

    acceptance_rate: Array
    is_accepted: Array
    weight_ess: Array
    crossing_rate: Array
    local_acceptance: Array


def crossing_radius(step_size: float, noise_scale: float, num_steps: int, dim: int) -> float:
    r"""Three times the distance ``K`` Langevin steps diffuse: $3\,\delta\sigma\sqrt{Kd}$."""
    return 3.0 * step_size * noise_scale * math.sqrt(num_steps * dim)


def accept(rng: RNG, current: Path, proposal: Path, radius: float = 0.0,
           uniform: Optional[Array] = None) -> Tuple[Path, MHInfo]:
    r"""Independence Metropolis–Hastings on paths: accept with $\min(1, w'/w)$.

    A current state of weight ``-inf`` (its path left the finite numbers) takes any
    finite proposal; a proposal of weight ``-inf`` is never taken.
    """
    log_alpha = proposal.log_weight - current.log_weight
    log_alpha = jnp.where(jnp.isneginf(current.log_weight), 0.0, log_alpha)
    log_alpha = jnp.where(jnp.isneginf(proposal.log_weight), -jnp.inf, log_alpha)
    log_alpha = jnp.minimum(jnp.nan_to_num(log_alpha, nan=-jnp.inf), 0.0)
    if uniform is None:
        uniform = jax.random.uniform(_key(rng), log_alpha.shape, dtype=current.energy.dtype)
    taken = jnp.log(uniform) < log_alpha
    mask = taken.reshape((-1,) + (1,) * (current.position.ndim - 1))
    new = Path(jnp.where(mask, proposal.position, current.position),
               *(jnp.where(taken, p, c) for p, c in zip(proposal[1:], current[1:])))
    dist = jnp.sqrt(_flat_sum((proposal.position - current.position) ** 2))
    nan = jnp.full((), jnp.nan, current.energy.dtype)
    info = MHInfo(jnp.exp(log_alpha).mean(), taken, weight_ess(proposal.log_weight),
                  (taken & (dist > radius)).mean(dtype=current.energy.dtype), nan)
    return new, info


def update_chains(rng: RNG, chains: Optional[Path], potential_fn: PotentialFn, vae: Any, n: int,
                  config: Any) -> Tuple[Path, MHInfo]:
    """The sampler of ``correction="mh"`` teaching: one MH-on-paths update of ``n`` persistent chains.

    ``n`` fresh proposals (the last ``config.num_noise_chains(n)`` from the wide
    Gaussian, all of them without a VAE); the current states' paths refreshed
    (``config.path_refresh``) or re-weighed (stale); [`accept()`][numpyro_vmt.mh.accept]. Without chains
    yet (``None`` or zero rows), the proposals become the chains.
    """
    cfg = config
    k_prop, k_ref, k_acc = jax.random.split(_key(rng), 3)
    m = n if vae is None else cfg.num_noise_chains(n)
    opts = (cfg.step_size, cfg.num_steps, cfg.noise_scale, cfg.adjust, m, cfg.wide_proposal(), cfg.path_anneal)
    proposal = propose(k_prop, potential_fn, vae, n, *opts)
    if chains is None or chains.position.shape[0] == 0:
        ones = jnp.ones((), proposal.energy.dtype)
        return proposal, MHInfo(ones, jnp.ones((n,), bool), weight_ess(proposal.log_weight), 0 * ones,
                                jnp.nan * ones)
    if chains.position.shape[0] != n:
        raise ValueError(f"{chains.position.shape[0]} persistent chains, but {n} negative samples per iteration")
    radius = crossing_radius(cfg.step_size, cfg.noise_scale, cfg.num_steps, math.prod(chains.position.shape[1:]))
    position, local = chains.position, None
    if cfg.local_steps:
        position, local = local_moves(jax.random.fold_in(k_ref, 1), potential_fn, position, cfg.step_size,
                                      cfg.local_steps, cfg.noise_scale)
    current = (refresh(k_ref, potential_fn, vae, position, *opts) if cfg.path_refresh
               else restale(potential_fn, chains))
    new, info = accept(k_acc, current, proposal, radius)
    return new, info if local is None else info._replace(local_acceptance=local)


def local_moves(rng: RNG, potential_fn: PotentialFn, position: Array, step_size: float, num_steps: int,
                noise_scale: float = 1.0) -> Tuple[Array, Array]:
    r"""``num_steps`` MALA steps on chain states; returns ``(position, mean acceptance)``.

    MALA leaves $e^{-E}$ invariant, so exact chains stay exact; between the accepted
    path jumps (which move chains between modes) these moves sample each mode's shape
    ([`TeachingConfig`][vmt.core.config.TeachingConfig]'s ``local_steps``).
    """
    return _local_moves(_key(rng), potential_fn, position, step_size, int(num_steps), noise_scale)


@eqx.filter_jit
def _local_moves(key, potential_fn, position, step_size, num_steps, noise_scale):
    final, info = scan_steps(key, init(position, potential_fn), potential_fn, step_size, noise_scale, True, num_steps)
    return final.position, info.acceptance_rate.mean()


def independent_mh(rng: RNG, potential_fn: PotentialFn, vae: Any, n: int, num_iters: int, step_size: float,
                   num_steps: int, noise_scale: float = 1.0, adjust: bool = False, num_wide: int = 0,
                   wide: Tuple[float, float] = (0.0, 1.0), anneal: bool = False,
                   local_steps: int = 0) -> Tuple[Path, Array]:
    """``n`` chains of the independence sampler on paths for a *fixed* energy.

    The first proposals, then ``num_iters`` rounds of
    [`propose()`][numpyro_vmt.correction.propose] and [`accept()`][numpyro_vmt.mh.accept]
    (the weights of a fixed energy never go stale). With ``local_steps``, each round
    first moves the chains by that many MALA steps ([`local_moves()`][numpyro_vmt.mh.local_moves])
    and redraws their paths ([`refresh()`][numpyro_vmt.correction.refresh]). Returns the
    final [`Path`][numpyro_vmt.correction.Path] and the mean acceptance of each round,
    shape ``(num_iters,)``.
    """
    key = _key(rng)
    opts = (step_size, num_steps, noise_scale, adjust, num_wide, wide, anneal)
    chains = propose(jax.random.fold_in(key, 0), potential_fn, vae, n, *opts)
    rates = []
    for t in range(1, int(num_iters) + 1):
        k_prop, k_acc = jax.random.split(jax.random.fold_in(key, t))
        if local_steps:
            moved, _ = local_moves(jax.random.fold_in(k_acc, 1), potential_fn, chains.position, step_size,
                                   local_steps, noise_scale)
            chains = refresh(jax.random.fold_in(k_acc, 2), potential_fn, vae, moved, *opts)
        chains, info = _accept_jit(k_acc, chains, propose(k_prop, potential_fn, vae, n, *opts))
        rates.append(info.acceptance_rate)
    return chains, jnp.stack(rates) if rates else jnp.zeros((0,), chains.energy.dtype)


_accept_jit = eqx.filter_jit(accept)
