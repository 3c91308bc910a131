r"""Exact Metropolis–Hastings correction of VMT's proposal paths, and ``log Z`` (PyTorch).

The same functions, with the same names and signatures, as [`numpyro_vmt.correction`][numpyro_vmt.correction]
(see there for the construction). A *proposal path* is

$$
z \sim \mathcal N(0, I), \quad x_0 \sim \mathcal N\big(g(z), \operatorname{diag}\sigma^2\big),
\quad x_{k+1} \sim L(\cdot \mid x_k), \; k = 0, \dots, K-1,
$$

and with the encoder $r(z \mid x_0)$ and the reversed transitions as auxiliary
backward kernels its importance weight for the target $e^{-E(x)}/Z$ is

$$
\log w = -E(x_K) + \sum_{k=0}^{K-1}\big[\log L(x_k \mid x_{k+1}) - \log L(x_{k+1} \mid x_k)\big]
+ \log r(z \mid x_0) - \log p(z) - \log \mathcal N\big(x_0;\, g(z), \sigma^2\big),
$$

with $\mathbb E_q[w] = Z$ exactly (annealed importance sampling, Neal 2001;
non-equilibrium candidate Monte Carlo, Nilmeier et al. 2011, PNAS 108; applied to
VMT, Xie, Zheng & Li, AAAI 2021, https://arxiv.org/abs/2012.14936). Persistent
chains that accept whole paths with $\min(1, w'/w)$ ([`accept()`][pyro_vmt.mh.accept]) sample
the EBM exactly; [`log_partition()`][pyro_vmt.correction.log_partition] estimates ``log Z`` (biased low by Jensen's
inequality, so a likelihood from it is biased high).

Randomness is an explicit ``torch.Generator`` (or seed); nothing is differentiated
through a path (every tensor returned is detached).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import torch

from pyro_vmt.langevin import LangevinState, _flat_sum, energy_and_grad
from pyro_vmt.rng import RNG, as_rng

__all__ = ["Path", "run_path", "start_log_ratio", "wide_log_ratio", "path_log_weight",
           "schedule", "propose", "refresh", "restale", "weight_ess", "log_mean_exp", "log_partition"]

Tensor = torch.Tensor
PotentialFn = Callable[[Tensor], Tensor]
_LOG_2PI = math.log(2 * math.pi)


class Path(NamedTuple):
    """A batch of weighted proposal paths (or of chain states with their auxiliary paths).

    Attributes
    ----------
    position : Tensor, shape ``(n, *event_shape)``
        The end points ``x_K``.
    energy : Tensor, shape ``(n,)``
        ``E(x_K)``.
    log_weight : Tensor, shape ``(n,)``
        ``log w`` (``-inf`` for a path that left the finite numbers).
    aux : Tensor, shape ``(n,)``
        ``log w + E(x_K)``: the path and start terms, which [`restale()`][pyro_vmt.correction.restale] keeps.
    """

    position: Tensor
    energy: Tensor
    log_weight: Tensor
    aux: Tensor


def _quad(x: Tensor, center: Tensor, inv_var: Tensor) -> Tuple[Tensor, Tensor]:
    """``Q(x) = ½ Σ (x − c)² / σ²`` per chain and its gradient."""
    d = (x - center) * inv_var
    return 0.5 * _flat_sum(d * (x - center)), d


def _path_step(gen, x, e, g, beta, potential_fn, h, scale, adjust, anchor, noise, uniform):
    r"""One Langevin step on $E_\beta = \beta E + (1 - \beta) Q$ and its log ratio
    $\log L(x \mid x') - \log L(x' \mid x)$ (see `numpyro_vmt.correction._path_step()`)."""
    q, gq = _quad(x, *anchor) if anchor is not None else (0.0, 0.0)
    drift = x - h * (beta * g + (1 - beta) * gq)
    if noise is None:
        noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
    new_x = drift + scale * noise
    new_e, new_g = energy_and_grad(potential_fn, new_x)
    new_q, new_gq = _quad(new_x, *anchor) if anchor is not None else (0.0, 0.0)
    fwd = _flat_sum((new_x - drift) ** 2)
    bwd = _flat_sum((x - new_x + h * (beta * new_g + (1 - beta) * new_gq)) ** 2)
    finite = torch.isfinite(new_e) & torch.isfinite(_flat_sum(new_g)) & torch.isfinite(_flat_sum(new_x))
    if not adjust:
        return new_x, new_e, new_g, (fwd - bwd) / (2 * scale * scale), finite
    e_b, new_e_b = beta * e + (1 - beta) * q, beta * new_e + (1 - beta) * new_q
    log_alpha = torch.where(finite, e_b - new_e_b + (fwd - bwd) / (2 * scale * scale),
                            torch.full_like(e, -math.inf))
    if uniform is None:
        uniform = torch.rand(e.shape, generator=gen, dtype=x.dtype, device=x.device)
    take = torch.log(uniform) < log_alpha
    mask = take.reshape((-1,) + (1,) * (x.ndim - 1))
    # detailed balance: L(x | x') / L(x' | x) = exp(E_β(x') − E_β(x)), 0 when x' = x
    inc = torch.where(take, new_e_b - e_b, torch.zeros_like(e))
    return (torch.where(mask, new_x, x), torch.where(take, new_e, e), torch.where(mask, new_g, g), inc,
            torch.ones_like(finite))


def schedule(num_steps: int, reverse: bool = False) -> list:
    r"""The inverse temperatures $\beta_k = k/K$, ``k = 1..K``, of an annealed path
    (reversed for the backward run)."""
    b = [k / num_steps for k in range(1, num_steps + 1)]
    return b[::-1] if reverse else b


def run_path(rng: RNG, x0: Tensor, potential_fn: PotentialFn, step_size: float, num_steps: int,
             noise_scale: float = 1.0, adjust: bool = False, noise: Optional[Tensor] = None,
             uniform: Optional[Tensor] = None, anchor: Optional[Tuple[Tensor, Tensor]] = None,
             reverse: bool = False) -> Tuple[LangevinState, Tensor, Tensor]:
    r"""``K`` Langevin steps from ``x0`` and the path's log ratio of backward to forward kernels.

    Returns ``(final_state, log_ratio, finite)``, as [`numpyro_vmt.correction.run_path()`][numpyro_vmt.correction.run_path]
    (``anchor = (center, inv_var)`` anneals the path).
    """
    if noise_scale <= 0:
        raise ValueError("a proposal path needs noise_scale > 0: a noise-free revision has no density")
    gen = as_rng(rng, x0.device)
    if gen is None and (noise is None or (adjust and uniform is None)):
        raise ValueError("rng is required: pass a torch.Generator or an int seed")
    h, scale = 0.5 * step_size ** 2, step_size * noise_scale
    x = x0.detach()
    e, g = energy_and_grad(potential_fn, x)
    total = torch.zeros_like(e)
    ok = torch.isfinite(e) & torch.isfinite(_flat_sum(g))
    betas = schedule(num_steps, reverse) if anchor is not None else [1.0] * num_steps
    for k in range(num_steps):
        x, e, g, inc, finite = _path_step(gen, x, e, g, betas[k], potential_fn, h, scale, adjust, anchor,
                                          None if noise is None else noise[k],
                                          None if uniform is None else uniform[k])
        total = total + inc
        ok = ok & finite & torch.isfinite(inc)
    return LangevinState(x, e, g), total, ok


def start_log_ratio(vae: Any, x0: Tensor, z: Tensor, x_enc: Optional[Tensor] = None) -> Tensor:
    r"""$\log r(z \mid x_e) - \log p(z) - \log \mathcal N(x_0; g(z), \sigma^2)$ per chain
    (all constants kept); the encoder reads ``x_e = x_enc`` (default ``x0``)."""
    with torch.no_grad():
        loc, scale = vae.encode(x0 if x_enc is None else x_enc)
        log_r = -0.5 * (((z - loc) / scale) ** 2).sum(1) - scale.log().sum(1)
        log_p = -0.5 * (z ** 2).sum(1)
        sigma = vae.scale().to(x0.dtype).expand(x0.shape[1:])
        d = math.prod(x0.shape[1:])
        log_obs = (-0.5 * _flat_sum(((x0 - vae.decode(z)) / sigma) ** 2) - sigma.log().sum()
                   - 0.5 * d * _LOG_2PI)
        return log_r - log_p - log_obs


def wide_log_ratio(x0: Tensor, loc: float, scale: float) -> Tensor:
    r"""$-\log \mathcal N(x_0; \mathrm{loc}, \mathrm{scale}^2 I)$ per chain."""
    d = math.prod(x0.shape[1:])
    return 0.5 * _flat_sum(((x0 - loc) / scale) ** 2) + d * math.log(scale) + 0.5 * d * _LOG_2PI


def _weighted(final: LangevinState, path_term: Tensor, start_term: Tensor, ok: Tensor) -> Path:
    aux = path_term + start_term
    ok = ok & torch.isfinite(aux) & torch.isfinite(final.energy)
    ninf = torch.full_like(aux, -math.inf)
    return Path(final.position.detach(), final.energy.detach(),
                torch.where(ok, aux - final.energy, ninf).detach(), torch.where(ok, aux, ninf).detach())


def path_log_weight(potential_fn: PotentialFn, vae: Any, z: Tensor, x0: Tensor, noise: Tensor,
                    step_size: float, noise_scale: float = 1.0, adjust: bool = False,
                    uniform: Optional[Tensor] = None, anneal: bool = False) -> Path:
    """The weighted path of given draws (``z``, ``x0``, the Langevin ``noise`` of shape
    ``(K, n, *event_shape)`` and for MALA the ``uniform`` s): deterministic, for tests."""
    no_wide = torch.zeros(x0.shape[0], dtype=torch.bool, device=x0.device)
    anchor = _anchor(vae, z, x0, no_wide, (0.0, 1.0)) if anneal else None
    final, ratio, ok = run_path(None, x0, potential_fn, step_size, noise.shape[0], noise_scale,
                                adjust, noise, uniform, anchor)
    return _weighted(final, ratio, start_log_ratio(vae, x0, z, final.position if anneal else None), ok)


def _wide_mask(n: int, num_wide: int, vae: Any, device) -> Tensor:
    """The last ``num_wide`` chains (every chain without a VAE) start from the wide Gaussian."""
    m = n if vae is None else num_wide
    return torch.arange(n, device=device) >= n - m


def _rows(mask: Tensor, x: Tensor) -> Tensor:
    return mask.reshape((-1,) + (1,) * (x.ndim - 1))


def _anchor(vae, z, x, wide, wide_params):
    """``(center, 1/σ²)`` of each chain's start Gaussian: ``N(g(z), σ²)`` or the wide one."""
    loc, scale = wide_params
    center = torch.full_like(x, loc)
    inv_var = torch.full_like(x, 1.0 / scale ** 2)
    if vae is None:
        return center, inv_var
    with torch.no_grad():
        mean = vae.decode(z).to(x.dtype)
        sigma = vae.scale().to(x.dtype).expand(x.shape)
    rows = _rows(wide, x)
    return torch.where(rows, center, mean), torch.where(rows, inv_var, 1.0 / sigma ** 2)


def _start_terms(vae, x0, z, wide, loc, scale, x_enc=None):
    out = wide_log_ratio(x0, loc, scale)
    if vae is not None:
        out = torch.where(wide, out, start_log_ratio(vae, x0, z, x_enc))
    return out


def _like(potential_fn) -> dict:
    p = next(potential_fn.parameters(), None) if hasattr(potential_fn, "parameters") else None
    return dict(dtype=torch.get_default_dtype(), device=None) if p is None else dict(dtype=p.dtype, device=p.device)


def propose(rng: RNG, potential_fn: PotentialFn, vae: Any, n: int, step_size: float, num_steps: int,
            noise_scale: float = 1.0, adjust: bool = False, num_wide: int = 0,
            wide: Tuple[float, float] = (0.0, 1.0), anneal: bool = False) -> Path:
    """``n`` fresh weighted proposal paths (see [`numpyro_vmt.correction.propose()`][numpyro_vmt.correction.propose])."""
    like = _like(potential_fn)
    gen = as_rng(rng, like["device"])
    if gen is None:
        raise ValueError("rng is required: pass a torch.Generator or an int seed")
    loc, scale = wide
    n = int(n)
    shape = (n,) + tuple(potential_fn.event_shape)
    mask = _wide_mask(n, num_wide, vae, like["device"])
    z = None if vae is None else torch.randn(n, vae.latent_dim, generator=gen, **like)
    eps = torch.randn(shape, generator=gen, **like)
    x0 = loc + scale * eps
    if vae is not None:
        with torch.no_grad():
            x_vae = vae.decode(z) + vae.scale().to(eps.dtype) * eps
        x0 = torch.where(_rows(mask, x0), x0, x_vae)
    anchor = _anchor(vae, z, x0, mask, wide) if anneal else None
    final, ratio, ok = run_path(gen, x0, potential_fn, step_size, num_steps, noise_scale, adjust, anchor=anchor)
    x_enc = final.position if anneal else None
    return _weighted(final, ratio, _start_terms(vae, x0, z, mask, loc, scale, x_enc), ok)


def _encode_draw(vae, x, gen):
    with torch.no_grad():
        loc_z, scale_z = vae.encode(x)
    return loc_z + scale_z * torch.randn(loc_z.shape, generator=gen, dtype=loc_z.dtype, device=loc_z.device)


def refresh(rng: RNG, potential_fn: PotentialFn, vae: Any, position: Tensor, step_size: float,
            num_steps: int, noise_scale: float = 1.0, adjust: bool = False, num_wide: int = 0,
            wide: Tuple[float, float] = (0.0, 1.0), anneal: bool = False) -> Path:
    """Redraw the auxiliary path of chain states ``position`` and weigh it (a Gibbs step;
    see [`numpyro_vmt.correction.refresh()`][numpyro_vmt.correction.refresh])."""
    gen = as_rng(rng, position.device)
    if gen is None:
        raise ValueError("rng is required: pass a torch.Generator or an int seed")
    mask = _wide_mask(position.shape[0], num_wide, vae, position.device)
    if anneal:
        z = None if vae is None else _encode_draw(vae, position, gen)
        back, ratio, ok = run_path(gen, position, potential_fn, step_size, num_steps, noise_scale, adjust,
                                   anchor=_anchor(vae, z, position, mask, wide), reverse=True)
        x0, x_enc = back.position, position
    else:
        back, ratio, ok = run_path(gen, position, potential_fn, step_size, num_steps, noise_scale, adjust)
        x0, x_enc = back.position, None
        z = None if vae is None else _encode_draw(vae, x0, gen)
    with torch.no_grad():
        e_end = potential_fn(position)
    end = LangevinState(position, e_end, position)
    return _weighted(end, -ratio, _start_terms(vae, x0, z, mask, *wide, x_enc), ok)


def restale(potential_fn: PotentialFn, path: Path) -> Path:
    """``path`` with ``E(x_K)`` re-evaluated under the current ``potential_fn``, the path term kept."""
    with torch.no_grad():
        e = potential_fn(path.position)
    ok = torch.isfinite(e) & torch.isfinite(path.aux)
    return Path(path.position, e, torch.where(ok, path.aux - e, torch.full_like(e, -math.inf)), path.aux)


def weight_ess(log_w: Tensor) -> Tensor:
    r"""$(\sum w)^2 / (n\sum w^2)$ from log weights (0 when every weight is 0)."""
    finite = torch.isfinite(log_w)
    if not finite.any():
        return torch.zeros((), dtype=log_w.dtype, device=log_w.device)
    top = log_w[finite].max()
    w = torch.where(finite, (log_w - top).exp(), torch.zeros_like(log_w))
    return w.sum() ** 2 / (log_w.shape[0] * (w ** 2).sum())


def log_mean_exp(log_w: Tensor) -> Tuple[Tensor, Tensor]:
    r"""``(log mean w, its standard error)`` by the delta method, $\mathrm{sd}(w)/(\sqrt n\,\bar w)$."""
    n = log_w.shape[0]
    top = log_w.max()
    w = (log_w - top).exp()
    mean = w.mean()
    se = (((w - mean) ** 2).sum() / max(n - 1, 1) / n).sqrt() / mean
    return top + mean.log(), se


def log_partition(rng: RNG, potential_fn: PotentialFn, vae: Any, num_samples: int, step_size: float,
                  num_steps: int, noise_scale: float = 1.0, adjust: bool = False, num_wide: int = 0,
                  wide: Tuple[float, float] = (0.0, 1.0), batch_size: int = 2000,
                  anneal: bool = False) -> Tuple[float, float]:
    r"""Estimate $\log Z$ from ``num_samples`` proposal paths: ``(log_z, standard_error)``.

    Biased *low* (Jensen), so a log-likelihood ``−E(x) − log Ẑ`` is biased *high*; see
    [`numpyro_vmt.correction.log_partition()`][numpyro_vmt.correction.log_partition].
    """
    gen = as_rng(rng, _like(potential_fn)["device"])
    if gen is None:
        raise ValueError("rng is required: pass a torch.Generator or an int seed")
    logs = []
    for start in range(0, int(num_samples), int(batch_size)):
        b = min(int(batch_size), int(num_samples) - start)
        logs.append(propose(gen, potential_fn, vae, b, step_size, num_steps, noise_scale, adjust,
                            min(num_wide, b), wide, anneal).log_weight)
    est, se = log_mean_exp(torch.cat(logs).double())
    return float(est), float(se)
