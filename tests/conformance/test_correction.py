"""The exact path correction (``correction`` and ``mh`` modules of both backends).

- Conformance: torch and JAX give the same log-weights for the same path and noise
  (float64, ULA and MALA, with a real VAE).
- Exactness: on a fixed 2-D mixture with weights 0.7/0.2/0.1 and modes far apart,
  chains that accept proposal paths with min(1, w'/w) hit the true weights within
  Monte Carlo error; the proposals themselves (equal weights by symmetry) provably do
  not (a power check of the same test).
- ``log Z``: on a Gaussian and on the normalised mixture, the estimate is within three
  of its standard errors of the truth.
"""

import math

import numpy as np
import pytest

from tests.conformance.test_numerics import inputs, twin_energies, twin_mlp  # noqa: F401

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
eqx = pytest.importorskip("equinox")

import jax.numpy as jnp  # noqa: E402

import numpyro_vmt as nv  # noqa: E402
import pyro_vmt as pv  # noqa: E402
from numpyro_vmt import correction as jc  # noqa: E402
from numpyro_vmt import mh as jmh  # noqa: E402
from pyro_vmt import correction as tc  # noqa: E402
from pyro_vmt import mh as tmh  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)
WEIGHTS = np.array([0.7, 0.2, 0.1])
ANGLES = np.deg2rad([90.0, 210.0, 330.0])
MEANS = 3.0 * np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1)
SD = 0.2
BACKENDS = ["pyro", "numpyro"]


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- fixed energies and a linear "VAE"
class JaxMixture(eqx.Module):
    """``−log Σ_j w_j N(x; μ_j, sd² I)``: a normalised density, so ``log Z = 0``."""

    event_shape: tuple = eqx.field(static=True, default=(2,))

    def __call__(self, x):
        d2 = ((x[:, None, :] - jnp.asarray(MEANS)) ** 2).sum(-1)
        logs = jnp.log(jnp.asarray(WEIGHTS)) - d2 / (2 * SD ** 2) - jnp.log(2 * jnp.pi * SD ** 2)
        return -jax.scipy.special.logsumexp(logs, axis=1)


class TorchMixture(torch.nn.Module):
    event_shape = (2,)

    def forward(self, x):
        d2 = ((x[:, None, :] - torch.as_tensor(MEANS, dtype=x.dtype)) ** 2).sum(-1)
        logs = torch.log(torch.as_tensor(WEIGHTS, dtype=x.dtype)) - d2 / (2 * SD ** 2) - math.log(2 * math.pi * SD ** 2)
        return -torch.logsumexp(logs, 1)


class JaxQuadratic(eqx.Module):
    """``E(x) = ½ Σ p_i x_i²``: ``log Z = (d/2) log 2π − ½ Σ log p_i``."""

    event_shape: tuple = eqx.field(static=True, default=(3,))

    def __call__(self, x):
        return 0.5 * (jnp.asarray([1.0, 4.0, 0.25]) * x ** 2).sum(1)


class TorchQuadratic(torch.nn.Module):
    event_shape = (3,)

    def forward(self, x):
        return 0.5 * (torch.tensor([1.0, 4.0, 0.25], dtype=x.dtype) * x ** 2).sum(1)


QUAD_LOG_Z = 1.5 * math.log(2 * math.pi) - 0.5 * (math.log(1.0) + math.log(4.0) + math.log(0.25))

# A linear-Gaussian "VAE": g(z) = 3z, σ = 0.5, encoder = the exact posterior.
A, S = 3.0, 0.5
POST_VAR = 1.0 / (1.0 + A * A / S ** 2)


class JaxLinearVAE(eqx.Module):
    latent_dim: int = eqx.field(static=True, default=2)

    def decode(self, z):
        return A * z

    def encode(self, x):
        return A / S ** 2 * POST_VAR * x, jnp.full(x.shape, math.sqrt(POST_VAR), x.dtype)

    def scale(self):
        return jnp.asarray(S)


class TorchLinearVAE:
    latent_dim = 2

    def decode(self, z):
        return A * z

    def encode(self, x):
        return A / S ** 2 * POST_VAR * x, torch.full_like(x, math.sqrt(POST_VAR))

    def scale(self):
        return torch.tensor(S, dtype=torch.float64)


# An equal-weight mixture "VAE": z ∈ R, the three thirds of N(0, 1) decode to the three
# means, σ = 0.3; the encoder is a Gaussian around the middle of the x's nearest mode's third.
CUT, Z_MID, Z_SD, SIGMA = 0.4307, np.array([-1.0, 0.0, 1.0]), 0.2, 0.3


class JaxMixtureVAE(eqx.Module):
    latent_dim: int = eqx.field(static=True, default=1)

    def decode(self, z):
        j = (z[:, 0] > -CUT).astype(jnp.int32) + (z[:, 0] > CUT).astype(jnp.int32)
        return jnp.asarray(MEANS)[j]

    def encode(self, x):
        j = (((x[:, None, :] - jnp.asarray(MEANS)) ** 2).sum(-1)).argmin(1)
        return jnp.asarray(Z_MID)[j][:, None], jnp.full((x.shape[0], 1), Z_SD, x.dtype)

    def scale(self):
        return jnp.asarray(SIGMA)


class TorchMixtureVAE:
    latent_dim = 1

    def decode(self, z):
        j = (z[:, 0] > -CUT).long() + (z[:, 0] > CUT).long()
        return torch.as_tensor(MEANS, dtype=z.dtype)[j]

    def encode(self, x):
        j = ((x[:, None, :] - torch.as_tensor(MEANS, dtype=x.dtype)) ** 2).sum(-1).argmin(1)
        return torch.as_tensor(Z_MID, dtype=x.dtype)[j][:, None], torch.full((x.shape[0], 1), Z_SD, dtype=x.dtype)

    def scale(self):
        return torch.tensor(SIGMA, dtype=torch.float64)


def kit(backend):
    if backend == "pyro":
        return tc, TorchMixture(), TorchQuadratic(), TorchMixtureVAE(), 0
    return jc, JaxMixture(), JaxQuadratic(), JaxMixtureVAE(), jax.random.PRNGKey(0)


def mh_of(backend):
    return tmh if backend == "pyro" else jmh


def to_np(a):
    return a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)


def mode_counts(x):
    d2 = ((to_np(x)[:, None, :] - MEANS) ** 2).sum(-1)
    return np.bincount(d2.argmin(1), minlength=3)


def chi2(counts):
    expected = WEIGHTS * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


CHI2_2DF_999 = 13.82  # P(χ²₂ > 13.82) = 0.001


# ---------------------------------------------------------------- conformance
@pytest.mark.parametrize("adjust", [False, True])
@pytest.mark.parametrize("anneal", [False, True])
def test_log_weights_match_across_backends(adjust, anneal):
    te, je = twin_energies()
    t_enc, j_enc = twin_mlp(3, 4, (8,), seed=2)
    t_dec, j_dec = twin_mlp(2, 3, (8,), seed=3)
    tv = pv.VAE(t_enc, t_dec, 2, (3,)).double()
    jv = nv.VAE(j_enc, j_dec, 2, (3,))
    x0, noise, uniform = inputs(n=6, k=5)
    z = np.random.default_rng(4).standard_normal((6, 2))
    t = tc.path_log_weight(te, tv, torch.from_numpy(z), torch.from_numpy(x0), torch.from_numpy(noise), 0.3,
                           1.0, adjust, torch.from_numpy(uniform), anneal)
    j = jc.path_log_weight(je, jv, jnp.asarray(z), jnp.asarray(x0), jnp.asarray(noise), 0.3, 1.0, adjust,
                           jnp.asarray(uniform), anneal)
    for a, b in zip(t, j):
        np.testing.assert_allclose(np.asarray(b), a.numpy(), **TOL)
    assert np.isfinite(t.log_weight.numpy()).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mala_weight_is_the_start_weight(backend):
    """With MALA the path term telescopes to E(x_K) − E(x_0): log w = −E(x_0) + start term."""
    mod, _, quad, _, _ = kit(backend)
    g = np.random.default_rng(0)
    z, eps, noise = g.standard_normal((50, 3)), g.standard_normal((50, 3)), g.standard_normal((4, 50, 3))
    x0 = A * z + S * eps
    uniform = g.uniform(size=(4, 50))
    cast = torch.from_numpy if backend == "pyro" else jnp.asarray
    vae3 = JaxLinearVAE(latent_dim=3) if backend == "numpyro" else TorchLinearVAE()
    path = mod.path_log_weight(quad, vae3, cast(z), cast(x0), cast(noise), 0.5, 1.0, True, cast(uniform))
    expected = to_np(mod.start_log_ratio(vae3, cast(x0), cast(z))) - to_np(quad(cast(x0)))
    np.testing.assert_allclose(to_np(path.log_weight), expected, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------- exactness
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("refresh, anneal", [(True, False), (False, False), (True, True)])
def test_corrected_chains_find_the_mode_weights(backend, refresh, anneal):
    mod, energy, _, vae, rng = kit(backend)
    n, iters, opts = 3000, 40, dict(step_size=0.15, num_steps=8, anneal=anneal)
    if backend == "pyro":
        rng = torch.Generator().manual_seed(0)
        keys = [rng] * (3 * iters + 1)
    else:
        keys = list(jax.random.split(rng, 3 * iters + 1))
    chains = mod.propose(keys[0], energy, vae, n, **opts)
    first = mode_counts(chains.position)
    acc = []
    for t in range(iters):
        k_prop, k_ref, k_acc = keys[1 + 3 * t: 4 + 3 * t]
        current = (mod.refresh(k_ref, energy, vae, chains.position, **opts) if refresh
                   else mod.restale(energy, chains))
        proposal = mod.propose(k_prop, energy, vae, n, **opts)
        chains, info = mh_of(backend).accept(k_acc, current, proposal, radius=1.0)
        acc.append(float(info.acceptance_rate))
    counts = mode_counts(chains.position)
    # the proposals put a third on each mode: the same test must reject them
    assert chi2(first) > 10 * CHI2_2DF_999, first
    assert chi2(counts) < CHI2_2DF_999, (counts, np.mean(acc))
    assert 0.05 < np.mean(acc) < 1.0
    assert float(info.crossing_rate) > 0.01


def within_mode_variance(x):
    """Pooled variance per coordinate of the offsets from each point's nearest mean."""
    x = to_np(x)
    d2 = ((x[:, None, :] - MEANS) ** 2).sum(-1)
    return float(((x - MEANS[d2.argmin(1)]) ** 2).mean())


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_moves_keep_the_chains_exact(backend):
    """``local_steps`` MALA moves between the path tests: the mode weights and the modes'
    variance stay exact (the first proposals have neither)."""
    from vmt import TeachingConfig

    mod, energy, _, vae, rng = kit(backend)
    cfg = TeachingConfig(step_size=0.15, num_steps=8, correction="mh", local_steps=5)
    n = 2000
    gen = torch.Generator().manual_seed(0) if backend == "pyro" else None
    key = (lambda t: gen) if backend == "pyro" else (lambda t: jax.random.fold_in(rng, t))
    chains, _ = mh_of(backend).update_chains(key(0), None, energy, vae, n, cfg)
    first_var = within_mode_variance(chains.position)
    local = []
    for t in range(1, 21):
        chains, info = mh_of(backend).update_chains(key(t), chains, energy, vae, n, cfg)
        local.append(float(info.local_acceptance))
    # pooled over 2n offsets: the variance estimate's relative sd is sqrt(2 / 2n)
    tol = 4 * math.sqrt(1.0 / n)
    assert chi2(mode_counts(chains.position)) < CHI2_2DF_999
    assert abs(within_mode_variance(chains.position) / SD ** 2 - 1) < tol, within_mode_variance(chains.position)
    assert abs(first_var / SD ** 2 - 1) > tol, first_var  # power: the same test rejects the proposals
    assert 0.3 < np.mean(local) <= 1.0


# ---------------------------------------------------------------- log Z
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("adjust, anneal", [(False, False), (True, False), (False, True)])
def test_log_partition_of_a_gaussian(backend, adjust, anneal):
    mod, _, quad, _, rng = kit(backend)
    est, se = mod.log_partition(rng, quad, None, 20_000, 0.5, 5, adjust=adjust, wide=(0.0, 2.5), anneal=anneal)
    assert 0 < se < 0.05
    assert abs(est - QUAD_LOG_Z) < 3 * se, (est, se, QUAD_LOG_Z)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("anneal", [False, True])
def test_log_partition_of_a_normalised_mixture(backend, anneal):
    mod, energy, _, vae, rng = kit(backend)
    est, se = mod.log_partition(rng, energy, vae, 20_000, 0.15, 8, anneal=anneal)
    assert 0 < se < 0.1
    assert abs(est) < 3 * se, (est, se)


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_ess_and_log_mean_exp(backend):
    mod = tc if backend == "pyro" else jc
    cast = torch.tensor if backend == "pyro" else jnp.asarray
    log_w = cast([0.0, 0.0, -np.inf, 0.0])
    assert float(mod.weight_ess(log_w)) == pytest.approx(0.75)
    est, _ = mod.log_mean_exp(cast([math.log(1.0), math.log(3.0)]))
    assert float(est) == pytest.approx(math.log(2.0))
