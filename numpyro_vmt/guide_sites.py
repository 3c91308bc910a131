r"""The model and guide plumbing of [`MCMCTeaching`][numpyro_vmt.guide_teaching.MCMCTeaching] (NumPyro): sites, draws, densities.

[`MCMCTeaching`][numpyro_vmt.guide_teaching.MCMCTeaching] revises guide draws in the model's unconstrained space
$u = T(\theta)$ and scores the revised values under the guide. These functions read
what that needs from traces of the user's model and guide:

- [`latent_sites()`][numpyro_vmt.guide_sites.latent_sites]: the model's continuous latent sites and their supports
  (discrete sites and sites the guide does not sample are refused);
- [`subsample()`][numpyro_vmt.guide_sites.subsample]: one update's subsample indices, the guide's plates first, then
  the model's, so the draws, the revision and the update see the same rows;
- [`draw()`][numpyro_vmt.guide_sites.draw]: one guide draw as unconstrained values $u = T(\theta)$;
- [`log_q()`][numpyro_vmt.guide_sites.log_q]: $\log q_\phi$ at given unconstrained values, an
  ``AutoContinuous`` guide at its packed latent, any other guide at the model's site names;
- [`guide_scale()`][numpyro_vmt.guide_sites.guide_scale]: the per-coordinate standard deviation of draws, the diagonal
  preconditioner.

Mirrors [`pyro_vmt.guide_sites`][pyro_vmt.guide_sites].
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.infer.autoguide import AutoContinuous
from numpyro.infer.util import log_density

__all__ = ["latent_sites", "subsample", "draw", "log_q", "guide_scale"]


def _trace(fn: Callable, params: dict, key: Any, args: tuple, kwargs: dict) -> dict:
    return handlers.trace(handlers.seed(handlers.substitute(fn, data=params), key)).get_trace(*args, **kwargs)


def latent_sites(model: Callable, guide: Callable, key: Any, params: dict, args: tuple, kwargs: dict) -> Dict[str, Any]:
    """``{name: support}`` of the model's continuous latent sites (checked against the guide)."""
    k_guide, k_model = jax.random.split(key)
    guide_trace, model_trace = _trace(guide, params, k_guide, args, kwargs), _trace(model, params, k_model, args, kwargs)
    latent = {k: s for k, s in model_trace.items() if s["type"] == "sample" and not s["is_observed"]}
    discrete = [k for k, s in latent.items() if s["fn"].is_discrete]
    if discrete:
        raise NotImplementedError(f"MCMCTeaching needs continuous latent sites; {discrete} are discrete")
    missing = sorted(set(latent) - set(guide_trace))
    if missing:
        raise ValueError(f"the guide does not sample the model's latent sites {missing}")
    return {k: s["fn"].support for k, s in latent.items()}


def subsample(model: Callable, guide: Callable, key: Any, params: dict, args: tuple, kwargs: dict,
              persistent: bool = False) -> Dict[str, Any]:
    """This update's subsample indices ``{plate: indices}``: the guide's, then the model's.
    ``persistent``: refuse subsampling plates (``persistent=True`` keeps every latent value)."""
    k_guide, k_model = jax.random.split(key)
    guide_trace = _trace(guide, params, k_guide, args, kwargs)
    sub = {k: s["value"] for k, s in guide_trace.items() if s["type"] == "plate"}
    model_trace = _trace(handlers.substitute(model, data=sub), params, k_model, args, kwargs)
    sub.update({k: s["value"] for k, s in model_trace.items() if s["type"] == "plate"})
    subsampled = sorted(k for tr in (guide_trace, model_trace) for k, s in tr.items()
                        if s["type"] == "plate" and s["args"][1] is not None and s["args"][1] < s["args"][0])
    if persistent and subsampled:
        raise ValueError(f"persistent=True keeps every latent value from step to step; the subsampling "
                         f"plates {subsampled} redraw their local latents each step")
    return sub


def draw(guide: Callable, latent: Dict[str, Any], params: dict, key: Any, args: tuple, kwargs: dict) -> dict:
    """One guide draw: the unconstrained values $u = T(\\theta)$ of the model's latent sites."""
    tr = _trace(guide, params, key, args, kwargs)
    return {name: biject_to(support).inv(tr[name]["value"]) for name, support in latent.items()}


def log_q(template: Any, guide: Callable, latent: Dict[str, Any], params: dict, u: dict, args: tuple,
          kwargs: dict) -> Any:
    """``log q_φ`` of one particle ``u`` (unconstrained values of the model's latent sites).

    ``template`` is the user's guide object (an ``AutoContinuous`` guide is scored at its
    packed latent), ``guide`` the callable to trace (the template with this update's
    subsample indices substituted)."""
    if isinstance(template, AutoContinuous):
        values = {f"_{template.prefix}_latent": ravel_pytree({k: u[k] for k in template._init_locs})[0]}
    else:
        values = {k: biject_to(latent[k])(v) for k, v in u.items()}
    return log_density(guide, args, kwargs, {**params, **values})[0]


def guide_scale(x: Any) -> Any:
    """Per-coordinate standard deviation of draws ``(n, D)``; 1 where it is 0 or not finite."""
    s = x.std(0)
    return jnp.where(jnp.isfinite(s) & (s > 0), s, jnp.ones_like(s))
