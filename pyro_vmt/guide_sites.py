r"""The model and guide plumbing of [`MCMCTeaching`][pyro_vmt.guide_teaching.MCMCTeaching] (Pyro): sites, draws, densities.

[`MCMCTeaching`][pyro_vmt.guide_teaching.MCMCTeaching] revises guide draws in the model's unconstrained space
$u = T(\theta)$ and scores the revised values under the guide. These functions read
what that needs from traces of the user's model and guide:

- [`prototype()`][pyro_vmt.guide_sites.prototype]: one step's subsample indices (the guide's plates first, then the
  model's, so the draws, the revision and the update see the same rows), the model's
  continuous latent sites (discrete sites and sites the guide does not sample are
  refused) and the plate nesting the particle plate must sit outside of;
- [`condition_data()`][pyro_vmt.guide_sites.condition_data]: what to condition the guide on so that its trace scores
  given unconstrained values, an ``AutoNormal`` at its ``*_unconstrained`` sites, an
  ``AutoContinuous`` guide at its packed latent, any other guide at the model's site names;
- [`per_particle_log_prob()`][pyro_vmt.guide_sites.per_particle_log_prob]: $\log q_\phi$ of each particle of a vectorised trace;
- [`flat_potential()`][pyro_vmt.guide_sites.flat_potential] / [`unflatten()`][pyro_vmt.guide_sites.unflatten]: the potential on flat positions ``(n, D)``;
- [`guide_scale()`][pyro_vmt.guide_sites.guide_scale]: the per-coordinate standard deviation of draws, the diagonal
  preconditioner.

Mirrors [`numpyro_vmt.guide_sites`][numpyro_vmt.guide_sites].
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous, AutoNormal
from pyro.poutine.util import site_is_subsample

__all__ = ["prototype", "condition_data", "per_particle_log_prob", "flat_potential", "unflatten", "guide_scale"]


def prototype(model: Callable, guide: Callable, args: tuple, kwargs: dict, persistent: bool = False
              ) -> Tuple[Dict[str, torch.Tensor], Dict[str, dict], int, Any]:
    """Subsample indices of this step, the model's latent sites, the plate nesting, the model's trace.
    ``persistent``: refuse subsampling plates (``persistent=True`` keeps every latent value)."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)  # also creates its params
    sub = {k: s["value"] for k, s in guide_trace.nodes.items() if site_is_subsample(s)}
    with poutine.block():
        model_trace = poutine.trace(poutine.condition(model, data=sub)).get_trace(*args, **kwargs)
    sub.update({k: s["value"] for k, s in model_trace.nodes.items() if site_is_subsample(s)})
    subsampled = sorted(k for tr in (guide_trace, model_trace) for k, s in tr.nodes.items()
                        if site_is_subsample(s) and s["value"].numel() < s["fn"].size)
    if persistent and subsampled:
        raise ValueError(f"persistent=True keeps every latent value from step to step; the subsampling "
                         f"plates {subsampled} redraw their local latents each step")
    latent = {k: s for k, s in model_trace.nodes.items()
              if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)}
    discrete = [k for k, s in latent.items() if s["fn"].support.is_discrete]
    if discrete:
        raise NotImplementedError(f"MCMCTeaching needs continuous latent sites; {discrete} are discrete")
    missing = sorted(set(latent) - set(guide_trace.nodes))
    if missing:
        raise ValueError(f"the guide does not sample the model's latent sites {missing}")
    dims = [f.dim for tr in (model_trace, guide_trace) for s in tr.nodes.values() if s["type"] == "sample"
            for f in s["cond_indep_stack"] if f.vectorized and f.dim is not None]
    return sub, latent, (-min(dims) if dims else 0), model_trace


def condition_data(guide: Any, u_k: Dict[str, torch.Tensor], transforms: Dict[str, Any], draw: Any,
                   n: int) -> Dict[str, torch.Tensor]:
    """What to condition ``guide`` on so that its trace scores the unconstrained values ``u_k``
    (shaped like the sites of ``draw``, a vectorised trace of ``n`` particles)."""
    def like(name, value):
        return value.reshape(draw.nodes[name]["value"].shape)

    if isinstance(guide, AutoNormal):
        return {k + "_unconstrained": like(k + "_unconstrained", u) for k, u in u_k.items()}
    if isinstance(guide, AutoContinuous):
        packed = torch.cat([u_k[k].reshape(n, -1) for k, _ in guide.prototype_trace.iter_stochastic_nodes()], -1)
        name = f"_{guide._pyro_name}_latent"
        return {name: like(name, packed)}
    return {k: like(k, transforms[k].inv(u)) for k, u in u_k.items()}


def per_particle_log_prob(trace: Any, n: int) -> torch.Tensor:
    """``log q`` of each particle: the sum of every site's log density over its other dims."""
    trace.compute_log_prob(site_filter=lambda name, site: not site_is_subsample(site))
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        lp = site["log_prob"]
        # a site outside the particle plate (none of an AutoGuide's) is shared by all particles
        total = total + (lp.reshape(n, -1).sum(1) if lp.ndim and lp.shape[0] == n else lp.sum() / n)
    return total


def flat_potential(potential: Callable, shapes: Dict[str, tuple]) -> Callable:
    """``U`` of flat positions ``(n, D)`` -> ``(n,)``, from a potential of ``{site: (n, *shape)}``."""
    return lambda x: potential(unflatten(x, shapes))


def unflatten(x: torch.Tensor, shapes: Dict[str, tuple]) -> Dict[str, torch.Tensor]:
    """Flat positions ``(n, D)`` -> ``{site: (n, *shape)}``, the sites in the order of ``shapes``."""
    out, pos = {}, 0
    for k, shape in shapes.items():
        size = math.prod(shape)
        out[k] = x[:, pos:pos + size].reshape((x.shape[0],) + shape)
        pos += size
    return out


def guide_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-coordinate standard deviation of draws ``(n, D)``; 1 where it is 0 or not finite."""
    s = x.std(0, unbiased=False)
    return torch.where(torch.isfinite(s) & (s > 0), s, torch.ones_like(s))
