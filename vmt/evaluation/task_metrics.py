r"""Scores of the supervised tasks ([`vmt.data.tasks`][vmt.data.tasks]): completion errors and
diversity, per-class Fréchet distances, the exact conditional log-likelihood of a
1-D energy by quadrature, and the branch balance of 1-D samples.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
from scipy.special import logsumexp
from scipy.stats import wasserstein_distance

from vmt.core.checks import as_count
from vmt.data.tasks import HALF, ConditionalTask, TwoBranch, assemble_digits
from vmt.data.validation import numpy_rng, validate_data
from vmt.evaluation.features import DigitClassifier, frechet_distance

__all__ = ["completion_scores", "class_scores", "conditional_log_likelihood", "branch_scores"]


def completion_scores(completions, task: ConditionalTask, classifier: DigitClassifier) -> dict:
    """Scores of ``k`` completions per test input, shape ``(k, n_test, 32)``.

    Errors are root-mean-square per pixel (pixels in [−1, 1]) against the true
    bottom half: ``best_of_k_rmse`` takes the best of the ``k`` completions per
    input, ``mean_rmse`` averages over them. ``diversity`` is the mean RMS
    distance between two completions of the same input (0 for a deterministic
    method). ``accuracy`` is the fraction of completed digits (true top half +
    completion) that ``classifier`` assigns the true label; ``accuracy_real`` is
    its accuracy on the real test digits (the ceiling).
    """
    c = validate_data(np.asarray(completions).reshape(-1, HALF), (HALF,), "completions").astype(np.float64)
    n = len(task.y_test)
    if c.shape[0] % n:
        raise ValueError(f"completions must have shape (k, {n}, {HALF}), got {np.shape(completions)}")
    c = c.reshape(-1, n, HALF)
    k = c.shape[0]
    rmse = np.sqrt(((c - task.y_test[None]) ** 2).mean(-1))  # (k, n)
    if k > 1:
        i, j = np.triu_indices(k, 1)
        diversity = float(np.sqrt(((c[i] - c[j]) ** 2).mean(-1)).mean())
    else:
        diversity = 0.0
    images = assemble_digits(task.x_test[None], c).reshape(-1, 64)
    return {"best_of_k_rmse": float(rmse.min(0).mean()), "mean_rmse": float(rmse.mean()),
            "diversity": diversity, "accuracy": classifier.accuracy(images, np.tile(task.test_labels, k)),
            "accuracy_real": classifier.accuracy(assemble_digits(task.x_test, task.y_test), task.test_labels),
            "k": k}


def class_scores(samples, labels, task: ConditionalTask, classifier: DigitClassifier, pca_dim: int = 10) -> dict:
    """Does a class-conditional generator draw the digit it is asked for, and how well?

    ``accuracy``: fraction of ``samples`` that ``classifier`` assigns the requested
    ``labels``. ``frechet``: per class, [`vmt.evaluation.metrics.frechet_distance()`][vmt.evaluation.metrics.frechet_distance] between
    the generated and the real *test* digits of that class (about 36), in the
    classifier's hidden features projected on their top ``pca_dim`` principal
    components (fitted on the training features): with ~36 reference images a
    64-dimensional covariance is singular, 10 dimensions are not. The floor
    ``frechet_floor`` is the same distance for the real *training* digits of the
    class (about 144) — pass that many samples per class for a like-for-like
    comparison, since the distance is biased upwards at small sizes.
    """
    samples = validate_data(samples, (64,), "samples")
    labels = np.asarray(labels)
    if labels.shape != (len(samples),):
        raise ValueError(f"labels must have shape ({len(samples)},), got {labels.shape}")
    pca_dim = as_count("pca_dim", pca_dim)
    train_f = classifier.features(task.y_train)
    mean = train_f.mean(0)
    basis = np.linalg.svd(train_f - mean, full_matrices=False)[2][:pca_dim].T
    proj = lambda a: (classifier.features(a) - mean) @ basis  # noqa: E731
    per_class, floor = [], []
    for c in range(10):
        real = proj(task.y_test[task.test_labels == c])
        per_class.append(frechet_distance(proj(samples[labels == c]), real))
        floor.append(frechet_distance(proj(task.y_train[task.train_labels == c]), real))
    return {"accuracy": classifier.accuracy(samples, labels), "frechet": float(np.mean(per_class)),
            "frechet_floor": float(np.mean(floor)), "frechet_per_class": per_class,
            "frechet_floor_per_class": floor, "pca_dim": pca_dim}


def conditional_log_likelihood(energy_fn: Callable, x, y, bounds: Sequence[float], num_points: int = 1024,
                               tol: float = 0.01, split: Optional[float] = None) -> dict:
    r"""Exact held-out $\frac1N\sum_i \log p(y_i \mid x_i)$ of a conditional energy on 1-D ``y``.

    $p(y \mid x) = e^{-E(y \mid x)} / Z(x)$ on the interval ``bounds``;
    $\log Z(x_i)$ by the midpoint rule with ``num_points`` cells of width
    $h$: $\log Z_n(x_i) = \operatorname{logsumexp}_j(-E(c_j \mid x_i)) + \log h$.
    ``ValueError`` when $\max_i |\log Z_n - \log Z_{n/2}| > $ ``tol`` (the
    energy is too sharp for the grid) or when more than 1e-3 of some
    $p(\cdot \mid x_i)$ lies in the outermost cells (the interval cuts mass off).

    ``energy_fn(y, x)`` maps two ``(m, 1)`` arrays to ``m`` energies.

    With ``split`` (e.g. 0 for [`TwoBranch`][vmt.data.tasks.TwoBranch]) the result also has
    ``mass_above``, $P_\theta(y > \text{split} \mid x_i)$ per row, and
    ``log_likelihood_balanced``, the log-likelihood of the model re-weighted to mass
    1/2 on each side of ``split`` ($\ell_i - \log(2 P_\theta(\text{side of } y_i \mid x_i))$):
    it separates the shape of each branch from the relative weight of the branches.
    """
    x, y = validate_data(x, (1,), "x").astype(np.float64), validate_data(y, (1,), "y").astype(np.float64)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    low, high = (float(b) for b in bounds)
    if ((y < low) | (y > high)).any():
        raise ValueError(f"some y lie outside the quadrature interval [{low}, {high}]")

    def log_z(n):
        h = (high - low) / n
        grid = low + h * (np.arange(n) + 0.5)
        e = np.concatenate([np.asarray(energy_fn(np.repeat(grid[None], len(xs), 0).reshape(-1, 1),
                                                 np.repeat(xs, n, 0)), np.float64).reshape(len(xs), n)
                            for xs in np.array_split(x, max(1, len(x) * n // 65536))])
        if not np.isfinite(e).all():
            raise ValueError(f"energy_fn returned {int((~np.isfinite(e)).sum())} non-finite energies on the grid")
        lz = logsumexp(-e, axis=1) + math.log(h)
        edge = np.exp(logsumexp(-e[:, [0, -1]], axis=1) + math.log(h) - lz)
        log_above = logsumexp(np.where(grid > (split or 0.0), -e, -np.inf), axis=1) + math.log(h)
        log_below = logsumexp(np.where(grid > (split or 0.0), -np.inf, -e), axis=1) + math.log(h)
        return lz, float(edge.max()), (log_above, log_below)

    coarse, _, _ = log_z(num_points // 2)
    fine, edge, above = log_z(num_points)
    err = float(np.abs(fine - coarse).max())
    if err > tol:
        raise ValueError(f"log Z(x) changed by up to {err:.3g} nats between {num_points // 2} and {num_points} "
                         f"cells (tol={tol}); use more num_points")
    if edge > 1e-3:
        raise ValueError(f"up to {edge:.3g} of p(y | x) lies in the outermost cells: widen bounds {(low, high)}")
    ll = -np.asarray(energy_fn(y, x), np.float64) - fine
    out = {"log_likelihood": float(ll.mean()), "standard_error": float(ll.std(ddof=1) / math.sqrt(len(ll))),
           "grid_error": err, "edge_mass": edge}
    if split is not None:
        log_side = np.where(y[:, 0] > split, above[0], above[1])  # log of the model's mass on y's side
        out.update(mass_above=np.exp(above[0] - fine).tolist(),
                   log_likelihood_balanced=float((ll + fine - log_side - math.log(2.0)).mean()))
    return out


def branch_scores(samples, xs, density: TwoBranch, seed: int = 0) -> dict:
    """Samples of ``y`` at fixed inputs against the truth of [`TwoBranch`][vmt.data.tasks.TwoBranch].

    ``samples`` has shape ``(len(xs), m)``: ``m`` draws of ``y`` for each ``x`` in
    ``xs``. Per ``x``: ``positive_fraction`` (the truth is 1/2; its Monte Carlo
    standard error is ``0.5/√m``) and ``wasserstein`` (1-Wasserstein distance to ``m``
    exact draws, with ``wasserstein_floor`` the same distance between two sets of
    exact draws: the Monte Carlo noise level). Means over ``xs`` too.
    """
    s = np.asarray(samples, np.float64)
    xs = np.asarray(xs, np.float64).reshape(-1)
    if s.ndim != 2 or len(s) != len(xs):
        raise ValueError(f"samples must have shape ({len(xs)}, m), got {s.shape}")
    g = numpy_rng(seed)
    frac, w, floor = [], [], []
    for row, x in zip(s, xs):
        truth = [density.sample(np.full((len(row), 1), x), g)[:, 0] for _ in range(2)]
        frac.append(float((row > 0).mean()))
        w.append(float(wasserstein_distance(row, truth[0])))
        floor.append(float(wasserstein_distance(truth[1], truth[0])))
    return {"xs": xs.tolist(), "positive_fraction": frac, "wasserstein": w, "wasserstein_floor": floor,
            "mean_wasserstein": float(np.mean(w)), "mean_wasserstein_floor": float(np.mean(floor)),
            "mean_branch_imbalance": float(np.mean(np.abs(np.array(frac) - 0.5)))}
