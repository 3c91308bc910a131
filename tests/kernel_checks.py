"""Targets with known answers and Monte Carlo standard-error checks for the MCMC
kernel tests of both backends (numpy + arviz only).

A check on correlated draws ``f`` of shape ``(chains, draws)`` passes when
``|mean(f) − truth| / (sd(f)/√ESS(f)) < Z`` with ESS from ``arviz.ess`` (BlackJAX's
``MonteCarloStandardErrorTest``); ``sd(f)`` is exact where known.
"""

import warnings

import numpy as np

from mcse import Z

# Correlated 2-D Gaussian: sds 1 and 2, correlation 0.8.
MU = np.array([1.0, -0.5])
SD = np.array([1.0, 2.0])
RHO = 0.8
COV = np.array([[SD[0] ** 2, RHO * SD[0] * SD[1]], [RHO * SD[0] * SD[1], SD[1] ** 2]])
PREC = np.linalg.inv(COV)

# Beta-Bernoulli: Beta(2, 2) prior, 14 successes in 20 trials -> Beta(16, 8).
BERNOULLI_Y = np.array([1.0] * 14 + [0.0] * 6)
BETA_PRIOR = (2.0, 2.0)
BETA_POST = (16.0, 8.0)

# Dirichlet-categorical: Dirichlet(1, 2, 3) prior, counts (3, 5, 12) -> Dirichlet(4, 7, 15).
DIRICHLET_PRIOR = np.array([1.0, 2.0, 3.0])
CATEGORICAL_Y = np.array([0] * 3 + [1] * 5 + [2] * 12)
DIRICHLET_POST = DIRICHLET_PRIOR + np.array([3.0, 5.0, 12.0])


def ula_covariance(step_size):
    """Exact stationary covariance of ULA on N(μ, P⁻¹): ``(P (I − hP/2))⁻¹``, ``h = δ²/2``."""
    h = 0.5 * step_size ** 2
    return np.linalg.inv(PREC @ (np.eye(2) - 0.5 * h * PREC))


def logistic_data(seed=0, n=400):
    """Covariates, labels and the true ``(beta, b0)`` of a simulated logistic regression."""
    rng = np.random.default_rng(seed)
    beta, b0 = np.array([1.5, -1.0, 0.5]), -0.5
    x = rng.normal(size=(n, 3))
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(x @ beta + b0)))).astype(float)
    return x, y, beta, b0


def ess(f):
    import arviz as az

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(az.ess(np.asarray(f, dtype=np.float64)))


def mcse_z(f, truth, sd=None):
    """``|mean(f) − truth| / (sd/√ESS)`` for draws ``f`` of shape ``(chains, draws)``."""
    f = np.asarray(f, dtype=np.float64)
    sd = f.std() if sd is None else sd
    return abs(f.mean() - truth) / (sd / np.sqrt(ess(f)))


def assert_mcse(f, truth, sd=None, what="estimate", z=Z):
    score = mcse_z(f, truth, sd)
    assert score < z, f"{what}: {np.mean(f):.4f} vs {truth:.4f}, {score:.2f} standard errors"


def assert_gaussian_mcse(x):
    """Mean, variance and correlation of draws ``x`` ``(chains, draws, 2)`` against MU/COV."""
    for i in range(2):
        assert_mcse(x[..., i], MU[i], SD[i], f"mean[{i}]")
        assert_mcse((x[..., i] - MU[i]) ** 2, SD[i] ** 2, np.sqrt(2) * SD[i] ** 2, f"var[{i}]")
    prod = (x[..., 0] - MU[0]) * (x[..., 1] - MU[1]) / (SD[0] * SD[1])
    assert_mcse(prod, RHO, np.sqrt(1 + RHO ** 2), "correlation")


def assert_beta_posterior(p):
    a, b = BETA_POST
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert_mcse(p, mean, np.sqrt(var), "beta mean")
    assert_mcse((p - mean) ** 2, var, None, "beta variance")


def assert_dirichlet_posterior(w):
    a0 = DIRICHLET_POST.sum()
    for i, a in enumerate(DIRICHLET_POST):
        sd = np.sqrt(a * (a0 - a) / (a0 ** 2 * (a0 + 1)))
        assert_mcse(w[..., i], a / a0, sd, f"dirichlet mean[{i}]")
