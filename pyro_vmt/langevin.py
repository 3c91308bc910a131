r"""Finite-step Langevin dynamics over a batch of chains (PyTorch): the ``K``-step runner.

[`Langevin`][pyro_vmt.langevin.Langevin] closes the pure functions of
[`pyro_vmt.langevin_core`][pyro_vmt.langevin_core] ([`init()`][pyro_vmt.langevin_core.init],
[`step()`][pyro_vmt.langevin_core.step], their [`LangevinState`][pyro_vmt.langevin_core.LangevinState] and
[`LangevinInfo`][pyro_vmt.langevin_core.LangevinInfo], re-exported here) over their options and
runs ``K`` steps: an unadjusted run in a loop that allocates its diagnostics once, an
adjusted (MALA) run step by step. The chain state never lives on the object.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from tqdm.auto import tqdm

from pyro_vmt.langevin_core import (LangevinInfo, LangevinState, PotentialFn, _check_noise, _finite, _propose, _step,
                                    check_start, energy_and_grad, init, start_flags, step)
from pyro_vmt.langevin_core import _check_position, _flat_sum  # noqa: F401  (update.py, correction.py import them here)
from pyro_vmt.rng import RNG, as_rng
from vmt.core.checks import check_noise_scale, check_num_steps, check_step_size

# the core's names stay importable from here, where users and the other modules import them
__all__ = ["LangevinState", "LangevinInfo", "Langevin", "init", "step", "energy_and_grad", "start_flags",
           "check_start"]

Tensor = torch.Tensor

_CHUNK = 64  # steps whose raw divergence numbers are held before they become flags


def _steps(num_steps: int, progress: bool):
    """The step indices, behind a tqdm bar (kept when done) when ``progress``."""
    return tqdm(range(num_steps), desc="langevin", disable=not progress, leave=True) if progress else range(num_steps)


def _run_unadjusted(gen: Optional[torch.Generator], state: LangevinState, potential_fn: PotentialFn,
                    h: float, scale: float, num_steps: int, noise: Optional[Tensor], progress: bool = False
                    ) -> Tuple[LangevinState, LangevinInfo]:
    """``num_steps`` unadjusted steps, the same update as `_step()`.

    The hot loop does only what an unadjusted step needs (the move, one energy and
    gradient) plus the per-chain numbers the diagnostics are made of, written into
    buffers allocated once: no per-step allocation and no stacking at the end. The
    per-chain sums are matrix-vector products with a vector of ones (on CPU several
    times faster than ``sum(1)`` over short rows). The energies and the gradient and
    position sums are kept for at most ``_CHUNK`` steps and then turned into
    divergence flags, so the memory beyond the returned ``(num_steps, n)``
    diagnostics does not grow with the number of steps; the square roots of the
    gradient norms and the constant acceptance diagnostics are formed once, at the end.
    """
    x, e, g = state
    n = x.shape[0]
    ones = torch.ones(x[0].numel(), dtype=g.dtype, device=g.device)
    chunk = min(num_steps, _CHUNK)
    e_buf = torch.empty((chunk, n), dtype=e.dtype, device=e.device)
    g_buf, x_buf = torch.empty((2, chunk, n), dtype=g.dtype, device=g.device)
    norm = torch.empty((num_steps, n), dtype=g.dtype, device=g.device)
    divergent = torch.empty((num_steps, n), dtype=torch.bool, device=g.device)
    rows = list(zip(e_buf.unbind(0), g_buf.unbind(0), x_buf.unbind(0)))
    for k, sq_norm in zip(_steps(num_steps, progress), norm.unbind(0)):
        j = k % chunk
        e_j, g_j, x_j = rows[j]
        _, x = _propose(gen, x, g, h, scale, None if noise is None else noise[k])
        e, g = energy_and_grad(potential_fn, x)
        g_flat = g.reshape(n, -1)
        e_j.copy_(e)
        torch.mv(g_flat, ones, out=g_j)
        torch.mv(x.reshape(n, -1), ones, out=x_j)
        torch.mv(g_flat * g_flat, ones, out=sq_norm)
        if j == chunk - 1 or k == num_steps - 1:
            torch.logical_not(_finite(e_buf[:j + 1], g_buf[:j + 1], x_buf[:j + 1]), out=divergent[k - j:k + 1])
    del e_buf, g_buf, x_buf, rows
    ones = torch.ones((num_steps, n), dtype=e.dtype, device=e.device)
    info = LangevinInfo(ones, torch.ones_like(divergent), norm.sqrt_(), divergent)
    return LangevinState(x, e, g), info


class Langevin:
    """K-step Langevin sampler: [`init()`][pyro_vmt.langevin_core.init] and [`step()`][pyro_vmt.langevin_core.step] closed over their options.

    Parameters
    ----------
    potential_fn : callable
        ``E``: ``(n, *event_shape) -> (n,)``, the negative log unnormalised density.
    step_size : float
        ``δ > 0``; drift ``δ²/2 ∇E``, noise ``δ σ ξ``.
    num_steps : int
        ``K``, the default length of `run()`.
    noise_scale : float
        ``σ``: 1.0 Langevin dynamics, 0.0 noise-free revision.
    adjust : bool
        Metropolis-adjusted (MALA) when ``True``.

    Examples
    --------
    >>> import torch
    >>> sampler = Langevin(lambda x: 0.5 * (x ** 2).sum(-1), step_size=0.5, num_steps=100)
    >>> state, info = sampler.run(0, torch.zeros(1000, 2))
    >>> state.position.shape, info.is_divergent.shape
    (torch.Size([1000, 2]), torch.Size([100, 1000]))
    """

    def __init__(self, potential_fn: PotentialFn, step_size: float, num_steps: int = 1,
                 noise_scale: float = 1.0, adjust: bool = False):
        if not callable(potential_fn):
            raise TypeError("potential_fn must be callable: (n, *event_shape) -> (n,)")
        self.potential_fn = potential_fn
        self.step_size = check_step_size(step_size)
        self.num_steps = check_num_steps(num_steps)
        self.noise_scale = check_noise_scale(noise_scale, adjust)
        self.adjust = bool(adjust)

    def init(self, position: Tensor) -> LangevinState:
        """See [`init()`][pyro_vmt.langevin_core.init]."""
        return init(position, self.potential_fn)

    def step(self, rng: RNG, state: LangevinState, noise: Optional[Tensor] = None,
             uniform: Optional[Tensor] = None) -> Tuple[LangevinState, LangevinInfo]:
        """See [`step()`][pyro_vmt.langevin_core.step]."""
        return step(rng, state, self.potential_fn, self.step_size, self.noise_scale,
                    self.adjust, noise, uniform)

    def run(self, rng: RNG, position: Tensor, num_steps: Optional[int] = None,
            noise: Optional[Tensor] = None, uniform: Optional[Tensor] = None, progress: bool = False
            ) -> Tuple[LangevinState, LangevinInfo]:
        """Run ``num_steps`` steps from ``position``.

        ``progress`` shows a tqdm bar over the steps (off by default: runs inside
        training loops are short and many). Returns the final state and the per-step diagnostics stacked along a new
        leading axis (shape ``(num_steps, n)`` each). ``noise`` / ``uniform``, if
        given, carry a leading ``num_steps`` axis.
        """
        num_steps = self.num_steps if num_steps is None else check_num_steps(num_steps)
        gen = as_rng(rng, position.device if isinstance(position, Tensor) else None)
        state = self.init(position)
        return self._run_from(gen, state, num_steps, noise, uniform, progress)

    def _run_from(self, rng: RNG, state: LangevinState, num_steps: Optional[int] = None,
                 noise: Optional[Tensor] = None, uniform: Optional[Tensor] = None, progress: bool = False
                 ) -> Tuple[LangevinState, LangevinInfo]:
        """`run()` from a state made by [`init()`][pyro_vmt.langevin_core.init], without host sync: the diagnostics stay on
        the device, for the caller to check once (the teacher does, with its losses)."""
        num_steps = self.num_steps if num_steps is None else check_num_steps(num_steps)
        gen = as_rng(rng, state.position.device)
        if gen is None and ((noise is None and self.noise_scale > 0) or (self.adjust and uniform is None)):
            raise ValueError("rng is required: pass a torch.Generator or an int seed")
        if noise is not None and self.step_size * self.noise_scale > 0:
            for k in range(num_steps):
                _check_noise(noise[k], state.position)
        h, scale = 0.5 * self.step_size * self.step_size, self.step_size * self.noise_scale
        if not self.adjust:
            return _run_unadjusted(gen, state, self.potential_fn, h, scale, num_steps, noise, progress)
        n, e = state.position.shape[0], state.energy
        info = LangevinInfo(torch.empty((num_steps, n), dtype=e.dtype, device=e.device),
                            torch.empty((num_steps, n), dtype=torch.bool, device=e.device),
                            torch.empty((num_steps, n), dtype=state.grad.dtype, device=e.device),
                            torch.empty((num_steps, n), dtype=torch.bool, device=e.device))
        for k, rows in zip(_steps(num_steps, progress), zip(*(f.unbind(0) for f in info))):
            state, step_info = _step(gen, state, self.potential_fn, h, scale, True,
                                     None if noise is None else noise[k],
                                     None if uniform is None else uniform[k])
            for row, value in zip(rows, step_info):
                row.copy_(value)
        return state, info
