"""Monte Carlo standard-error checks for sampler tests (numpy only).

Chains are run independently and only their final states are used, so the
``n`` samples are independent and the effective sample size is ``n``. A check
passes when ``|estimate − truth| / standard_error < z``; the default ``z = 3.3``
is a two-sided 0.1 % level, so a handful of checks per test keeps the
false-alarm rate small while a real bias of a few standard errors is caught.
"""

import numpy as np

Z = 3.3


def gaussian_moment_zscores(samples, mean, cov):
    """z-scores of the sample mean and covariance against a Gaussian's (mean, cov).

    Standard errors: ``sqrt(Σᵢᵢ/n)`` for means and ``sqrt((ΣᵢᵢΣⱼⱼ + Σᵢⱼ²)/n)`` for
    covariance entries (exact for Gaussian samples).
    """
    x = np.asarray(samples, dtype=np.float64)
    n = x.shape[0]
    mean, cov = np.asarray(mean, float), np.asarray(cov, float)
    z_mean = (x.mean(0) - mean) / np.sqrt(np.diag(cov) / n)
    emp = np.cov(x, rowvar=False)
    d = np.diag(cov)
    se = np.sqrt((np.outer(d, d) + cov ** 2) / n)
    iu = np.triu_indices(len(mean))
    z_cov = ((emp - cov) / se)[iu]
    return np.abs(z_mean), np.abs(z_cov)


def assert_gaussian_moments(samples, mean, cov, z=Z):
    z_mean, z_cov = gaussian_moment_zscores(samples, mean, cov)
    assert z_mean.max() < z, f"mean off by {z_mean.max():.2f} standard errors"
    assert z_cov.max() < z, f"covariance off by {z_cov.max():.2f} standard errors"
