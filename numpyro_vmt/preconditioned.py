r"""A Langevin step with a mass matrix and a step size per chain (JAX).

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

It is computed as the plain step of [`numpyro_vmt.langevin.step()`][numpyro_vmt.langevin.step] with unit step size
in whitened coordinates $y = A^{-1}x$, $A = \delta L$, on the potential
$\tilde U(y) = U(Ay)$, whose gradient is $A^\top\nabla U(x)$: the map sends
that step to the one above, and since its Jacobian is a constant it cancels in the
Metropolis ratio, so the whitened MALA ratio *is* the preconditioned one. Each chain may
have its own $A$, which is how per-chain step sizes and mass matrices of a
batch of chains are applied with one batched gradient.
"""

from __future__ import annotations

from typing import Callable, Tuple

import jax
import jax.numpy as jnp

from numpyro_vmt.langevin import LangevinInfo, LangevinState, step
from numpyro_vmt.rng import RNG

__all__ = ["preconditioned_step", "scale_factor"]

Array = jax.Array


def scale_factor(step_size, sqrt_inverse_mass: Array, dense: bool = False) -> Array:
    r"""$A = \delta L$ of one chain: ``(D,)`` (diagonal) or ``(D, D)`` (``dense``).

    ``sqrt_inverse_mass`` is $L$ with $LL^\top = M^{-1}$: NumPyro's
    ``HMCAdaptState.mass_matrix_sqrt_inv`` (diagonal) or its transpose (dense), which
    is *upper* triangular (NumPyro's convention; any square root gives the same proposal).
    """
    return step_size * sqrt_inverse_mass


def _apply(a: Array, y: Array) -> Array:
    return a * y if a.ndim == 1 else y @ a.T


def _solve(a: Array, x: Array) -> Array:
    if a.ndim == 1:
        return x / a
    return jax.scipy.linalg.solve_triangular(a, x.T, lower=False).T


def _apply_t(a: Array, g: Array) -> Array:
    return a * g if a.ndim == 1 else g @ a


def _solve_t(a: Array, g: Array) -> Array:
    if a.ndim == 1:
        return g / a
    return jax.scipy.linalg.solve_triangular(a.T, g.T, lower=True).T


def preconditioned_step(rng: RNG, state: LangevinState, potential_fn: Callable[[Array], Array],
                        factor: Array, noise_scale: float = 1.0, adjust: bool = False
                        ) -> Tuple[LangevinState, LangevinInfo]:
    """One step of the preconditioned proposal on flat ``(n, D)`` positions sharing one ``factor``.

    Parameters
    ----------
    rng : jax.random key, int or None
    state : LangevinState
        Position, energy and gradient in the original coordinates, shape ``(n, D)``.
    potential_fn : callable
        ``U``: ``(n, D) -> (n,)``.
    factor : Array
        $A = \\delta L$ from [`scale_factor()`][numpyro_vmt.preconditioned.scale_factor].
    noise_scale, adjust
        As in [`numpyro_vmt.langevin.step()`][numpyro_vmt.langevin.step].

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
        new_x, new_g = jnp.where(keep, x, new_x), jnp.where(keep, g, new_g)
    grad_norm = jnp.sqrt((new_g * new_g).sum(1))
    return LangevinState(new_x, new.energy, new_g), info._replace(grad_norm=grad_norm)
