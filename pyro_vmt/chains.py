"""Many chains in one process for Pyro: a chain-batched potential and a driver.

Pyro's ``MCMC`` runs one chain per process (pyro#2539). A
:class:`~pyro_vmt.kernel.LangevinKernel` built with ``num_chains=C`` carries ``C``
chains as a leading batch dimension instead; :func:`run_chains` drives it and returns
``(chains, draws, ...)`` samples and per-draw statistics ready for
:func:`vmt.evaluation.diagnostics.to_inference_data`; the kernel evaluates the
model's potential for all chains at once with
:class:`~pyro_vmt.potential.ChainPlatePotential`.
"""

from __future__ import annotations

from typing import Dict, NamedTuple, Optional

import torch

from pyro_vmt.kernel import LangevinKernel

__all__ = ["ChainsResult", "run_chains"]


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
    (e.g. from :func:`pyro_vmt.warmstart.initial_params_from_guide`). Returns :class:`ChainsResult`; ``vmt.evaluation.diagnostics.to_inference_data(*result)`` gives
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
