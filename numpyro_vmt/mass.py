r"""A dense mass matrix learned from the particles of past updates (JAX).

[`MCMCTeaching(..., precondition="dense")`][numpyro_vmt.guide_teaching.MCMCTeaching] revises its
particles with MALA in whitened coordinates $y = L^{-1}u$, $LL^\top = \hat\Sigma$,
where $\hat\Sigma$ is the covariance of the revised particles of a *past* window of
updates — never of the particles being revised, so every revision is a MALA run with a
fixed mass matrix $M^{-1} = \hat\Sigma$ and stays exact. The windows double, as Stan's
slow adaptation windows do (Stan Reference Manual, "HMC algorithm parameters"): they
end after 25, 75, 175, 375, … updates; at each end $\hat\Sigma$ becomes the window's
regularised Welford covariance (``numpyro.infer.hmc_util.welford_covariance``, Stan's
shrinkage $\frac{m}{m+5}\hat\Sigma + 10^{-3}\frac{5}{m+5}I$ over $m$ particle states)
and the next window starts empty. Until the first window ends the guide's diagonal
scale is used. A mean-field guide of a correlated posterior cannot supply the
correlations; the revised particles carry them, and a dense metric lets MALA move along
the posterior's narrow directions (Girolami & Calderhead 2011, JRSS B 73, with a constant
metric).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
from numpyro.infer.hmc_util import welford_covariance

__all__ = ["DenseMass", "FIRST_WINDOW", "window_ends", "coordinates"]  # init, update: used by MCMCTeaching

FIRST_WINDOW = 25  # updates in the first window; each later one is twice the one before


class DenseMass(NamedTuple):
    """``chol``: lower Cholesky factor ``(D, D)`` of the covariance in use; ``ready``:
    whether a window has ended (before that the guide's diagonal is used); ``welford``:
    the current window's Welford state (mean, ``m2``, count)."""

    chol: jax.Array
    ready: jax.Array
    welford: tuple


def window_ends(iteration) -> jax.Array:
    """Whether update ``iteration`` (0-based) closes a window: ``t = iteration + 1`` is
    ``FIRST_WINDOW · (2^k − 1)``."""
    t = jnp.asarray(iteration) + 1
    m = t // FIRST_WINDOW + 1
    return (t % FIRST_WINDOW == 0) & ((m & (m - 1)) == 0)


def init(dim: int, dtype) -> DenseMass:
    """No window ended yet: identity factor, empty Welford state."""
    w_init, _, _ = welford_covariance(diagonal=False)
    mean, m2, count = w_init(dim)
    return DenseMass(jnp.eye(dim, dtype=dtype), jnp.zeros((), bool), (mean.astype(dtype), m2.astype(dtype), count))


def update(mass: DenseMass, particles: jax.Array, iteration, adapting) -> tuple:
    """Add ``particles`` ``(n, D)`` to the window; at a window's end (while ``adapting``)
    install its covariance and start the next. Returns ``(mass, installed)``."""
    _, w_update, w_final = welford_covariance(diagonal=False)
    welford = jax.lax.fori_loop(0, particles.shape[0], lambda i, s: w_update(particles[i], s), mass.welford)
    ends = adapting & window_ends(iteration) & (welford[2] > 1)
    cov = w_final(welford, regularize=True)[0]
    chol = jnp.linalg.cholesky(0.5 * (cov + cov.T)).astype(mass.chol.dtype)
    ends = ends & jnp.isfinite(chol).all()  # a window of non-finite states leaves the metric as it was
    fresh = init(particles.shape[1], mass.chol.dtype).welford
    return DenseMass(jnp.where(ends, chol, mass.chol), mass.ready | ends,
                     jax.tree.map(lambda a, b: jnp.where(ends, a, b), fresh, welford)), ends


def coordinates(scale: jax.Array, mass: Optional[DenseMass] = None) -> Tuple[Callable, Callable, Callable]:
    r"""The whitening $u = Ay$ the revision runs in: ``(to_u, to_y, grad_u)`` on rows.

    $A = \operatorname{diag}(\text{scale})$ without ``mass`` (a diagonal mass matrix) or
    before its first window ends, else the window's Cholesky factor $L$. ``grad_u``
    maps a gradient in $y$ to the one in $u$, $A^{-\top}\nabla_y$.
    """
    if mass is None:
        return (lambda y: y * scale), (lambda u: u / scale), (lambda g: g / scale)
    a = jnp.where(mass.ready, mass.chol, jnp.diag(scale))
    solve = jax.scipy.linalg.solve_triangular
    return ((lambda y: y @ a.T), (lambda u: solve(a, u.T, lower=True).T),
            (lambda g: solve(a.T, g.T, lower=False).T))
