"""VAE, JAX idioms (the shared behaviour is in ``tests/backends``): a user's plain
NumPyro SVI script trains it; the library's ELBO is SVI's objective and
differentiable in the module; the linear-Gaussian case trained with optax in a scan."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
eqx = pytest.importorskip("equinox")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from numpyro.infer import SVI, Trace_ELBO  # noqa: E402

from numpyro_vmt import VAE  # noqa: E402
from numpyro_vmt.nets import MLP  # noqa: E402
from ppca import assert_ppca_solution  # noqa: E402


def small_vae(**kwargs):
    return VAE(MLP(2, 4, rng=1), MLP(2, 2, rng=2), 2, (2,), **kwargs)


def data(n, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (n, 2))


def test_plain_numpyro_svi_step_moves_encoder_and_decoder_weights():
    vae = small_vae()
    x = data(16)
    svi = SVI(vae.model, vae.guide, optax.adam(0.01), Trace_ELBO())
    state = svi.init(jax.random.PRNGKey(0), x)
    assert set(svi.get_params(state)) == {"encoder$params", "decoder$params", "log_obs_scale"}
    state, loss = jax.jit(svi.update)(state, x)  # as a user's script would
    params = svi.get_params(state)
    before = {"encoder$params": vae.encoder, "decoder$params": vae.decoder, "log_obs_scale": vae.log_obs_scale}
    for name, module in before.items():
        old = jax.tree.leaves(eqx.filter(module, eqx.is_inexact_array))
        new = jax.tree.leaves(params[name])
        assert len(old) == len(new) > 0
        assert all(not np.array_equal(a, b) for a, b in zip(old, new)), f"{name} not trained by SVI"
    assert np.isfinite(loss)


def test_library_elbo_is_svis_objective_and_differentiable():
    vae = small_vae(name="vae")
    x = data(8)
    key = jax.random.PRNGKey(3)
    params = {"vae.encoder$params": eqx.filter(vae.encoder, eqx.is_inexact_array),
              "vae.decoder$params": eqx.filter(vae.decoder, eqx.is_inexact_array),
              "vae.log_obs_scale": vae.log_obs_scale}
    expected = Trace_ELBO().loss(key, params, vae.model, vae.guide, x) / 8
    np.testing.assert_allclose(vae.elbo_loss(x, key), expected, rtol=1e-6)
    loss, grads = eqx.filter_jit(eqx.filter_value_and_grad(lambda v: v.elbo_loss(x, key)))(vae)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    leaves = jax.tree.leaves(grads)
    assert len(leaves) == len(jax.tree.leaves(eqx.filter(vae, eqx.is_inexact_array)))
    assert all(np.isfinite(g).all() and np.abs(g).sum() > 0 for g in leaves)


def test_linear_gaussian_vae_recovers_ppca_solution():
    """1-D probabilistic PCA (see ``tests/ppca.py``)."""
    with jax.enable_x64(True):
        x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(0), (1000, 1), dtype=jnp.float64)
        vae = VAE(MLP(1, 2, (), rng=1), MLP(1, 1, (), rng=2), 1, (1,))  # no hidden layer: linear maps
        optim = optax.adam(0.03)

        @jax.jit
        def train(vae, key):
            params, static = eqx.partition(vae, eqx.is_inexact_array)

            def one(carry, k):
                p, s = carry
                grads = jax.grad(lambda p: eqx.combine(p, static).elbo_loss(x, k))(p)
                updates, s = optim.update(grads, s, p)
                return (optax.apply_updates(p, updates), s), None

            (params, _), _ = jax.lax.scan(one, (params, optim.init(params)), jax.random.split(key, 600))
            return eqx.combine(params, static)

        vae = train(vae, jax.random.PRNGKey(1))
        w, b = float(vae.decoder.layers[0].weight[0, 0]), float(vae.decoder.layers[0].bias[0])
        mean = float(x.mean())
        loc, scale = vae.encode(jnp.array([[mean], [mean + 2.0]]))
        assert_ppca_solution(w, b, float(vae.scale()[0]) ** 2, mean, float(x.var(ddof=1)),
                             float(loc[1, 0] - loc[0, 0]) / 2.0, float(scale[0, 0]))
