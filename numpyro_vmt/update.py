r"""The training iteration of variational MCMC teaching as one jitted pure function (JAX).

``update_core(spec, state, batch) -> (state, info, diagnosis)`` in the shape of
NumPyro's ``SVI.update``: every piece of training state is in the
[`TeachingState`][numpyro_vmt.update.TeachingState] pytree, every static choice in [`Spec`][numpyro_vmt.update.Spec], so equal specs
share one compilation. The host-side class
([`numpyro_vmt.teaching.VariationalMCMCTeaching`][numpyro_vmt.teaching.VariationalMCMCTeaching]) checks the
[`Diagnosis`][numpyro_vmt.update.Diagnosis] before it commits a new state. The steps (Xie, Zheng & Li, AAAI
2021, https://arxiv.org/abs/2012.14936):

1. [`start_chains()`][numpyro_vmt.update.start_chains]: $x^{(0)}_i = g_\alpha(z_i)$, $z_i \sim \mathcal N(0, I)$
   (or noise, or a replay buffer, per ``init``).
2. [`revise()`][numpyro_vmt.update.revise]: $K$ Langevin steps
   $x^{(k+1)} = x^{(k)} - \tfrac{\delta^2}{2}\nabla_x E_\theta(x^{(k)}) + \delta\sigma\xi_k$.
3. Energy step on $\frac1m\sum_j E_\theta(x_j) - \frac1n\sum_i E_\theta(\tilde x_i)$ (+ penalty).
4. One SVI step of the VAE on the ELBO with $\tilde x$ observed.

[`pyro_vmt.update`][pyro_vmt.update] holds the same steps for Torch.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from numpyro_vmt import correction, mh
from numpyro_vmt.distributed import constrain
from numpyro_vmt.energy import EnergyModel
from numpyro_vmt.given import given
from numpyro_vmt.langevin import _flat_sum, init, scan_steps
from vmt.core.api import TeachingInfo
from vmt.core.batch import context_and_data, with_context
from vmt.core.config import TeachingConfig

__all__ = ["TeachingState", "Spec", "ChainStarts", "Draws", "Diagnosis", "optimizers", "uniform_points", "start_chains",
           "revise", "energy_loss", "vae_loss", "update_core", "fit_core", "sample_core", "no_chains", "all_finite",
           "keyed", "KEYED"]

Array = jax.Array
#: Why a conditional batch without its training rows cannot be taught with ``correction="mh"``.
KEYED = ("correction='mh' with the conditional teacher keeps one persistent chain per training row, so it trains "
         "with fit() on arrays (x, y), which knows each minibatch's rows; not with step(), update() or a stream "
         "of batches")


class TeachingState(NamedTuple):
    """Everything training depends on, as one pytree (saved and restored exactly).

    Attributes
    ----------
    energy, vae : pytrees
        The floating-point array leaves of the [`EnergyModel`][numpyro_vmt.energy.EnergyModel] and the
        `VAE` (``eqx.partition(module, eqx.is_inexact_array)[0]``; ``vae`` is
        ``None`` without a VAE).
    energy_optim, vae_optim : optax states
    rng : jax.random key
        Training key, split every iteration (minibatches, latents, Langevin noise,
        buffer resets, the VAE's reparameterised samples).
    seed : jax.random key
        The key training started from: `VariationalMCMCTeaching.sample()`
        without ``rng`` folds the iteration into it.
    buffer : Array or None
        Replay buffer of ``init="persistent"``.
    iteration : Array (int32)
    chains : correction.Path or None
        The persistent chains of ``correction="mh"`` (zero rows until the first
        iteration sets their number), else ``None``.
    """

    energy: Any
    vae: Any
    energy_optim: Any
    vae_optim: Any
    rng: Array
    seed: Array
    buffer: Optional[Array]
    iteration: Array
    chains: Any = None


class Diagnosis(NamedTuple):
    """What the host checks before committing an iteration (0-d arrays)."""

    bad_start: Array         # chains with a non-finite starting point
    bad_start_energy: Array  # chains with a non-finite energy or gradient there
    num_divergent: Array     # chains flagged divergent at any step
    first_divergent: Array   # first step with a divergent chain (-1: none)
    vae_grad_norm: Array
    energy_params_finite: Array  # the updated energy parameters are all finite
    vae_params_finite: Array     # the updated VAE parameters are all finite (True without a VAE)


class ChainStarts(NamedTuple):
    """Where ``n`` chains start, and what the update needs to know about it."""

    position: Array             # x⁽⁰⁾, (n, *event_shape)
    latents: Optional[Array]    # the z the decoder started from (init "vae"/"generator")
    slots: Optional[Array]      # the replay-buffer rows they came from (init "persistent")


class Draws(NamedTuple):
    """Random draws of one iteration given instead of drawn from the training key.

    The hook of the cross-backend conformance test of a whole iteration
    (``tests/conformance/test_iteration.py``): the same draws in both backends give
    the same numbers. A field left ``None`` is drawn as usual.
    """

    latents: Optional[Array] = None  # z ~ N(0, I), (n, latent_dim): init "vae" / "generator"
    uniform: Optional[Array] = None  # u ~ U(0, 1), (n, *event_shape): noise starts, buffer resets
    slots: Optional[Array] = None    # replay-buffer rows, (n,): init "persistent"
    reset: Optional[Array] = None    # U(0, 1), (n,): a buffer chain restarts where < reinit_prob
    noise: Optional[Array] = None    # ξ, (K, n, *event_shape): the Langevin noise


class Spec(NamedTuple):
    """The static part of an iteration: options, the networks' non-array parts and the device mesh."""

    config: TeachingConfig
    energy: Any
    vae: Any
    mesh: Any = None  # a jax.sharding.Mesh: batch and chains split along "data" (numpyro_vmt.distributed)


def optimizers(config: TeachingConfig, with_vae: bool):
    b1, b2 = config.betas

    def lr(value):  # the same cosine decay as TeachingConfig.lr_factor
        if config.lr_decay_steps is None:
            return value
        return optax.cosine_decay_schedule(value, config.lr_decay_steps, alpha=config.lr_final_ratio)

    adam = optax.adam(lr(config.energy_lr), b1=b1, b2=b2)
    energy_optim = optax.chain(optax.clip_by_global_norm(config.grad_clip), adam) if config.grad_clip else adam
    return energy_optim, (optax.adam(lr(config.vae_lr), b1=b1, b2=b2) if with_vae else None)


def uniform_points(spec: Spec, key: Array, n: int, dtype, u: Optional[Array] = None) -> Array:
    """``n`` points uniform on ``init_bounds`` (from the standard uniforms ``u`` if given)."""
    low, high = spec.config.init_bounds
    if u is None:
        u = jax.random.uniform(key, (n,) + spec.energy.event_shape, dtype=dtype)
    return low + (high - low) * u[:n]


def start_chains(spec: Spec, state: TeachingState, n: int, key: Array, training: bool,
                 ctx: Optional[Array] = None, draws: Optional[Draws] = None) -> ChainStarts:
    """Starting points ``x⁽⁰⁾`` of ``n`` chains, with the latents or buffer slots they came from."""
    cfg = spec.config
    d = Draws() if draws is None else draws
    dtype = jax.tree.leaves(state.energy)[0].dtype
    if cfg.init in ("vae", "generator"):
        vae = eqx.combine(state.vae, spec.vae)
        m = cfg.num_noise_chains(n) if training else 0
        k_z, k_u = jax.random.split(key) if m else (key, None)
        z = vae.sample_latent(n - m, k_z) if d.latents is None else d.latents
        x0 = jax.lax.stop_gradient(with_context(vae.decode, None if ctx is None else ctx[:n - m])(z))
        return ChainStarts(jnp.concatenate([x0, uniform_points(spec, k_u, m, x0.dtype, d.uniform)]) if m else x0,
                           z, None)
    if cfg.init == "noise":
        return ChainStarts(uniform_points(spec, key, n, dtype, d.uniform), None, None)
    k_idx, k_reset, k_noise = jax.random.split(key, 3)
    idx = jax.random.randint(k_idx, (n,), 0, state.buffer.shape[0]) if d.slots is None else d.slots
    x0 = state.buffer[idx]
    if training:
        u = jax.random.uniform(k_reset, (n,), dtype=dtype) if d.reset is None else d.reset
        mask = (u < cfg.reinit_prob).reshape((-1,) + (1,) * len(spec.energy.event_shape))
        x0 = jnp.where(mask, uniform_points(spec, k_noise, n, dtype, d.uniform), x0)
    return ChainStarts(x0, None, idx)


def revise(spec: Spec, energy: EnergyModel, x0: Array, key: Array, num_steps: int, noise: Optional[Array] = None):
    """The Langevin revision (with the noise ``ξ`` if given), and the counts the host checks before using it."""
    cfg = spec.config
    start = init(x0, energy)
    state, info = scan_steps(key, start, energy, cfg.step_size, cfg.noise_scale, cfg.adjust, num_steps, noise)
    bad_any = info.is_divergent.any(1)
    diag = Diagnosis(
        (~jnp.isfinite(_flat_sum(x0))).sum(),
        (~(jnp.isfinite(start.energy) & jnp.isfinite(_flat_sum(start.grad)))).sum(),
        info.is_divergent.any(0).sum(),
        jnp.where(bad_any.any(), jnp.argmax(bad_any), -1),
        jnp.zeros((), x0.dtype),
        jnp.asarray(True),
        jnp.asarray(True),
    )
    return state, info, diag


def energy_loss(config: TeachingConfig, energy: EnergyModel, batch: Array, x_tilde: Array):
    """``(loss, (E(data), E(x̃)))``: the maximum-likelihood loss ``mean E(data) − mean E(x̃)`` (+ penalty)."""
    e_data, e_samp = energy(batch), energy(x_tilde)
    loss = e_data.mean() - e_samp.mean()
    if config.energy_reg:
        loss = loss + config.energy_reg * ((e_data ** 2).mean() + (e_samp ** 2).mean())
    return loss, (e_data, e_samp)


def vae_loss(config: TeachingConfig, vae, x_tilde: Array, starts: ChainStarts, key: Array,
             ctx: Optional[Array] = None) -> Array:
    """The VAE's loss on the revised samples: the negative ELBO (``"vae"``), or the generator's
    ``−log p(x̃, z)`` on the chains it started (``"generator"``)."""
    if config.init == "vae":
        return with_context(vae.elbo_loss, ctx)(x_tilde, key)
    k = starts.latents.shape[0]  # only the chains the generator started (see noise_fraction)
    return with_context(vae.joint_loss, None if ctx is None else ctx[:k])(x_tilde[:k], starts.latents)


@partial(jax.jit, static_argnums=(0, 3, 4))
def sample_core(spec: Spec, state: TeachingState, key: Array, n: int, num_steps: int, ctx: Optional[Array]):
    k_init, k_run = jax.random.split(key)
    x0 = start_chains(spec, state, n, k_init, training=False, ctx=ctx).position
    if num_steps == 0:
        return x0, None
    energy = with_context(eqx.combine(state.energy, spec.energy), ctx)
    lstate, _, diag = revise(spec, energy, x0, k_run, num_steps)
    return lstate.position, diag


@partial(jax.jit, static_argnums=0)
def update_core(spec: Spec, state: TeachingState, batch: Array, draws: Optional[Draws] = None,
                rows: Optional[Array] = None):
    """One iteration: ``(state, batch) -> (new_state, info, diagnosis)`` (``draws``: see [`Draws`][numpyro_vmt.update.Draws]).

    ``rows``: the training rows of a conditional batch under ``correction="mh"``, whose
    persistent chains the iteration moves (one chain per training row, see [`keyed()`][numpyro_vmt.update.keyed]).
    """
    cfg = spec.config
    energy_optim, vae_optim = optimizers(cfg, spec.vae is not None)
    rng, k_init, k_run, k_vae = jax.random.split(state.rng, 4)
    ctx, batch = constrain(context_and_data(batch), spec.mesh, sharded=True)
    n = cfg.num_samples or batch.shape[0]
    energy = with_context(eqx.combine(state.energy, spec.energy), ctx)
    chains, minfo = state.chains, None
    if cfg.correction:  # exact MH teaching: the persistent chains are the negative samples
        vae = None if spec.vae is None else eqx.combine(state.vae, spec.vae)
        if ctx is None:
            chains, minfo = mh.update_chains(k_init, state.chains, energy, vae, n, cfg)
            moved = chains
        else:  # chain j targets p(y | x_j) and proposes from the conditional VAE at x_j
            if rows is None:
                raise ValueError(KEYED)
            # the rows' chains split over the mesh with their rows (the chains themselves are replicated)
            mine = constrain(jax.tree.map(lambda a: a[rows], state.chains), spec.mesh, sharded=True)
            moved, minfo = mh.update_chains(k_init, mine, *given(eqx.combine(state.energy, spec.energy), vae, ctx),
                                            n, cfg)
            chains = jax.tree.map(lambda a, b: a.at[rows].set(b), state.chains, moved)
        x_tilde, starts = jax.lax.stop_gradient(moved.position), ChainStarts(moved.position, None, None)
        zero = jnp.zeros((), jnp.int32)
        diag = Diagnosis(zero, zero, zero, zero - 1, jnp.zeros((), x_tilde.dtype), jnp.asarray(True), jnp.asarray(True))
        langevin_acc, langevin_gnorm = minfo.local_acceptance, jnp.full((), jnp.nan, x_tilde.dtype)
    else:
        starts = start_chains(spec, state, n, k_init, training=True, ctx=ctx, draws=draws)
        x0 = constrain(starts.position, spec.mesh, sharded=True)  # each device revises its block of chains
        lstate, sinfo, diag = revise(spec, energy, x0, k_run, cfg.num_steps, None if draws is None else draws.noise)
        x_tilde = jax.lax.stop_gradient(lstate.position)
        langevin_acc, langevin_gnorm = sinfo.acceptance_rate.mean(), sinfo.grad_norm[-1].mean()

    def energy_loss_of(params):
        return energy_loss(cfg, with_context(eqx.combine(params, spec.energy), ctx), batch, x_tilde)

    (loss, (e_data, e_samp)), e_grad = jax.value_and_grad(energy_loss_of, has_aux=True)(state.energy)
    gnorm = optax.tree.norm(e_grad)
    updates, e_opt = energy_optim.update(e_grad, state.energy_optim, state.energy)
    new_energy = optax.apply_updates(state.energy, updates)

    if vae_optim is not None:
        def vae_loss_of(params):
            return vae_loss(cfg, eqx.combine(params, spec.vae), x_tilde, starts, k_vae, ctx)

        v_loss, v_grad = jax.value_and_grad(vae_loss_of)(state.vae)
        diag = diag._replace(vae_grad_norm=optax.tree.norm(v_grad))
        updates, v_opt = vae_optim.update(v_grad, state.vae_optim, state.vae)
        new_vae = optax.apply_updates(state.vae, updates)
    else:
        v_loss, new_vae, v_opt = jnp.asarray(jnp.nan, loss.dtype), None, None

    diag = diag._replace(energy_params_finite=all_finite(new_energy), vae_params_finite=all_finite(new_vae))
    buffer = state.buffer.at[starts.slots].set(x_tilde) if cfg.init == "persistent" else state.buffer
    new = constrain(TeachingState(new_energy, new_vae, e_opt, v_opt, rng, state.seed, buffer, state.iteration + 1,
                                  chains), spec.mesh, sharded=False)
    nan = jnp.full((), jnp.nan, loss.dtype)
    mh_info = (nan, nan, nan) if minfo is None else (minfo.acceptance_rate, minfo.weight_ess, minfo.crossing_rate)
    info = TeachingInfo(loss, e_data.mean(), e_samp.mean(), v_loss, langevin_acc, langevin_gnorm, gnorm, *mh_info)
    return new, info, diag


def no_chains(spec: Spec, dtype) -> correction.Path:
    """Zero persistent chains: the first iteration of ``correction="mh"`` sets their number."""
    empty = jnp.zeros((0,), dtype)
    return correction.Path(jnp.zeros((0,) + spec.energy.event_shape, dtype), empty, empty, empty)


def all_finite(tree: Any) -> Array:
    """Every floating-point leaf of ``tree`` is finite (``True`` for none)."""
    leaves = [jnp.isfinite(a).all() for a in jax.tree.leaves(tree) if jnp.issubdtype(jnp.asarray(a).dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


@partial(jax.jit, static_argnums=(0, 3))
def fit_core(spec: Spec, state: TeachingState, data: Array, batch_size: int):
    """A minibatch drawn from the training key, then [`update_core()`][numpyro_vmt.update.update_core].

    Rows are drawn with replacement, except under [`keyed()`][numpyro_vmt.update.keyed] training:
    distinct rows, so that each row's chain moves at most once an iteration.
    """
    rng, k_idx = jax.random.split(state.rng)
    num_rows = context_and_data(data)[1].shape[0]
    if keyed(spec.config, data):
        idx = jax.random.choice(k_idx, num_rows, (batch_size,), replace=False)
        return update_core(spec, state._replace(rng=rng), jax.tree.map(lambda a: a[idx], data), rows=idx)
    idx = jax.random.randint(k_idx, (batch_size,), 0, num_rows)
    return update_core(spec, state._replace(rng=rng), jax.tree.map(lambda a: a[idx], data))


def keyed(config: TeachingConfig, data: Any) -> bool:
    """Whether training keeps one persistent chain per training row: ``correction="mh"`` on pairs ``(x, y)``."""
    return bool(config.correction) and context_and_data(data)[0] is not None
