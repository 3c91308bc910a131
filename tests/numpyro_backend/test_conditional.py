"""Conditional EBM, VAE and teacher, JAX idioms (the shared behaviour is in
``tests/backends``): a plain NumPyro SVI script, the library's ELBO as SVI's
objective, the pure ``update``, MCMC on y given x, and one statistical check — a
trained conditional EBM's samples at a fixed x against the known two-branch
conditional density."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
eqx = pytest.importorskip("equinox")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402

from numpyro_vmt import ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching  # noqa: E402
from numpyro_vmt.nets import conditional_networks  # noqa: E402
from vmt.app.recipes import build_teacher, get_recipe  # noqa: E402
from vmt.data.tasks import load_task  # noqa: E402
from toy import pairs  # noqa: E402

def make(init="vae", seed=0, **options):
    e_net, enc, dec = conditional_networks((2,), (3,), 2, hidden=(16,), rng=seed)
    energy = ConditionalEnergyModel(e_net, (2,), (3,), ref_scale=3.0)
    vae = ConditionalVAE(enc, dec, 2, (2,), (3,), obs_scale=0.3)
    opts = dict(step_size=0.1, num_steps=3, init_bounds=(-2.0, 2.0)) | options
    return ConditionalVariationalMCMCTeaching(energy, vae, init=init, rng=seed, **opts)


def leaves(t):
    return [np.asarray(a) for a in jax.tree.leaves(t.state)]


def test_plain_numpyro_svi_step_moves_encoder_and_decoder_weights():
    _, enc, dec = conditional_networks((2,), (3,), 2, hidden=(8,))
    cvae = ConditionalVAE(enc, dec, 2, (2,), (3,))
    x, y = (jnp.asarray(a) for a in pairs(16))
    svi = SVI(cvae.model, cvae.guide, optax.adam(0.01), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), y, x)  # the conditioning input is an ordinary argument
    state, loss = jax.jit(svi.update)(state, y, x)
    new = svi.get_params(state)
    for name, module in {"encoder$params": cvae.encoder, "decoder$params": cvae.decoder,
                         "log_obs_scale": cvae.log_obs_scale}.items():
        old = jax.tree.leaves(eqx.filter(module, eqx.is_inexact_array))
        assert len(old) > 0 and all(not np.array_equal(a, b) for a, b in zip(old, jax.tree.leaves(new[name]))), name
    assert np.isfinite(loss)


def test_library_elbo_is_svis_objective_and_differentiable():
    _, enc, dec = conditional_networks((2,), (3,), 2, hidden=(8,))
    cvae = ConditionalVAE(enc, dec, 2, (2,), (3,))
    x, y = (jnp.asarray(a) for a in pairs(8))
    key = jax.random.PRNGKey(3)

    @eqx.filter_jit
    def both(v):
        expected = Trace_ELBO().loss(key, v._param_map(), v.model, v.guide, y, x) / 8
        return expected, eqx.filter_value_and_grad(lambda v: v.elbo_loss(y, x, key))(v)

    expected, (loss, grads) = both(cvae)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert all(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))


def test_teacher_step_update_and_starting_points():
    t = make()
    state0 = t.state
    new, info = t.update(state0, tuple(jnp.asarray(a) for a in pairs(16)))
    assert t.state is state0 and all(np.isfinite(v) for v in info[:7])  # the MH fields are NaN without a correction
    info = t.step(pairs(16))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(t.state), jax.tree.leaves(new)))
    x = pairs(7, seed=1)[0]
    assert t.sample(x).shape == (7, 2)
    np.testing.assert_allclose(t.sample(x, num_steps=0, rng=5),
                               t.vae.sample(jnp.asarray(x), jax.random.split(jax.random.PRNGKey(5))[0]), rtol=1e-5)


def test_trained_conditional_ebm_samples_match_the_two_branch_truth():
    r"""y | x = ±√x + 0.1 ε. At x = 2.25 the truth is ½N(1.5, 0.1²) + ½N(−1.5, 0.1²).

    The recipe's exact teaching (``correction="mh"``, a chain per training row) for
    1500 iterations, the EBM sampled exactly (``mh_steps=30``). Tolerances (2000
    samples; Monte Carlo errors in brackets, all far below them):
    - branch weight |P(y > 0) − ½| < 0.1 [3.3·SE = 0.037]: the EBM's own branch
      weights, learnt by the corrected chains, short of their full budget;
    - branch medians within 0.1 = σ of ±1.5 [0.004]: the place of a branch is learned
      from the ~50 training pairs near this x and interpolated, to about σ/2;
    - within-branch spread (1.4826·MAD) in [0.05, 0.15] = [σ/2, 3σ/2] [0.004];
    - at least 95 % of the samples within 3σ of a branch (truth 99.7 %).
    The conditional VAE alone (``num_steps=0``) must fail the spread check: the
    EBM, not the VAE, makes the samples right.
    """
    task = load_task("regression1d", seed=0)
    recipe = get_recipe("regression1d").replace(num_iters=1500, lr_decay_steps=1500)
    import numpyro_vmt

    teacher = build_teacher(numpyro_vmt, task, recipe, seed=0)
    teacher.fit((task.x_train, task.y_train), recipe.num_iters, recipe.batch_size, progress=False)
    x = np.full((2000, 1), 2.25, np.float32)

    def stats(s):
        out = {}
        for sign in (1, -1):
            b = s[np.sign(s) == sign]
            med = np.median(b)
            out[sign] = (med, 1.4826 * np.median(np.abs(b - med)))
        return (s > 0).mean(), out, (np.abs(np.abs(s) - 1.5) < 0.3).mean()

    frac, branches, near = stats(np.asarray(teacher.sample(x, rng=1, mh_steps=30))[:, 0])
    assert abs(frac - 0.5) < 0.1, frac
    for sign, (med, spread) in branches.items():
        assert abs(med - 1.5 * sign) < 0.1, (sign, med)
        assert 0.05 < spread < 0.15, (sign, spread)
    assert near > 0.95, near
    _, vae_branches, _ = stats(np.asarray(teacher.sample(x, num_steps=0, rng=1))[:, 0])
    assert max(spread for _, spread in vae_branches.values()) > 0.15, vae_branches


def test_sampling_y_given_x_with_mcmc():
    """``ConditionalEnergyModel.model(x)`` with ``y`` latent under MCMC (y ~ N(x, I)):
    MALA's independent final states match the moments."""
    import equinox as eqx
    from numpyro.infer import MCMC

    from mcse import assert_gaussian_moments
    from numpyro_vmt.kernel import LangevinKernel

    class Quadratic(eqx.Module):  # E(y | x) = ‖y − x‖² / 2 on the concatenation (y, x)
        def __call__(self, yx, *, key=None):
            return 0.5 * ((yx[..., :2] - yx[..., 2:]) ** 2).sum(-1)

    energy = ConditionalEnergyModel(Quadratic(), (2,), (2,))
    mcmc = MCMC(LangevinKernel(energy.model, step_size=0.5), num_warmup=200, num_samples=1, num_chains=2000,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(1), jnp.array([3.0, -3.0]))
    assert_gaussian_moments(np.asarray(mcmc.get_samples()["y"]), [3.0, -3.0], np.eye(2))
