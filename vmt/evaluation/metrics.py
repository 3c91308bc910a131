"""Evaluation metrics, NumPy/SciPy/scikit-learn only (no torch, no jax).

2-D: mode coverage and high-quality fraction (PacGAN), the exact held-out
log-likelihood of an energy by quadrature, and the MMD. Digits: Fréchet distance and
improved precision/recall in the feature space of a small classifier, from
[`vmt.evaluation.features`][vmt.evaluation.features] (re-exported here).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from scipy.spatial.distance import cdist, pdist
from scipy.special import logsumexp
from scipy.stats import chi2, norm

from vmt.core.checks import as_count, as_real, as_seed
from vmt.evaluation.features import DigitClassifier, digit_scores, frechet_distance, precision_recall
from vmt.data.validation import validate_data

__all__ = [
    "QuadratureError", "mode_coverage", "high_quality_probability", "grid_midpoints",
    "evaluate_energy", "heldout_log_likelihood", "mmd", "frechet_distance",
    "precision_recall", "DigitClassifier", "digit_scores", "estimated_log_likelihood", "mode_mass_kl",
]

EnergyFn = Callable[[np.ndarray], np.ndarray]


class QuadratureError(ValueError):
    """The grid estimate of a normaliser did not reach the requested accuracy."""


# --------------------------------------------------------------------- mode coverage

_CRITERIA = ("per_dimension", "radial")


def mode_coverage(samples, modes, sd: float, threshold: float = 3.0, criterion: str = "per_dimension") -> dict:
    r"""Modes covered and fraction of high-quality samples (PacGAN).

    Each sample is assigned to its nearest mode $\mu$ (Euclidean). With the
    default ``criterion="per_dimension"`` it is *high quality* when
    $\max_j |x_j - \mu_j| / \sigma < \tau$ (``threshold`` τ, the mode sd σ), the
    definition of Lin et al. (2018); ``"radial"`` uses $|x - \mu| / \sigma <
    \tau$ instead. A mode is *covered* when at least one high-quality sample is
    assigned to it. Non-finite samples are never high quality and are counted.

    For a perfect sampler of well separated isotropic modes in $d$
    dimensions the expected high-quality fraction is
    [`high_quality_probability()`][vmt.evaluation.metrics.high_quality_probability]: $(2\Phi(3) - 1)^2 = 0.99461$ per
    dimension in 2-D, $P(\chi^2_2 < 9) = 0.98889$ radially (the 98.89 % that
    papers quote).

    Parameters
    ----------
    samples : array_like, shape (n, d)
    modes : array_like, shape (m, d)
    sd : float
        Per-dimension sd of each mode.
    threshold : float
        τ, in units of ``sd``.
    criterion : {"per_dimension", "radial"}

    Returns
    -------
    dict
        ``modes_covered`` (int), ``num_modes`` (int), ``high_quality_fraction``
        (float, over all n samples) and ``num_nonfinite`` (int).

    References
    ----------
    Lin, Khetan, Fanti & Oh, "PacGAN: The power of two samples in generative
    adversarial networks", NeurIPS 2018, arXiv:1712.04086.
    """
    modes = validate_data(modes, name="modes").astype(np.float64)
    if modes.ndim != 2:
        raise ValueError(f"modes must have shape (m, d), got {modes.shape}")
    samples = _as_points(samples, modes.shape[1], "samples")
    sd, threshold = as_real("sd", sd, low=0, low_open=True), as_real("threshold", threshold, low=0, low_open=True)
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")
    finite = np.isfinite(samples).all(axis=1)
    x = samples[finite]
    nearest = np.argmin(cdist(x, modes, "sqeuclidean"), axis=1)
    scaled = np.abs(x - modes[nearest]) / sd
    dist = scaled.max(axis=1) if criterion == "per_dimension" else np.sqrt((scaled**2).sum(axis=1))
    good = dist < threshold
    return {
        "modes_covered": int(np.unique(nearest[good]).size),
        "num_modes": int(len(modes)),
        "high_quality_fraction": float(good.sum() / len(samples)),
        "num_nonfinite": int((~finite).sum()),
    }


def high_quality_probability(dim: int = 2, threshold: float = 3.0, criterion: str = "per_dimension") -> float:
    r"""Probability that an exact sample of an isotropic Gaussian mode is high quality.

    ``"per_dimension"``: $(2\Phi(\tau) - 1)^d$; ``"radial"``:
    $P(\chi^2_d < \tau^2)$. See [`mode_coverage()`][vmt.evaluation.metrics.mode_coverage].
    """
    dim, threshold = as_count("dim", dim), as_real("threshold", threshold, low=0, low_open=True)
    if criterion == "per_dimension":
        return float((2.0 * norm.cdf(threshold) - 1.0) ** dim)
    if criterion == "radial":
        return float(chi2.cdf(threshold**2, dim))
    raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")


def _as_points(x, dim: int, name: str) -> np.ndarray:
    """Points of shape ``(n, dim)`` as float64; unlike [`validate_data()`][vmt.data.validation.validate_data], NaN/inf may pass."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf" or arr.shape[1:] != (dim,) or not len(arr):
        raise ValueError(f"{name} must be a non-empty real array of shape (n, {dim}), "
                         f"got shape {arr.shape}, dtype {arr.dtype}")
    return arr.astype(np.float64)


# ------------------------------------------------------------ held-out likelihood


def _midpoints(bounds, num_points: int) -> Tuple[np.ndarray, float]:
    low, high = _check_bounds(bounds)
    n = as_count("num_points", num_points)
    h = (high - low) / n
    return low + h * (np.arange(n) + 0.5), h * h


def _product(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def grid_midpoints(bounds: Sequence[float], num_points: int) -> Tuple[np.ndarray, float]:
    """Cell midpoints of a ``num_points × num_points`` grid on ``[low, high]²``.

    Returns the ``(num_points², 2)`` midpoints (first coordinate varying slowest,
    so ``values.reshape(n, n)[i, j]`` belongs to ``(c[i], c[j])``) and the cell area.
    """
    c, area = _midpoints(bounds, num_points)
    return _product(c, c), area


def _call_energy(energy_fn: EnergyFn, x: np.ndarray) -> np.ndarray:
    e = np.asarray(energy_fn(x), dtype=np.float64)
    if e.shape != (len(x),):
        raise ValueError(f"energy_fn returned shape {e.shape} for {len(x)} points, expected ({len(x)},)")
    return e


def evaluate_energy(energy_fn: EnergyFn, x: np.ndarray, chunk_size: int = 65536, name: str = "points") -> np.ndarray:
    """``energy_fn`` on the rows of ``x`` (float64, shape (m, d)) in chunks of ``chunk_size``.

    Raises ``ValueError`` when ``energy_fn`` returns the wrong shape or any
    non-finite energy (saying how many).
    """
    chunk_size = as_count("chunk_size", chunk_size)
    out = np.concatenate([_call_energy(energy_fn, x[i : i + chunk_size]) for i in range(0, len(x), chunk_size)])
    bad = int((~np.isfinite(out)).sum())
    if bad:
        raise ValueError(f"energy_fn returned {bad} non-finite energies on the {len(x)} {name}")
    return out


def _check_bounds(bounds) -> Tuple[float, float]:
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high) of numbers, got {bounds!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"bounds must be finite with low < high, got {bounds!r}")
    return low, high


def _log_normalizer(energy_fn: EnergyFn, bounds, n: int, chunk_size: int) -> Tuple[float, float]:
    """Midpoint-rule ``log Z`` on an ``n × n`` grid and the log of the fraction of it in the outer cells.

    The grid is evaluated a block of rows at a time (about ``chunk_size`` points),
    so memory stays bounded for any ``n``.
    """
    c, area = _midpoints(bounds, n)
    block = max(1, chunk_size // n)
    totals, rings, bad = [], [], 0
    for start in range(0, n, block):
        log_p = -_call_energy(energy_fn, _product(c[start : start + block], c)).reshape(-1, n)
        bad += int((~np.isfinite(log_p)).sum())
        if bad:
            continue
        ring = np.zeros(log_p.shape, dtype=bool)
        ring[:, [0, -1]] = True
        ring[0] |= start == 0
        ring[-1] |= start + len(log_p) == n
        totals.append(logsumexp(log_p))
        rings.append(logsumexp(log_p[ring]))
    if bad:
        raise ValueError(f"energy_fn returned {bad} non-finite energies on the {n}x{n} quadrature grid")
    log_z = float(logsumexp(totals)) + math.log(area)
    return log_z, float(logsumexp(rings) + math.log(area) - log_z)


def heldout_log_likelihood(energy_fn: EnergyFn, test, bounds, num_points: int = 512, tol: float = 0.01,
                           max_points: int = 4096, chunk_size: int = 65536) -> dict:
    r"""Exact held-out log-likelihood of a 2-D energy by quadrature of its normaliser.

    The model is $p(x) = e^{-E(x)}/Z$ on the box $[a, b]^2$ of
    ``bounds``; with the midpoint rule on an $n \times n$ grid of cells of
    area $h^2$, $h = (b - a)/n$,

    $$
    \log Z_n = \operatorname{logsumexp}_{ij}\big(-E(c_{ij})\big) + \log h^2,
    \qquad \ell = \frac1{N}\sum_{k} \big(-E(x_k) - \log Z\big).
    $$

    The grid error is estimated as $|\log Z_n - \log Z_{n/2}|$ (an upper
    bound for the finer grid once the rule converges); while it exceeds ``tol`` the
    grid is doubled, up to ``max_points``, after which a [`QuadratureError`][vmt.evaluation.metrics.QuadratureError] is
    raised. A ``RuntimeWarning`` is issued when the outer ring of cells holds more
    than 1e-3 of the mass: the box then cuts mass off and $\log Z$ is
    underestimated.

    Parameters
    ----------
    energy_fn : callable
        Maps an ``(m, 2)`` float64 array to ``(m,)`` energies ``E = −log p̃``;
        called on at most ``chunk_size`` rows at a time.
    test : array_like, shape (N, 2)
        Held-out points, all inside the box.
    bounds : (float, float)
        ``(low, high)`` of the square box.
    num_points, max_points : int
        Initial and largest grid size per dimension (even numbers).
    tol : float
        Accepted grid error of $\log Z$, in nats.

    Returns
    -------
    dict
        ``log_likelihood`` (mean of $-E - \log Z$ over ``test``),
        ``standard_error`` (its Monte Carlo standard error), ``log_normalizer``,
        ``grid_error``, ``num_points`` (grid used) and ``boundary_mass``.
    """
    low, high = _check_bounds(bounds)
    test = validate_data(test, event_shape=(2,), name="test").astype(np.float64)
    outside = ~((test >= low) & (test <= high)).all(axis=1)
    if outside.any():
        raise ValueError(f"{int(outside.sum())} test points lie outside the box [{low}, {high}]²; "
                         f"first: row {int(np.argmax(outside))}")
    n, max_points = as_count("num_points", num_points), as_count("max_points", max_points)
    tol = as_real("tol", tol, low=0, low_open=True)
    if n % 2 or n < 4 or n > max_points:
        raise ValueError(f"num_points must be even, >= 4 and <= max_points={max_points}, got {n}")
    coarse, _ = _log_normalizer(energy_fn, bounds, n // 2, chunk_size)
    log_z, ring = _log_normalizer(energy_fn, bounds, n, chunk_size)
    while abs(log_z - coarse) > tol and 2 * n <= max_points:
        n, coarse = 2 * n, log_z
        log_z, ring = _log_normalizer(energy_fn, bounds, n, chunk_size)
    error = abs(log_z - coarse)
    if error > tol:
        raise QuadratureError(f"log Z changed by {error:.3g} nats between the {n // 2}² and {n}² grids "
                              f"(tol={tol}); the energy is too sharp for max_points={max_points}")
    boundary = math.exp(ring)
    if boundary > 1e-3:
        warnings.warn(f"{boundary:.3g} of the model's mass lies in the outermost grid cells: the box "
                      f"{(low, high)} cuts mass off and log Z is underestimated", RuntimeWarning, stacklevel=2)
    ll = -evaluate_energy(energy_fn, test, chunk_size, name="test points") - log_z
    se = float(ll.std(ddof=1) / math.sqrt(len(ll))) if len(ll) > 1 else float("nan")
    return {"log_likelihood": float(ll.mean()), "standard_error": se, "log_normalizer": log_z,
            "grid_error": error, "num_points": n, "boundary_mass": boundary}


def mode_mass_kl(energy_fn: EnergyFn, modes, bounds, weights=None, num_points: int = 1024,
                 chunk_size: int = 65536) -> dict:
    r"""How well a 2-D energy weighs the modes of a mixture: $\mathrm{KL}(w \,\|\, m)$.

    The box of ``bounds`` is cut into the modes' Voronoi cells (each grid point goes
    to its nearest mode); $m_j$ is the model's mass in cell $j$ by the midpoint rule,
    $w_j$ the true weight (equal by default), and
    $\mathrm{KL}(w\|m) = \sum_j w_j \log(w_j / m_j)$ — 0 for a model that gives every
    mode its share, whatever the modes' shapes. Samples cannot tell this for an EBM
    whose samplers do not cross between modes; the quadrature can.

    Returns ``kl`` and ``masses`` (the $m_j$, summing to 1 on the box).
    """
    centres = np.asarray(modes, dtype=np.float64)
    if centres.ndim != 2 or centres.shape[1] != 2 or len(centres) < 2:
        raise ValueError(f"modes must be an (m, 2) array with m >= 2, got shape {centres.shape}")
    w = np.full(len(centres), 1.0 / len(centres)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(centres),) or not (w > 0).all() or abs(w.sum() - 1) > 1e-9:
        raise ValueError(f"weights must be {len(centres)} positive numbers summing to 1")
    n = as_count("num_points", num_points)
    c, _ = _midpoints(bounds, n)
    block = max(1, chunk_size // n)
    logs, owners = [], []
    for start in range(0, n, block):
        points = _product(c[start : start + block], c)
        logs.append(-evaluate_energy(energy_fn, points, chunk_size, name="grid points"))
        owners.append(cdist(points, centres, "sqeuclidean").argmin(1))
    log_p, owner = np.concatenate(logs), np.concatenate(owners)
    p = np.exp(log_p - log_p.max())
    m = np.bincount(owner, weights=p, minlength=len(centres)) / p.sum()
    with np.errstate(divide="ignore"):
        kl = float(np.sum(w * (np.log(w) - np.log(m))))
    return {"kl": kl, "masses": m}


# ---------------------------------------------------------------------- MMD


def _subsample(x: np.ndarray, max_points: int, rng: np.random.Generator) -> np.ndarray:
    return x if len(x) <= max_points else x[rng.choice(len(x), max_points, replace=False)]


def mmd(x, y, bandwidths: Optional[Sequence[float]] = None, max_points: int = 2000, seed: int = 0) -> float:
    r"""Unbiased estimate of the squared MMD with a sum of Gaussian kernels.

    $$
    \widehat{\mathrm{MMD}}^2_u = \frac{1}{m(m-1)} \sum_{i \ne j} k(x_i, x_j)
    + \frac{1}{n(n-1)} \sum_{i \ne j} k(y_i, y_j)
    - \frac{2}{mn} \sum_{i, j} k(x_i, y_j),
    \qquad k(a, b) = \sum_{h} e^{-|a - b|^2 / (2h^2)}.
    $$

    It is unbiased for $\mathrm{MMD}^2$, so it can be slightly negative when
    the two distributions agree. Each side is subsampled without replacement to at
    most ``max_points`` points (generator seeded by ``seed``) to bound the cost at
    $O(\text{max\_points}^2)$. The default bandwidths are the median pairwise
    distance $\tilde h$ of the pooled (subsampled) points times (0.5, 1, 2);
    the median is taken over at most 1000 pooled points.

    Gretton, Borgwardt, Rasch, Schölkopf & Smola, "A kernel two-sample test", JMLR
    13, 2012.
    """
    x = validate_data(x, name="x").astype(np.float64)
    y = validate_data(y, event_shape=x.shape[1:], name="y").astype(np.float64)
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"mmd needs at least 2 points per side, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(as_seed(seed))
    max_points = as_count("max_points", max_points)
    x, y = _subsample(x, max_points, rng), _subsample(y, max_points, rng)
    if bandwidths is None:
        median = float(np.median(pdist(_subsample(np.concatenate([x, y]), 1000, rng))))
        bandwidths = [0.5 * median, median, 2.0 * median]
    h2 = np.array([as_real("bandwidth", float(h), low=0, low_open=True) for h in bandwidths]) ** 2

    def kernel_sum(a, b, diagonal: bool) -> float:
        d2 = cdist(a, b, "sqeuclidean")
        total = sum(np.exp(-d2 / (2.0 * s)).sum() for s in h2)
        return total - (len(a) * len(h2) if diagonal else 0.0)

    m, n = len(x), len(y)
    return float(kernel_sum(x, x, True) / (m * (m - 1)) + kernel_sum(y, y, True) / (n * (n - 1))
                 - 2.0 * kernel_sum(x, y, False) / (m * n))


# ----------------------------------------------------- Fréchet distance, precision/recall


# ---------------------------------------------------------------------- likelihood in any dimension


def estimated_log_likelihood(teacher: Any, test, num_samples: int = 10_000, seed: int = 0) -> Dict[str, Any]:
    r"""Held-out log-likelihood of a teacher's EBM with ``log Z`` estimated from proposal paths.

    $\frac1m\sum_j -E(x_j) - \log\hat Z$, with ``teacher.log_partition`` (the
    extended-space importance weights of the teacher's own proposal paths; works in
    any dimension). ``log Ẑ`` is a log-mean-exp of unbiased weights, so it is biased
    *low* and this log-likelihood is biased *high* (optimistic); ``log_partition_se``
    is the delta-method standard error of ``log Ẑ`` and ``standard_error`` adds the
    sampling error of the mean over test points.
    """
    test = validate_data(test, name="test").astype(np.float32)
    log_z, se_z = teacher.log_partition(num_samples, rng=seed)
    neg_e = -np.asarray(teacher.energy.numpy_energy(test), dtype=np.float64)
    se_mean = float(neg_e.std(ddof=1) / math.sqrt(len(neg_e))) if len(neg_e) > 1 else float("nan")
    return {"log_likelihood": float(neg_e.mean() - log_z), "log_partition": float(log_z),
            "log_partition_se": float(se_z), "standard_error": float(math.hypot(se_z, se_mean)),
            "num_samples": int(num_samples)}
