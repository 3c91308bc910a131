"""VAE, both backends: samples are decoder means of prior draws, the KL weight scales
the latent site, the joint loss is −log p(x, z), bad options and shapes raise. (Each
PPL's own SVI, the ELBO's relation to it and the linear-Gaussian case with each
framework's optimiser are in ``tests/pyro_backend`` / ``tests/numpyro_backend``.)"""

import numpy as np
import pytest
from scipy.stats import norm


def small_vae(B, **kwargs):
    return B.vae(B.mlp(2, 4, (16,), seed=1), B.mlp(2, 2, (16,), seed=2), 2, (2,), **kwargs)


def test_sample_is_decoder_mean_of_prior_draws(backend):
    B = backend
    vae = B.vae(B.mlp(3, 4, (8,), seed=0), B.mlp(2, 3, (8,), seed=1), 2, (3,), obs_scale=0.1)
    z = vae.sample_latent(5, 3)
    np.testing.assert_allclose(B.numpy(vae.sample(5, 3)), B.numpy(vae.decode(z)), rtol=1e-12)
    assert float(B.numpy(vae.scale())) == pytest.approx(0.1)


def test_kl_weight_scales_the_latent_site(backend):
    B = backend
    vae = small_vae(B, kl_weight=3.0)
    x = B.normal(0, (4, 2))
    if B.jax:
        import numpyro

        site = numpyro.handlers.trace(numpyro.handlers.seed(vae.guide, 0)).get_trace(x)["z"]
    else:
        import pyro

        site = pyro.poutine.trace(vae.guide).get_trace(x).nodes["z"]
    assert site["scale"] == 3.0


def test_joint_loss_is_minus_log_joint(backend):
    B = backend
    vae = small_vae(B, obs_scale=0.5)
    x, z = B.normal(0, (4, 2)), B.normal(1, (4, 2))
    mean = B.numpy(vae.decode(z))
    log_joint = norm.logpdf(B.numpy(z)).sum() + norm.logpdf(B.numpy(x), mean, 0.5).sum()
    # rtol 1e-7: torch stores a fixed log σ as a float32 buffer
    np.testing.assert_allclose(B.numpy(vae.joint_loss(x, z)), -log_joint / 4, rtol=1e-7)


@pytest.mark.parametrize("kwargs, match", [
    (dict(latent_dim=0), "latent_dim must be a positive"),
    (dict(obs_scale=-1.0), "obs_scale must be a positive"),
    (dict(kl_weight=0.0), "kl_weight must be a positive"),
])
def test_bad_options_raise(backend, kwargs, match):
    args = dict(latent_dim=2, event_shape=(2,)) | kwargs
    with pytest.raises(ValueError, match=match):
        backend.api.VAE(backend.mlp(2, 4), backend.mlp(2, 2, seed=1), **args)


def test_bad_shapes_raise(backend):
    B = backend
    vae = small_vae(B)
    with pytest.raises(ValueError, match=r"VAE expects data of shape \(n, 2\), got \(4, 3\)"):
        vae.elbo_loss(B.array(np.zeros((4, 3))), 0)
    bad_enc = B.vae(B.mlp(2, 3), B.mlp(2, 2, seed=1), 2, (2,))
    with pytest.raises(ValueError, match=r"encoder must return shape \(n, 4\)"):
        bad_enc.elbo_loss(B.array(np.zeros((4, 2))), 0)
    bad_dec = B.vae(B.mlp(2, 4), B.mlp(2, 5, seed=1), 2, (2,))
    with pytest.raises(ValueError, match="decoder must return 2 values per sample"):
        bad_dec.sample(3, 0)
    with pytest.raises(ValueError, match="rng is required"):
        vae.elbo_loss(B.array(np.zeros((4, 2))), None)
