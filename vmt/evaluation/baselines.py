r"""Baselines of the supervised tasks: a nearest-neighbour sampler, a squared-error
regressor (scikit-learn's ``MLPRegressor``, the deterministic answer to digit
completion) and a mixture density network (Bishop, "Mixture density networks",
1994; written here in NumPy with its exact gradient).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.special import log_softmax, logsumexp, softmax

from vmt.core.checks import as_count, as_seed
from vmt.data.tasks import ConditionalTask
from vmt.data.validation import numpy_rng

__all__ = ["nearest_completions", "fit_regressor", "MixtureDensityNetwork"]


def nearest_completions(task: ConditionalTask, k: int) -> np.ndarray:
    """A nonparametric sampler of ``p(y | x)``: the ``y`` of the ``k`` training pairs whose ``x`` is nearest.

    Shape ``(k, n_test, *event_shape)``: real bottom halves that go with similar top halves.
    """
    k = as_count("k", k)
    a, b = task.x_test.reshape(len(task.x_test), -1), task.x_train.reshape(len(task.x_train), -1)
    d = (a ** 2).sum(1)[:, None] - 2 * a @ b.T + (b ** 2).sum(1)[None]
    return task.y_train[np.argsort(d, axis=1)[:, :k].T]


def fit_regressor(task: ConditionalTask, hidden: Sequence[int] = (256, 256), seed: int = 0, max_iter: int = 300):
    """A deterministic baseline: scikit-learn's ``MLPRegressor`` (ReLU, Adam, squared error) from x to y.

    Its prediction is the conditional mean — one answer per input, diversity 0.
    """
    from sklearn.neural_network import MLPRegressor
    from threadpoolctl import threadpool_limits

    reg = MLPRegressor(hidden_layer_sizes=tuple(hidden), max_iter=max_iter, random_state=as_seed(seed),
                       early_stopping=True)
    with threadpool_limits(limits=1, user_api="blas"):
        return reg.fit(task.x_train.reshape(len(task.x_train), -1), task.y_train.reshape(len(task.y_train), -1))


class MixtureDensityNetwork:
    r"""A mixture density network (Bishop 1994) for 1-D ``y`` given ``x``, in NumPy.

    One tanh hidden layer $h = \tanh(x W_1 + b_1)$ gives, per component
    $k = 1..K$, a logit, a mean and a log standard deviation
    ($h W_2 + b_2$), and

    $$
    p(y \mid x) = \sum_k \pi_k(x)\,\mathcal N(y; \mu_k(x), \sigma_k(x)^2),
    $$

    trained by Adam on the mean negative log-likelihood with the exact gradient:
    with responsibilities $\gamma_k = \pi_k \mathcal N_k / p$,
    $\partial/\partial\,\mathrm{logit}_k = \pi_k - \gamma_k$,
    $\partial/\partial\mu_k = -\gamma_k (y - \mu_k)/\sigma_k^2$,
    $\partial/\partial\log\sigma_k = \gamma_k (1 - (y - \mu_k)^2/\sigma_k^2)$ (per example).
    """

    def __init__(self, num_components: int = 3, hidden: int = 32, seed: int = 0):
        self.k = as_count("num_components", num_components)
        self.hidden = as_count("hidden", hidden)
        g = numpy_rng(seed)
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
        """Full-batch Adam on `loss_and_grad()`."""
        m = [np.zeros_like(p) for p in self.params]
        v = [np.zeros_like(p) for p in self.params]
        for t in range(1, as_count("num_iters", num_iters) + 1):
            _, grads = self.loss_and_grad(x, y)
            for p, g, mi, vi in zip(self.params, grads, m, v):
                mi[...] = betas[0] * mi + (1 - betas[0]) * g
                vi[...] = betas[1] * vi + (1 - betas[1]) * g * g
                p -= lr * (mi / (1 - betas[0] ** t)) / (np.sqrt(vi / (1 - betas[1] ** t)) + 1e-8)
        return self

    def log_prob(self, y, x) -> np.ndarray:
        """$\\log p(y \\mid x)$, shape ``(n,)``."""
        _, logits, mu, log_sd = self._heads(x)
        z = (np.asarray(y, np.float64).reshape(-1, 1) - mu) * np.exp(-log_sd)
        return logsumexp(log_softmax(logits, axis=1) - 0.5 * z ** 2 - log_sd, axis=1) - 0.5 * math.log(2 * math.pi)

    def sample(self, x, seed) -> np.ndarray:
        """One ``y`` per row of ``x``, shape ``(n, 1)``."""
        g = numpy_rng(seed)
        _, logits, mu, log_sd = self._heads(x)
        p = softmax(logits, axis=1)
        k = (g.uniform(size=(len(p), 1)) > np.cumsum(p, axis=1)).sum(1).clip(max=self.k - 1)
        rows = np.arange(len(p))
        return (mu[rows, k] + np.exp(log_sd[rows, k]) * g.standard_normal(len(p)))[:, None].astype(np.float32)
