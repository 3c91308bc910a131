"""The known answer of the linear-Gaussian VAE test, shared by both backends' versions.

1-D probabilistic PCA: x = w z + b + σ ε. The ELBO optimum with a linear Gaussian
encoder is the maximum-likelihood fit: b = mean, w² + σ² = variance, and q(z|x) is
the exact posterior N(w(x − b)/(w² + σ²), σ²/(w² + σ²)).
"""

import math


def assert_ppca_solution(w, b, s2, mean, var, encoder_slope, encoder_scale):
    """``encoder_slope``: d loc / dx of q(z | x); ``encoder_scale``: its scale (any x)."""
    assert abs(b - mean) < 0.05
    assert abs((w ** 2 + s2) - var) / var < 0.05
    assert abs(encoder_slope - w / (w ** 2 + s2)) < 0.05
    assert abs(encoder_scale - math.sqrt(s2 / (w ** 2 + s2))) < 0.05
