r"""A minimal hand-written VMT iteration in raw JAX + optax: the floor of ``numpyro_vmt``'s ``update``.

The algorithm of :mod:`handwritten_torch` (``init="vae"`` with the recipe's
noise-started fraction of chains, unadjusted Langevin, K gradient evaluations, one
Adam step of the energy and one of the VAE on a single-sample ELBO written out with
``jax.numpy``, learning rates under the recipe's cosine decay), as one jitted pure function
``step(state, batch) -> (state, losses)`` with no checks and no diagnostics. The
networks are the equinox modules of ``numpyro_vmt.nets``; their array leaves are
the parameters.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class State(NamedTuple):
    energy: Any
    vae: Any
    energy_optim: Any
    vae_optim: Any
    key: jax.Array


class _Static(NamedTuple):
    """Everything the compiled step closes over (hashable)."""

    energy: Any
    vae: Any
    config: Any
    latent_dim: int
    event_shape: tuple
    ref_scale: Any
    kl_weight: float


def _optimizers(cfg):
    b1, b2 = cfg.betas

    def lr(value):  # TeachingConfig.lr_factor's cosine decay
        if cfg.lr_decay_steps is None:
            return value
        return optax.cosine_decay_schedule(value, cfg.lr_decay_steps, alpha=cfg.lr_final_ratio)

    adam_e = optax.adam(lr(cfg.energy_lr), b1=b1, b2=b2)
    if cfg.grad_clip:
        adam_e = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adam_e)
    return adam_e, optax.adam(lr(cfg.vae_lr), b1=b1, b2=b2)


def _energy(net, x, ref_scale):
    out = net(x)
    out = out[:, 0] if out.ndim == 2 else out
    if ref_scale is not None:
        out = out + (x.reshape(x.shape[0], -1) ** 2).sum(1) / (2 * ref_scale ** 2)
    return out


def _neg_elbo(vae, x, key, st: _Static):
    encoder, decoder, log_sigma = vae
    out = encoder(x)
    loc, scale = out[:, :st.latent_dim], jax.nn.softplus(out[:, st.latent_dim:]) + 1e-4
    eps = jax.random.normal(key, loc.shape, loc.dtype)
    z = loc + scale * eps
    log_q = (-0.5 * eps ** 2 - jnp.log(scale) - _HALF_LOG_2PI).sum(1)
    log_p = (-0.5 * z ** 2 - _HALF_LOG_2PI).sum(1)
    mean = decoder(z).reshape(x.shape)
    log_lik = (-0.5 * ((x - mean) / jnp.exp(log_sigma)) ** 2 - log_sigma - _HALF_LOG_2PI)
    return -(log_lik.reshape(x.shape[0], -1).sum(1) + st.kl_weight * (log_p - log_q)).mean()


@partial(jax.jit, static_argnums=0)
def _step(st: _Static, state: State, batch):
    cfg = st.config
    adam_e, adam_v = _optimizers(cfg)
    key, k_z, k_noise, k_run, k_vae = jax.random.split(state.key, 5)
    net = eqx.combine(state.energy, st.energy)
    encoder, decoder, log_sigma = eqx.combine(state.vae, st.vae)
    n = cfg.num_samples or batch.shape[0]
    h, scale = 0.5 * cfg.step_size ** 2, cfg.step_size * cfg.noise_scale
    m = cfg.num_noise_chains(n)
    x0 = decoder(jax.random.normal(k_z, (n - m, st.latent_dim), batch.dtype)).reshape((n - m,) + st.event_shape)
    if m:
        low, high = cfg.init_bounds
        x0 = jnp.concatenate([x0, jax.random.uniform(k_noise, (m,) + st.event_shape, batch.dtype, low, high)])

    def body(x, k):
        grad = jax.grad(lambda y: _energy(net, y, st.ref_scale).sum())(x)
        return x - h * grad + scale * jax.random.normal(k, x.shape, x.dtype), None

    x = jax.lax.stop_gradient(jax.lax.scan(body, x0, jax.random.split(k_run, cfg.num_steps))[0])

    def energy_loss(params):
        model = eqx.combine(params, st.energy)
        e_data, e_samp = _energy(model, batch, st.ref_scale), _energy(model, x, st.ref_scale)
        loss = e_data.mean() - e_samp.mean()
        if cfg.energy_reg:
            loss = loss + cfg.energy_reg * ((e_data ** 2).mean() + (e_samp ** 2).mean())
        return loss

    loss, e_grad = jax.value_and_grad(energy_loss)(state.energy)
    updates, e_opt = adam_e.update(e_grad, state.energy_optim, state.energy)
    new_energy = optax.apply_updates(state.energy, updates)
    vae_loss, v_grad = jax.value_and_grad(
        lambda p: _neg_elbo(eqx.combine(p, st.vae), x, k_vae, st))(state.vae)
    updates, v_opt = adam_v.update(v_grad, state.vae_optim, state.vae)
    new_vae = optax.apply_updates(state.vae, updates)
    return State(new_energy, new_vae, e_opt, v_opt, key), (loss, vae_loss)


class HandwrittenVMT:
    """VMT in raw JAX + optax on the given equinox networks and a recipe's options.

    ``step(batch)`` advances ``self.state``; ``update(state, batch)`` is the pure,
    jitted iteration.
    """

    def __init__(self, energy_net, encoder, decoder, recipe, event_shape, seed: int = 0):
        cfg = recipe.config
        if cfg.adjust or cfg.init != "vae":
            raise ValueError("the hand-written floor covers init='vae' with unadjusted Langevin only")
        # A learned observation scale is a parameter (an array); a fixed one a static float.
        log_sigma = (jnp.zeros(tuple(event_shape)) if recipe.obs_scale is None
                     else math.log(recipe.obs_scale))
        e_params, e_static = eqx.partition(energy_net, eqx.is_inexact_array)
        v_params, v_static = eqx.partition((encoder, decoder, log_sigma), eqx.is_inexact_array)
        self.static = _Static(e_static, v_static, cfg, recipe.latent_dim, tuple(event_shape),
                              recipe.ref_scale, float(recipe.kl_weight))
        adam_e, adam_v = _optimizers(cfg)
        self.state = State(e_params, v_params, adam_e.init(e_params), adam_v.init(v_params),
                           jax.random.PRNGKey(seed))

    def update(self, state: State, batch):
        return _step(self.static, state, batch)

    def step(self, batch):
        self.state, losses = _step(self.static, self.state, batch)
        return losses
