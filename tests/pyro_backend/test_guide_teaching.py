"""MCMCTeaching in Pyro's protocol: SVI-style step, local latents with subsampling,
hand-written and AutoContinuous guides, Predictive and the warm start afterwards."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")

import pyro.distributions as dist  # noqa: E402
from pyro.infer import Predictive  # noqa: E402
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal  # noqa: E402

from pyro_vmt import LangevinKernel, MCMCTeaching, initial_params_from_guide  # noqa: E402
from pyro_vmt.chains import run_chains  # noqa: E402
from vmt.core.errors import DivergenceError  # noqa: E402

N_DATA, BATCH = 40, 10
X_DATA = torch.linspace(-2.0, 2.0, N_DATA) + 1.0


def hierarchical(x):
    """mu -> z_i -> x_i with z local and the data plate subsampled."""
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("data", N_DATA, subsample_size=BATCH) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


def encoder_guide(x):
    """Amortised: q(z_i | x_i) = N(a x_i + b, s), and a Normal for mu."""
    a = pyro.param("a", torch.tensor(0.5))
    b = pyro.param("b", torch.tensor(0.0))
    s = pyro.param("s", torch.tensor(0.5), constraint=dist.constraints.positive)
    pyro.sample("mu", dist.Normal(pyro.param("mu_loc", torch.tensor(0.0)),
                                  pyro.param("mu_scale", torch.tensor(1.0), constraint=dist.constraints.positive)))
    with pyro.plate("data", N_DATA, subsample_size=BATCH) as idx:
        pyro.sample("z", dist.Normal(a * x[idx] + b, s))


def optim():
    return pyro.optim.Adam({"lr": 0.05, "betas": (0.9, 0.9)})


@pytest.mark.parametrize("guide_fn", [lambda: AutoNormal(hierarchical), lambda: encoder_guide],
                         ids=["AutoNormal", "encoder"])
def test_local_latents_with_subsampling(guide_fn):
    pyro.set_rng_seed(0)
    guide = guide_fn()
    teaching = MCMCTeaching(hierarchical, guide, optim(), num_steps=10, num_particles=8, adapt_iterations=20)
    losses = [teaching.step(X_DATA) for _ in range(60)]
    assert all(math.isfinite(v) for v in losses)
    info = teaching.last_info
    assert info.num_divergent == 0 and 0 < info.acceptance_rate <= 1
    # the posterior mean of mu is close to mean(x) = 1; the guide has moved there
    draws = Predictive(hierarchical, guide=guide, num_samples=200, return_sites=["mu"])(X_DATA)["mu"]
    assert abs(float(draws.mean()) - 1.0) < 0.5


def test_plain_svi_step_shape_and_param_store():
    """The guide's params are the ones pyro.infer.SVI would train (param store / module)."""
    pyro.set_rng_seed(0)
    teaching = MCMCTeaching(hierarchical, encoder_guide, optim(), num_steps=3, num_particles=4)
    before = pyro.param("b").item() if "b" in pyro.get_param_store() else None
    loss = teaching.step(X_DATA)
    assert isinstance(loss, float) and before is None
    b0 = pyro.param("b").item()
    teaching.step(X_DATA)
    assert pyro.param("b").item() != b0
    value = teaching.evaluate_loss(X_DATA)
    assert isinstance(value, float) and pyro.param("b").item() == pyro.param("b").item()


def correlated(x=None):
    pyro.sample("th", dist.MultivariateNormal(torch.zeros(2), torch.tensor([[1.0, 0.9], [0.9, 1.0]])))


def test_autocontinuous_guide_learns_the_correlation_and_warm_starts_mala():
    pyro.set_rng_seed(1)
    guide = AutoMultivariateNormal(correlated)
    teaching = MCMCTeaching(correlated, guide, pyro.optim.ClippedAdam({"lr": 0.05, "betas": (0.9, 0.9)}),
                            num_steps=20, num_particles=32, elbo_weight=0.1)
    for _ in range(120):
        teaching.step()
    assert math.isfinite(teaching.last_info.elbo_loss)
    cov = guide.get_posterior().covariance_matrix.detach().numpy()
    corr = cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1])
    assert corr > 0.6, cov
    # the amortised warm start: MALA chains from the taught guide
    init = initial_params_from_guide(guide, correlated, 4, 0)
    kernel = LangevinKernel(correlated, step_size=0.5, num_chains=4, rng=0)
    result = run_chains(kernel, 20, warmup_steps=10, initial_params=init)
    assert result.samples["th"].shape == (4, 20, 2) and torch.isfinite(result.samples["th"]).all()


def test_unadjusted_divergence_raises_before_any_update():
    pyro.set_rng_seed(0)
    guide = AutoNormal(correlated)
    teaching = MCMCTeaching(correlated, guide, optim(), num_steps=30, step_size=50.0, adjust=False,
                            noise_scale=1.0, num_particles=4)
    guide()  # creates the params
    loc = guide.locs.th.detach().clone()
    # (with Pyro's validation on, the distributions raise ValueError at the NaN first)
    with pyro.validation_enabled(False), pytest.raises(DivergenceError):
        teaching.step()
    assert torch.equal(guide.locs.th.detach(), loc)
