"""The conditional classes are one interface too: the same names and signatures in both
backends, the same numbers for the same weights and noise (torch → JAX weight copy,
float64: energies, Langevin revisions of y with x fixed, the conditional VAE's
deterministic pieces, to 1e-5), and the same errors for the same bad input."""

import importlib
import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyro")
jax = pytest.importorskip("jax")
eqx = pytest.importorskip("equinox")

import jax.numpy as jnp  # noqa: E402

import numpyro_vmt as nv  # noqa: E402
import pyro_vmt as pv  # noqa: E402

NAMES = ["ConditionalEnergyModel", "ConditionalVAE", "ConditionalVariationalMCMCTeaching"]
TOL = dict(rtol=1e-5, atol=1e-5)


def _params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("module", ["conditional", "conditional_energy", "conditional_vae", "nets"])
def test_same_names_in_both_packages_and_modules(module):
    a, b = (importlib.import_module(f"{pkg}.{module}") for pkg in ("pyro_vmt", "numpyro_vmt"))
    assert set(a.__all__) == set(b.__all__)
    for name in NAMES:
        assert name in pv.__all__ and name in nv.__all__


@pytest.mark.parametrize("name", NAMES + ["conditional_networks"])
def test_same_signatures(name):
    a, b = (getattr(pv, name), getattr(nv, name)) if name in NAMES else (pv.nets.conditional_networks,
                                                                            nv.nets.conditional_networks)
    if inspect.isfunction(a):
        assert _params(a) == _params(b)
        return
    assert _params(a.__init__) == _params(b.__init__)
    own = {"forward"} if name == "ConditionalEnergyModel" else set()  # torch's forward is equinox's __call__
    ma = {n for n, v in vars(a).items() if not n.startswith("_") and callable(v)} - own
    mb = {n for n, v in vars(b).items() if not n.startswith("_") and callable(v)}
    assert ma == mb, (ma - mb, mb - ma)
    public = ma | {"sample", "state_dict", "load_state_dict", "save", "load", "encode", "decode"}
    for m in sorted(n for n in public if hasattr(a, n) and hasattr(b, n)):
        assert _params(getattr(a, m)) == _params(getattr(b, m)), f"{name}.{m}"
    if name == "ConditionalEnergyModel":
        assert _params(a.forward) == _params(b.__call__)


# ----------------------------------------------------------------- numbers
@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _copy(j_mlp, t_mlp):
    weights = [jnp.asarray(t.weight.detach().numpy()) for t in t_mlp.layers]
    biases = [jnp.asarray(t.bias.detach().numpy()) for t in t_mlp.layers]
    j_mlp = eqx.tree_at(lambda m: [layer.weight for layer in m.layers], j_mlp, weights)
    return eqx.tree_at(lambda m: [layer.bias for layer in m.layers], j_mlp, biases)


def twins():
    t_nets = [n.double() for n in pv.nets.conditional_networks((2,), (3,), 2, hidden=(16, 16), rng=0)]
    j_nets = [_copy(j, t) for j, t in zip(nv.nets.conditional_networks((2,), (3,), 2, hidden=(16, 16), rng=0), t_nets)]
    return t_nets, j_nets


def inputs(n=6, k=5, seed=1):
    g = np.random.default_rng(seed)
    return g.standard_normal((n, 3)), g.standard_normal((n, 2)), g.standard_normal((k, n, 2)), g.uniform(size=(k, n))


def same(a, b):
    np.testing.assert_allclose(np.asarray(b), a.detach().numpy(), **TOL)


@pytest.mark.parametrize("adjust", [False, True])
def test_energies_and_langevin_revisions_of_y_match(x64, adjust):
    (te_net, _, _), (je_net, _, _) = twins()
    te, je = pv.ConditionalEnergyModel(te_net, (2,), (3,), 2.0), nv.ConditionalEnergyModel(je_net, (2,), (3,), 2.0)
    x, y, xi, u = inputs()
    tx, jx = torch.from_numpy(x), jnp.asarray(x)
    same(te(torch.from_numpy(y), tx), je(jnp.asarray(y), jx))
    delta = 1.5 if adjust else 0.3  # a large MALA step: some proposals are rejected
    ts, ti = pv.Langevin(te.potential(tx), delta, 5, adjust=adjust).run(
        None, torch.from_numpy(y), noise=torch.from_numpy(xi), uniform=torch.from_numpy(u))
    js, ji = nv.Langevin(je.potential(jx), delta, 5, adjust=adjust).run(
        None, jnp.asarray(y), noise=jnp.asarray(xi), uniform=jnp.asarray(u))
    for a, b in zip(ts, js):
        same(a, b)
    np.testing.assert_array_equal(np.asarray(ji.is_accepted), ti.is_accepted.numpy())
    if adjust:
        assert 0 < ti.is_accepted.sum() < ti.is_accepted.numel(), "the case should mix accepts and rejects"


def test_conditional_vae_deterministic_pieces_match(x64):
    (_, t_enc, t_dec), (_, j_enc, j_dec) = twins()
    tv = pv.ConditionalVAE(t_enc, t_dec, 2, (2,), (3,), kl_weight=2.0).double()
    jv = nv.ConditionalVAE(j_enc, j_dec, 2, (2,), (3,), kl_weight=2.0)
    x, y, _, _ = inputs()
    z = np.random.default_rng(4).standard_normal((6, 2))
    tx, ty, tz = (torch.from_numpy(a) for a in (x, y, z))
    jx, jy, jz = (jnp.asarray(a) for a in (x, y, z))
    for a, b in zip(tv.encode(ty, tx), jv.encode(jy, jx)):
        same(a, b)
    same(tv.decode(tz, tx), jv.decode(jz, jx))
    same(tv.joint_loss(ty, tx, tz), jv.joint_loss(jy, jx, jz))


# ----------------------------------------------------------------- errors
def _teacher(mod, **options):
    e_net, enc, dec = mod.nets.conditional_networks((2,), (3,), 2, hidden=(8,), rng=0)
    energy = mod.ConditionalEnergyModel(e_net, (2,), (3,))
    return mod.ConditionalVariationalMCMCTeaching(energy, mod.ConditionalVAE(enc, dec, 2, (2,), (3,)),
                                                  rng=0, step_size=0.1, num_steps=2, **options)


def _arr(mod, a):
    return torch.as_tensor(a) if mod is pv else jnp.asarray(a)


Z = np.zeros
BAD_CASES = {
    "rows": lambda M: _teacher(M).step((Z((4, 3), np.float32), Z((5, 2), np.float32))),
    "y_shape": lambda M: _teacher(M).step((Z((4, 3), np.float32), Z((4, 3), np.float32))),
    "x_nan": lambda M: _teacher(M).fit((np.full((4, 3), np.nan, np.float32), Z((4, 2), np.float32)), 1),
    "y_dtype": lambda M: _teacher(M).step((Z((4, 3), np.float32), Z((4, 2), np.int32))),
    "not_a_pair": lambda M: _teacher(M).step(Z((4, 5), np.float32)),
    "sample_x": lambda M: _teacher(M).sample(Z((4, 2), np.float32)),
    "persistent": lambda M: _teacher(M, init="persistent"),
    "num_samples": lambda M: _teacher(M, num_samples=3),
    "energy_rows": lambda M: M.ConditionalEnergyModel(M.nets.conditional_networks((2,), (3,), 2, (8,))[0], (2,), (3,))(
        _arr(M, Z((4, 2))), _arr(M, Z((3, 3)))),
    "vae_no_x": lambda M: M.ConditionalVAE(*M.nets.conditional_networks((2,), (3,), 2, (8,))[1:], 2, (2,), (3,)).model(
        _arr(M, Z((4, 2)))),
    "vae_x_shape": lambda M: M.ConditionalVAE(*M.nets.conditional_networks((2,), (3,), 2, (8,))[1:], 2, (2,), (3,)).sample(
        _arr(M, Z((4, 2))), 0),
    "cond_shape": lambda M: M.ConditionalEnergyModel(M.nets.conditional_networks((2,), (3,), 2, (8,))[0], (2,), ()),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_same_errors_for_the_same_bad_input(case):
    errors = []
    for mod in (pv, nv):
        with pytest.raises(Exception) as info:
            BAD_CASES[case](mod)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1], errors
