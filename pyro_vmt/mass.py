r"""A dense mass matrix learned from the particles of past updates (Torch).

[`MCMCTeaching(..., precondition="dense")`][pyro_vmt.guide_teaching.MCMCTeaching] revises its
particles with MALA in whitened coordinates $y = L^{-1}u$, $LL^\top = \hat\Sigma$,
where $\hat\Sigma$ is the covariance of the revised particles of a *past* window of
updates — never of the particles being revised, so every revision is a MALA run with a
fixed mass matrix $M^{-1} = \hat\Sigma$ and stays exact. The windows double, as Stan's
slow adaptation windows do (Stan Reference Manual, "HMC algorithm parameters"): they
end after 25, 75, 175, 375, … updates; at each end $\hat\Sigma$ becomes the window's
regularised Welford covariance (``pyro.ops.welford.WelfordCovariance``, Stan's
shrinkage $\frac{m}{m+5}\hat\Sigma + 10^{-3}\frac{5}{m+5}I$ over $m$ particle states)
and the next window starts empty. Until the first window ends the guide's diagonal
scale is used. A mean-field guide of a correlated posterior cannot supply the
correlations; the revised particles carry them, and a dense metric lets MALA move along
the posterior's narrow directions (Girolami & Calderhead 2011, JRSS B 73, with a constant
metric). Mirrors [`numpyro_vmt.mass`][numpyro_vmt.mass].
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from pyro.ops.welford import WelfordCovariance

__all__ = ["DenseMass", "FIRST_WINDOW", "window_ends", "coordinates"]

FIRST_WINDOW = 25  # updates in the first window; each later one is twice the one before


def window_ends(iteration: int) -> bool:
    """Whether update ``iteration`` (0-based) closes a window: ``t = iteration + 1`` is
    ``FIRST_WINDOW · (2^k − 1)``."""
    t = iteration + 1
    m = t // FIRST_WINDOW + 1
    return t % FIRST_WINDOW == 0 and m & (m - 1) == 0


class DenseMass:
    """The window's Welford estimate and ``chol``, the lower Cholesky factor ``(D, D)`` in
    use (``None`` until a window ends: the guide's diagonal is used)."""

    def __init__(self):
        self.chol: Optional[torch.Tensor] = None
        self.welford = WelfordCovariance(diagonal=False)

    def factor(self, scale: torch.Tensor) -> torch.Tensor:
        """``A`` of ``u = A y``: the window's factor, or ``diag(scale)`` before the first."""
        return torch.diag(scale) if self.chol is None else self.chol

    def update(self, particles: torch.Tensor, iteration: int, adapting: bool) -> bool:
        """Add ``particles`` ``(n, D)`` to the window; at a window's end (while ``adapting``)
        install its covariance and start the next. Returns whether one was installed."""
        for x in particles.detach():
            self.welford.update(x)
        if not (adapting and window_ends(iteration) and self.welford.n_samples > 1):
            return False
        cov = self.welford.get_covariance(regularize=True)
        chol, info = torch.linalg.cholesky_ex(0.5 * (cov + cov.T))
        if int(info) != 0 or not bool(torch.isfinite(chol).all()):  # the metric stays; the window goes on
            return False
        self.chol = chol
        self.welford.reset()
        return True


def coordinates(scale: torch.Tensor, mass: Optional[DenseMass] = None) -> Tuple[Callable, Callable, Callable]:
    r"""The whitening $u = Ay$ the revision runs in: ``(to_u, to_y, grad_u)`` on rows
    (see [`numpyro_vmt.mass.coordinates()`][numpyro_vmt.mass.coordinates])."""
    if mass is None:
        return (lambda y: y * scale), (lambda u: u / scale), (lambda g: g / scale)
    a = mass.factor(scale)
    return ((lambda y: y @ a.T), (lambda u: torch.linalg.solve_triangular(a, u.T, upper=False).T),
            (lambda g: torch.linalg.solve_triangular(a.T, g.T, upper=True).T))
