"""``TeachingConfig(correction="mh")`` in both teachers: the history's MH diagnostics,
checkpoints that carry the persistent chains (resume bit for bit), the likelihood
estimates and exact sampling; the options that cannot work are rejected."""

import numpy as np
import pytest

from vmt import TeachingConfig

BACKENDS = ["pyro", "numpyro"]


def make(backend, seed=0, **options):
    opts = dict(step_size=0.1, num_steps=3, init_bounds=(-2.0, 2.0), correction="mh", noise_fraction=0.25) | options
    if backend == "pyro":
        torch = pytest.importorskip("torch")
        import pyro_vmt as pv
        from pyro_vmt.nets import MLP

        torch.manual_seed(seed)
        energy = pv.EnergyModel(MLP(2, 1, (16, 16)), (2,))
        vae = pv.VAE(MLP(2, 4, (16,)), MLP(2, 2, (16,)), 2, (2,))
        return pv.VariationalMCMCTeaching(energy, vae, rng=seed, **opts)
    pytest.importorskip("jax")
    import numpyro_vmt as nv
    from numpyro_vmt.nets import MLP

    energy = nv.EnergyModel(MLP(2, 1, (16, 16), rng=seed), (2,))
    vae = nv.VAE(MLP(2, 4, (16,), rng=seed + 1), MLP(2, 2, (16,), rng=seed + 2), 2, (2,))
    return nv.VariationalMCMCTeaching(energy, vae, rng=seed, **opts)


def data(n=64, seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal((n, 2)) * 0.5 + [1.0, -1.0]).astype(np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("refresh, local", [(True, 0), (False, 0), (True, 2)])
def test_history_has_the_mh_diagnostics(backend, refresh, local):
    t = make(backend, path_refresh=refresh, local_steps=local)
    h = t.fit(data(), num_iters=4, batch_size=16, progress=False)
    if local:  # the MALA moves' acceptance is the history's Langevin acceptance (none before chains exist)
        acc = h["acceptance_rate"]
        assert np.isnan(acc[0]) and (0 < acc[1:]).all() and (acc[1:] <= 1).all(), acc
    else:
        assert np.isnan(h["acceptance_rate"]).all()
    assert h["path_acceptance"][0] == 1.0  # the first proposals become the chains
    for name in ("path_acceptance", "weight_ess", "crossing_rate"):
        assert np.isfinite(h[name]).all() and (0 <= h[name]).all() and (h[name] <= 1).all(), (name, h[name])
    assert (h["weight_ess"] >= 1 / 16 - 1e-6).all()
    assert np.isfinite(h["loss"]).all()
    chains = t.chains if backend == "pyro" else t.state.chains
    assert tuple(chains.position.shape) == (16, 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_carries_the_chains(backend, tmp_path):
    x = data()
    straight = make(backend)
    h_straight = straight.fit(x, num_iters=6, batch_size=16, progress=False)
    first = make(backend)
    first.fit(x, num_iters=3, batch_size=16, progress=False)
    first.save(tmp_path / "ckpt")
    second = make(backend)
    second.load(tmp_path / "ckpt")
    chains = (lambda t: t.chains) if backend == "pyro" else (lambda t: t.state.chains)
    np.testing.assert_array_equal(np.asarray(chains(second).position), np.asarray(chains(first).position))
    h_rest = second.fit(x, num_iters=3, batch_size=16, progress=False)
    for name in ("loss", "path_acceptance", "weight_ess"):
        np.testing.assert_array_equal(h_rest[name], h_straight[name][3:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("local", [0, 2])
def test_likelihood_estimate_and_exact_samples(backend, local):
    t = make(backend, local_steps=local)
    t.fit(data(), num_iters=2, batch_size=16, progress=False)
    log_z, se = t.log_partition(500, rng=0)
    assert np.isfinite(log_z) and 0 <= se < 1
    assert t.log_partition(500, rng=0) == (log_z, se)
    lp, se2 = t.log_prob(data(5), num_samples=500, rng=0)
    assert lp.shape == (5,) and se2 == se
    energy = np.asarray(t.energy.numpy_energy(data(5)))
    np.testing.assert_allclose(lp, -energy - log_z, rtol=1e-6)
    x = t.sample(7, rng=1, mh_steps=3)
    assert tuple(x.shape) == (7, 2) and np.isfinite(np.asarray(x)).all()


def test_config_rejects_what_cannot_work():
    with pytest.raises(ValueError, match="correction"):
        TeachingConfig(correction="exact")
    with pytest.raises(ValueError, match="init='vae' or 'noise'"):
        TeachingConfig(correction="mh", init="generator")
    with pytest.raises(ValueError, match="noise_scale > 0"):
        TeachingConfig(correction="mh", noise_scale=0.0)
    for bad in (dict(local_steps=2), dict(correction="mh", path_refresh=False, local_steps=2)):
        with pytest.raises(ValueError, match="local_steps=2 needs correction='mh' with path_refresh=True"):
            TeachingConfig(**bad)
    with pytest.raises(ValueError, match="local_steps"):
        TeachingConfig(correction="mh", local_steps=-1)
    assert TeachingConfig(init_bounds=(-1.0, 3.0)).wide_proposal() == (1.0, 2.0)
