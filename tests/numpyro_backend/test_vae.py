"""VAE (JAX): a user's plain NumPyro SVI script trains it; the library's ELBO is
SVI's objective and differentiable in the module; a linear-Gaussian case has a
known answer."""

import math

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
    """1-D probabilistic PCA: x = w z + b + σ ε. The ELBO optimum with a linear
    Gaussian encoder is the maximum-likelihood fit: b = mean, w² + σ² = variance,
    and q(z|x) is the exact posterior N(w(x − b)/(w² + σ²), σ²/(w² + σ²))."""
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
        w = float(vae.decoder.layers[0].weight[0, 0])
        b = float(vae.decoder.layers[0].bias[0])
        s2 = float(vae.scale()[0]) ** 2
        mean, var = float(x.mean()), float(x.var(ddof=1))
        assert abs(b - mean) < 0.05
        assert abs((w ** 2 + s2) - var) / var < 0.05
        loc, scale = vae.encode(jnp.array([[mean], [mean + 2.0]]))
        slope = float(loc[1, 0] - loc[0, 0]) / 2.0
        assert abs(slope - w / (w ** 2 + s2)) < 0.05
        assert abs(float(scale[0, 0]) - math.sqrt(s2 / (w ** 2 + s2))) < 0.05


def test_sample_is_decoder_mean_of_prior_draws():
    vae = VAE(MLP(3, 4, rng=0), MLP(2, 3, rng=1), 2, (3,), obs_scale=0.1)
    z = vae.sample_latent(5, 3)
    np.testing.assert_allclose(vae.sample(5, 3), vae.decode(z))
    assert float(vae.scale()) == pytest.approx(0.1)
    assert eqx.filter(vae, eqx.is_inexact_array).log_obs_scale is None  # a fixed scale is not a parameter


def test_kl_weight_scales_the_latent_site():
    vae = small_vae(kl_weight=3.0)
    tr = numpyro.handlers.trace(numpyro.handlers.seed(vae.guide, 0)).get_trace(data(4))
    assert tr["z"]["scale"] == 3.0


def test_joint_loss_is_minus_log_joint():
    vae = small_vae(obs_scale=0.5)
    x, z = data(4), data(4, seed=1)
    normal = jax.scipy.stats.norm.logpdf
    log_joint = normal(z).sum() + normal(x, vae.decode(z), 0.5).sum()
    np.testing.assert_allclose(vae.joint_loss(x, z), -log_joint / 4, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    (dict(latent_dim=0), "latent_dim must be a positive"),
    (dict(obs_scale=-1.0), "obs_scale must be a positive"),
    (dict(kl_weight=0.0), "kl_weight must be a positive"),
])
def test_bad_options_raise(kwargs, match):
    args = dict(latent_dim=2, event_shape=(2,)) | kwargs
    with pytest.raises(ValueError, match=match):
        VAE(MLP(2, 4, rng=0), MLP(2, 2, rng=1), **args)


def test_bad_shapes_raise():
    vae = small_vae()
    with pytest.raises(ValueError, match=r"VAE expects data of shape \(n, 2\), got \(4, 3\)"):
        vae.elbo_loss(jnp.zeros((4, 3)), 0)
    bad_enc = VAE(MLP(2, 3, rng=0), MLP(2, 2, rng=1), 2, (2,))
    with pytest.raises(ValueError, match=r"encoder must return shape \(n, 4\)"):
        bad_enc.elbo_loss(jnp.zeros((4, 2)), 0)
    bad_dec = VAE(MLP(2, 4, rng=0), MLP(2, 5, rng=1), 2, (2,))
    with pytest.raises(ValueError, match="decoder must return 2 values per sample"):
        bad_dec.sample(3, 0)
    with pytest.raises(ValueError, match="rng is required"):
        vae.elbo_loss(jnp.zeros((4, 2)), None)
