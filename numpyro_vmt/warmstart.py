"""Warm-start MCMC chains from a guide: amortised MCMC for Bayesian posteriors.

Variational MCMC teaching (Xie, Zheng & Li, AAAI 2021, https://arxiv.org/abs/2012.14936)
starts each short Langevin run at a sample of a learned amortised sampler, so the
chain begins near the target and needs few steps. [`initial_params_from_guide()`][numpyro_vmt.warmstart.initial_params_from_guide]
offers the same for any NumPyro model: draw one starting point per chain from a
fitted guide (an ``AutoGuide`` such as ``AutoNormal`` with its SVI params, the
amortised ``VAE.guide`` of this library for a ``VAE.model`` posterior, or any callable
sampler), map it to the model's unconstrained space and hand it to
``MCMC.run(..., init_params=...)``.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import jax
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.infer.initialization import init_to_value

from numpyro_vmt.rng import RNG, as_rng

__all__ = ["initial_params_from_guide"]


def _latent_sites(trace) -> Dict[str, dict]:
    return {name: site for name, site in trace.items()
            if site["type"] == "sample" and not site["is_observed"]
            and not site.get("infer", {}).get("is_auxiliary", False)}


def initial_params_from_guide(guide: Callable, model: Callable, num_chains: int, rng: RNG,
                              model_args: tuple = (), model_kwargs: Optional[dict] = None,
                              params: Optional[dict] = None) -> Dict[str, jax.Array]:
    """Unconstrained starting values ``{site: (num_chains, *shape)}`` drawn from ``guide``.

    Parameters
    ----------
    guide : callable
        Called as ``guide(*model_args, **model_kwargs)`` under ``handlers.seed``,
        vmapped over ``num_chains`` keys and jitted (so it must be traceable, as NumPyro
        guides are). The values of its sample sites named like the model's latent
        sites are used (AutoGuides, ``VAE.guide``, any NumPyro guide); if it records
        none of them, its return value, a dict ``{site: constrained value}``, is used
        (a plain sampler, which draws its keys with ``numpyro.prng_key()``). Latent
        sites the guide does not cover start from ``init_to_uniform``.
    model : callable
        The NumPyro model whose posterior the chains will sample.
    num_chains : int
    rng : jax.random key or int
    model_args, model_kwargs
        Arguments of the model (and the guide).
    params : dict, optional
        The guide's parameters, e.g. ``svi_result.params``, substituted for its
        ``numpyro.param`` sites. Without them a guide runs with its parameters'
        initial values (NumPyro keeps fitted parameters only in the SVI state).

    Returns
    -------
    dict of Array
        ``biject_to(support).inv`` of each continuous latent site of ``model``, the
        transforms NumPyro's ``initialize_model`` (and so ``LangevinKernel``, HMC,
        NUTS) use. Pass as ``MCMC.run(key, ..., init_params=...)``.
    """
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"num_chains must be a positive integer, got {num_chains!r}")
    key = as_rng(rng)
    if key is None:
        raise ValueError("rng is required: pass a jax.random key or an int seed")
    kwargs = model_kwargs or {}
    key, key_setup = jax.random.split(key)
    if getattr(guide, "prototype_trace", False) is None:  # an AutoGuide never run: set it up
        with handlers.seed(rng_seed=key_setup):           # here, not inside jit/vmap
            guide._setup_prototype(*model_args, **kwargs)
    if params is not None:
        guide = handlers.substitute(guide, data=params)

    def draw(k):
        key_guide, key_model = jax.random.split(k)
        with handlers.trace() as guide_trace:
            ret = handlers.seed(guide, key_guide)(*model_args, **kwargs)
        # its sample sites, and where it records none of a name, its returned dict
        values = dict(ret) if isinstance(ret, dict) else {}
        values.update({n: s["value"] for n, s in _latent_sites(guide_trace).items()})
        latent = _model_latents(model, values, key_model, model_args, kwargs)
        if not set(values) & set(latent):
            raise ValueError(f"the guide samples none of the model's latent sites {sorted(latent)} "
                             "and does not return a dict of them")
        return {n: biject_to(s["fn"].support).inv(s["value"]) for n, s in latent.items()
                if not s["fn"].is_discrete}

    return jax.jit(jax.vmap(draw))(jax.random.split(key, num_chains))


def _model_latents(model, values, key, model_args, kwargs) -> Dict[str, dict]:
    init = handlers.substitute(handlers.seed(model, key), substitute_fn=init_to_value(values=values))
    trace = handlers.trace(init).get_trace(*model_args, **kwargs)
    return _latent_sites(trace)
