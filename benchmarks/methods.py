"""The methods the quality benchmarks compare, trained on one budget through one code path.

==========  ====================================================================
method      what
==========  ====================================================================
vmt         variational MCMC teaching (``init="vae"``): Langevin from the VAE
noise       short-run EBM (``init="noise"``, Nijkamp et al. 2019)
persistent  replay buffer of persistent chains (``init="persistent"``, Du & Mordatch 2019)
generator   CoopNets (``init="generator"``, Xie et al. 2018): no encoder
vae_only    the VAE alone, fitted by its own ``elbo_loss`` on the *data*; sampled by
            decoder means of prior draws (``VAE.sample``), no Langevin
==========  ====================================================================

The four EBM methods run the recipe's iterations, Langevin steps K and chains
(= batch size), so they spend the same number of energy-gradient evaluations,
``iterations × (K + 1) × chains``; the VAE alone runs the same number of iterations
of Adam on the same batch size (it has no energy). Everything else is the recipe of
``vmt.app.recipes`` (read at run time) and its default networks.
"""

from __future__ import annotations

import time
from typing import Any, Dict, NamedTuple

import numpy as np

METHODS = ("vmt", "noise", "persistent", "generator", "vae_only")
INIT = {"vmt": "vae", "noise": "noise", "persistent": "persistent", "generator": "generator"}


class Trained(NamedTuple):
    """A trained model and what training cost."""

    method: str
    model: Any            # a VariationalMCMCTeaching, or a VAE for vae_only
    seconds: float        # wall time of training (JAX: compilation included)
    iterations: int       # iterations done (fewer when training diverged)
    error: str            # "" or why training stopped early
    grad_evals: int       # energy-gradient evaluations spent


def backend_module(backend: str):
    """``pyro_vmt`` for "torch", ``numpyro_vmt`` for "jax"."""
    from vmt import load_backend

    return load_backend("pyro" if backend == "torch" else "numpyro")


def train(backend: str, method: str, dataset, recipe, seed: int) -> Trained:
    """Train ``method`` on ``dataset.train`` with ``recipe``'s budget; divergence is recorded, not raised."""
    from vmt.core.errors import DivergenceError
    from vmt.app.recipes import build_teacher

    mod = backend_module(backend)
    if method == "vae_only":
        return _train_vae(mod, backend, dataset, recipe, seed)
    recipe = recipe.replace(init=INIT[method])
    teacher = build_teacher(mod, dataset, recipe, seed=seed)
    start, error = time.perf_counter(), ""
    try:
        teacher.fit(dataset.train, recipe.num_iters, recipe.batch_size, progress=False)
    except DivergenceError as e:
        error = f"diverged at iteration {teacher.iteration}: {str(e).split('.')[0]}"
    seconds = time.perf_counter() - start
    chains = recipe.config.num_samples or recipe.batch_size
    return Trained(method, teacher, seconds, teacher.iteration, error,
                   teacher.iteration * (recipe.config.num_steps + 1) * chains)


def _train_vae(mod, backend: str, dataset, recipe, seed: int) -> Trained:
    """The VAE alone: Adam on ``VAE.elbo_loss`` of data minibatches (drawn with replacement)."""
    e_net, encoder, decoder = mod.nets.default_networks(dataset.event_shape, recipe.latent_dim,
                                                        dataset.image_shape, recipe.hidden, rng=seed)
    vae = mod.VAE(encoder, decoder, recipe.latent_dim, dataset.event_shape, obs_scale=recipe.obs_scale,
                  kl_weight=recipe.kl_weight)
    cfg, start = recipe.config, time.perf_counter()
    rng = np.random.default_rng(seed)
    batches = (rng.integers(len(dataset.train), size=recipe.batch_size) for _ in range(recipe.num_iters))
    vae = (_fit_vae_torch if backend == "torch" else _fit_vae_jax)(vae, dataset.train, batches, cfg, seed)
    return Trained("vae_only", vae, time.perf_counter() - start, recipe.num_iters, "", 0)


def _fit_vae_torch(vae, data, batches, cfg, seed):
    import torch

    data = torch.as_tensor(data)
    gen = torch.Generator().manual_seed(seed)
    optim = torch.optim.Adam(vae.parameters(), lr=cfg.vae_lr, betas=cfg.betas)
    for idx in batches:
        loss = vae.elbo_loss(data[torch.as_tensor(idx)], gen)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
    return vae


def _fit_vae_jax(vae, data, batches, cfg, seed):
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import optax

    params, static = eqx.partition(vae, eqx.is_inexact_array)
    optim = optax.adam(cfg.vae_lr, b1=cfg.betas[0], b2=cfg.betas[1])

    @jax.jit
    def update(params, opt_state, x, key):
        loss, grad = jax.value_and_grad(lambda p: eqx.combine(p, static).elbo_loss(x, key))(params)
        updates, opt_state = optim.update(grad, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, key, data = optim.init(params), jax.random.PRNGKey(seed), jnp.asarray(data)
    for idx in batches:
        key, sub = jax.random.split(key)
        params, opt_state, _ = update(params, opt_state, data[idx], sub)
    return eqx.combine(params, static)


def sample(trained: Trained, n: int, seed: int, vae_of_vmt: bool = False) -> np.ndarray:
    """``n`` samples as a float64 numpy array: the EBM's (its configured start, then K
    Langevin steps), the VAE's decoder means (vae_only), or with ``vae_of_vmt`` the
    starting points of a VMT run (its VAE's decoder means, no Langevin)."""
    from vmt.core.api import backend_of

    to_numpy = backend_of(trained.model).to_numpy
    if trained.method == "vae_only":
        return to_numpy(trained.model.sample(n, seed)).astype(np.float64)
    steps = 0 if vae_of_vmt else None
    return to_numpy(trained.model.sample(n, num_steps=steps, rng=seed)).astype(np.float64)


def energy_fn(trained: Trained):
    """The EBM's energy as a numpy function (``None`` for the VAE alone)."""
    return None if trained.method == "vae_only" else trained.model.energy.numpy_energy


def describe(trained: Trained) -> Dict[str, Any]:
    """The cost columns of a result row."""
    return {"seconds": round(trained.seconds, 2), "iterations": trained.iterations,
            "grad_evals": trained.grad_evals, "error": trained.error}
