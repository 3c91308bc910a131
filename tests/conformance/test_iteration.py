"""One whole training iteration gives the same numbers in both backends, for every
``init`` mode: the same weights (torch → JAX copy, float64), the same data batch and
the same injected random draws — the chains' starting draws and the Langevin noise
through :class:`~pyro_vmt.update.Draws`, and the VAE's reparameterisation noise
``z = μ + σ ε`` by fixing ``ε`` in each PPL's Normal distribution (the draw happens
inside Pyro's / NumPyro's ``Trace_ELBO``). Compared to 1e-5: the diagnostics, the
updated energy and VAE weights (one Adam step each) and the replay buffer; and the
weights after five iterations under a learning-rate schedule (Adam's later steps).

Torch runs its real ``VariationalMCMCTeaching.step`` with the draws bound into the
``start_chains`` / ``revise`` it calls; JAX runs ``update_core`` traced afresh in a new
function (so the patched distribution is seen and no other test reuses the trace)."""

from functools import partial

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pyro")
jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
eqx = pytest.importorskip("equinox")

import jax.numpy as jnp  # noqa: E402

import numpyro_vmt as nv  # noqa: E402
import pyro_vmt as pv  # noqa: E402
from numpyro_vmt import update as jupdate  # noqa: E402
from pyro_vmt import teaching as tteaching  # noqa: E402
from pyro_vmt import update as tupdate  # noqa: E402
from twins import mlp_weights, twin_mlp  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-8)
N, K, LATENT, BUFFER = 12, 4, 2, 20
OPTIONS = dict(step_size=0.2, num_steps=K, buffer_size=BUFFER, init_bounds=(-2.0, 2.0), reinit_prob=0.3,
               energy_reg=0.01, energy_lr=0.01, vae_lr=0.02)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def draws(seed=0):
    g = np.random.default_rng(seed)
    return dict(latents=g.standard_normal((N, LATENT)), uniform=g.uniform(size=(N, 2)),
                slots=g.integers(0, BUFFER, N), reset=g.uniform(size=N), noise=g.standard_normal((K, N, 2)),
                eps=g.standard_normal((N, LATENT)), batch=1.0 + 0.5 * g.standard_normal((N, 2)),
                buffer=g.uniform(-2, 2, (BUFFER, 2)))


def twins(init, **options):
    te, je = twin_mlp(2, 1, (16, 16), seed=0)
    tenc, jenc = twin_mlp(2, 2 * LATENT, (16,), seed=1)
    tdec, jdec = twin_mlp(LATENT, 2, (16,), seed=2)
    tvae = pv.VAE(tenc, tdec, LATENT, (2,), kl_weight=2.0).double()
    jvae = nv.VAE(jenc, jdec, LATENT, (2,), kl_weight=2.0)
    options = {**OPTIONS, **options}
    t = pv.VariationalMCMCTeaching(pv.EnergyModel(te, (2,), ref_scale=3.0), tvae, init=init, rng=0, **options)
    j = nv.VariationalMCMCTeaching(nv.EnergyModel(je, (2,), ref_scale=3.0), jvae, init=init, rng=0, **options)
    return t, j


def fix_eps(monkeypatch, eps):
    """Every reparameterised Normal draw of the iteration (only the guide's ``z``) is ``μ + σ ε``."""
    import numpyro.distributions as ndist

    t_eps, j_eps = torch.from_numpy(eps), jnp.asarray(eps)
    monkeypatch.setattr(torch.distributions.Normal, "rsample", lambda self, sample_shape=(): self.loc + self.scale * t_eps)
    monkeypatch.setattr(ndist.Normal, "sample", lambda self, key, sample_shape=(): self.loc + self.scale * j_eps)


def run_torch(t, d, monkeypatch):
    given = tupdate.Draws(**{k: torch.from_numpy(d[k]) for k in tupdate.Draws._fields})
    monkeypatch.setattr(tteaching, "start_chains", partial(tupdate.start_chains, draws=given))
    monkeypatch.setattr(tteaching, "revise", lambda sampler, x0, gen, num_steps=None, runner=None:
                        tupdate.revise(sampler, x0, gen, num_steps, noise=given.noise))
    if t.buffer is not None:
        t.buffer = torch.from_numpy(d["buffer"].copy())
    info = t.step(torch.from_numpy(d["batch"]))
    return info, t.energy.net, t.vae, None if t.buffer is None else t.buffer.numpy()


def run_jax(j, d):
    given = jupdate.Draws(**{k: jnp.asarray(d[k]) for k in jupdate.Draws._fields})
    state = j.state if j.buffer is None else j.state._replace(buffer=jnp.asarray(d["buffer"]))
    # a fresh function under jit: traced with the patched Normal, cached for this test only
    core = jax.jit(lambda state, batch, given: jupdate.update_core.__wrapped__(j._spec, state, batch, given))
    new, info, diag = core(state, jnp.asarray(d["batch"]), given)
    assert int(diag.num_divergent) == 0
    energy = eqx.combine(new.energy, j._spec.energy)
    vae = None if new.vae is None else eqx.combine(new.vae, j._spec.vae)
    return info, energy.net, vae, None if new.buffer is None else np.asarray(new.buffer)


@pytest.mark.parametrize("init", ["vae", "noise", "persistent", "generator"])
def test_one_iteration_matches(init, monkeypatch):
    d = draws()
    t, j = twins(init)
    before = mlp_weights(t.energy.net)
    fix_eps(monkeypatch, d["eps"])
    t_info, t_net, t_vae, t_buf = run_torch(t, d, monkeypatch)
    j_info, j_net, j_vae, j_buf = run_jax(j, d)
    for name, a, b in zip(t_info._fields, t_info, j_info):
        np.testing.assert_allclose(np.asarray(b, float), float(a), **TOL, err_msg=name)
    assert np.isnan(float(t_info.vae_loss)) == (init in ("noise", "persistent"))
    for a, b, old in zip(mlp_weights(t_net), mlp_weights(j_net), before):
        np.testing.assert_allclose(b, a, **TOL)
        assert not np.array_equal(a, old) or a.size == 1  # the energy moved (its last bias gets no gradient)
    if init in ("vae", "generator"):
        for part in ("encoder", "decoder"):
            for a, b in zip(mlp_weights(getattr(t_vae, part)), mlp_weights(getattr(j_vae, part))):
                np.testing.assert_allclose(b, a, **TOL, err_msg=part)
        np.testing.assert_allclose(np.asarray(j_vae.log_obs_scale), t_vae.log_obs_scale.detach().numpy(), **TOL)
    if init == "persistent":
        np.testing.assert_allclose(j_buf, t_buf, **TOL)
        assert not np.array_equal(t_buf, d["buffer"])


def test_iterations_match_under_the_learning_rate_schedule(monkeypatch):
    """Five iterations (the same injected draws each time): the optimisers' later steps,
    where Adam's ``betas`` and bias corrections act (its first step is ``±lr`` whatever
    they are), and the cosine decay of both learning rates agree across backends."""
    d = draws(1)
    t, j = twins("vae", lr_decay_steps=4, lr_final_ratio=0.1, betas=(0.6, 0.95))
    fix_eps(monkeypatch, d["eps"])
    given = jupdate.Draws(**{k: jnp.asarray(d[k]) for k in jupdate.Draws._fields})
    core = jax.jit(lambda state, batch: jupdate.update_core.__wrapped__(j._spec, state, batch, given))
    state = j.state
    for _ in range(5):
        run_torch(t, d, monkeypatch)
        state, _, _ = core(state, jnp.asarray(d["batch"]))
    energy, vae = eqx.combine(state.energy, j._spec.energy), eqx.combine(state.vae, j._spec.vae)
    for a, b in zip(mlp_weights(t.energy.net), mlp_weights(energy.net)):
        np.testing.assert_allclose(b, a, **TOL)
    for part in ("encoder", "decoder"):
        for a, b in zip(mlp_weights(getattr(t.vae, part)), mlp_weights(getattr(vae, part))):
            np.testing.assert_allclose(b, a, **TOL, err_msg=part)
