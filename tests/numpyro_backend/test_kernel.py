"""LangevinKernel as a NumPyro MCMCKernel: exact targets with MCSE tolerances, ULA's
known discretisation bias, the MCMC/ArviZ contract (all chain methods), pickling,
adaptation and the warm start from a guide."""

import pickle
import warnings

import numpy as np
import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")

import arviz as az  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC  # noqa: E402
from numpyro.infer.autoguide import AutoNormal  # noqa: E402

from kernel_checks import (BERNOULLI_Y, BETA_PRIOR, CATEGORICAL_Y, DIRICHLET_PRIOR, MU, PREC,  # noqa: E402
                           assert_beta_posterior, assert_dirichlet_posterior, assert_gaussian_mcse,
                           assert_mcse, logistic_data, ula_covariance)
from mcse import Z, assert_gaussian_moments, gaussian_moment_zscores  # noqa: E402
from numpyro_vmt.kernel import LangevinKernel  # noqa: E402
from numpyro_vmt.warmstart import initial_params_from_guide  # noqa: E402


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def run(kernel, num_samples, num_warmup, seed, *args, num_chains=1, chain_method="vectorized", **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "parallel" on one device falls back to sequential
        mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                    chain_method=chain_method, progress_bar=False)
        mcmc.run(jax.random.key(seed), *args, **kw)
    return mcmc


def beta_bernoulli(y):
    p = numpyro.sample("p", dist.Beta(*BETA_PRIOR))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Bernoulli(p), obs=y)


def dirichlet_categorical(y):
    w = numpyro.sample("w", dist.Dirichlet(jnp.asarray(DIRICHLET_PRIOR)))
    with numpyro.plate("n", y.shape[0]):
        numpyro.sample("y", dist.Categorical(w), obs=y)


def logistic(x, y):
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(3), 3.0).to_event(1))
    b0 = numpyro.sample("b0", dist.Normal(0.0, 3.0))
    with numpyro.plate("n", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ beta + b0), obs=y)


def gaussian_potential(params):
    d = params["x"] - jnp.asarray(MU)
    return 0.5 * d @ jnp.asarray(PREC) @ d


def test_energy_model_is_a_numpyro_model_for_mcmc():
    """``EnergyModel.model`` (a flat site plus a factor) under MCMC with default
    initialisation; MALA's independent final states match the target's moments."""
    import equinox as eqx

    from numpyro_vmt import EnergyModel

    class Gaussian(eqx.Module):  # E(x) of N((1, −1), diag(0.25, 4))
        def __call__(self, x, *, key=None):
            return 0.5 * (((x - jnp.array([1.0, -1.0])) / jnp.array([0.5, 2.0])) ** 2).sum(-1)

    mcmc = run(LangevinKernel(EnergyModel(Gaussian(), (2,)).model, step_size=0.3), 1, 300, 3, num_chains=2000)
    assert_gaussian_moments(np.asarray(mcmc.get_samples()["x"]), [1.0, -1.0], np.diag([0.25, 4.0]))


def test_unnormalised_normal_via_potential_fn():
    pe = lambda p: 0.5 * ((p["x"] - 3.0) / 2.0) ** 2  # noqa: E731 -- N(3, 2²) up to a constant
    mcmc = run(LangevinKernel(potential_fn=pe, step_size=1.0), 2000, 300, 0, init_params={"x": jnp.zeros(())})
    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    assert x.shape == (1, 2000)
    assert_mcse(x, 3.0, 2.0, "mean")
    assert_mcse((x - 3.0) ** 2, 4.0, np.sqrt(2) * 4.0, "variance")


def test_beta_bernoulli_matches_conjugate_posterior():
    mcmc = run(LangevinKernel(beta_bernoulli, step_size=0.5), 600, 300, 1, jnp.asarray(BERNOULLI_Y), num_chains=8)
    p = np.asarray(mcmc.get_samples(group_by_chain=True)["p"])
    assert p.shape == (8, 600)
    assert_beta_posterior(p)


def test_dirichlet_categorical_matches_conjugate_posterior():
    mcmc = run(LangevinKernel(dirichlet_categorical, step_size=0.5), 600, 300, 2, jnp.asarray(CATEGORICAL_Y),
               num_chains=8)
    w = np.asarray(mcmc.get_samples(group_by_chain=True)["w"])
    assert w.shape == (8, 600, 3) and np.allclose(w.sum(-1), 1.0, atol=1e-5)
    assert_dirichlet_posterior(w)


def test_logistic_regression_recovers_true_coefficients():
    x, y, beta, b0 = logistic_data()
    mcmc = run(LangevinKernel(logistic, step_size=0.1), 500, 300, 3, jnp.asarray(x), jnp.asarray(y), num_chains=4)
    samples = mcmc.get_samples()
    for name, truth in (("beta", beta), ("b0", b0)):
        draws = np.asarray(samples[name]).reshape(2000, -1)
        z = np.abs(draws.mean(0) - truth) / draws.std(0)
        assert (z < Z).all(), f"{name}: posterior mean {draws.mean(0)} vs truth {truth}"


def test_mala_correlated_gaussian_mcse(x64):
    mcmc = run(LangevinKernel(potential_fn=gaussian_potential, step_size=0.5), 1500, 500, 4, num_chains=8,
               init_params={"x": jnp.zeros((8, 2))})
    assert mcmc.get_samples()["x"].dtype == jnp.float64
    assert_gaussian_mcse(np.asarray(mcmc.get_samples(group_by_chain=True)["x"]))


def test_ula_matches_its_discretisation_bias(x64):
    delta, n = 0.6, 4000
    mcmc = run(LangevinKernel(potential_fn=gaussian_potential, step_size=delta, adjust=False), 1, 249, 5,
               num_chains=n, init_params={"x": jnp.broadcast_to(jnp.asarray(MU), (n, 2))})
    x = np.asarray(mcmc.get_samples()["x"])
    assert_gaussian_moments(x, MU, ula_covariance(delta))
    _, z_exact = gaussian_moment_zscores(x, MU, np.linalg.inv(PREC))
    assert z_exact.max() > Z, "ULA's bias should be visible at this step size"


@pytest.mark.parametrize("chain_method", ["sequential", "parallel", "vectorized"])
def test_mcmc_api_chain_methods_initial_params_arviz(chain_method):
    x, y, *_ = logistic_data(n=100)
    init = {"beta": jnp.array([[2.0, 0.0, 0.0], [0.0, -2.0, 0.0]]), "b0": jnp.array([1.0, -1.0])}
    kernel = LangevinKernel(logistic, step_size=1e-3, adapt_step_size=False)
    mcmc = run(kernel, 30, 0, 0, jnp.asarray(x), jnp.asarray(y), num_chains=2, chain_method=chain_method,
               init_params=init, extra_fields=("accept_prob", "potential_energy", "step_size", "grad_norm"))
    samples = mcmc.get_samples(group_by_chain=True)
    assert samples["beta"].shape == (2, 30, 3) and samples["b0"].shape == (2, 30)
    assert mcmc.get_samples()["beta"].shape == (60, 3)
    # tiny steps: each chain stays where its initial params put it
    np.testing.assert_allclose(samples["beta"][:, 0], init["beta"], atol=0.05)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    assert extra["diverging"].shape == (2, 30) and not extra["diverging"].any()
    assert 0.9 < float(extra["accept_prob"].mean()) <= 1.0
    data = az.from_numpyro(mcmc)
    assert data.posterior["beta"].shape == (2, 30, 3)
    assert data.sample_stats["diverging"].shape == (2, 30)
    assert {"lp", "acceptance_rate", "step_size"} <= set(data.sample_stats.data_vars)
    assert "step size" in kernel.get_diagnostics_str(jax.tree.map(lambda a: a[0], mcmc.last_state))


def test_warmup_adaptation_reaches_target_acceptance():
    pe = lambda p: 0.5 * (p["x"] ** 2).sum()  # noqa: E731
    mcmc = run(LangevinKernel(potential_fn=pe, step_size=20.0), 500, 500, 6, num_chains=4,
               init_params={"x": jnp.zeros((4, 10))}, extra_fields=("accept_prob", "step_size"))
    extra = mcmc.get_extra_fields(group_by_chain=True)
    assert 0.3 < float(extra["step_size"][:, -1].min()) < 3  # down from 20, per chain
    # NumPyro's windowed adapter restarts dual averaging at each window and ends on a short
    # buffer, so the final step lands near, not at, the target (0.59-0.82 per chain measured)
    assert abs(float(extra["accept_prob"].mean()) - 0.574) < 0.2
    assert (extra["step_size"] == extra["step_size"][:, :1]).all()  # fixed after warmup


def test_kernel_pickles_and_reproduces_with_a_key():
    fresh = LangevinKernel(potential_fn=gaussian_potential, step_size=0.5)
    clone = pickle.loads(pickle.dumps(fresh))
    runs = [run(k, 20, 10, 7, init_params={"x": jnp.zeros(2)}).get_samples()["x"] for k in (fresh, clone)]
    np.testing.assert_array_equal(runs[0], runs[1])
    model_kernel = LangevinKernel(beta_bernoulli)
    model_kernel.init(jax.random.key(0), 0, None, (jnp.asarray(BERNOULLI_Y),), {})
    again = pickle.loads(pickle.dumps(model_kernel))  # after init: the model's closures are rebuilt by init
    assert again._pe_gen is None and again.model is beta_bernoulli


def test_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        LangevinKernel()
    with pytest.raises(ValueError, match="noise_scale"):
        LangevinKernel(beta_bernoulli, noise_scale=0.0)
    with pytest.raises(ValueError, match="init_params"):
        LangevinKernel(potential_fn=gaussian_potential).init(jax.random.key(0), 0, None, (), {})
    with pytest.raises(ValueError, match="target_accept_prob"):
        LangevinKernel(beta_bernoulli, target_accept_prob=1.0)


def test_warm_start_from_autonormal_vae_and_sampler():
    y = jnp.asarray(BERNOULLI_Y)
    guide = AutoNormal(_dirichlet_beta)
    trace = numpyro.handlers.trace(numpyro.handlers.seed(guide, 0)).get_trace(y)
    params = {k: s["value"] for k, s in trace.items() if s["type"] == "param"}
    params.update(p_auto_loc=jnp.asarray(2.0), p_auto_scale=jnp.asarray(1e-6))  # e.g. svi_result.params
    init = initial_params_from_guide(guide, _dirichlet_beta, 5, 0, model_args=(y,), params=params)
    assert {k: tuple(v.shape) for k, v in init.items()} == {"p": (5,), "w": (5, 2), "s": (5,)}
    np.testing.assert_allclose(init["p"], 2.0, atol=1e-4)  # the substituted params were used
    assert float(init["s"].std()) > 0  # one draw per chain
    for k, u in init.items():  # back in the guide's (= the model's) support
        support = trace[k]["fn"].support
        assert bool(support(dist.biject_to(support)(u)).all())
    sampler = lambda y: {"p": jnp.asarray(0.25)}  # noqa: E731 -- a plain callable
    init = initial_params_from_guide(sampler, _dirichlet_beta, 2, 0, model_args=(y,))
    np.testing.assert_allclose(init["p"], jax.scipy.special.logit(jnp.array([0.25, 0.25])), rtol=1e-6)
    from numpyro_vmt import VAE
    from numpyro_vmt.nets import MLP
    vae = VAE(MLP(4, 4, rng=1), MLP(2, 4, rng=2), 2, (4,), obs_scale=1.0)
    x = jax.random.normal(jax.random.key(0), (6, 4))
    init = initial_params_from_guide(vae.guide, vae.model, 3, 0, model_args=(x,))
    assert init["z"].shape == (3, 6, 2)


def _dirichlet_beta(y):
    numpyro.sample("w", dist.Dirichlet(jnp.ones(3)))
    numpyro.sample("s", dist.HalfNormal(1.0))
    beta_bernoulli(y)
