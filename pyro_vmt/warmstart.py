"""Warm-start MCMC chains from a guide: amortised MCMC for Bayesian posteriors.

Variational MCMC teaching (Xie, Zheng & Li, AAAI 2021, https://arxiv.org/abs/2012.14936)
starts each short Langevin run at a sample of a learned amortised sampler, so the
chain begins near the target and needs few steps. [`initial_params_from_guide()`][pyro_vmt.warmstart.initial_params_from_guide]
offers the same for any Pyro model: draw one starting point per chain from a fitted
guide (an ``AutoGuide`` such as ``AutoNormal``, the amortised ``VAE.guide`` of this
library for a ``VAE.model`` posterior, or any callable sampler), map it to the
model's unconstrained space, and hand it to ``MCMC(..., initial_params=...)`` or to a
batched [`LangevinKernel`][pyro_vmt.kernel.LangevinKernel].
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

import torch
from pyro import poutine
from torch.distributions import biject_to
from pyro.infer.autoguide.initialization import InitMessenger, init_to_value
from pyro.poutine.util import site_is_subsample

from pyro_vmt.rng import RNG, as_rng

__all__ = ["initial_params_from_guide"]


def _latent_values(trace) -> Dict[str, torch.Tensor]:
    return {name: site["value"].detach() for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)}


def initial_params_from_guide(guide: Callable, model: Callable, num_chains: int, rng: RNG,
                              model_args: tuple = (), model_kwargs: Optional[dict] = None,
                              params: Optional[dict] = None) -> Dict[str, torch.Tensor]:
    """Unconstrained starting values ``{site: (num_chains, *shape)}`` drawn from ``guide``.

    Parameters
    ----------
    guide : callable
        Called as ``guide(*model_args, **model_kwargs)`` once per chain. The values of
        its sample sites named like the model's latent sites are used (AutoGuides,
        ``VAE.guide``, any Pyro guide); if it records none of them, its return value,
        a dict ``{site: constrained value}``, is used (a plain sampler). Latent sites
        the guide does not cover start from the model's ``init_to_uniform``.
    model : callable
        The Pyro model whose posterior the chains will sample.
    num_chains : int
    rng : int or torch.Generator
        Seeds a fork of torch's global RNG (which Pyro's guides draw from) for the
        draws; the caller's global RNG is left as it was.
    model_args, model_kwargs
        Arguments of the model (and the guide).
    params : dict, optional
        Values substituted for the guide's ``pyro.param`` sites (default: the guide's
        own parameters / the param store).

    Returns
    -------
    dict of Tensor
        ``biject_to(support).inv`` of each continuous latent site of ``model`` — the
        transforms ``LangevinKernel``, ``HMC`` and ``NUTS`` use by default.
    """
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"num_chains must be a positive integer, got {num_chains!r}")
    gen = as_rng(rng, torch.device("cpu"))
    if gen is None:
        raise ValueError("rng is required: pass a torch.Generator or an int seed")
    kwargs = model_kwargs or {}
    if params is not None:
        guide = poutine.substitute(guide, data=params)
    seed = int(torch.randint(2 ** 62, (1,), generator=gen))
    draws = []
    with torch.random.fork_rng(devices=[]), poutine.block():
        torch.manual_seed(seed)
        for _ in range(num_chains):
            guide_trace = poutine.trace(guide).get_trace(*model_args, **kwargs)
            # its sample sites, and where it records none of a name, its returned dict; one
            # model trace then (a flat site such as EnergyModel.model's cannot be drawn at random)
            ret = guide_trace.nodes["_RETURN"]["value"]
            values = {k: torch.as_tensor(v).detach() for k, v in ret.items()} if isinstance(ret, dict) else {}
            values.update(_latent_values(guide_trace))
            model_trace = poutine.trace(InitMessenger(init_to_value(values=values))(model)).get_trace(
                *model_args, **kwargs)
            latent = _latent_values(model_trace)
            if not set(values) & set(latent):
                raise ValueError(f"the guide samples none of the model's latent sites {sorted(latent)} "
                                 "and does not return a dict of them")
            draws.append(_unconstrain(model_trace))
    return {k: torch.stack([d[k] for d in draws]) for k in draws[0]}


def _unconstrain(trace) -> Dict[str, torch.Tensor]:
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if site["fn"].has_enumerate_support:
            continue  # discrete sites are enumerated by the kernels, not sampled
        out[name] = biject_to(site["fn"].support).inv(site["value"].detach())
    return out
