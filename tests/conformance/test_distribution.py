"""``EnergyDistribution`` in both backends: ``log_prob`` is ``−E`` (unnormalised), ``sample``
is init + Langevin with the target's moments, and it works as a site of a user's model
under ``pyro.sample``/``numpyro.sample`` and ``Predictive``."""

import numpy as np
import pytest

from mcse import Z

MU, SD = np.array([1.0, -2.0]), 0.5


@pytest.fixture(params=["pyro", "numpyro"])
def backend(request):
    pytest.importorskip({"pyro": "pyro", "numpyro": "numpyro"}[request.param])
    return request.param


def _ebm(backend, **options):
    """A Gaussian N(MU, SD²I) energy, chains started at N(0, I)."""
    if backend == "pyro":
        import torch
        from pyro_vmt import EnergyDistribution

        mu = torch.tensor(MU, dtype=torch.float32)
        energy = lambda x: 0.5 * (((x - mu) / SD) ** 2).sum(-1)  # noqa: E731
        init = lambda n, gen: torch.randn(n, 2, generator=gen)  # noqa: E731
        return EnergyDistribution(energy, init, event_shape=(2,), **options), energy
    import jax
    import jax.numpy as jnp
    from numpyro_vmt import EnergyDistribution

    mu = jnp.asarray(MU, dtype=jnp.float32)
    energy = lambda x: 0.5 * (((x - mu) / SD) ** 2).sum(-1)  # noqa: E731
    init = lambda n, key: jax.random.normal(key, (n, 2))  # noqa: E731
    return EnergyDistribution(energy, init, event_shape=(2,), **options), energy


def _draw(backend, ebm, shape, seed):
    if backend == "pyro":
        import pyro

        pyro.set_rng_seed(seed)
        return np.asarray(ebm.sample(shape))
    import jax

    return np.asarray(ebm.sample(jax.random.key(seed), shape))


def test_log_prob_is_minus_energy_and_samples_hit_the_target(backend):
    ebm, energy = _ebm(backend, step_size=0.4, num_steps=150, adjust=True)
    x = _draw(backend, ebm, (2000,), 0)
    assert x.shape == (2000, 2)
    z_mean = np.abs(x.mean(0) - MU) / (SD / np.sqrt(len(x)))  # independent chains
    z_var = np.abs(x.var(0) - SD ** 2) / (np.sqrt(2) * SD ** 2 / np.sqrt(len(x)))
    assert (z_mean < Z).all() and (z_var < Z).all(), (x.mean(0), x.var(0))
    value = x[:6].reshape(3, 2, 2)
    lp = np.asarray(ebm.log_prob(_like(backend, value)))
    assert lp.shape == (3, 2)
    np.testing.assert_allclose(lp, -np.asarray(energy(_like(backend, x[:6]))).reshape(3, 2), rtol=1e-6)
    assert _draw(backend, ebm.expand((4,)), (3,), 1).shape == (3, 4, 2)


def _like(backend, a):
    if backend == "pyro":
        import torch

        return torch.as_tensor(np.asarray(a, dtype=np.float32))
    import jax.numpy as jnp

    return jnp.asarray(a, dtype=jnp.float32)


def test_a_site_of_a_users_model_and_predictive(backend):
    ebm, energy = _ebm(backend, step_size=0.4, num_steps=20)
    if backend == "pyro":
        import pyro
        import torch
        from pyro.infer import Predictive

        def model(obs=None):
            return pyro.sample("x", ebm, obs=obs)

        obs = torch.zeros(2)
        trace = pyro.poutine.trace(model).get_trace(obs)
        lp = float(trace.log_prob_sum())
        draws = Predictive(model, num_samples=7)()["x"]
    else:
        import jax
        import jax.numpy as jnp
        import numpyro
        from numpyro.infer import Predictive
        from numpyro.infer.util import log_density

        def model(obs=None):
            return numpyro.sample("x", ebm, obs=obs)

        obs = jnp.zeros(2)
        lp = float(log_density(model, (obs,), {}, {})[0])
        draws = Predictive(model, num_samples=7)(jax.random.key(0))["x"]
    assert lp == pytest.approx(-float(np.asarray(energy(_like(backend, np.zeros((1, 2)))))[0]), rel=1e-6)
    assert tuple(draws.shape) == (7, 2) and np.isfinite(np.asarray(draws)).all()
