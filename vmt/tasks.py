r"""Three supervised tasks with built-in data, their metrics and their baselines.

NumPy and scikit-learn only (no torch, no jax); no network access. Each task is a
set of pairs :math:`(x, y)` for learning :math:`p(y \mid x)` — the supervised
setting of Xie, Zheng & Li (AAAI 2021, https://arxiv.org/abs/2012.14936), where a
conditional EBM is trained with a conditional VAE as amortised sampler:

================ ====================================== ================================
name             x (conditioning input)                 y (what is generated)
================ ====================================== ================================
``completion``   top half (rows 0–3) of an 8×8 digit    bottom half (rows 4–7), 32 values
``class``        the label, one-hot (10 values)         the 8×8 digit, 64 values
``regression1d`` :math:`x \sim U[0, 4]`                 :math:`y = \pm\sqrt{x} + 0.1\,\varepsilon`
================ ====================================== ================================

The digits are scikit-learn's bundled copy (:func:`vmt.data.load_digits`, pixels in
[−1, 1], 1437 train / 360 test); the 1-D task is drawn from a seed and has an exact
conditional density (:class:`TwoBranch`), so the EBM's held-out conditional
log-likelihood is computable by 1-D quadrature (:func:`conditional_log_likelihood`).

Baselines: :func:`fit_regressor` (scikit-learn's ``MLPRegressor``, squared error — the
deterministic answer to digit completion) and :class:`MixtureDensityNetwork` (Bishop,
"Mixture density networks", 1994; written here in NumPy with its exact gradient).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
from scipy.special import log_softmax, logsumexp, softmax
from scipy.stats import wasserstein_distance

from vmt.data import load_digits
from vmt.validation import _check_positive_int, _check_seed, _rng, validate_data
from vmt.metrics import DigitClassifier, frechet_distance

__all__ = [
    "TASKS", "ConditionalTask", "TwoBranch", "load_task", "assemble_digits",
    "completion_scores", "class_scores", "conditional_log_likelihood", "branch_scores",
    "nearest_completions", "fit_regressor", "MixtureDensityNetwork",
]

TASKS = ("completion", "class", "regression1d")
_HALF = 32  # pixels in four rows of an 8×8 digit


@dataclass(frozen=True, eq=False)
class ConditionalTask:
    """Pairs ``(x, y)`` split into train and test, with what the metrics need.

    Attributes
    ----------
    name : str
    x_train, y_train, x_test, y_test : numpy.ndarray
        ``float32``, one row per example.
    cond_shape, event_shape : tuple of int
        Shapes of one ``x`` and one ``y``.
    y_bounds : (float, float)
        Box of the ``y`` values (noise initialisation, quadrature).
    train_labels, test_labels : numpy.ndarray or None
        Digit classes (digit tasks).
    density : TwoBranch or None
        The exact conditional density (``regression1d``).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    cond_shape: tuple
    event_shape: tuple
    y_bounds: Tuple[float, float]
    train_labels: Optional[np.ndarray] = None
    test_labels: Optional[np.ndarray] = None
    density: Optional["TwoBranch"] = None


class TwoBranch:
    r"""The two-branch conditional: :math:`x \sim U[0, x_{max}]`, :math:`y = s\sqrt{x} + \sigma\varepsilon`.

    :math:`s = \pm 1` with probability 1/2 each, :math:`\varepsilon \sim \mathcal N(0, 1)`, so

    .. math:: p(y \mid x) = \tfrac12\,\mathcal N(y; \sqrt x, \sigma^2) + \tfrac12\,\mathcal N(y; -\sqrt x, \sigma^2).

    Parameters
    ----------
    noise_sd : float
        :math:`\sigma`.
    x_max : float
    """

    def __init__(self, noise_sd: float = 0.1, x_max: float = 4.0):
        self.noise_sd, self.x_max = float(noise_sd), float(x_max)

    def sample_x(self, n: int, seed) -> np.ndarray:
        return _rng(seed).uniform(0.0, self.x_max, (_check_positive_int("n", n), 1)).astype(np.float32)

    def sample(self, x, seed) -> np.ndarray:
        """One ``y`` per row of ``x`` (shape ``(n, 1)``)."""
        x = np.asarray(x, np.float64)
        g = _rng(seed)
        sign = np.where(g.uniform(size=x.shape) < 0.5, -1.0, 1.0)
        return (sign * np.sqrt(x) + self.noise_sd * g.standard_normal(x.shape)).astype(np.float32)

    def log_prob(self, y, x) -> np.ndarray:
        """:math:`\\log p(y \\mid x)`, shape ``(n,)``, for ``y`` and ``x`` of shape ``(n, 1)``."""
        y, x = np.asarray(y, np.float64)[:, 0], np.asarray(x, np.float64)[:, 0]
        s, r = self.noise_sd, np.sqrt(x)
        comps = np.stack([-(y - r) ** 2, -(y + r) ** 2]) / (2 * s * s)
        return logsumexp(comps, axis=0) - math.log(2.0) - 0.5 * math.log(2 * math.pi) - math.log(s)


# ---------------------------------------------------------------------- loading
def load_task(name: str, seed: int = 0, n_train: int = 2000, n_test: int = 1000) -> ConditionalTask:
    """Load a built-in supervised task by name (one of :data:`TASKS`).

    ``seed`` is the split's seed for the digit tasks and the sampling seed of
    ``regression1d`` (train and test from the streams of
    ``np.random.SeedSequence(seed).spawn(2)``); ``n_train``/``n_test`` apply to
    ``regression1d`` only.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {list(TASKS)}")
    if name == "regression1d":
        density = TwoBranch()
        s_train, s_test = np.random.SeedSequence(_check_seed(seed)).spawn(2)
        g_train, g_test = np.random.default_rng(s_train), np.random.default_rng(s_test)
        x_tr, x_te = density.sample_x(n_train, g_train), density.sample_x(n_test, g_test)
        return ConditionalTask(name, x_tr, density.sample(x_tr, g_train), x_te, density.sample(x_te, g_test),
                               (1,), (1,), (-3.0, 3.0), density=density)
    d = load_digits(seed=seed)
    if name == "completion":
        return ConditionalTask(name, d.train[:, :_HALF], d.train[:, _HALF:], d.test[:, :_HALF], d.test[:, _HALF:],
                               (_HALF,), (_HALF,), (-1.0, 1.0), d.train_labels, d.test_labels)
    eye = np.eye(10, dtype=np.float32)
    return ConditionalTask(name, eye[d.train_labels], d.train, eye[d.test_labels], d.test, (10,), (64,),
                           (-1.0, 1.0), d.train_labels, d.test_labels)


def assemble_digits(top, bottom) -> np.ndarray:
    """Full 8×8 digits ``(..., 64)`` from top halves and bottom halves ``(..., 32)``."""
    top, bottom = np.asarray(top), np.asarray(bottom)
    return np.concatenate([np.broadcast_to(top, bottom.shape), bottom], axis=-1)


# ---------------------------------------------------------------------- metrics
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
    c = validate_data(np.asarray(completions).reshape(-1, _HALF), (_HALF,), "completions").astype(np.float64)
    n = len(task.y_test)
    if c.shape[0] % n:
        raise ValueError(f"completions must have shape (k, {n}, {_HALF}), got {np.shape(completions)}")
    c = c.reshape(-1, n, _HALF)
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
    ``labels``. ``frechet``: per class, :func:`vmt.metrics.frechet_distance` between
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
    pca_dim = _check_positive_int("pca_dim", pca_dim)
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
    r"""Exact held-out :math:`\frac1N\sum_i \log p(y_i \mid x_i)` of a conditional energy on 1-D ``y``.

    :math:`p(y \mid x) = e^{-E(y \mid x)} / Z(x)` on the interval ``bounds``;
    :math:`\log Z(x_i)` by the midpoint rule with ``num_points`` cells of width
    :math:`h`: :math:`\log Z_n(x_i) = \operatorname{logsumexp}_j(-E(c_j \mid x_i)) + \log h`.
    ``ValueError`` when :math:`\max_i |\log Z_n - \log Z_{n/2}| > ` ``tol`` (the
    energy is too sharp for the grid) or when more than 1e-3 of some
    :math:`p(\cdot \mid x_i)` lies in the outermost cells (the interval cuts mass off).

    ``energy_fn(y, x)`` maps two ``(m, 1)`` arrays to ``m`` energies.

    With ``split`` (e.g. 0 for :class:`TwoBranch`) the result also has
    ``mass_above``, :math:`P_\theta(y > \text{split} \mid x_i)` per row, and
    ``log_likelihood_balanced``, the log-likelihood of the model re-weighted to mass
    1/2 on each side of ``split`` (:math:`\ell_i - \log(2 P_\theta(\text{side of } y_i \mid x_i))`):
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
    """Samples of ``y`` at fixed inputs against the truth of :class:`TwoBranch`.

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
    g = _rng(seed)
    frac, w, floor = [], [], []
    for row, x in zip(s, xs):
        truth = [density.sample(np.full((len(row), 1), x), g)[:, 0] for _ in range(2)]
        frac.append(float((row > 0).mean()))
        w.append(float(wasserstein_distance(row, truth[0])))
        floor.append(float(wasserstein_distance(truth[1], truth[0])))
    return {"xs": xs.tolist(), "positive_fraction": frac, "wasserstein": w, "wasserstein_floor": floor,
            "mean_wasserstein": float(np.mean(w)), "mean_wasserstein_floor": float(np.mean(floor)),
            "mean_branch_imbalance": float(np.mean(np.abs(np.array(frac) - 0.5)))}


# ---------------------------------------------------------------------- baselines
def nearest_completions(task: ConditionalTask, k: int) -> np.ndarray:
    """A nonparametric sampler of ``p(y | x)``: the ``y`` of the ``k`` training pairs whose ``x`` is nearest.

    Shape ``(k, n_test, *event_shape)``: real bottom halves that go with similar top halves.
    """
    k = _check_positive_int("k", k)
    a, b = task.x_test.reshape(len(task.x_test), -1), task.x_train.reshape(len(task.x_train), -1)
    d = (a ** 2).sum(1)[:, None] - 2 * a @ b.T + (b ** 2).sum(1)[None]
    return task.y_train[np.argsort(d, axis=1)[:, :k].T]


def fit_regressor(task: ConditionalTask, hidden: Sequence[int] = (256, 256), seed: int = 0, max_iter: int = 300):
    """A deterministic baseline: scikit-learn's ``MLPRegressor`` (ReLU, Adam, squared error) from x to y.

    Its prediction is the conditional mean — one answer per input, diversity 0.
    """
    from sklearn.neural_network import MLPRegressor
    from threadpoolctl import threadpool_limits

    reg = MLPRegressor(hidden_layer_sizes=tuple(hidden), max_iter=max_iter, random_state=_check_seed(seed),
                       early_stopping=True)
    with threadpool_limits(limits=1, user_api="blas"):
        return reg.fit(task.x_train.reshape(len(task.x_train), -1), task.y_train.reshape(len(task.y_train), -1))


class MixtureDensityNetwork:
    r"""A mixture density network (Bishop 1994) for 1-D ``y`` given ``x``, in NumPy.

    One tanh hidden layer :math:`h = \tanh(x W_1 + b_1)` gives, per component
    :math:`k = 1..K`, a logit, a mean and a log standard deviation
    (:math:`h W_2 + b_2`), and

    .. math:: p(y \mid x) = \sum_k \pi_k(x)\,\mathcal N(y; \mu_k(x), \sigma_k(x)^2),

    trained by Adam on the mean negative log-likelihood with the exact gradient:
    with responsibilities :math:`\gamma_k = \pi_k \mathcal N_k / p`,
    :math:`\partial/\partial\,\mathrm{logit}_k = \pi_k - \gamma_k`,
    :math:`\partial/\partial\mu_k = -\gamma_k (y - \mu_k)/\sigma_k^2`,
    :math:`\partial/\partial\log\sigma_k = \gamma_k (1 - (y - \mu_k)^2/\sigma_k^2)` (per example).
    """

    def __init__(self, num_components: int = 3, hidden: int = 32, seed: int = 0):
        self.k = _check_positive_int("num_components", num_components)
        self.hidden = _check_positive_int("hidden", hidden)
        g = _rng(seed)
        self.params = [g.standard_normal((1, self.hidden)), np.zeros(self.hidden),
                       0.1 * g.standard_normal((self.hidden, 3 * self.k)) / math.sqrt(self.hidden),
                       np.zeros(3 * self.k)]

    def _heads(self, x, params=None):
        w1, b1, w2, b2 = params or self.params
        h = np.tanh(np.asarray(x, np.float64).reshape(-1, 1) @ w1 + b1)
        out = h @ w2 + b2
        return h, out[:, :self.k], out[:, self.k:2 * self.k], out[:, 2 * self.k:]

    def loss_and_grad(self, x, y, params=None):
        """Mean negative log-likelihood and its gradient with respect to ``params`` (a list of 4 arrays)."""
        params = params or self.params
        x, y = np.asarray(x, np.float64).reshape(-1, 1), np.asarray(y, np.float64).reshape(-1, 1)
        h, logits, mu, log_sd = self._heads(x, params)
        z = (y - mu) * np.exp(-log_sd)
        a = log_softmax(logits, axis=1) - 0.5 * z ** 2 - log_sd - 0.5 * math.log(2 * math.pi)
        n = len(x)
        gamma = softmax(a, axis=1)
        g_out = np.concatenate([softmax(logits, axis=1) - gamma, -gamma * z * np.exp(-log_sd),
                                gamma * (1 - z ** 2)], axis=1) / n
        dh = (g_out @ params[2].T) * (1 - h ** 2)
        grads = [x.T @ dh, dh.sum(0), h.T @ g_out, g_out.sum(0)]
        return float(-logsumexp(a, axis=1).mean()), grads

    def fit(self, x, y, num_iters: int = 3000, lr: float = 0.01, betas=(0.9, 0.999)) -> "MixtureDensityNetwork":
        """Full-batch Adam on :meth:`loss_and_grad`."""
        m = [np.zeros_like(p) for p in self.params]
        v = [np.zeros_like(p) for p in self.params]
        for t in range(1, _check_positive_int("num_iters", num_iters) + 1):
            _, grads = self.loss_and_grad(x, y)
            for p, g, mi, vi in zip(self.params, grads, m, v):
                mi[...] = betas[0] * mi + (1 - betas[0]) * g
                vi[...] = betas[1] * vi + (1 - betas[1]) * g * g
                p -= lr * (mi / (1 - betas[0] ** t)) / (np.sqrt(vi / (1 - betas[1] ** t)) + 1e-8)
        return self

    def log_prob(self, y, x) -> np.ndarray:
        """:math:`\\log p(y \\mid x)`, shape ``(n,)``."""
        _, logits, mu, log_sd = self._heads(x)
        z = (np.asarray(y, np.float64).reshape(-1, 1) - mu) * np.exp(-log_sd)
        return logsumexp(log_softmax(logits, axis=1) - 0.5 * z ** 2 - log_sd, axis=1) - 0.5 * math.log(2 * math.pi)

    def sample(self, x, seed) -> np.ndarray:
        """One ``y`` per row of ``x``, shape ``(n, 1)``."""
        g = _rng(seed)
        _, logits, mu, log_sd = self._heads(x)
        p = softmax(logits, axis=1)
        k = (g.uniform(size=(len(p), 1)) > np.cumsum(p, axis=1)).sum(1).clip(max=self.k - 1)
        rows = np.arange(len(p))
        return (mu[rows, k] + np.exp(log_sd[rows, k]) * g.standard_normal(len(p)))[:, None].astype(np.float32)
