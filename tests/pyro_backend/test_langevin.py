"""Langevin sampler (torch): the update formula, the stationary law of the
discretised chain, MALA's target, diagnostics and bad input."""

import numpy as np
import pytest
import torch

from mcse import Z, assert_gaussian_moments, gaussian_moment_zscores
from pyro_vmt import Langevin, LangevinInfo, LangevinState, init, step

P = torch.tensor([[2.0, 0.9], [0.9, 1.0]], dtype=torch.float64)  # precision
MU = torch.tensor([1.0, -0.5], dtype=torch.float64)


def gaussian_energy(x):
    d = x - MU
    return 0.5 * ((d @ P) * d).sum(-1)


def test_one_step_equals_formula():
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5]], dtype=torch.float64)
    xi = torch.tensor([[0.1, -0.4], [1.5, 0.2]], dtype=torch.float64)
    delta, sigma = 0.3, 0.7
    state = init(x, gaussian_energy)
    new, info = step(None, state, gaussian_energy, delta, noise_scale=sigma, noise=xi)
    grad = (x - MU) @ P
    expected = x - 0.5 * delta ** 2 * grad + delta * sigma * xi
    torch.testing.assert_close(new.position, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new.energy, gaussian_energy(expected))
    torch.testing.assert_close(new.grad, (expected - MU) @ P)
    assert info.is_accepted.all() and (info.acceptance_rate == 1).all()
    assert not info.is_divergent.any()
    torch.testing.assert_close(info.grad_norm, new.grad.norm(dim=1))


def test_noise_free_revision_is_deterministic_gradient_descent():
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    state, _ = Langevin(gaussian_energy, 0.2, num_steps=3, noise_scale=0.0).run(None, x)
    expected = x
    for _ in range(3):
        expected = expected - 0.02 * ((expected - MU) @ P)
    torch.testing.assert_close(state.position, expected)


def test_mala_acceptance_matches_formula():
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    xi = torch.tensor([[0.1, -0.4], [1.5, 0.2], [-2.0, 3.0]], dtype=torch.float64)
    u = torch.tensor([0.5, 0.995, 0.99], dtype=torch.float64)
    delta = 0.8
    h = 0.5 * delta ** 2
    state = init(x, gaussian_energy)
    new, info = step(None, state, gaussian_energy, delta, adjust=True, noise=xi, uniform=u)
    prop = x - h * (x - MU) @ P + delta * xi
    g_prop = (prop - MU) @ P
    log_q_fwd = -((prop - (x - h * (x - MU) @ P)) ** 2).sum(1) / (2 * delta ** 2)
    log_q_bwd = -((x - (prop - h * g_prop)) ** 2).sum(1) / (2 * delta ** 2)
    log_alpha = gaussian_energy(x) - gaussian_energy(prop) + log_q_bwd - log_q_fwd
    accept = torch.log(u) < log_alpha
    torch.testing.assert_close(info.acceptance_rate, torch.exp(torch.clamp(log_alpha, max=0)))
    assert torch.equal(info.is_accepted, accept)
    assert 0 < accept.sum() < 3, "the case should mix accepted and rejected chains"
    expected = torch.where(accept[:, None], prop, x)
    torch.testing.assert_close(new.position, expected)
    torch.testing.assert_close(new.energy, gaussian_energy(expected))


def _final_positions(sampler, n=4000, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, 2, dtype=torch.float64, generator=gen)
    state, info = sampler.run(gen, x0)
    return state.position.numpy(), info


def test_ula_matches_exact_law_of_the_discretised_chain():
    delta = 0.8  # h = 0.32: a large step, so the discretisation bias is visible
    h = 0.5 * delta ** 2
    sampler = Langevin(gaussian_energy, delta, num_steps=150)
    x, info = _final_positions(sampler, n=8000)
    Pn = P.numpy()
    exact = np.linalg.inv(Pn @ (np.eye(2) - h * Pn / 2))
    assert_gaussian_moments(x, MU.numpy(), exact)
    # The test has power: the continuous-time law (no bias) is rejected.
    _, z_cov = gaussian_moment_zscores(x, MU.numpy(), np.linalg.inv(Pn))
    assert z_cov.max() > 3 * Z
    assert info.acceptance_rate.shape == (150, 8000)


def test_mala_matches_target():
    sampler = Langevin(gaussian_energy, 0.9, num_steps=300, adjust=True)
    x, info = _final_positions(sampler)
    assert_gaussian_moments(x, MU.numpy(), np.linalg.inv(P.numpy()))
    rate = float(info.acceptance_rate.mean())
    assert 0.3 < rate < 0.99


def test_no_graph_is_kept_across_steps():
    net = torch.nn.Linear(2, 1)
    energy = lambda x: net(x)[:, 0] ** 2  # noqa: E731
    state, _ = Langevin(energy, 0.1, num_steps=5).run(0, torch.zeros(3, 2))
    for t in state:
        assert t.grad_fn is None and not t.requires_grad
    assert net.weight.grad is None  # sampling never accumulates parameter gradients


def test_runs_under_no_grad_and_on_image_shaped_events():
    energy = lambda x: 0.5 * (x ** 2).flatten(1).sum(1)  # noqa: E731
    with torch.no_grad():
        state, info = Langevin(energy, 0.1, num_steps=2).run(0, torch.ones(4, 1, 3, 3))
    assert state.position.shape == (4, 1, 3, 3) and state.grad.shape == (4, 1, 3, 3)
    assert isinstance(state, LangevinState) and isinstance(info, LangevinInfo)


def test_seeded_runs_are_reproducible():
    s = Langevin(gaussian_energy, 0.3, num_steps=4)
    x0 = torch.zeros(8, 2, dtype=torch.float64)
    a, _ = s.run(7, x0)
    b, _ = s.run(torch.Generator().manual_seed(7), x0)
    torch.testing.assert_close(a.position, b.position, rtol=0, atol=0)


def walled_energy(x):
    """Finite only on |x| < 10: a large step from x = 3 leaves the domain."""
    return (0.5 * x ** 2 - torch.log(10 - x.abs())).sum(-1)


def test_divergent_chains_are_flagged_not_replaced():
    x0 = torch.tensor([[0.1], [3.0]], dtype=torch.float64)
    state, info = Langevin(walled_energy, 5.0, num_steps=1, noise_scale=0.0).run(None, x0)
    assert info.is_divergent[:, 1].any() and not info.is_divergent[:, 0].any()
    assert torch.isnan(state.energy[1]) and torch.isfinite(state.energy[0])
    expected = x0[1] - 12.5 * (x0[1] + 1 / (10 - x0[1]))  # the raw update, not replaced
    torch.testing.assert_close(state.position[1], expected)


def test_mala_rejects_non_finite_proposals():
    x0 = torch.tensor([[3.0]], dtype=torch.float64)
    state, info = Langevin(walled_energy, 5.0, num_steps=3, adjust=True, noise_scale=1e-3).run(0, x0)
    assert info.is_divergent.all() and not info.is_accepted.any()
    assert torch.equal(state.position, x0)


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
        s.run(0, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="floating-point"):
        s.run(0, torch.zeros(2, 2, dtype=torch.long))
    x = torch.zeros(3, 2, dtype=torch.float64)
    x[1, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite in 1 of 3 chains"):
        s.run(0, x)
    bad = Langevin(lambda x: x.sum(-1, keepdim=True), 0.1)
    with pytest.raises(ValueError, match=r"one energy per chain, shape \(3,\); got \(3, 1\)"):
        bad.run(0, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="rng is required"):
        s.run(None, torch.zeros(3, 2, dtype=torch.float64))
