r"""Three supervised tasks with built-in data.

NumPy and scikit-learn only (no torch, no jax); no network access. Each task is a
set of pairs $(x, y)$ for learning $p(y \mid x)$ — the supervised
setting of Xie, Zheng & Li (AAAI 2021, https://arxiv.org/abs/2012.14936), where a
conditional EBM is trained with a conditional VAE as amortised sampler:

================ ====================================== ================================
name             x (conditioning input)                 y (what is generated)
================ ====================================== ================================
``completion``   top half (rows 0–3) of an 8×8 digit    bottom half (rows 4–7), 32 values
``class``        the label, one-hot (10 values)         the 8×8 digit, 64 values
``regression1d`` $x \sim U[0, 4]$                 $y = \pm\sqrt{x} + 0.1\,\varepsilon$
================ ====================================== ================================

The digits are scikit-learn's bundled copy ([`vmt.data.load_digits()`][vmt.data.datasets.load_digits], pixels in
[−1, 1], 1437 train / 360 test); the 1-D task is drawn from a seed and has an exact
conditional density ([`TwoBranch`][vmt.data.tasks.TwoBranch]), so the EBM's held-out conditional
log-likelihood is computable by 1-D quadrature (`conditional_log_likelihood()`).

Their scores are in [`vmt.evaluation.task_metrics`][vmt.evaluation.task_metrics], their baselines in
[`vmt.evaluation.baselines`][vmt.evaluation.baselines].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from scipy.special import logsumexp

from vmt.core.checks import as_count, as_seed
from vmt.data.datasets import load_digits
from vmt.data.validation import numpy_rng

__all__ = ["HALF", "TASKS", "ConditionalTask", "TwoBranch", "load_task", "assemble_digits"]

TASKS = ("completion", "class", "regression1d")
HALF = 32  # pixels in four rows of an 8×8 digit


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
    r"""The two-branch conditional: $x \sim U[0, x_{max}]$, $y = s\sqrt{x} + \sigma\varepsilon$.

    $s = \pm 1$ with probability 1/2 each, $\varepsilon \sim \mathcal N(0, 1)$, so

    $$
    p(y \mid x) = \tfrac12\,\mathcal N(y; \sqrt x, \sigma^2) + \tfrac12\,\mathcal N(y; -\sqrt x, \sigma^2).
    $$

    Parameters
    ----------
    noise_sd : float
        $\sigma$.
    x_max : float
    """

    def __init__(self, noise_sd: float = 0.1, x_max: float = 4.0):
        self.noise_sd, self.x_max = float(noise_sd), float(x_max)

    def sample_x(self, n: int, seed) -> np.ndarray:
        return numpy_rng(seed).uniform(0.0, self.x_max, (as_count("n", n), 1)).astype(np.float32)

    def sample(self, x, seed) -> np.ndarray:
        """One ``y`` per row of ``x`` (shape ``(n, 1)``)."""
        x = np.asarray(x, np.float64)
        g = numpy_rng(seed)
        sign = np.where(g.uniform(size=x.shape) < 0.5, -1.0, 1.0)
        return (sign * np.sqrt(x) + self.noise_sd * g.standard_normal(x.shape)).astype(np.float32)

    def log_prob(self, y, x) -> np.ndarray:
        """$\\log p(y \\mid x)$, shape ``(n,)``, for ``y`` and ``x`` of shape ``(n, 1)``."""
        y, x = np.asarray(y, np.float64)[:, 0], np.asarray(x, np.float64)[:, 0]
        s, r = self.noise_sd, np.sqrt(x)
        comps = np.stack([-(y - r) ** 2, -(y + r) ** 2]) / (2 * s * s)
        return logsumexp(comps, axis=0) - math.log(2.0) - 0.5 * math.log(2 * math.pi) - math.log(s)


# ---------------------------------------------------------------------- loading
def load_task(name: str, seed: int = 0, n_train: int = 2000, n_test: int = 1000) -> ConditionalTask:
    """Load a built-in supervised task by name (one of `TASKS`).

    ``seed`` is the split's seed for the digit tasks and the sampling seed of
    ``regression1d`` (train and test from the streams of
    ``np.random.SeedSequence(seed).spawn(2)``); ``n_train``/``n_test`` apply to
    ``regression1d`` only.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {list(TASKS)}")
    if name == "regression1d":
        density = TwoBranch()
        s_train, s_test = np.random.SeedSequence(as_seed(seed)).spawn(2)
        g_train, g_test = np.random.default_rng(s_train), np.random.default_rng(s_test)
        x_tr, x_te = density.sample_x(n_train, g_train), density.sample_x(n_test, g_test)
        return ConditionalTask(name, x_tr, density.sample(x_tr, g_train), x_te, density.sample(x_te, g_test),
                               (1,), (1,), (-3.0, 3.0), density=density)
    d = load_digits(seed=seed)
    if name == "completion":
        return ConditionalTask(name, d.train[:, :HALF], d.train[:, HALF:], d.test[:, :HALF], d.test[:, HALF:],
                               (HALF,), (HALF,), (-1.0, 1.0), d.train_labels, d.test_labels)
    eye = np.eye(10, dtype=np.float32)
    return ConditionalTask(name, eye[d.train_labels], d.train, eye[d.test_labels], d.test, (10,), (64,),
                           (-1.0, 1.0), d.train_labels, d.test_labels)


def assemble_digits(top, bottom) -> np.ndarray:
    """Full 8×8 digits ``(..., 64)`` from top halves and bottom halves ``(..., 32)``."""
    top, bottom = np.asarray(top), np.asarray(bottom)
    return np.concatenate([np.broadcast_to(top, bottom.shape), bottom], axis=-1)
