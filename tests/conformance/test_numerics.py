"""Torch and JAX give the same numbers: one network's weights copied across
frameworks, the same injected noise and uniforms, float64 — one Langevin step, a
5-step ULA and MALA run (same acceptance decisions), the energies, and the VAE's
deterministic pieces agree to 1e-5."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyro")
jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
eqx = pytest.importorskip("equinox")

import jax.numpy as jnp  # noqa: E402

import numpyro_vmt as nv  # noqa: E402
import pyro_vmt as pv  # noqa: E402
from numpyro_vmt import nets as jnets  # noqa: E402
from pyro_vmt import nets as tnets  # noqa: E402
from twins import copy_linears, twin_mlp  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def twin_energies(ref_scale=2.0):
    t, j = twin_mlp(3, 1, (16, 16), seed=0)
    return pv.EnergyModel(t, (3,), ref_scale=ref_scale), nv.EnergyModel(j, (3,), ref_scale=ref_scale)


def inputs(n=6, k=5, seed=1):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, 3)), g.standard_normal((k, n, 3)), g.uniform(size=(k, n))


def assert_same(a, b):
    np.testing.assert_allclose(np.asarray(b), a.detach().numpy(), **TOL)


def test_copied_weights_give_the_same_energies():
    te, je = twin_energies()
    x, _, _ = inputs()
    assert_same(te(torch.from_numpy(x)), je(jnp.asarray(x)))
    np.testing.assert_allclose(je.numpy_energy(x), te.numpy_energy(x), **TOL)


def test_conv_energy_net_has_the_same_layout():
    torch.manual_seed(0)
    t = tnets.ConvEnergyNet((8, 8), (4, 6, 8)).double()
    j = jnets.ConvEnergyNet((8, 8), (4, 6, 8), rng=0)
    j = copy_linears(j, list(t.convs) + [t.out], lambda m: list(m.convs) + [m.out])
    x = np.random.default_rng(0).standard_normal((5, 64))
    assert_same(t(torch.from_numpy(x)), eqx.filter_jit(lambda m, x: m(x))(j, jnp.asarray(x)))


def test_one_step_matches():
    te, je = twin_energies()
    x, xi, _ = inputs()
    ts, ti = pv.step(None, pv.init(torch.from_numpy(x), te), te, 0.3, noise_scale=0.7,
                     noise=torch.from_numpy(xi[0]))
    js, ji = nv.step(None, nv.init(jnp.asarray(x), je), je, 0.3, noise_scale=0.7, noise=jnp.asarray(xi[0]))
    for a, b in zip(ts, js):
        assert_same(a, b)
    for a, b in zip(ti, ji):
        np.testing.assert_allclose(np.asarray(b, dtype=float), a.double().numpy(), **TOL)


@pytest.mark.parametrize("adjust", [False, True])
def test_five_step_run_matches(adjust):
    te, je = twin_energies()
    x, xi, u = inputs()
    delta = 2.0 if adjust else 0.3  # a large MALA step: some proposals are rejected
    ts, ti = pv.Langevin(te, delta, 5, adjust=adjust).run(
        None, torch.from_numpy(x), noise=torch.from_numpy(xi), uniform=torch.from_numpy(u))
    js, ji = nv.Langevin(je, delta, 5, adjust=adjust).run(
        None, jnp.asarray(x), noise=jnp.asarray(xi), uniform=jnp.asarray(u))
    for a, b in zip(ts, js):
        assert_same(a, b)
    assert_same(ti.acceptance_rate, ji.acceptance_rate)
    assert_same(ti.grad_norm, ji.grad_norm)
    np.testing.assert_array_equal(np.asarray(ji.is_accepted), ti.is_accepted.numpy())
    np.testing.assert_array_equal(np.asarray(ji.is_divergent), ti.is_divergent.numpy())
    if adjust:
        assert 0 < ti.is_accepted.sum() < ti.is_accepted.numel(), "the case should mix accepts and rejects"


def test_vae_deterministic_pieces_match():
    t_enc, j_enc = twin_mlp(3, 4, (8,), seed=2)
    t_dec, j_dec = twin_mlp(2, 3, (8,), seed=3)
    tv = pv.VAE(t_enc, t_dec, 2, (3,), kl_weight=2.0).double()
    jv = nv.VAE(j_enc, j_dec, 2, (3,), kl_weight=2.0)
    x, _, _ = inputs()
    z = np.random.default_rng(4).standard_normal((6, 2))
    (loc, scale), mean, joint = eqx.filter_jit(lambda v, x, z: (v.encode(x), v.decode(z), v.joint_loss(x, z)))(
        jv, jnp.asarray(x), jnp.asarray(z))
    tx, tz = torch.from_numpy(x), torch.from_numpy(z)
    assert_same(tv.encode(tx)[0], loc)
    assert_same(tv.encode(tx)[1], scale)
    assert_same(tv.decode(tz), mean)
    assert_same(tv.joint_loss(tx, tz), joint)
