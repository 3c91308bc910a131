"""``correction="mh"`` in the conditional teachers: one persistent chain per training row.

- Exactness: a fixed conditional energy with branch weights that depend on ``x``
  (0.2 of the mass on ``y = +2`` at ``x = 0``, 0.8 at ``x = 1``) and a conditional VAE
  that starts out proposing both branches alike. After training, each row's chain
  sits on the upper branch with the probability of *its own* ``x`` (within four
  binomial standard errors); the first proposals, about half and half, fail the same
  test (power check). ``sample(x, mh_steps=…)`` is checked the same way.
- ``log Z(x)``: the energy carries the offset ``SHIFT · x``, so ``log Z(x) = −SHIFT · x``;
  `log_partition()` recovers it per row and `log_prob()` the mixture's log density,
  within four standard errors (a shared ``log Z`` would miss one row by ``SHIFT``).
- Conformance: both backends give the same path weights through the bound energy and
  VAE (`given`) of twin conditional networks.
- Resume: a checkpoint carries the chains of every row, and training continues bit
  for bit; the uses that cannot be keyed by row are refused with a message.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
eqx = pytest.importorskip("equinox")

import jax.numpy as jnp  # noqa: E402

import numpyro_vmt as nv  # noqa: E402
import pyro_vmt as pv  # noqa: E402
from numpyro_vmt import correction as jc  # noqa: E402
from numpyro_vmt.nets import conditional_networks as j_networks  # noqa: E402
from numpyro_vmt.given import given as j_given  # noqa: E402
from pyro_vmt import correction as tc  # noqa: E402
from pyro_vmt.nets import conditional_networks as t_networks  # noqa: E402
from pyro_vmt.given import given as t_given  # noqa: E402
from tests.conformance.test_conditional import twins  # noqa: E402

BACKENDS = ["pyro", "numpyro"]
MU, SD, N_PER, SHIFT = 2.0, 0.25, 250, 1.5
OPTS = dict(step_size=0.1, num_steps=10, correction="mh", path_anneal=True, local_steps=2, energy_lr=1e-3,
            vae_lr=3e-3)


def weight(x):
    """Probability of the upper branch ``y = +MU`` given ``x``."""
    return 0.2 + 0.6 * x


def log_density(y, x):
    """The normalised ``log p(y | x)`` of the two branches (numpy)."""
    w = weight(x)
    up, down = np.log(w) - (y - MU) ** 2 / (2 * SD ** 2), np.log1p(-w) - (y + MU) ** 2 / (2 * SD ** 2)
    return np.logaddexp(up, down) - math.log(math.sqrt(2 * math.pi) * SD)


class JaxBranches(eqx.Module):
    """``E(y | x) = −log[w(x) e^{−(y − MU)²/2SD²} + (1 − w(x)) e^{−(y + MU)²/2SD²}] + SHIFT · x``,
    so ``log Z(x) = log(√(2π) SD) − SHIFT · x`` (fixed: its one parameter has zero
    gradient, so Adam never moves it)."""

    dummy: jax.Array

    def __call__(self, yx):
        y, x = yx[:, :1], yx[:, 1:]
        w = weight(x)
        up, down = jnp.log(w) - (y - MU) ** 2 / (2 * SD ** 2), jnp.log1p(-w) - (y + MU) ** 2 / (2 * SD ** 2)
        return -jnp.logaddexp(up, down)[:, 0] + SHIFT * x[:, 0] + 0.0 * self.dummy


class TorchBranches(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, yx):
        y, x = yx[:, :1], yx[:, 1:]
        w = weight(x)
        up, down = torch.log(w) - (y - MU) ** 2 / (2 * SD ** 2), torch.log1p(-w) - (y + MU) ** 2 / (2 * SD ** 2)
        return -torch.logaddexp(up, down)[:, 0] + SHIFT * x[:, 0] + 0.0 * self.dummy


def pairs():
    x = np.repeat([0.0, 1.0], N_PER)[:, None].astype(np.float32)
    y = np.where(np.random.default_rng(0).uniform(size=x.shape) < weight(x), MU, -MU).astype(np.float32)
    return x, y


def teacher(backend, **options):
    if backend == "pyro":
        _, enc, dec = t_networks((1,), (1,), 1, hidden=(16,), rng=0)
        return pv.ConditionalVariationalMCMCTeaching(pv.ConditionalEnergyModel(TorchBranches(), (1,), (1,)),
                                                     pv.ConditionalVAE(enc, dec, 1, (1,), (1,), obs_scale=1.0),
                                                     rng=0, **(OPTS | options))
    _, enc, dec = j_networks((1,), (1,), 1, hidden=(16,), rng=0)
    return nv.ConditionalVariationalMCMCTeaching(nv.ConditionalEnergyModel(JaxBranches(jnp.zeros(())), (1,), (1,)),
                                                 nv.ConditionalVAE(enc, dec, 1, (1,), (1,), obs_scale=1.0),
                                                 rng=0, **(OPTS | options))


def chains_of(t):
    return t.chains if isinstance(t, pv.ConditionalVariationalMCMCTeaching) else t.state.chains


def to_np(a):
    return a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)


def upper_fractions(y):
    y = to_np(y)[:, 0]
    return np.array([(y[:N_PER] > 0).mean(), (y[N_PER:] > 0).mean()])


def off_by(fractions):
    """``|fraction − w(x)|`` in binomial standard errors, for ``x = 0`` and ``x = 1``."""
    w = weight(np.array([0.0, 1.0]))
    return np.abs(fractions - w) / np.sqrt(w * (1 - w) / N_PER)


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_rows_chain_finds_its_own_branch_weights(backend):
    t = teacher(backend)
    x, y = pairs()
    t.fit((x, y), num_iters=1, batch_size=100, progress=False)
    first = upper_fractions(chains_of(t).position)  # mostly the first proposals
    h = t.fit((x, y), num_iters=300, batch_size=100, progress=False)
    assert tuple(chains_of(t).position.shape) == (2 * N_PER, 1)
    assert (off_by(first) > 4).any(), first  # power: the proposals' branch weights are wrong
    assert (off_by(upper_fractions(chains_of(t).position)) < 4).all(), upper_fractions(chains_of(t).position)
    assert 0.02 < h["path_acceptance"].mean() < 1 and h["crossing_rate"].mean() > 0.01
    exact = upper_fractions(t.sample(x, mh_steps=20, rng=1))
    assert (off_by(exact) < 4).all(), exact


@pytest.mark.parametrize("backend", BACKENDS)
def test_log_partition_and_log_prob_are_per_row(backend):
    t = teacher(backend)  # untrained: the weights are unbiased for any proposal
    x = np.array([[0.0], [1.0]], np.float32)
    log_z, se = t.log_partition(x, num_samples=4000, rng=3)
    truth = math.log(math.sqrt(2 * math.pi) * SD) - SHIFT * x[:, 0]
    assert log_z.shape == se.shape == (2,) and (se < 0.2).all(), se
    assert (np.abs(log_z - truth) < 4 * se + 0.02).all(), (log_z, se, truth)
    xs, ys = pairs()
    rows = np.r_[0:4, N_PER:N_PER + 4]
    lp, lp_se = t.log_prob(ys[rows], xs[rows], num_samples=4000, rng=3)
    true_lp = log_density(ys[rows, 0], xs[rows, 0])
    assert lp.shape == (8,) and (np.abs(lp - true_lp) < 4 * lp_se + 0.02).all(), (lp, true_lp, lp_se)
    assert len(np.unique(lp_se)) == 2  # one estimate per distinct x


def test_path_weights_through_given_match_across_backends():
    with jax.enable_x64(True):
        (te_net, t_enc, t_dec), (je_net, j_enc, j_dec) = twins()
        te = pv.ConditionalEnergyModel(te_net, (2,), (3,), 2.0)
        je = nv.ConditionalEnergyModel(je_net, (2,), (3,), 2.0)
        tv = pv.ConditionalVAE(t_enc, t_dec, 2, (2,), (3,)).double()
        jv = nv.ConditionalVAE(j_enc, j_dec, 2, (2,), (3,))
        g = np.random.default_rng(5)
        x, z, x0 = g.standard_normal((6, 3)), g.standard_normal((6, 2)), g.standard_normal((6, 2))
        noise, uniform = g.standard_normal((4, 6, 2)), g.uniform(size=(4, 6))
        for adjust in (False, True):
            t = tc.path_log_weight(*t_given(te, tv, torch.from_numpy(x)), torch.from_numpy(z), torch.from_numpy(x0),
                                   torch.from_numpy(noise), 0.3, 1.0, adjust, torch.from_numpy(uniform), True)
            j = jc.path_log_weight(*j_given(je, jv, jnp.asarray(x)), jnp.asarray(z), jnp.asarray(x0),
                                   jnp.asarray(noise), 0.3, 1.0, adjust, jnp.asarray(uniform), True)
            for a, b in zip(t, j):
                np.testing.assert_allclose(np.asarray(b), a.detach().numpy(), rtol=1e-5, atol=1e-5)
            assert np.isfinite(t.log_weight.detach().numpy()).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_carries_every_rows_chain(backend, tmp_path):
    x, y = pairs()
    straight = teacher(backend)
    straight.fit((x, y), num_iters=6, batch_size=50, progress=False)
    first = teacher(backend)
    first.fit((x, y), num_iters=3, batch_size=50, progress=False)
    first.save(tmp_path / "ckpt")
    resumed = teacher(backend)
    resumed.load(tmp_path / "ckpt")
    resumed.fit((x, y), num_iters=3, batch_size=50, progress=False)
    for a, b in zip(chains_of(straight), chains_of(resumed)):
        np.testing.assert_array_equal(to_np(a), to_np(b))


@pytest.mark.parametrize("backend", BACKENDS)
def test_uses_that_cannot_key_the_chains_are_refused(backend):
    x, y = pairs()
    with pytest.raises(ValueError, match="path_refresh=True"):
        teacher(backend, path_refresh=False)
    t = teacher(backend)
    with pytest.raises(ValueError, match="one persistent chain per training row"):
        t.step((x[:10], y[:10]))
    t.fit((x, y), num_iters=1, batch_size=10, progress=False)
    with pytest.raises(ValueError, match="one chain per row of the 500 training pairs"):
        t.fit((x[:100], y[:100]), num_iters=1, batch_size=10, progress=False)
    assert math.isfinite(float(to_np(chains_of(t).energy).sum()))
