"""MCMCTeaching in NumPyro's protocol: init/update/run/get_params, a jitted update,
local latents with subsampling, hand-written and AutoContinuous guides, Predictive
and the warm start afterwards."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import MCMC, Predictive  # noqa: E402
from numpyro.infer.autoguide import AutoMultivariateNormal, AutoNormal  # noqa: E402

from numpyro_vmt import LangevinKernel, MCMCTeaching, initial_params_from_guide  # noqa: E402
from vmt.core.errors import DivergenceError  # noqa: E402

N_DATA, BATCH = 40, 10
X_DATA = jnp.linspace(-2.0, 2.0, N_DATA) + 1.0


def hierarchical(x):
    """mu -> z_i -> x_i with z local and the data plate subsampled."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", N_DATA, subsample_size=BATCH) as idx:
        z = numpyro.sample("z", dist.Normal(mu, 1.0))
        numpyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


def encoder_guide(x):
    """Amortised: q(z_i | x_i) = N(a x_i + b, s), and a Normal for mu."""
    a = numpyro.param("a", 0.5)
    b = numpyro.param("b", 0.0)
    s = numpyro.param("s", 0.5, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(numpyro.param("mu_loc", 0.0),
                                     numpyro.param("mu_scale", 1.0, constraint=dist.constraints.positive)))
    with numpyro.plate("data", N_DATA, subsample_size=BATCH) as idx:
        numpyro.sample("z", dist.Normal(a * x[idx] + b, s))


def optim():
    return optax.adam(0.05, b2=0.9)


@pytest.mark.parametrize("guide_fn", [lambda: AutoNormal(hierarchical), lambda: encoder_guide],
                         ids=["AutoNormal", "encoder"])
def test_local_latents_with_subsampling(guide_fn):
    guide = guide_fn()
    teaching = MCMCTeaching(hierarchical, guide, optim(), num_steps=10, num_particles=8, adapt_iterations=20)
    result = teaching.run(0, 60, X_DATA)
    assert np.isfinite(np.asarray(result.losses)).all()
    info = result.state.info
    assert int(info.num_divergent) == 0 and 0 < float(info.acceptance_rate) <= 1
    draws = Predictive(hierarchical, guide=guide, params=result.params, num_samples=200,
                       return_sites=["mu"])(jax.random.key(1), X_DATA)["mu"]
    assert abs(float(draws.mean()) - 1.0) < 0.5


def test_update_is_pure_and_jits():
    teaching = MCMCTeaching(hierarchical, encoder_guide, optim(), num_steps=3, num_particles=4)
    state = teaching.init(jax.random.key(0), X_DATA)
    update = jax.jit(lambda s: teaching.update(s, X_DATA))
    s1, loss1 = update(state)
    s1b, loss1b = update(state)
    assert float(loss1) == float(loss1b)  # same state, same key: same result
    s2, _ = update(s1)
    assert int(s2.iteration) == 2 and teaching.get_params(s2)["b"] != teaching.get_params(state)["b"]
    assert np.isfinite(float(teaching.evaluate_loss(s2, X_DATA)))


def correlated(x=None):
    numpyro.sample("th", dist.MultivariateNormal(jnp.zeros(2), jnp.array([[1.0, 0.9], [0.9, 1.0]])))


def test_autocontinuous_guide_learns_the_correlation_and_warm_starts_mala():
    guide = AutoMultivariateNormal(correlated)
    teaching = MCMCTeaching(correlated, guide, optax.adam(0.05, b2=0.9), num_steps=20, num_particles=32,
                            elbo_weight=0.1)
    result = teaching.run(1, 120)
    assert np.isfinite(float(result.state.info.elbo_loss))
    cov = np.asarray(guide.get_posterior(result.params).covariance_matrix)
    corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    assert corr > 0.6, cov
    init = initial_params_from_guide(guide, correlated, 4, 0, params=result.params)
    mcmc = MCMC(LangevinKernel(correlated, step_size=0.5), num_warmup=10, num_samples=20, num_chains=4,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(2), init_params=init)
    assert mcmc.get_samples()["th"].shape == (80, 2)


def test_unadjusted_divergence_raises():
    teaching = MCMCTeaching(correlated, AutoNormal(correlated), optim(), num_steps=30, step_size=50.0,
                            adjust=False, num_particles=4)
    with pytest.raises(DivergenceError):
        teaching.run(0, 3)
