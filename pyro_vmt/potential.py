"""A Pyro model's potential for many chains in one trace.

[`ChainPlatePotential`][pyro_vmt.potential.ChainPlatePotential] evaluates a model's potential for all chains of a batched
[`LangevinKernel`][pyro_vmt.kernel.LangevinKernel] under a ``pyro.plate`` over chains at
dimension ``-max_plate_nesting - 1`` — the same device as Pyro's vectorised ELBO
particles and ``Predictive(parallel=True)``, so the model must declare its batch
dimensions with plates and broadcast (e.g. ``(x * beta).sum(-1)`` rather than
``x @ beta``).
"""

from __future__ import annotations

from typing import Dict

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

__all__ = ["ChainPlatePotential"]


class ChainPlatePotential:
    """``U`` of ``C`` chains of a model in one trace, under a plate over chains.

    Called with unconstrained params ``{site: (C, *shape)}``; returns ``(C,)`` energies
    ``−log p(x, θ_c) + log|det ∂T(θ_c)/∂θ_c|`` (``T`` the site transforms), as Pyro's HMC
    potential for each chain. Enumerated discrete sites are not supported.
    """

    def __init__(self, model, args, kwargs, transforms, trace, max_plate_nesting):
        if any(s["type"] == "sample" and s["fn"].has_enumerate_support and not s["is_observed"]
               for s in trace.nodes.values()):
            raise NotImplementedError("vectorize=True does not enumerate discrete sites; "
                                      "use vectorize=False")
        if max_plate_nesting is None:
            dims = [f.dim for s in trace.nodes.values() if s["type"] == "sample"
                    for f in s["cond_indep_stack"] if f.vectorized and f.dim is not None]
            max_plate_nesting = -min(dims) if dims else 0
        self.model, self.args, self.kwargs, self.transforms = model, args, kwargs, transforms
        self.nest = max_plate_nesting
        self.batch_ndim = {k: len(trace.nodes[k]["fn"].batch_shape) for k in transforms}

    def __call__(self, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        c = next(iter(params.values())).shape[0]
        constrained, log_det = {}, 0.0
        for k, u in params.items():
            v = self.transforms[k].inv(u)
            log_det = log_det + self.transforms[k].log_abs_det_jacobian(v, u).reshape(c, -1).sum(1)
            pad = (1,) * (self.nest - self.batch_ndim[k])
            constrained[k] = v.reshape((c,) + pad + tuple(v.shape[1:]))
        with pyro.plate("_vmt_chains", c, dim=-self.nest - 1):
            trace = poutine.trace(poutine.condition(self.model, constrained)).get_trace(*self.args, **self.kwargs)
        trace.compute_log_prob(site_filter=lambda name, site: not site_is_subsample(site))
        log_joint = 0.0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site) or site["infer"].get("_deterministic"):
                continue
            lp = site["log_prob"]
            if lp.ndim != self.nest + 1 or lp.shape[0] != c:
                raise ValueError(f"site {name!r}: log_prob of shape {tuple(lp.shape)} does not broadcast "
                                 "over chains; declare its batch dims with pyro.plate or use vectorize=False")
            log_joint = log_joint + lp.reshape(c, -1).sum(1)
        return -(log_joint - log_det)
