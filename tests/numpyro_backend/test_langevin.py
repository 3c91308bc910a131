"""Langevin sampler (JAX): the update formula, the stationary law of the
discretised chain, MALA's target, diagnostics, jit/vmap and bad input."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402

from mcse import Z, assert_gaussian_moments, gaussian_moment_zscores  # noqa: E402
from numpyro_vmt import Langevin, LangevinInfo, LangevinState, init, step  # noqa: E402

P_NP = np.array([[2.0, 0.9], [0.9, 1.0]])  # precision
MU_NP = np.array([1.0, -0.5])


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def gaussian_energy(x):
    d = x - jnp.asarray(MU_NP, x.dtype)
    return 0.5 * ((d @ jnp.asarray(P_NP, x.dtype)) * d).sum(-1)


def grad_energy(x):
    return (x - MU_NP) @ P_NP


def test_one_step_equals_formula():
    x = jnp.array([[0.3, -1.2], [2.0, 0.5]])
    xi = jnp.array([[0.1, -0.4], [1.5, 0.2]])
    delta, sigma = 0.3, 0.7
    state = init(x, gaussian_energy)
    new, info = step(None, state, gaussian_energy, delta, noise_scale=sigma, noise=xi)
    expected = x - 0.5 * delta ** 2 * grad_energy(x) + delta * sigma * xi
    np.testing.assert_allclose(new.position, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new.energy, gaussian_energy(expected), rtol=1e-12)
    np.testing.assert_allclose(new.grad, grad_energy(expected), rtol=1e-12)
    assert info.is_accepted.all() and (info.acceptance_rate == 1).all()
    assert not info.is_divergent.any()
    np.testing.assert_allclose(info.grad_norm, jnp.linalg.norm(new.grad, axis=1), rtol=1e-12)


def test_noise_free_revision_is_deterministic_gradient_descent():
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 2), dtype=jnp.float64)
    state, _ = Langevin(gaussian_energy, 0.2, num_steps=3, noise_scale=0.0).run(None, x)
    expected = np.asarray(x)
    for _ in range(3):
        expected = expected - 0.02 * grad_energy(expected)
    np.testing.assert_allclose(state.position, expected, rtol=1e-12)


def test_mala_acceptance_matches_formula():
    x = np.array([[0.3, -1.2], [2.0, 0.5], [1.0, 1.0]])
    xi = np.array([[0.1, -0.4], [1.5, 0.2], [-2.0, 3.0]])
    u = np.array([0.5, 0.995, 0.99])
    delta = 0.8
    h = 0.5 * delta ** 2
    state = init(jnp.asarray(x), gaussian_energy)
    new, info = step(None, state, gaussian_energy, delta, adjust=True, noise=jnp.asarray(xi), uniform=jnp.asarray(u))
    prop = x - h * grad_energy(x) + delta * xi
    log_q_fwd = -((prop - (x - h * grad_energy(x))) ** 2).sum(1) / (2 * delta ** 2)
    log_q_bwd = -((x - (prop - h * grad_energy(prop))) ** 2).sum(1) / (2 * delta ** 2)
    e = lambda y: np.asarray(gaussian_energy(jnp.asarray(y)))  # noqa: E731
    log_alpha = e(x) - e(prop) + log_q_bwd - log_q_fwd
    accept = np.log(u) < log_alpha
    np.testing.assert_allclose(info.acceptance_rate, np.exp(np.minimum(log_alpha, 0)), rtol=1e-10)
    np.testing.assert_array_equal(info.is_accepted, accept)
    assert 0 < accept.sum() < 3, "the case should mix accepted and rejected chains"
    expected = np.where(accept[:, None], prop, x)
    np.testing.assert_allclose(new.position, expected, rtol=1e-12)
    np.testing.assert_allclose(new.energy, e(expected), rtol=1e-12)


def _final_positions(sampler, n=4000, seed=1):
    k_init, k_run = jax.random.split(jax.random.PRNGKey(seed))
    x0 = jax.random.normal(k_init, (n, 2), dtype=jnp.float64)
    state, info = sampler.run(k_run, x0)
    return np.asarray(state.position), info


def test_ula_matches_exact_law_of_the_discretised_chain():
    delta = 0.8  # h = 0.32: a large step, so the discretisation bias is visible
    h = 0.5 * delta ** 2
    sampler = Langevin(gaussian_energy, delta, num_steps=150)
    x, info = _final_positions(sampler, n=8000)
    exact = np.linalg.inv(P_NP @ (np.eye(2) - h * P_NP / 2))
    assert_gaussian_moments(x, MU_NP, exact)
    # The test has power: the continuous-time law (no bias) is rejected.
    _, z_cov = gaussian_moment_zscores(x, MU_NP, np.linalg.inv(P_NP))
    assert z_cov.max() > 3 * Z
    assert info.acceptance_rate.shape == (150, 8000)


def test_mala_matches_target():
    sampler = Langevin(gaussian_energy, 0.9, num_steps=300, adjust=True)
    x, info = _final_positions(sampler)
    assert_gaussian_moments(x, MU_NP, np.linalg.inv(P_NP))
    rate = float(info.acceptance_rate.mean())
    assert 0.3 < rate < 0.99


def test_no_gradient_flows_through_the_chain():
    """The JAX analogue of torch's "no graph kept": the run is jit-able and its
    output is stop-gradient'ed with respect to the potential's parameters."""
    def run(w, x0, key):
        energy = lambda x: (x @ w) ** 2  # noqa: E731
        state, _ = Langevin(energy, 0.1, num_steps=5).run(key, x0)
        return state.position.sum()

    w = jnp.array([1.0, -2.0])
    grad = jax.jit(jax.grad(run))(w, jnp.ones((3, 2)), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(grad, 0.0)


def test_runs_under_jit_and_vmap_and_on_image_shaped_events():
    energy = lambda x: 0.5 * (x ** 2).reshape(x.shape[0], -1).sum(1)  # noqa: E731
    sampler = Langevin(energy, 0.1, num_steps=2)
    state, info = jax.jit(sampler.run)(jax.random.PRNGKey(0), jnp.ones((4, 1, 3, 3)))
    assert state.position.shape == (4, 1, 3, 3) and state.grad.shape == (4, 1, 3, 3)
    assert isinstance(state, LangevinState) and isinstance(info, LangevinInfo)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    batched, binfo = jax.vmap(lambda k: sampler.run(k, jnp.ones((4, 2))))(keys)
    assert batched.position.shape == (3, 4, 2) and binfo.is_divergent.shape == (3, 2, 4)
    one = jax.jit(lambda k, s: step(k, s, energy, 0.1))(keys[0], init(jnp.ones((4, 2)), energy))
    assert one[0].position.shape == (4, 2)


def test_seeded_runs_are_reproducible():
    s = Langevin(gaussian_energy, 0.3, num_steps=4)
    x0 = jnp.zeros((8, 2))
    a, _ = s.run(7, x0)
    b, _ = s.run(jax.random.PRNGKey(7), x0)
    c, _ = s.run(jax.random.key(7), x0)
    np.testing.assert_array_equal(a.position, b.position)
    assert c.position.shape == (8, 2)


def walled_energy(x):
    """Finite only on |x| < 10: a large step from x = 3 leaves the domain."""
    return (0.5 * x ** 2 - jnp.log(10 - jnp.abs(x))).sum(-1)


def test_divergent_chains_are_flagged_not_replaced():
    x0 = jnp.array([[0.1], [3.0]])
    state, info = Langevin(walled_energy, 5.0, num_steps=1, noise_scale=0.0).run(None, x0)
    assert info.is_divergent[:, 1].any() and not info.is_divergent[:, 0].any()
    assert jnp.isnan(state.energy[1]) and jnp.isfinite(state.energy[0])
    expected = 3.0 - 12.5 * (3.0 + 1 / (10 - 3.0))  # the raw update, not replaced
    np.testing.assert_allclose(state.position[1], [expected], rtol=1e-12)


def test_mala_rejects_non_finite_proposals():
    x0 = jnp.array([[3.0]])
    state, info = Langevin(walled_energy, 5.0, num_steps=3, adjust=True, noise_scale=1e-3).run(0, x0)
    assert info.is_divergent.all() and not info.is_accepted.any()
    np.testing.assert_array_equal(state.position, x0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(step_size=0.0), "step_size must be a positive"),
    (dict(step_size=-1.0), "step_size must be a positive"),
    (dict(step_size=float("nan")), "step_size must be a positive"),
    (dict(step_size=0.1, num_steps=0), "num_steps must be a positive"),
    (dict(step_size=0.1, num_steps=2.5), "num_steps must be a positive"),
    (dict(step_size=0.1, noise_scale=-1.0), "noise_scale must be a non-negative"),
    (dict(step_size=0.1, noise_scale=0.0, adjust=True), "needs noise_scale > 0"),
])
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Langevin(gaussian_energy, **kwargs)


def test_bad_positions_and_energies_raise():
    s = Langevin(gaussian_energy, 0.1)
    with pytest.raises(ValueError, match="leading batch"):
        s.run(0, jnp.zeros(2))
    with pytest.raises(ValueError, match="floating-point"):
        s.run(0, jnp.zeros((2, 2), dtype=jnp.int32))
    x = jnp.zeros((3, 2)).at[1, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="non-finite in 1 of 3 chains"):
        s.run(0, x)
    bad = Langevin(lambda x: x.sum(-1, keepdims=True), 0.1)
    with pytest.raises(ValueError, match=r"one energy per chain, shape \(3,\); got \(3, 1\)"):
        bad.run(0, jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="rng is required"):
        s.run(None, jnp.zeros((3, 2)))
    with pytest.raises(TypeError, match="rng must be a jax.random key or an int seed"):
        s.run("seed", jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"energy or its gradient is non-finite at the initial position of 1 of 2"):
        Langevin(walled_energy, 0.1).run(0, jnp.array([[0.0], [10.0]]))
