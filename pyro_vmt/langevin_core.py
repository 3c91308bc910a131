r"""The functional core of Langevin dynamics over a batch of chains (PyTorch).

Pure functions [`init()`][pyro_vmt.langevin_core.init] and [`step()`][pyro_vmt.langevin_core.step] over a
[`LangevinState`][pyro_vmt.langevin_core.LangevinState], in the shape of BlackJAX's samplers; the chain
state never lives on an object. [`Langevin`][pyro_vmt.langevin.Langevin] ([`pyro_vmt.langevin`][pyro_vmt.langevin],
which re-exports these names) closes over the options and runs ``K`` steps.

One step with energy $E$ (the potential, $-\log$ of the unnormalised
density), step size $\delta$ and noise scale $\sigma$:

$$
x' = x - \frac{\delta^2}{2} \nabla_x E(x) + \delta \sigma \xi,
\qquad \xi \sim \mathcal N(0, I).
$$

``noise_scale = 1`` is the Euler–Maruyama discretisation of overdamped Langevin
dynamics (ULA); ``noise_scale = 0`` is the deterministic revision of the reference
implementation of Xie, Zheng & Li, "Learning Energy-Based Model with Variational
Auto-Encoder as Amortized Sampler", AAAI 2021 (https://arxiv.org/abs/2012.14936).
With ``adjust=True`` the move is a proposal accepted with probability

$$
\alpha = \min\Big(1, \exp\big(E(x) - E(x') + \log q(x \mid x') - \log q(x' \mid x)\big)\Big),
\quad q(x' \mid x) = \mathcal N\big(x';\, x - \tfrac{\delta^2}{2}\nabla E(x),\, \delta^2\sigma^2 I\big),
$$

the Metropolis-adjusted Langevin algorithm (MALA; Roberts & Tweedie 1996).
In BlackJAX's notation (``x + ε∇log p + √(2ε)ξ``), ``ε = δ²/2``.

Every step evaluates the energy and its gradient once, under ``torch.enable_grad``
on a detached copy of the position, so no autograd graph is kept across steps and
memory does not grow with the number of steps.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Tuple

import torch

from pyro_vmt.rng import RNG, as_rng
from vmt.core.checks import check_noise_scale, check_step_size

__all__ = ["LangevinState", "LangevinInfo", "init", "step", "energy_and_grad", "start_flags", "check_start"]

Tensor = torch.Tensor
PotentialFn = Callable[[Tensor], Tensor]


class LangevinState(NamedTuple):
    """State of a batch of chains.

    Attributes
    ----------
    position : Tensor, shape ``(n, *event_shape)``
    energy : Tensor, shape ``(n,)``
        ``E(position)``.
    grad : Tensor, shape ``(n, *event_shape)``
        ``∇E(position)``.
    """

    position: Tensor
    energy: Tensor
    grad: Tensor


class LangevinInfo(NamedTuple):
    """Diagnostics of one step, per chain (stacked over steps by [`Langevin.run()`][pyro_vmt.langevin.Langevin.run]).

    Attributes
    ----------
    acceptance_rate : Tensor, shape ``(n,)``
        Metropolis acceptance probability ``α`` (1 for unadjusted steps, 0 for a
        non-finite proposal).
    is_accepted : Tensor of bool, shape ``(n,)``
    grad_norm : Tensor, shape ``(n,)``
        ``‖∇E‖`` at the state returned by the step.
    is_divergent : Tensor of bool, shape ``(n,)``
        The move produced a non-finite energy, gradient or position. MALA rejects
        such a proposal; an unadjusted chain keeps it, so the flag is the report.
    """

    acceptance_rate: Tensor
    is_accepted: Tensor
    grad_norm: Tensor
    is_divergent: Tensor


def _flat_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def energy_and_grad(potential_fn: PotentialFn, position: Tensor) -> Tuple[Tensor, Tensor]:
    """``E(x)`` and ``∇ₓE(x)`` for a batch, both detached.

    Raises ``ValueError`` if ``potential_fn`` does not return one energy per chain.
    """
    with torch.enable_grad():
        x = position.detach().requires_grad_(True)
        energy = potential_fn(x)
        if not isinstance(energy, Tensor) or energy.shape != x.shape[:1]:
            shape = tuple(energy.shape) if isinstance(energy, Tensor) else type(energy).__name__
            raise ValueError(
                f"potential_fn must return one energy per chain, shape ({x.shape[0]},); "
                f"got {shape} for positions of shape {tuple(x.shape)}"
            )
        (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), grad


def _check_position(position: Tensor) -> None:
    """Type and shape checks of a starting position (on the host: no device sync)."""
    if not isinstance(position, Tensor):
        raise TypeError(f"position must be a torch.Tensor, got {type(position).__name__}")
    if not position.is_floating_point():
        raise ValueError(f"position must be a floating-point array, got dtype {str(position.dtype).replace('torch.', '')}")
    if position.ndim < 2 or position.shape[0] == 0:
        raise ValueError(
            "position must have a leading batch (chain) dimension and an event shape, "
            f"e.g. (num_chains, dim); got shape {tuple(position.shape)}"
        )


def _all_finite(*per_chain: Tensor) -> bool:
    """Their total is finite (one host sync): a fast sufficient test that every value is; a
    non-finite total can also be overflow alone, so callers then run the exact test."""
    total = per_chain[0].sum()
    for t in per_chain[1:]:
        total = total + t.sum()
    return math.isfinite(float(total))


def start_flags(position: Tensor, energy: Tensor, grad: Tensor) -> Tuple[Tensor, Tensor]:
    """Device counts of chains with a non-finite start, and with a non-finite energy or gradient there."""
    bad_x = ~torch.isfinite(_flat_sum(position))
    bad_e = ~(torch.isfinite(energy) & torch.isfinite(_flat_sum(grad)))
    return bad_x.sum(), (bad_e & ~bad_x).sum()


def check_start(n: int, bad_start: int, bad_energy: int) -> None:
    """Raise the ``ValueError`` of a non-finite start (both backends' wording)."""
    if bad_start:
        raise ValueError(f"initial position is non-finite in {bad_start} of {n} chains")
    if bad_energy:
        raise ValueError(f"energy or its gradient is non-finite at the initial position of "
                         f"{bad_energy} of {n} chains")


def init(position: Tensor, potential_fn: PotentialFn) -> LangevinState:
    """Start chains at ``position`` (shape ``(n, *event_shape)``); one host sync checks it is finite."""
    _check_position(position)
    energy, grad = energy_and_grad(potential_fn, position)
    if not _all_finite(_flat_sum(position), energy, grad):
        check_start(position.shape[0], *(int(c) for c in start_flags(position, energy, grad)))
    return LangevinState(position.detach(), energy, grad)


def step(
    rng: RNG,
    state: LangevinState,
    potential_fn: PotentialFn,
    step_size: float,
    noise_scale: float = 1.0,
    adjust: bool = False,
    noise: Optional[Tensor] = None,
    uniform: Optional[Tensor] = None,
) -> Tuple[LangevinState, LangevinInfo]:
    """One (optionally Metropolis-adjusted) Langevin step for every chain.

    Parameters
    ----------
    rng : torch.Generator, int or None
        Source of ``ξ`` (and of the Metropolis uniforms). May be ``None`` only when
        no randomness is needed (``noise`` given, or ``noise_scale = 0``).
    state : LangevinState
    potential_fn : callable
        ``E``: ``(n, *event_shape) -> (n,)``.
    step_size : float
        ``δ > 0``.
    noise_scale : float
        ``σ ≥ 0``.
    adjust : bool
        Metropolis-adjust (MALA).
    noise, uniform : Tensor, optional
        Injected ``ξ`` (shape of the position) and Metropolis uniforms (shape
        ``(n,)``), for deterministic tests.

    Returns
    -------
    (LangevinState, LangevinInfo)
    """
    # numbers of any array library (NumPy, JAX, torch scalars) as Python floats
    step_size, noise_scale = check_step_size(step_size), check_noise_scale(noise_scale, adjust)
    gen = as_rng(rng, state.position.device)
    needs_rng = (noise is None and noise_scale > 0) or (adjust and uniform is None)
    if needs_rng and gen is None:
        raise ValueError("rng is required: pass a torch.Generator or an int seed")
    if step_size * noise_scale > 0:
        _check_noise(noise, state.position)
    return _step(gen, state, potential_fn, 0.5 * step_size * step_size, step_size * noise_scale,
                 adjust, noise, uniform)


def _check_noise(noise: Optional[Tensor], x: Tensor) -> None:
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x.shape)}")


def _propose(gen: Optional[torch.Generator], x: Tensor, g: Tensor, h: float, scale: float,
             noise: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """The drift ``x − h·g`` and the move ``x − h·g + scale·ξ`` (``ξ`` drawn unless given).

    Each is one fused multiply-add (``torch.add`` with ``alpha``).
    """
    drift = torch.add(x, g, alpha=-h)
    if scale <= 0:
        return drift, drift
    if noise is None:
        noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return drift, torch.add(drift, noise, alpha=scale)


def _row_sums(t: Tensor, ones: Optional[Tensor] = None) -> Tensor:
    """Per-chain sums of ``t`` as a matrix-vector product with ``ones`` (on CPU several
    times faster than ``sum(1)`` over short rows)."""
    flat = t.reshape(t.shape[0], -1)
    return torch.mv(flat, flat.new_ones(flat.shape[1]) if ones is None else ones)


def _norm(g: Tensor) -> Tensor:
    """Per-chain Euclidean norm ``‖g‖``."""
    return _row_sums(g * g).sqrt_()


def _finite(e: Tensor, g_sum: Tensor, x_sum: Tensor) -> Tensor:
    """Per chain: energy, gradient sum and position sum all finite (works on stacked steps too)."""
    if e.dtype == g_sum.dtype == x_sum.dtype:
        return torch.isfinite(torch.stack([e, g_sum, x_sum])).all(0)
    return torch.isfinite(e) & torch.isfinite(g_sum) & torch.isfinite(x_sum)


def _step(gen: Optional[torch.Generator], state: LangevinState, potential_fn: PotentialFn, h: float,
          scale: float, adjust: bool, noise: Optional[Tensor], uniform: Optional[Tensor]
          ) -> Tuple[LangevinState, LangevinInfo]:
    """[`step()`][pyro_vmt.langevin_core.step] after its checks, with ``h = δ²/2`` and ``scale = δσ``."""
    x, e, g = state
    drift, new_x = _propose(gen, x, g, h, scale, noise)
    new_e, new_g = energy_and_grad(potential_fn, new_x)
    finite = _finite(new_e, _row_sums(new_g), _row_sums(new_x))
    if not adjust:
        ones = torch.ones_like(new_e)
        info = LangevinInfo(ones, torch.ones_like(finite), _norm(new_g), ~finite)
        return LangevinState(new_x, new_e, new_g), info

    # log q(x' | x) - log q(x | x'), both with variance (δσ)²
    fwd = _row_sums((new_x - drift).square_())
    bwd = _row_sums((x - torch.add(new_x, new_g, alpha=-h)).square_())
    log_alpha = e - new_e + (fwd - bwd) / (2 * scale * scale)
    log_alpha = torch.where(finite, log_alpha, torch.full_like(log_alpha, -torch.inf))
    if uniform is None:
        uniform = torch.rand(e.shape, generator=gen, device=x.device, dtype=x.dtype)
    accept = torch.log(uniform) < log_alpha
    mask = accept.reshape((-1,) + (1,) * (x.ndim - 1))
    pos = torch.where(mask, new_x, x)
    grad = torch.where(mask, new_g, g)
    info = LangevinInfo(torch.exp(torch.clamp(log_alpha, max=0.0)), accept, _norm(grad), ~finite)
    return LangevinState(pos, torch.where(accept, new_e, e), grad), info
