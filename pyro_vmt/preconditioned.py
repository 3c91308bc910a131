r"""A Langevin step with a mass matrix and a step size per chain (PyTorch).

With an inverse mass matrix $M^{-1} = LL^\top$ ($L$ lower triangular; the
elementwise square root of the diagonal for a diagonal matrix) and step size
$\delta_c$ in chain $c$, the preconditioned Langevin proposal is

$$
x' = x - \tfrac{\delta^2}{2} M^{-1}\nabla U(x) + \delta\sigma L\xi, \qquad \xi\sim\mathcal N(0, I),
$$

i.e. $x' \sim q(x'\mid x) = \mathcal N\big(x - \tfrac{\delta^2}{2}M^{-1}\nabla U(x),\,
\delta^2\sigma^2 M^{-1}\big)$ (Roberts & Stramer 2002, "Langevin diffusions and
Metropolis-Hastings algorithms", Methodol. Comput. Appl. Probab. 4; Girolami &
Calderhead 2011, JRSS B 73, eq. 10 with a constant metric). With ``adjust=True`` it is
accepted with probability $\min(1, e^{U(x) - U(x')} q(x\mid x') / q(x'\mid x))$,
both densities with the same covariance $\delta^2\sigma^2 M^{-1}$.

It is computed as the plain step of [`pyro_vmt.langevin.step()`][pyro_vmt.langevin.step] with unit step size
in whitened coordinates $y = A^{-1}x$, $A = \delta L$, on the potential
$\tilde U(y) = U(Ay)$, whose gradient is $A^\top\nabla U(x)$: the map sends
that step to the one above, and since its Jacobian is a constant it cancels in the
Metropolis ratio, so the whitened MALA ratio *is* the preconditioned one. Each chain may
have its own $A$, which is how per-chain step sizes and mass matrices of a
batch of chains are applied with one batched gradient.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from pyro_vmt.langevin import LangevinInfo, LangevinState, step
from pyro_vmt.rng import RNG

__all__ = ["preconditioned_step", "scale_factor"]

Tensor = torch.Tensor


def scale_factor(step_size, sqrt_inverse_mass: Optional[Tensor], x: Tensor, dense: bool = False) -> Tensor:
    r"""$A = \delta L$ per chain: ``(n, D)`` (diagonal) or ``(n, D, D)`` (``dense``).

    ``step_size`` is a number or ``(n,)``; ``sqrt_inverse_mass`` is ``None`` (identity),
    ``(D,)``/``(n, D)`` (diagonal $L$) or, with ``dense``, ``(D, D)``/``(n, D, D)``
    (lower-triangular $L$).
    """
    n, d = x.shape
    delta = torch.as_tensor(step_size, dtype=x.dtype, device=x.device).reshape(-1).expand(n)
    if sqrt_inverse_mass is None:
        return delta[:, None].expand(n, d)
    root = sqrt_inverse_mass.to(dtype=x.dtype, device=x.device)
    if root.shape[-1] != d:
        raise ValueError(f"the inverse mass matrix has size {root.shape[-1]}, the parameters {d}")
    if dense:
        return delta[:, None, None] * root.expand(n, d, d)
    return delta[:, None] * root.expand(n, d)


def _apply(a: Tensor, y: Tensor) -> Tensor:
    return a * y if a.ndim == 2 else torch.einsum("nij,nj->ni", a, y)


def _solve(a: Tensor, x: Tensor) -> Tensor:
    if a.ndim == 2:
        return x / a
    return torch.linalg.solve_triangular(a, x[..., None], upper=False)[..., 0]


def _apply_t(a: Tensor, g: Tensor) -> Tensor:
    return a * g if a.ndim == 2 else torch.einsum("nji,nj->ni", a, g)


def _solve_t(a: Tensor, g: Tensor) -> Tensor:
    if a.ndim == 2:
        return g / a
    return torch.linalg.solve_triangular(a.transpose(-1, -2), g[..., None], upper=True)[..., 0]


def preconditioned_step(rng: RNG, state: LangevinState, potential_fn: Callable[[Tensor], Tensor],
                        factor: Tensor, noise_scale: float = 1.0, adjust: bool = False
                        ) -> Tuple[LangevinState, LangevinInfo]:
    """One step of the preconditioned proposal on flat ``(n, D)`` positions.

    Parameters
    ----------
    rng : torch.Generator, int or None
    state : LangevinState
        Position, energy and gradient in the original coordinates, shape ``(n, D)``.
    potential_fn : callable
        ``U``: ``(n, D) -> (n,)``.
    factor : Tensor
        $A = \\delta L$ from [`scale_factor()`][pyro_vmt.preconditioned.scale_factor].
    noise_scale, adjust
        As in [`pyro_vmt.langevin.step()`][pyro_vmt.langevin.step].

    Returns
    -------
    (LangevinState, LangevinInfo)
        The state in the original coordinates; ``grad_norm`` is $\\|\\nabla U\\|$ there.
    """
    x, e, g = state
    y_state = LangevinState(_solve(factor, x), e, _apply_t(factor, g))
    new, info = step(rng, y_state, lambda y: potential_fn(_apply(factor, y)), 1.0, noise_scale, adjust)
    new_x, new_g = _apply(factor, new.position), _solve_t(factor, new.grad)
    if adjust:  # a rejected chain keeps its exact position and gradient (no round trip)
        keep = ~info.is_accepted[:, None]
        new_x, new_g = torch.where(keep, x, new_x), torch.where(keep, g, new_g)
    grad_norm = new_g.square().sum(1).sqrt()
    return LangevinState(new_x, new.energy, new_g), info._replace(grad_norm=grad_norm)
