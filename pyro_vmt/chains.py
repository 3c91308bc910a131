"""Many chains in one process for Pyro: a chain-batched potential and a driver.

Pyro's ``MCMC`` runs one chain per process (pyro#2539). A
:class:`~pyro_vmt.kernel.LangevinKernel` built with ``num_chains=C`` carries ``C``
chains as a leading batch dimension instead; :func:`run_chains` drives it and returns
``(chains, draws, ...)`` samples and per-draw statistics ready for
:func:`vmt.diagnostics.to_inference_data`. :class:`ChainPlatePotential` evaluates a
model's potential for all chains in one trace, under a ``pyro.plate`` over chains at
dimension ``-max_plate_nesting - 1`` — the same device as Pyro's vectorised ELBO
particles and ``Predictive(parallel=True)``, so the model must declare its batch
dimensions with plates and broadcast (e.g. ``(x * beta).sum(-1)`` rather than
``x @ beta``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, NamedTuple, Optional

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

if TYPE_CHECKING:
    from pyro_vmt.kernel import LangevinKernel

__all__ = ["ChainPlatePotential", "ChainsResult", "run_chains"]


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


class ChainsResult(NamedTuple):
    """Output of :func:`run_chains`: constrained ``samples`` ``{site: (C, draws, ...)}`` and
    ``sample_stats`` ``{name: (C, draws)}`` (``energy``, ``acceptance_rate``,
    ``is_accepted``, ``grad_norm``, ``is_divergent``, ``step_size``)."""

    samples: Dict[str, torch.Tensor]
    sample_stats: Dict[str, torch.Tensor]


def run_chains(kernel: LangevinKernel, num_samples: int, warmup_steps: int = 0,
               initial_params: Optional[Dict[str, torch.Tensor]] = None, model_args: tuple = (),
               model_kwargs: Optional[dict] = None) -> ChainsResult:
    """Run a batched :class:`~pyro_vmt.kernel.LangevinKernel` (``num_chains`` set) in this process.

    ``warmup_steps`` steps (step-size adaptation for MALA) are run and discarded, then
    ``num_samples`` are kept; ``initial_params`` are unconstrained, ``{site: (C, ...)}``
    (e.g. from :func:`pyro_vmt.warmstart.initial_params_from_guide`). Returns :class:`ChainsResult`; ``vmt.diagnostics.to_inference_data(*result)`` gives
    ArviZ data (``sample_stats`` there: ``lp``, ``acceptance_rate``, ``diverging``, ...).
    """
    if not kernel.num_chains:
        raise ValueError("run_chains needs a kernel built with num_chains=C; "
                         "use pyro.infer.MCMC for num_chains=None")
    if initial_params is not None:
        kernel.initial_params = initial_params
    kernel.setup(warmup_steps, *model_args, **(model_kwargs or {}))
    params, draws, stats = kernel.initial_params, [], []
    for i in range(warmup_steps + num_samples):
        params = kernel.sample(params)
        if i >= warmup_steps:
            state, info = kernel.state, kernel.last_info
            draws.append({k: v.detach() for k, v in params.items()})
            stats.append({"energy": state.energy, **info._asdict(),
                          "step_size": torch.full_like(state.energy, kernel.step_size)})
    transforms = kernel.transforms or {}
    samples = {}
    for k in params:
        v = torch.stack([d[k] for d in draws], 1)
        samples[k] = transforms[k].inv(v) if k in transforms else v
    sample_stats = {n: torch.stack([s[n] for s in stats], 1) for n in (stats[0] if stats else ())}
    kernel.cleanup()
    return ChainsResult(samples, sample_stats)
