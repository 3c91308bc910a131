"""Pyro's warmup adaptation for a batch of chains, each with its own step size and mass matrix.

[`ChainsAdapter`][pyro_vmt.adaptation.ChainsAdapter] is ``pyro.infer.mcmc.adaptation.WarmupAdapter`` (Stan's
adaptation windows, ``BlockMassMatrix`` with its Welford estimates,
``pyro.ops.dual_averaging.DualAveraging``; Hoffman & Gelman 2014, JMLR 15,
Algorithm 5) run on all chains of a batched [`LangevinKernel`][pyro_vmt.kernel.LangevinKernel]
at once: its dual-averaging state holds ``(C,)`` tensors, whose updates are
elementwise, and a diagonal mass matrix is one ``(C·D,)`` block, so each chain's
Welford variances are its own. This is what NumPyro's vectorized chains get by vmapping
``numpyro.infer.hmc_util.warmup_adapter``.
"""

from __future__ import annotations

from typing import Any

import torch
from pyro.infer.mcmc.adaptation import WarmupAdapter

__all__ = ["ChainsAdapter", "PerChain"]


class PerChain:
    """Acceptance probabilities of all chains, handed through ``WarmupAdapter.step``
    (which calls ``.item()`` on its argument) to ``ChainsAdapter._update_step_size``."""

    def __init__(self, accept_prob: torch.Tensor):
        self.accept_prob = accept_prob

    def item(self) -> torch.Tensor:
        return self.accept_prob


class ChainsAdapter(WarmupAdapter):
    """``WarmupAdapter`` with a step size per chain (see the module); ``step_size`` is ``(C,)``.

    Configure it with ``initial_step_size`` a ``(C,)`` tensor and, for a diagonal mass
    matrix, ``mass_matrix_shape={("x",): (C·D,)}``; pass the flat ``(C·D,)`` positions and
    the acceptance probabilities wrapped in [`PerChain`][pyro_vmt.adaptation.PerChain] to ``step``.
    """

    def reset_step_size_adaptation(self, z: Any) -> None:
        self._step_size_adapt_scheme.prox_center = torch.log(10 * torch.as_tensor(self.step_size))
        self._step_size_adapt_scheme.reset()

    def _update_step_size(self, accept_prob: torch.Tensor) -> None:
        self._step_size_adapt_scheme.step(self.target_accept_prob - accept_prob)
        self.step_size = torch.exp(self._step_size_adapt_scheme.get_state()[0])

    def _end_adaptation(self) -> None:
        if self.adapt_step_size:
            self.step_size = torch.exp(self._step_size_adapt_scheme.get_state()[1])
