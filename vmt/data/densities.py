"""2-D toy densities with exact log densities, generated from a seed (NumPy only).

They are the usual mode-collapse and density-estimation benchmarks:

========== =============================================================== ==========
name       definition                                                      source
========== =============================================================== ==========
grid25     25 Gaussians, means {−4,−2,0,2,4}², sd 0.05                     PacGAN
8gaussians 8 Gaussians at radius 2√2, sd 0.5/√2                            FFJORD
ring8      8 Gaussians on the unit circle, sd 0.01                         PacGAN
rings      4 noisy circles, radii 0.75, 1.5, 2.25, 3, noise sd 0.08         FFJORD
2spirals   2 interleaved noisy spirals, noise sd 0.1                       FFJORD
========== =============================================================== ==========

References: Lin et al., "PacGAN: The power of two samples in generative adversarial
networks", NeurIPS 2018 (arXiv:1712.04086); Grathwohl et al., "FFJORD:
Free-form continuous dynamics for scalable reversible generative models", ICLR 2019
(arXiv:1810.01367).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
from scipy.special import i0e, logsumexp

from vmt.core.checks import as_count, as_real
from vmt.data.validation import SeedLike, numpy_rng, validate_data

__all__ = ["Density2D", "Grid25", "EightGaussians", "Ring8", "Rings", "TwoSpirals", "DENSITIES", "get_density"]

_LOG_2PI = math.log(2.0 * math.pi)


def _gaussian_log_kernel(sq_dist: np.ndarray, sd: float) -> np.ndarray:
    """``log N(x; c, sd² I)`` in 2-D from the squared distance ``|x − c|²``."""
    return -0.5 * sq_dist / sd**2 - _LOG_2PI - 2.0 * math.log(sd)


def _sq_dist(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape ``(len(x), len(centres))``, clipped at 0."""
    d = (x**2).sum(1)[:, None] - 2.0 * x @ centres.T + (centres**2).sum(1)[None, :]
    return np.maximum(d, 0.0)


class Density2D:
    """A 2-D density with exact samples and an exact normalised log density.

    Attributes
    ----------
    name : str
        Registry name (a key of `DENSITIES`).
    bounds : tuple of float
        ``(low, high)``: the square box ``[low, high]²`` holds all but a negligible
        fraction (< 1e-6) of the mass. Used for plots, quadrature and uniform noise.
    modes : numpy.ndarray or None
        Mode centres, shape ``(m, 2)``, for mixtures of Gaussians.
    mode_sd : float or None
        Per-dimension standard deviation of each mode.
    entropy : float or None
        Differential entropy ``H = −E[log p(x)]`` in nats, where it was computed.
    """

    name: str = ""
    bounds: Tuple[float, float] = (-1.0, 1.0)
    modes: Optional[np.ndarray] = None
    mode_sd: Optional[float] = None
    entropy: Optional[float] = None

    def sample(self, n: int, seed: SeedLike) -> np.ndarray:
        """``n`` exact samples, shape ``(n, 2)``, ``float32``.

        ``seed`` is an int, a ``np.random.Generator`` (advanced in place) or a
        ``np.random.SeedSequence``; ``None`` is refused.
        """
        n = as_count("n", n)
        return self._sample(n, numpy_rng(seed)).astype(np.float32)

    def log_prob(self, x) -> np.ndarray:
        """Exact normalised ``log p(x)`` of finite points ``x`` of shape ``(n, 2)``; shape ``(n,)``, ``float64``."""
        x = validate_data(x, event_shape=(2,), name="x").astype(np.float64)
        return self._log_prob(x)

    def _sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def _log_prob(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class _IsotropicMixture(Density2D):
    r"""Equal mixture of isotropic Gaussians, $\frac1m \sum_k \mathcal N(x; \mu_k, \sigma^2 I)$.

    When the modes are at least $20\sigma$ apart their overlap is of order
    $e^{-50}$ and the entropy is exactly $\log m + \log(2\pi e \sigma^2)$;
    otherwise the class keeps the value computed at development time (or None).
    """

    def __init__(self, means: np.ndarray, sd: float):
        self.modes = np.asarray(means, dtype=np.float64)
        self.mode_sd = as_real("sd", sd, low=0, low_open=True)
        gaps = np.sqrt(_sq_dist(self.modes, self.modes)[np.triu_indices(len(self.modes), 1)])
        if gaps.min() >= 20.0 * self.mode_sd:
            self.entropy = math.log(len(self.modes)) + math.log(2 * math.pi * math.e * self.mode_sd**2)

    def _sample(self, n, rng):
        idx = rng.integers(len(self.modes), size=n)
        return self.modes[idx] + self.mode_sd * rng.standard_normal((n, 2))

    def _log_prob(self, x):
        log_k = _gaussian_log_kernel(_sq_dist(x, self.modes), self.mode_sd)
        return logsumexp(log_k, axis=1) - math.log(len(self.modes))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sd={self.mode_sd!r})"


def _circle(num: int, radius: float) -> np.ndarray:
    angles = np.arange(num) * (2.0 * np.pi / num)
    return radius * np.stack([np.cos(angles), np.sin(angles)], -1)


class Grid25(_IsotropicMixture):
    r"""25 Gaussians on the grid $\{-4, -2, 0, 2, 4\}^2$ with sd ``sd`` (PacGAN).

    $$
    p(x) = \frac{1}{25} \sum_{a, b \in \{-4,-2,0,2,4\}}
    \mathcal{N}\big(x; (a, b), \sigma^2 I\big)
    $$

    Entropy $\log 25 + \log(2\pi e\sigma^2) = 0.06529$ nats at σ = 0.05
    (checked at development time by quadrature of $-\int p\log p$, 1000² grid:
    0.065288, and Monte Carlo, 4e6 samples: 0.0643 ± 0.0005; REFERENCES.md:
    0.064 ± 0.002).

    Lin et al., "PacGAN", NeurIPS 2018, arXiv:1712.04086.
    """

    name = "grid25"
    bounds = (-5.0, 5.0)

    def __init__(self, sd: float = 0.05):
        axis = np.arange(-4.0, 5.0, 2.0)
        super().__init__(np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2), sd)


class EightGaussians(_IsotropicMixture):
    r"""FFJORD's 8 Gaussians: $(4 u_k + 0.5\,\varepsilon)/\sqrt2$, $u_k$ at angles k·45°.

    Equivalently an equal mixture of 8 Gaussians with centres at radius
    $2\sqrt2$ and sd $0.5/\sqrt2 \approx 0.354$. Neighbouring modes are
    6.1 sd apart, so they overlap slightly and the entropy is below the
    separated-mode value $\log 8 + \log(2\pi e\sigma^2) = 2.8379$: quadrature
    of $-\int p \log p$ on an 1800² grid of (−4.5, 4.5)² gives 2.831570, Monte
    Carlo with 4e6 samples 2.8306 ± 0.0005 (REFERENCES.md's 2.833 is 0.0014 high).
    The box is wider than FFJORD's plotting box (−4, 4), which cuts ~2e-4 of the mass
    off the modes on the axes.

    Grathwohl et al., "FFJORD", ICLR 2019, arXiv:1810.01367.
    """

    name = "8gaussians"
    bounds = (-4.5, 4.5)
    entropy = 2.832  # computed at development time, see the docstring

    def __init__(self):
        super().__init__(_circle(8, 2.0 * math.sqrt(2.0)), 0.5 / math.sqrt(2.0))

    def __repr__(self) -> str:
        return "EightGaussians()"


class Ring8(_IsotropicMixture):
    r"""8 Gaussians on the unit circle at angles k·45° with sd ``sd`` (PacGAN).

    Entropy $\log 8 + \log(2\pi e \sigma^2) = -4.29302$ at σ = 0.01 (modes 77 sd
    apart; checked by quadrature, 1200² grid: −4.293022, and Monte Carlo, 4e6
    samples: −4.2940 ± 0.0005).

    Lin et al., "PacGAN", NeurIPS 2018, arXiv:1712.04086.
    """

    name = "ring8"
    bounds = (-1.5, 1.5)

    def __init__(self, sd: float = 0.01):
        super().__init__(_circle(8, 1.0), sd)


class Rings(Density2D):
    r"""FFJORD's concentric rings: 4 noisy circles of radii 0.75, 1.5, 2.25, 3.

    A circle is chosen with probability 1/4 each (FFJORD draws the same number of
    points per circle), the angle uniformly (FFJORD spaces them evenly; uniform
    angles make the samples i.i.d.), and noise $\mathcal N(0, s^2 I)$ with
    $s = 0.08$ is added. A circle of radius $R$ convolved with the noise
    has the exact density

    $$
    p_R(x) = \frac{1}{2\pi s^2}
    \exp\!\Big(-\frac{r^2 + R^2}{2 s^2}\Big) I_0\!\Big(\frac{rR}{s^2}\Big),
    \qquad r = |x|,
    $$

    evaluated stably as $-(r-R)^2/(2s^2) + \log \mathrm{i0e}(rR/s^2) -
    \log(2\pi s^2)$, since $\log I_0(u) = \log \mathrm{i0e}(u) + u$; then
    $p = \frac14 \sum_R p_R$. Entropy at s = 0.08 (computed at development
    time): quadrature of $-\int p \log p$ on a 1600² grid of (−4, 4)² gives
    2.623183, Monte Carlo with 4e6 samples 2.6231 ± 0.0004. Other ``sd``: None.

    Grathwohl et al., "FFJORD", ICLR 2019, arXiv:1810.01367.
    """

    name = "rings"
    bounds = (-4.0, 4.0)
    radii = np.array([0.75, 1.5, 2.25, 3.0])

    def __init__(self, sd: float = 0.08):
        self.sd = as_real("sd", sd, low=0, low_open=True)
        self.entropy = 2.623 if self.sd == 0.08 else None

    def _sample(self, n, rng):
        radius = self.radii[rng.integers(len(self.radii), size=n)]
        angle = rng.uniform(0.0, 2.0 * np.pi, size=n)
        circle = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
        return circle + self.sd * rng.standard_normal((n, 2))

    def _log_prob(self, x):
        r = np.sqrt((x**2).sum(1))[:, None]
        s2 = self.sd**2
        log_ring = -0.5 * (r - self.radii) ** 2 / s2 + np.log(i0e(r * self.radii / s2))
        return logsumexp(log_ring, axis=1) - _LOG_2PI - math.log(s2) - math.log(len(self.radii))

    def __repr__(self) -> str:
        return f"Rings(sd={self.sd!r})"


class TwoSpirals(Density2D):
    r"""Two interleaved noisy spirals (after FFJORD's ``2spirals``).

    $x = \pm c(t) + s\,\varepsilon$ with either sign with probability 1/2,
    $\varepsilon \sim \mathcal N(0, I)$, $s = 0.1$, and

    $$
    c(t) = \tfrac13\,(-t\cos t,\; t \sin t), \qquad
    t = T\sqrt{u},\; u \sim U(0, 1),\; T = 3\pi,
    $$

    so $t$ has density $2t/T^2$ on $[0, T]$ (1.5 turns, radius up
    to π). FFJORD adds a further uniform jitter, left out so that the density stays
    exact:

    $$
    p(x) = \int_0^T \frac{2t}{T^2}\, \tfrac12 \big[\mathcal N(x; c(t), s^2 I)
    + \mathcal N(x; -c(t), s^2 I)\big]\, dt,
    $$

    by composite Gauss–Legendre quadrature in $t$, ``num_panels`` panels of 8
    nodes. The integrand's width in $t$ is at least $s/|c'(T)| \approx
    0.03$; with the default 64 panels (width 0.15) $\log p$ differs from 16× as
    many panels by < 1e-5 wherever $\log p > -10$ and < 1e-4 wherever
    $\log p > -20$ (more in the far tails: ~0.3 at $\log p \approx -500$).
    Entropy at s = 0.1 (computed at development time): quadrature of
    $-\int p \log p$ on an 800² grid of (−4, 4)² gives 2.540618, Monte Carlo
    with 1e6 samples 2.5395 ± 0.0007. Other ``sd``: None.

    Grathwohl et al., "FFJORD", ICLR 2019, arXiv:1810.01367.
    """

    name = "2spirals"
    bounds = (-4.0, 4.0)
    t_max = 3.0 * np.pi
    scale = 1.0 / 3.0
    _nodes_per_panel = 8
    _chunk = 4096

    def __init__(self, sd: float = 0.1, num_panels: int = 64):
        self.sd = as_real("sd", sd, low=0, low_open=True)
        self.num_panels = as_count("num_panels", num_panels)
        self.entropy = 2.541 if self.sd == 0.1 else None
        t, w = self._quadrature()
        curve = self._curve(t)
        self._centres = np.concatenate([curve, -curve])
        self._log_weights = np.log(np.concatenate([w, w]) * 0.5)

    def _curve(self, t: np.ndarray) -> np.ndarray:
        return self.scale * np.stack([-t * np.cos(t), t * np.sin(t)], -1)

    def _quadrature(self) -> Tuple[np.ndarray, np.ndarray]:
        """Nodes ``t`` and weights ``w·2t/T²`` of composite Gauss–Legendre on [0, T]."""
        g, gw = np.polynomial.legendre.leggauss(self._nodes_per_panel)
        edges = np.linspace(0.0, self.t_max, self.num_panels + 1)
        half = 0.5 * np.diff(edges)[:, None]
        t = (0.5 * (edges[1:] + edges[:-1])[:, None] + half * g).ravel()
        return t, (half * gw).ravel() * 2.0 * t / self.t_max**2

    def _sample(self, n, rng):
        t = self.t_max * np.sqrt(rng.uniform(size=n))
        sign = np.where(rng.uniform(size=n) < 0.5, 1.0, -1.0)
        return sign[:, None] * self._curve(t) + self.sd * rng.standard_normal((n, 2))

    def _log_prob(self, x):
        out = np.empty(len(x))
        for start in range(0, len(x), self._chunk):
            log_k = _gaussian_log_kernel(_sq_dist(x[start : start + self._chunk], self._centres), self.sd)
            out[start : start + self._chunk] = logsumexp(log_k + self._log_weights, axis=1)
        return out

    def __repr__(self) -> str:
        return f"TwoSpirals(sd={self.sd!r}, num_panels={self.num_panels!r})"


DENSITIES = {
    "grid25": Grid25,
    "8gaussians": EightGaussians,
    "ring8": Ring8,
    "rings": Rings,
    "2spirals": TwoSpirals,
}


def get_density(name: str) -> Density2D:
    """The density registered as ``name`` in `DENSITIES`, with default options."""
    if name not in DENSITIES:
        raise ValueError(f"unknown density {name!r}; valid names: {sorted(DENSITIES)}")
    return DENSITIES[name]()


