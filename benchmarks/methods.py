"""The methods the quality benchmarks compare, trained on one budget through one code path.

==========  ====================================================================
method      what
==========  ====================================================================
vmt         variational MCMC teaching as the recipe runs it (``init="vae"``): on
            every built-in 2-D data set exact teaching (``vmt.app.recipes.EXACT``)
vmt_paper   the paper's plain algorithm: the recipe with ``PLAIN`` and
            ``noise_fraction=0`` (every chain from the VAE, the revised proposals
            are the negative samples)
vmt_mh      exact Metropolis–Hastings teaching, the recipe with ``EXACT``
            (``correction="mh"``): persistent chains accept whole annealed proposal
            paths (VAE + Langevin, ``path_anneal``) with min(1, w'/w), every chain
            from the VAE, 10 MALA steps on the chains between tests
            (``local_steps``), learning rates decayed to 1 % (``lr_final_ratio``);
            sampled exactly (``mh_steps=MH_SAMPLE_STEPS``). The same as ``vmt``
            where the recipe is exact
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

from vmt.app.recipes import EXACT, PLAIN

METHODS = ("vmt", "vmt_paper", "vmt_mh", "noise", "persistent", "generator", "vae_only")
INIT = {"vmt": "vae", "vmt_paper": "vae", "vmt_mh": "vae", "noise": "noise", "persistent": "persistent",
        "generator": "generator"}
#: what each method changes in the recipe besides ``init``: the baselines and the paper's
#: algorithm run plain (``PLAIN``) whatever the recipe's correction
CHANGES = {"vmt_paper": dict(PLAIN, noise_fraction=0.0), "vmt_mh": EXACT,
           "noise": PLAIN, "persistent": PLAIN, "generator": PLAIN}
#: accept tests of the exact sampler that draws a corrected method's samples
MH_SAMPLE_STEPS = 30


class Trained(NamedTuple):
    """A trained model and what training cost."""

    method: str
    model: Any            # a VariationalMCMCTeaching, or a VAE for vae_only
    seconds: float        # wall time of training (JAX: compilation included)
    iterations: int       # iterations done (fewer when training diverged)
    error: str            # "" or why training stopped early
    grad_evals: int       # energy-gradient evaluations spent
    stats: Dict[str, Any] = {}  # correction="mh": the MH diagnostics, mean over the last tenth


def backend_module(backend: str):
    """``pyro_vmt`` for "torch", ``numpyro_vmt`` for "jax"."""
    from vmt import load_backend

    return load_backend("pyro" if backend == "torch" else "numpyro")


def same_as_vmt(method: str, recipe) -> bool:
    """Whether ``method`` trains exactly what ``vmt`` trains with ``recipe`` (e.g. ``vmt_mh`` on an exact recipe)."""
    return recipe.replace(init=INIT[method], **CHANGES.get(method, {})) == recipe.replace(init=INIT["vmt"])


def train(backend: str, method: str, dataset, recipe, seed: int) -> Trained:
    """Train ``method`` on ``dataset.train`` with ``recipe``'s budget; divergence is recorded, not raised."""
    from vmt.core.errors import DivergenceError
    from vmt.app.recipes import build_teacher

    mod = backend_module(backend)
    if method == "vae_only":
        return _train_vae(mod, backend, dataset, recipe, seed)
    recipe = recipe.replace(init=INIT[method], **CHANGES.get(method, {}))
    teacher = build_teacher(mod, dataset, recipe, seed=seed)
    start, error, history = time.perf_counter(), "", None
    try:
        history = teacher.fit(dataset.train, recipe.num_iters, recipe.batch_size, progress=False)
    except DivergenceError as e:
        error = f"diverged at iteration {teacher.iteration}: {str(e).split('.')[0]}"
    seconds = time.perf_counter() - start
    chains, cfg = recipe.config.num_samples or recipe.batch_size, recipe.config
    # a corrected iteration runs a proposal path and (path_refresh) the current state's backward path
    per_chain = ((cfg.num_steps + 1) * (2 if cfg.path_refresh else 1) + (0 if cfg.path_refresh else 1)
                 if cfg.correction else cfg.num_steps + 1)
    stats = {}
    if cfg.correction and history is not None and len(history["loss"]):
        tail = slice(-max(1, len(history["loss"]) // 10), None)
        stats = {k: round(float(np.mean(history[k][tail])), 4)
                 for k in ("path_acceptance", "weight_ess", "crossing_rate")}
    return Trained(method, teacher, seconds, teacher.iteration, error, teacher.iteration * per_chain * chains, stats)


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
    mh = MH_SAMPLE_STEPS if trained.model.config.correction and not vae_of_vmt else 0
    return to_numpy(trained.model.sample(n, num_steps=steps, rng=seed, mh_steps=mh)).astype(np.float64)


def energy_fn(trained: Trained):
    """The EBM's energy as a numpy function (``None`` for the VAE alone)."""
    return None if trained.method == "vae_only" else trained.model.energy.numpy_energy


def estimated_loglik(trained: Trained, test, num_samples: int = 10_000, seed: int = 0) -> Dict[str, Any]:
    """The held-out log-likelihood with ``log Z`` estimated from the method's own proposal
    paths (``vmt.evaluation.metrics.estimated_log_likelihood``; biased high); ``{}`` for the VAE alone."""
    from vmt.evaluation.metrics import estimated_log_likelihood

    if trained.method == "vae_only":
        return {}
    est = estimated_log_likelihood(trained.model, test, num_samples, seed)
    return {"est_loglik": round(est["log_likelihood"], 4), "est_loglik_se": round(est["standard_error"], 4),
            "est_log_z": round(est["log_partition"], 4), "est_log_z_se": round(est["log_partition_se"], 4)}


def vae_bound(trained: Trained, test, seed: int = 0) -> Dict[str, Any]:
    """The held-out ELBO of the method's VAE (the VAE alone, or VMT's own VAE): a lower
    bound on that VAE's log-likelihood, one latent draw per test point; ``{}`` without a VAE."""
    from vmt.core.api import backend_of

    vae = trained.model if trained.method == "vae_only" else getattr(trained.model, "vae", None)
    if vae is None:
        return {}
    backend = backend_of(vae)
    loss = backend.numpy_call(vae, lambda x: vae.elbo_loss(x, seed), np.asarray(test, np.float32))
    return {"vae_bound": round(-float(loss), 4)}


def describe(trained: Trained) -> Dict[str, Any]:
    """The cost columns of a result row."""
    return {"seconds": round(trained.seconds, 2), "iterations": trained.iterations,
            "grad_evals": trained.grad_evals, "error": trained.error}
