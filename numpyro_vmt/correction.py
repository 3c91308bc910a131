r"""Exact Metropolis–Hastings correction of VMT's proposal paths, and ``log Z`` (JAX).

A *proposal path* is the VMT revision made into a distribution with a density on an
extended space:

$$
z \sim \mathcal N(0, I), \quad x_0 \sim \mathcal N\big(g(z), \operatorname{diag}\sigma^2\big),
\quad x_{k+1} \sim L(\cdot \mid x_k), \; k = 0, \dots, K-1,
$$

with ``g`` the VAE's decoder, ``σ`` its observation scale and ``L`` a Langevin
transition of step size ``δ`` and noise scale ``s = δ·noise_scale`` (ULA:
$L(x' \mid x) = \mathcal N(x';\, x - \tfrac{\delta^2}{2}\nabla E(x),\, s^2 I)$, or MALA).
With the encoder $r(z \mid x_0)$ and the reversed transitions as auxiliary
backward kernels, the extended target
$\tilde\pi = e^{-E(x_K)}\, \prod_k L(x_k \mid x_{k+1})\, r(z \mid x_0) / Z$
has the path's end point distributed as $p_\theta(x) = e^{-E(x)}/Z$, and the
importance weight of a path is

$$
\log w = -E(x_K) + \sum_{k=0}^{K-1}\big[\log L(x_k \mid x_{k+1}) - \log L(x_{k+1} \mid x_k)\big]
+ \log r(z \mid x_0) - \log p(z) - \log \mathcal N\big(x_0;\, g(z), \sigma^2\big),
$$

so $\mathbb E_q[w] = Z$ exactly (the construction of annealed importance
sampling, Neal 2001, "Annealed importance sampling", Statistics and Computing 11, and
of non-equilibrium candidate Monte Carlo, Nilmeier et al. 2011, PNAS 108; the encoder
supplies the intractable marginal of the VAE as an auxiliary density). For a MALA
transition, reversible with respect to $e^{-E}$, the sum telescopes to
$E(x_K) - E(x_0)$, so the weight is that of the starting point.

Chains whose proposal starts from a broad Gaussian ``N(loc, scale²)`` instead of the
decoder (VMT's noise-initialised chains, or every chain of an EBM without a VAE) use
$-\log \mathcal N(x_0; \mathrm{loc}, \mathrm{scale}^2)$ as their start term; a
Gaussian rather than a uniform because an independence sampler needs a proposal
with full support.

Two uses (Xie, Zheng & Li, AAAI 2021, https://arxiv.org/abs/2012.14936, made exact):

- [`accept()`][numpyro_vmt.mh.accept]: persistent chains accept a whole fresh path with probability
  $\min(1, w'/w)$, a Metropolis–Hastings step on the extended space whose
  chain states are exact samples of the EBM once mixed. [`refresh()`][numpyro_vmt.correction.refresh] redraws the
  current state's auxiliary path (a Gibbs step: the backward kernels from ``x_K``
  down to ``x_0``, then ``z ~ r(z | x_0)``) and recomputes its weight under the
  current parameters; [`restale()`][numpyro_vmt.correction.restale] instead keeps the old path term and only
  re-evaluates ``E(x_K)`` (cheaper, exact only while the parameters stand still).
- [`log_partition()`][numpyro_vmt.correction.log_partition]: ``log Z`` as the log-mean-exp of the weights, with a
  delta-method standard error. By Jensen's inequality the estimate is biased *low*
  ($\mathbb E\log\hat Z \le \log Z$), so a log-likelihood ``−E(x) − log Ẑ``
  computed from it is biased *high* (optimistic); the bias shrinks as the weights'
  effective sample size grows.

Every function is pure and works on a batch of chains; randomness is an explicit key.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from numpyro_vmt.langevin import LangevinState, _flat_sum, energy_and_grad
from numpyro_vmt.rng import RNG, as_rng

__all__ = ["Path", "run_path", "start_log_ratio", "wide_log_ratio", "path_log_weight",
           "schedule", "propose", "refresh", "restale", "weight_ess", "log_mean_exp", "log_partition"]

Array = jax.Array
PotentialFn = Callable[[Array], Array]
_LOG_2PI = math.log(2 * math.pi)


class Path(NamedTuple):
    """A batch of weighted proposal paths (or of chain states with their auxiliary paths).

    Attributes
    ----------
    position : Array, shape ``(n, *event_shape)``
        The end points ``x_K``.
    energy : Array, shape ``(n,)``
        ``E(x_K)``.
    log_weight : Array, shape ``(n,)``
        ``log w`` (``-inf`` for a path that left the finite numbers).
    aux : Array, shape ``(n,)``
        ``log w + E(x_K)``: the path and start terms, which [`restale()`][numpyro_vmt.correction.restale] keeps.
    """

    position: Array
    energy: Array
    log_weight: Array
    aux: Array


def _quad(x: Array, center: Array, inv_var: Array) -> Tuple[Array, Array]:
    """``Q(x) = ½ Σ (x − c)² / σ²`` per chain and its gradient."""
    d = (x - center) * inv_var
    return 0.5 * _flat_sum(d * (x - center)), d


def _path_step(key, x, e, g, beta, potential_fn, h, scale, adjust, anchor, noise, uniform):
    r"""One Langevin step on $E_\beta = \beta E + (1 - \beta) Q$ (``Q`` the anchor's
    Gaussian; $E_1 = E$ without one) and its log ratio
    $\log L(x \mid x') - \log L(x' \mid x)$."""
    k_noise, k_unif = jax.random.split(key) if key is not None else (None, None)
    q, gq = _quad(x, *anchor) if anchor is not None else (0.0, 0.0)
    drift = x - h * (beta * g + (1 - beta) * gq)
    if noise is None:
        noise = jax.random.normal(k_noise, x.shape, x.dtype)
    new_x = drift + scale * noise
    new_e, new_g = energy_and_grad(potential_fn, new_x)
    new_q, new_gq = _quad(new_x, *anchor) if anchor is not None else (0.0, 0.0)
    fwd = _flat_sum((new_x - drift) ** 2)
    bwd = _flat_sum((x - new_x + h * (beta * new_g + (1 - beta) * new_gq)) ** 2)
    finite = jnp.isfinite(new_e) & jnp.isfinite(_flat_sum(new_g)) & jnp.isfinite(_flat_sum(new_x))
    if not adjust:
        return new_x, new_e, new_g, (fwd - bwd) / (2 * scale * scale), finite
    e_b, new_e_b = beta * e + (1 - beta) * q, beta * new_e + (1 - beta) * new_q
    log_alpha = jnp.where(finite, e_b - new_e_b + (fwd - bwd) / (2 * scale * scale), -jnp.inf)
    if uniform is None:
        uniform = jax.random.uniform(k_unif, e.shape, dtype=x.dtype)
    take = jnp.log(uniform) < log_alpha
    mask = take.reshape((-1,) + (1,) * (x.ndim - 1))
    # detailed balance: L(x | x') / L(x' | x) = exp(E_β(x') − E_β(x)), 0 when x' = x
    inc = jnp.where(take, new_e_b - e_b, 0.0)
    return (jnp.where(mask, new_x, x), jnp.where(take, new_e, e), jnp.where(mask, new_g, g), inc,
            jnp.ones_like(finite))


def schedule(num_steps: int, reverse: bool = False) -> np.ndarray:
    r"""The inverse temperatures $\beta_k = k/K$, ``k = 1..K``, of an annealed path
    (reversed for the backward run)."""
    b = np.arange(1, num_steps + 1) / num_steps
    return b[::-1].copy() if reverse else b


def run_path(rng: RNG, x0: Array, potential_fn: PotentialFn, step_size: float, num_steps: int,
             noise_scale: float = 1.0, adjust: bool = False, noise: Optional[Array] = None,
             uniform: Optional[Array] = None, anchor: Optional[Tuple[Array, Array]] = None,
             reverse: bool = False) -> Tuple[LangevinState, Array, Array]:
    r"""``K`` Langevin steps from ``x0`` and the path's log ratio of backward to forward kernels.

    Returns ``(final_state, log_ratio, finite)`` with
    $\text{log\_ratio} = \sum_k [\log L_k(x_k \mid x_{k+1}) - \log L_k(x_{k+1} \mid x_k)]$
    per chain and ``finite`` whether every point of the path had a finite energy and
    gradient. ``noise`` and ``uniform`` (leading axis ``num_steps``) inject the draws.

    Without ``anchor`` every transition $L_k$ targets ``E``. With
    ``anchor = (center, inv_var)`` the path is annealed (Neal 2001): step ``k`` targets
    $E_{\beta_k} = \beta_k E + (1 - \beta_k)\,\tfrac12\lVert x - c\rVert^2_{\sigma^{-2}}$,
    $\beta_k = k/K$ ([`schedule()`][numpyro_vmt.correction.schedule]; ``reverse`` runs it from 1 down, for the
    backward path), so a path from the anchor's Gaussian reaches ``E`` gradually and its
    weight is an annealed-importance weight.
    """
    if noise_scale <= 0:
        raise ValueError("a proposal path needs noise_scale > 0: a noise-free revision has no density")
    h, scale = 0.5 * step_size ** 2, step_size * noise_scale
    e, g = energy_and_grad(potential_fn, x0)
    ok0 = jnp.isfinite(e) & jnp.isfinite(_flat_sum(g))
    key = as_rng(rng)
    keys = None if key is None else jax.random.split(key, num_steps)
    betas = jnp.asarray(schedule(num_steps, reverse) if anchor is not None else np.ones(num_steps), x0.dtype)

    def body(carry, xs):
        x, e, g, total, ok = carry
        k, beta, nz, u = xs
        x, e, g, inc, finite = _path_step(k, x, e, g, beta, potential_fn, h, scale, adjust, anchor, nz, u)
        return (x, e, g, total + inc, ok & finite & jnp.isfinite(inc)), None

    (x, e, g, total, ok), _ = jax.lax.scan(body, (x0, e, g, jnp.zeros_like(e), ok0),
                                           (keys, betas, noise, uniform), length=num_steps)
    return LangevinState(x, e, g), total, ok


def start_log_ratio(vae: Any, x0: Array, z: Array, x_enc: Optional[Array] = None) -> Array:
    r"""$\log r(z \mid x_e) - \log p(z) - \log \mathcal N(x_0; g(z), \sigma^2)$ per chain
    (all constants kept); the encoder reads ``x_e = x_enc`` (default ``x0``)."""
    loc, scale = vae.encode(x0 if x_enc is None else x_enc)
    log_r = -0.5 * (((z - loc) / scale) ** 2).sum(1) - jnp.log(scale).sum(1)
    log_p = -0.5 * (z ** 2).sum(1)
    sigma = jnp.broadcast_to(vae.scale().astype(x0.dtype), x0.shape[1:])
    d = math.prod(x0.shape[1:])
    log_obs = -0.5 * _flat_sum(((x0 - vae.decode(z)) / sigma) ** 2) - jnp.log(sigma).sum() - 0.5 * d * _LOG_2PI
    return log_r - log_p - log_obs


def wide_log_ratio(x0: Array, loc: float, scale: float) -> Array:
    r"""$-\log \mathcal N(x_0; \mathrm{loc}, \mathrm{scale}^2 I)$ per chain."""
    d = math.prod(x0.shape[1:])
    return 0.5 * _flat_sum(((x0 - loc) / scale) ** 2) + d * math.log(scale) + 0.5 * d * _LOG_2PI


def _weighted(final: LangevinState, path_term: Array, start_term: Array, ok: Array) -> Path:
    aux = path_term + start_term
    ok = ok & jnp.isfinite(aux) & jnp.isfinite(final.energy)
    log_w = jnp.where(ok, aux - final.energy, -jnp.inf)
    return Path(final.position, final.energy, log_w, jnp.where(ok, aux, -jnp.inf))


def path_log_weight(potential_fn: PotentialFn, vae: Any, z: Array, x0: Array, noise: Array,
                    step_size: float, noise_scale: float = 1.0, adjust: bool = False,
                    uniform: Optional[Array] = None, anneal: bool = False) -> Path:
    """The weighted path of given draws (``z``, ``x0``, the Langevin ``noise`` of shape
    ``(K, n, *event_shape)`` and for MALA the ``uniform`` s): deterministic, for tests."""
    anchor = _anchor(vae, z, x0, jnp.zeros(x0.shape[0], bool), (0.0, 1.0)) if anneal else None
    final, ratio, ok = run_path(None, x0, potential_fn, step_size, noise.shape[0], noise_scale,
                                adjust, noise, uniform, anchor)
    return _weighted(final, ratio, start_log_ratio(vae, x0, z, final.position if anneal else None), ok)


def _wide_mask(n: int, num_wide: int, vae: Any) -> Array:
    """The last ``num_wide`` chains (every chain without a VAE) start from the wide Gaussian."""
    m = n if vae is None else num_wide
    return jnp.arange(n) >= n - m


def _rows(mask: Array, x: Array) -> Array:
    return mask.reshape((-1,) + (1,) * (x.ndim - 1))


def _anchor(vae, z, x, wide, wide_params):
    """``(center, 1/σ²)`` of each chain's start Gaussian: ``N(g(z), σ²)`` or the wide one."""
    loc, scale = wide_params
    center = jnp.full_like(x, loc)
    inv_var = jnp.full_like(x, 1.0 / scale ** 2)
    if vae is None:
        return center, inv_var
    sigma = jnp.broadcast_to(vae.scale().astype(x.dtype), x.shape)
    rows = _rows(wide, x)
    return (jnp.where(rows, center, jax.lax.stop_gradient(vae.decode(z))),
            jnp.where(rows, inv_var, 1.0 / sigma ** 2))


def _start_terms(vae, x0, z, wide, loc, scale, x_enc=None):
    out = wide_log_ratio(x0, loc, scale)
    if vae is not None:
        out = jnp.where(wide, out, start_log_ratio(vae, x0, z, x_enc))
    return out


@eqx.filter_jit
def _propose(key, potential_fn, vae, n, step_size, num_steps, noise_scale, adjust, num_wide, wide, anneal):
    loc, scale = wide
    k_z, k_x, k_run = jax.random.split(key, 3)
    dtype = _dtype(potential_fn, vae)
    mask = _wide_mask(n, num_wide, vae)
    shape = (n,) + tuple(potential_fn.event_shape)
    eps = jax.random.normal(k_x, shape, dtype)
    x0 = loc + scale * eps
    z = None
    if vae is not None:
        z = jax.random.normal(k_z, (n, vae.latent_dim), dtype)
        sigma = jnp.broadcast_to(vae.scale().astype(dtype), shape[1:])
        x0 = jnp.where(_rows(mask, x0), x0, jax.lax.stop_gradient(vae.decode(z) + sigma * eps))
    anchor = _anchor(vae, z, x0, mask, wide) if anneal else None
    final, ratio, ok = run_path(k_run, x0, potential_fn, step_size, num_steps, noise_scale, adjust, anchor=anchor)
    x_enc = final.position if anneal else None
    return _weighted(final, ratio, _start_terms(vae, x0, z, mask, loc, scale, x_enc), ok)


def propose(rng: RNG, potential_fn: PotentialFn, vae: Any, n: int, step_size: float, num_steps: int,
            noise_scale: float = 1.0, adjust: bool = False, num_wide: int = 0,
            wide: Tuple[float, float] = (0.0, 1.0), anneal: bool = False) -> Path:
    r"""``n`` fresh weighted proposal paths.

    Parameters
    ----------
    rng : jax.random key or int
    potential_fn : callable
        ``E``: ``(n, *event_shape) -> (n,)``; must have an ``event_shape`` attribute
        (an [`EnergyModel`][numpyro_vmt.energy.EnergyModel] has).
    vae : VAE or None
        The proposal's decoder and encoder; ``None``: every chain starts from ``wide``.
    n : int
    step_size, num_steps, noise_scale, adjust
        ``δ``, ``K``, the noise scale (``> 0``) and MALA, as in [`Langevin`][numpyro_vmt.langevin.Langevin].
    num_wide : int
        The last ``num_wide`` chains start from ``N(loc, scale²)`` instead of the decoder.
    wide : (float, float)
        ``(loc, scale)`` of the wide Gaussian.
    anneal : bool
        Anneal each path from its start Gaussian (``N(g(z), σ²)`` or the wide one) to
        ``E`` (see [`run_path()`][numpyro_vmt.correction.run_path]); the encoder then reads ``x_K``: the weight is
        $\log w = -E(x_K) + \sum_k[\dots] + \log r(z \mid x_K) - \log p(z) - \log\mathcal N(x_0; g(z), \sigma^2)$.
    """
    key = _key(rng)
    return _propose(key, potential_fn, vae, int(n), float(step_size), int(num_steps),
                    float(noise_scale), bool(adjust), int(num_wide), tuple(float(v) for v in wide), bool(anneal))


def refresh(rng: RNG, potential_fn: PotentialFn, vae: Any, position: Array, step_size: float,
            num_steps: int, noise_scale: float = 1.0, adjust: bool = False, num_wide: int = 0,
            wide: Tuple[float, float] = (0.0, 1.0), anneal: bool = False) -> Path:
    """Redraw the auxiliary path of chain states ``position`` and weigh it (a Gibbs step).

    The backward kernels are Langevin steps, so ``K`` steps from ``x_K`` give
    ``x_{K-1}, …, x_0`` (the path reversed; its log ratio is minus the run's), then
    ``z ~ r(z | x_0)`` — or, annealed, first ``z ~ r(z | x_K)`` and then the backward
    run with the temperatures reversed. Chain ``i`` keeps the start distribution of
    proposal slot ``i`` (decoder or wide Gaussian).
    """
    return _refresh(_key(rng), potential_fn, vae, position, float(step_size), int(num_steps),
                    float(noise_scale), bool(adjust), int(num_wide), tuple(float(v) for v in wide), bool(anneal))


def _encode_draw(vae, x, key):
    loc_z, scale_z = vae.encode(x)
    return loc_z + scale_z * jax.random.normal(key, loc_z.shape, loc_z.dtype)


@eqx.filter_jit
def _refresh(key, potential_fn, vae, position, step_size, num_steps, noise_scale, adjust, num_wide, wide, anneal):
    k_run, k_z = jax.random.split(key)
    mask = _wide_mask(position.shape[0], num_wide, vae)
    if anneal:
        z = None if vae is None else _encode_draw(vae, position, k_z)
        back, ratio, ok = run_path(k_run, position, potential_fn, step_size, num_steps, noise_scale, adjust,
                                   anchor=_anchor(vae, z, position, mask, wide), reverse=True)
        x0, x_enc = back.position, position
    else:
        back, ratio, ok = run_path(k_run, position, potential_fn, step_size, num_steps, noise_scale, adjust)
        x0, x_enc = back.position, None
        z = None if vae is None else _encode_draw(vae, x0, k_z)
    end = LangevinState(position, potential_fn(position), position)
    return _weighted(end, -ratio, _start_terms(vae, x0, z, mask, *wide, x_enc), ok)


def restale(potential_fn: PotentialFn, path: Path) -> Path:
    """``path`` with ``E(x_K)`` re-evaluated under the current ``potential_fn``, the path term kept."""
    e = potential_fn(path.position)
    ok = jnp.isfinite(e) & jnp.isfinite(path.aux)
    return Path(path.position, e, jnp.where(ok, path.aux - e, -jnp.inf), path.aux)


def weight_ess(log_w: Array) -> Array:
    r"""$(\sum w)^2 / (n\sum w^2)$ from log weights (0 when every weight is 0)."""
    finite = jnp.isfinite(log_w)
    top = jnp.max(jnp.where(finite, log_w, -jnp.inf))
    w = jnp.where(finite, jnp.exp(log_w - jnp.where(jnp.isfinite(top), top, 0.0)), 0.0)
    return jnp.where(w.sum() > 0, w.sum() ** 2 / (log_w.shape[0] * (w ** 2).sum()), 0.0)


def log_mean_exp(log_w: Array) -> Tuple[Array, Array]:
    r"""``(log mean w, its standard error)`` by the delta method, $\mathrm{sd}(w)/(\sqrt n\,\bar w)$."""
    n = log_w.shape[0]
    top = jnp.max(log_w)
    w = jnp.exp(log_w - top)
    mean = w.mean()
    se = jnp.sqrt(((w - mean) ** 2).sum() / max(n - 1, 1) / n) / mean
    return top + jnp.log(mean), se


def log_partition(rng: RNG, potential_fn: PotentialFn, vae: Any, num_samples: int, step_size: float,
                  num_steps: int, noise_scale: float = 1.0, adjust: bool = False, num_wide: int = 0,
                  wide: Tuple[float, float] = (0.0, 1.0), batch_size: int = 2000,
                  anneal: bool = False) -> Tuple[float, float]:
    r"""Estimate $\log Z = \log \int e^{-E(x)} dx$ from ``num_samples`` proposal paths.

    Returns ``(log_z, standard_error)`` (Python floats). The estimate is the
    log-mean-exp of unbiased weights of ``Z``, so it is biased *low* (Jensen), and a
    log-likelihood ``−E(x) − log Ẑ`` is biased *high*; the standard error is the delta
    method's and is itself unreliable when the weights' ESS is small. ``num_wide`` of
    every ``batch_size`` paths start from the wide Gaussian (all of them when ``vae``
    is ``None``).
    """
    key = _key(rng)
    logs = []
    for i, start in enumerate(range(0, int(num_samples), int(batch_size))):
        b = min(int(batch_size), int(num_samples) - start)
        path = propose(jax.random.fold_in(key, i), potential_fn, vae, b, step_size, num_steps,
                       noise_scale, adjust, min(num_wide, b), wide, anneal)
        logs.append(path.log_weight)
    est, se = log_mean_exp(jnp.concatenate(logs))
    return float(est), float(se)


def _dtype(potential_fn, vae):
    for leaf in jax.tree.leaves((potential_fn, vae)):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.dtype
    return jnp.zeros(()).dtype


def _key(rng: RNG) -> Array:
    key = as_rng(rng)
    if key is None:
        raise ValueError("rng is required: pass a jax.random key or an int seed")
    return key
