"""Many chains in one process for Pyro: a chain-batched potential and a driver.

Pyro's ``MCMC`` runs one chain per process (pyro#2539). A
[`LangevinKernel`][pyro_vmt.kernel.LangevinKernel] built with ``num_chains=C`` carries ``C``
chains as a leading batch dimension instead; [`run_chains()`][pyro_vmt.chains.run_chains] drives it (each chain
with its own adapted step size and mass matrix) and returns a [`ChainsResult`][pyro_vmt.chains.ChainsResult],
which answers as ``pyro.infer.MCMC`` does ([`get_samples()`][pyro_vmt.chains.ChainsResult.get_samples],
[`summary()`][pyro_vmt.chains.ChainsResult.summary], [`diagnostics()`][pyro_vmt.chains.ChainsResult.diagnostics]) and unpacks into
``(samples, sample_stats)`` for [`vmt.evaluation.diagnostics.to_inference_data()`][vmt.evaluation.diagnostics.to_inference_data].
The kernel evaluates the model's potential for all chains at once with
[`ChainPlatePotential`][pyro_vmt.potential.ChainPlatePotential].
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional

import torch
from pyro.infer.mcmc.util import diagnostics as _site_diagnostics
from pyro.infer.mcmc.util import print_summary
from tqdm.auto import tqdm

from pyro_vmt.kernel import LangevinKernel

__all__ = ["ChainsResult", "run_chains"]


class ChainsResult(NamedTuple):
    """Output of [`run_chains()`][pyro_vmt.chains.run_chains]: constrained ``samples`` ``{site: (C, draws, ...)}`` and
    ``sample_stats`` ``{name: (C, draws)}`` (``energy``, ``acceptance_rate``,
    ``is_accepted``, ``grad_norm``, ``is_divergent``, ``step_size``).

    Besides the two fields it has the reading methods of ``pyro.infer.MCMC``.
    """

    samples: Dict[str, torch.Tensor]
    sample_stats: Dict[str, torch.Tensor]

    def get_samples(self, group_by_chain: bool = False) -> Dict[str, torch.Tensor]:
        """``{site: (C, draws, ...)}`` with ``group_by_chain``, else ``{site: (C·draws, ...)}``."""
        if group_by_chain:
            return dict(self.samples)
        return {k: v.reshape((-1,) + tuple(v.shape[2:])) for k, v in self.samples.items()}

    def diagnostics(self) -> Dict[str, Any]:
        """As ``MCMC.diagnostics()``: ``{site: {"n_eff", "r_hat"}}``, ``divergences``
        (post-warmup draw indices) and ``acceptance rate`` per ``"chain i"``."""
        diag = _site_diagnostics(self.samples, group_by_chain=True)
        div = self.sample_stats.get("is_divergent")
        acc = self.sample_stats.get("is_accepted")
        chains = next(iter(self.samples.values())).shape[0] if self.samples else 0
        if div is not None:
            diag["divergences"] = {f"chain {c}": torch.nonzero(div[c]).flatten().tolist() for c in range(chains)}
        if acc is not None:
            diag["acceptance rate"] = {f"chain {c}": float(acc[c].double().mean()) for c in range(chains)}
        return diag

    def summary(self, prob: float = 0.9) -> None:
        """Print Pyro's summary table (mean, sd, median, interval, ``n_eff``, ``r_hat``
        per site, chains kept apart) and the number of divergences, as ``MCMC.summary``."""
        print_summary(self.samples, prob=prob, group_by_chain=True)
        div = self.sample_stats.get("is_divergent")
        if div is not None:
            print(f"Number of divergences: {int(div.sum())}")


def run_chains(kernel: LangevinKernel, num_samples: int, warmup_steps: int = 0,
               initial_params: Optional[Dict[str, torch.Tensor]] = None, model_args: tuple = (),
               model_kwargs: Optional[dict] = None, progress: bool = True) -> ChainsResult:
    """Run a batched [`LangevinKernel`][pyro_vmt.kernel.LangevinKernel] (``num_chains`` set) in this process.

    ``warmup_steps`` steps (step-size and mass-matrix adaptation) are run and discarded,
    then ``num_samples`` are kept; ``initial_params`` are unconstrained, ``{site: (C, ...)}``
    (e.g. from [`pyro_vmt.warmstart.initial_params_from_guide()`][pyro_vmt.warmstart.initial_params_from_guide]). ``progress`` shows a
    tqdm bar with the kernel's mean step size and acceptance (as ``pyro.infer.MCMC``'s).
    Returns [`ChainsResult`][pyro_vmt.chains.ChainsResult]; ``vmt.evaluation.diagnostics.to_inference_data(*result)``
    gives ArviZ data (``sample_stats`` there: ``lp``, ``acceptance_rate``, ``diverging``, ...).
    """
    if not kernel.num_chains:
        raise ValueError("run_chains needs a kernel built with num_chains=C; "
                         "use pyro.infer.MCMC for num_chains=None")
    if initial_params is not None:
        kernel.initial_params = initial_params
    kernel._driver = "run_chains"
    try:
        kernel.setup(warmup_steps, *model_args, **(model_kwargs or {}))
    finally:
        kernel._driver = None
    params, draws, stats = kernel.initial_params, [], []
    bar = tqdm(range(warmup_steps + num_samples), disable=not progress, desc="warmup", leave=True)
    for i in bar:
        params = kernel.sample(params)
        if i == warmup_steps:
            bar.set_description("sample")
        if progress:
            bar.set_postfix(kernel.logging(), refresh=False)
        if i >= warmup_steps:
            state, info = kernel.state, kernel.last_info
            draws.append({k: v.detach() for k, v in params.items()})
            step = torch.as_tensor(kernel.step_size, dtype=state.energy.dtype).expand_as(state.energy)
            stats.append({"energy": state.energy, **info._asdict(), "step_size": step.clone()})
    bar.close()
    transforms = kernel.transforms or {}
    samples = {}
    for k in params:
        v = torch.stack([d[k] for d in draws], 1)
        samples[k] = transforms[k].inv(v) if k in transforms else v
    sample_stats = {n: torch.stack([s[n] for s in stats], 1) for n in (stats[0] if stats else ())}
    kernel.cleanup()
    return ChainsResult(samples, sample_stats)
