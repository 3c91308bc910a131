"""Langevin sampler, both backends: the update formula, the stationary law of the
discretised chain, MALA's target, diagnostics and bad input. (Framework idioms — no
graph kept in torch, jit/vmap and stopped gradients in JAX — are in
``tests/pyro_backend`` and ``tests/numpyro_backend``.)"""

import numpy as np
import pytest

from mcse import Z, assert_gaussian_moments, gaussian_moment_zscores

P = np.array([[2.0, 0.9], [0.9, 1.0]])  # precision
MU = np.array([1.0, -0.5])


def gaussian(B):
    """``E(x) = (x − μ)ᵀ P (x − μ) / 2`` in the backend's arrays."""
    p, mu = B.array(P), B.array(MU)

    def energy(x):
        d = x - mu
        return 0.5 * ((d @ p) * d).sum(-1)
    return energy


def grad(x):
    return (x - MU) @ P


def walled(B):
    """Finite only on |x| < 10: a large step from x = 3 leaves the domain."""
    return lambda x: (0.5 * x ** 2 - B.xp.log(10 - B.xp.abs(x))).sum(-1)


def test_one_step_equals_formula(backend):
    B, E = backend, gaussian(backend)
    x = np.array([[0.3, -1.2], [2.0, 0.5]])
    xi = np.array([[0.1, -0.4], [1.5, 0.2]])
    delta, sigma = 0.3, 0.7
    new, info = B.api.step(None, B.api.init(B.array(x), E), E, delta, noise_scale=sigma, noise=B.array(xi))
    expected = x - 0.5 * delta ** 2 * grad(x) + delta * sigma * xi
    np.testing.assert_allclose(B.numpy(new.position), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(B.numpy(new.energy), B.numpy(E(B.array(expected))), rtol=1e-12)
    np.testing.assert_allclose(B.numpy(new.grad), grad(expected), rtol=1e-12)
    assert B.numpy(info.is_accepted).all() and (B.numpy(info.acceptance_rate) == 1).all()
    assert not B.numpy(info.is_divergent).any()
    np.testing.assert_allclose(B.numpy(info.grad_norm), np.linalg.norm(B.numpy(new.grad), axis=1), rtol=1e-12)


def test_noise_free_revision_is_deterministic_gradient_descent(backend):
    B = backend
    x = B.normal(0, (5, 2))
    state, _ = B.api.Langevin(gaussian(B), 0.2, num_steps=3, noise_scale=0.0).run(None, x)
    expected = B.numpy(x)
    for _ in range(3):
        expected = expected - 0.02 * grad(expected)
    np.testing.assert_allclose(B.numpy(state.position), expected, rtol=1e-12)


def test_mala_acceptance_matches_formula(backend):
    B, E = backend, gaussian(backend)
    x = np.array([[0.3, -1.2], [2.0, 0.5], [1.0, 1.0]])
    xi = np.array([[0.1, -0.4], [1.5, 0.2], [-2.0, 3.0]])
    u = np.array([0.5, 0.995, 0.99])
    delta = 0.8
    h = 0.5 * delta ** 2
    new, info = B.api.step(None, B.api.init(B.array(x), E), E, delta, adjust=True, noise=B.array(xi),
                           uniform=B.array(u))
    prop = x - h * grad(x) + delta * xi
    log_q_fwd = -((prop - (x - h * grad(x))) ** 2).sum(1) / (2 * delta ** 2)
    log_q_bwd = -((x - (prop - h * grad(prop))) ** 2).sum(1) / (2 * delta ** 2)
    e = lambda y: B.numpy(E(B.array(y)))  # noqa: E731
    log_alpha = e(x) - e(prop) + log_q_bwd - log_q_fwd
    accept = np.log(u) < log_alpha
    np.testing.assert_allclose(B.numpy(info.acceptance_rate), np.exp(np.minimum(log_alpha, 0)), rtol=1e-10)
    np.testing.assert_array_equal(B.numpy(info.is_accepted), accept)
    assert 0 < accept.sum() < 3, "the case should mix accepted and rejected chains"
    expected = np.where(accept[:, None], prop, x)
    np.testing.assert_allclose(B.numpy(new.position), expected, rtol=1e-12)
    np.testing.assert_allclose(B.numpy(new.energy), e(expected), rtol=1e-12)


def _final_positions(B, sampler, n=4000, seed=1):
    state, info = sampler.run(seed + 1, B.normal(seed, (n, 2)))
    return B.numpy(state.position), info


def test_ula_matches_exact_law_of_the_discretised_chain(backend):
    delta = 0.8  # h = 0.32: a large step, so the discretisation bias is visible
    h = 0.5 * delta ** 2
    x, info = _final_positions(backend, backend.api.Langevin(gaussian(backend), delta, num_steps=150), n=8000)
    exact = np.linalg.inv(P @ (np.eye(2) - h * P / 2))
    assert_gaussian_moments(x, MU, exact)
    # The test has power: the continuous-time law (no bias) is rejected.
    _, z_cov = gaussian_moment_zscores(x, MU, np.linalg.inv(P))
    assert z_cov.max() > 3 * Z
    assert tuple(info.acceptance_rate.shape) == (150, 8000)


def test_mala_matches_target(backend):
    x, info = _final_positions(backend, backend.api.Langevin(gaussian(backend), 0.9, num_steps=300, adjust=True))
    assert_gaussian_moments(x, MU, np.linalg.inv(P))
    rate = float(info.acceptance_rate.mean())
    assert 0.3 < rate < 0.99


def test_seeded_runs_are_reproducible(backend):
    B = backend
    s = B.api.Langevin(gaussian(B), 0.3, num_steps=4)
    x0 = B.array(np.zeros((8, 2)))
    a, _ = s.run(7, x0)
    b, _ = s.run(B.api.as_rng(7), x0)
    np.testing.assert_array_equal(B.numpy(a.position), B.numpy(b.position))


def test_divergent_chains_are_flagged_not_replaced(backend):
    B = backend
    state, info = B.api.Langevin(walled(B), 5.0, num_steps=1, noise_scale=0.0).run(None, B.array([[0.1], [3.0]]))
    div = B.numpy(info.is_divergent)
    assert div[:, 1].any() and not div[:, 0].any()
    energy = B.numpy(state.energy)
    assert np.isnan(energy[1]) and np.isfinite(energy[0])
    expected = 3.0 - 12.5 * (3.0 + 1 / (10 - 3.0))  # the raw update, not replaced
    np.testing.assert_allclose(B.numpy(state.position)[1], [expected], rtol=1e-12)


def test_mala_rejects_non_finite_proposals(backend):
    B = backend
    x0 = B.array([[3.0]])
    state, info = B.api.Langevin(walled(B), 5.0, num_steps=3, adjust=True, noise_scale=1e-3).run(0, x0)
    assert B.numpy(info.is_divergent).all() and not B.numpy(info.is_accepted).any()
    np.testing.assert_array_equal(B.numpy(state.position), B.numpy(x0))


@pytest.mark.parametrize("kwargs, match", [
    (dict(step_size=0.0), "step_size must be a positive"),
    (dict(step_size=-1.0), "step_size must be a positive"),
    (dict(step_size=float("nan")), "step_size must be a positive"),
    (dict(step_size=0.1, num_steps=0), "num_steps must be a positive"),
    (dict(step_size=0.1, num_steps=2.5), "num_steps must be a positive"),
    (dict(step_size=0.1, noise_scale=-1.0), "noise_scale must be a non-negative"),
    (dict(step_size=0.1, noise_scale=0.0, adjust=True), "needs noise_scale > 0"),
])
def test_bad_options_raise(backend, kwargs, match):
    with pytest.raises(ValueError, match=match):
        backend.api.Langevin(gaussian(backend), **kwargs)


def test_bad_positions_and_energies_raise(backend):
    B = backend
    s = B.api.Langevin(gaussian(B), 0.1)
    with pytest.raises(ValueError, match="leading batch"):
        s.run(0, B.array(np.zeros(2)))
    with pytest.raises(ValueError, match="floating-point"):
        s.run(0, B.array(np.zeros((2, 2)), dtype=B.int))
    x = np.zeros((3, 2))
    x[1, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite in 1 of 3 chains"):
        s.run(0, B.array(x))
    bad = B.api.Langevin(lambda x: x.sum(-1, keepdims=True) if B.jax else x.sum(-1, keepdim=True), 0.1)
    with pytest.raises(ValueError, match=r"one energy per chain, shape \(3,\); got \(3, 1\)"):
        bad.run(0, B.array(np.zeros((3, 2))))
    with pytest.raises(ValueError, match="rng is required"):
        s.run(None, B.array(np.zeros((3, 2))))
    with pytest.raises(TypeError, match=r"rng must be a (jax.random key|torch.Generator) or an int seed"):
        s.run("seed", B.array(np.zeros((3, 2))))
    with pytest.raises(ValueError, match=r"energy or its gradient is non-finite at the initial position of 1 of 2"):
        B.api.Langevin(walled(B), 0.1).run(0, B.array([[0.0], [10.0]]))
