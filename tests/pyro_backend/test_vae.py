"""VAE (torch): a user's plain Pyro SVI script trains it; the library's ELBO path
leaves the global param store alone; a linear-Gaussian case has a known answer."""

import math

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_vmt import VAE
from pyro_vmt.nets import MLP


def test_plain_pyro_svi_step_moves_encoder_and_decoder_weights():
    torch.manual_seed(0)
    vae = VAE(MLP(2, 4), MLP(2, 2), 2, (2,))
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    svi.step(torch.randn(16, 2))
    moved = {k for k, v in vae.named_parameters() if not torch.equal(v, before[k])}
    assert moved == set(before), f"not trained by SVI: {set(before) - moved}"


def test_library_elbo_does_not_touch_the_param_store():
    vae = VAE(MLP(2, 4), MLP(2, 2), 2, (2,))
    loss = vae.elbo_loss(torch.randn(8, 2), 0)
    loss.backward()
    assert len(pyro.get_param_store()) == 0
    assert all(p.grad is not None for p in vae.parameters())


def test_linear_gaussian_vae_recovers_ppca_solution():
    """1-D probabilistic PCA: x = w z + b + σ ε. The ELBO optimum with a linear
    Gaussian encoder is the maximum-likelihood fit: b = mean, w² + σ² = variance,
    and q(z|x) is the exact posterior N(w(x − b)/(w² + σ²), σ²/(w² + σ²))."""
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(1000, 1, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    vae = VAE(nn.Linear(1, 2), nn.Linear(1, 1), 1, (1,)).double()
    optim = torch.optim.Adam(vae.parameters(), lr=0.03)
    for _ in range(600):
        optim.zero_grad()
        vae.elbo_loss(x, gen).backward()
        optim.step()
    w = vae.decoder.weight.item()
    b = vae.decoder.bias.item()
    s2 = vae.scale().item() ** 2
    mean, var = x.mean().item(), x.var().item()
    assert abs(b - mean) < 0.05
    assert abs((w ** 2 + s2) - var) / var < 0.05
    loc, scale = vae.encode(torch.tensor([[mean], [mean + 2.0]], dtype=torch.float64))
    slope = (loc[1] - loc[0]).item() / 2.0
    assert abs(slope - w / (w ** 2 + s2)) < 0.05
    assert abs(scale[0].item() - math.sqrt(s2 / (w ** 2 + s2))) < 0.05


def test_sample_is_decoder_mean_of_prior_draws():
    vae = VAE(MLP(3, 4), MLP(2, 3), 2, (3,), obs_scale=0.1)
    z = vae.sample_latent(5, 3)
    torch.testing.assert_close(vae.sample(5, 3), vae.decode(z))
    assert vae.scale().item() == pytest.approx(0.1)


def test_kl_weight_scales_the_latent_site():
    torch.manual_seed(0)
    vae = VAE(MLP(2, 4), MLP(2, 2), 2, (2,), kl_weight=3.0)
    tr = pyro.poutine.trace(vae.guide).get_trace(torch.randn(4, 2))
    assert tr.nodes["z"]["scale"] == 3.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(latent_dim=0), "latent_dim must be a positive"),
    (dict(obs_scale=-1.0), "obs_scale must be a positive"),
    (dict(kl_weight=0.0), "kl_weight must be a positive"),
])
def test_bad_options_raise(kwargs, match):
    args = dict(latent_dim=2, event_shape=(2,)) | kwargs
    with pytest.raises(ValueError, match=match):
        VAE(MLP(2, 4), MLP(2, 2), **args)


def test_bad_shapes_raise():
    vae = VAE(MLP(2, 4), MLP(2, 2), 2, (2,))
    with pytest.raises(ValueError, match=r"VAE expects data of shape \(n, 2\), got \(4, 3\)"):
        vae.elbo_loss(torch.randn(4, 3), 0)
    bad_enc = VAE(MLP(2, 3), MLP(2, 2), 2, (2,))
    with pytest.raises(ValueError, match=r"encoder must return shape \(n, 4\)"):
        bad_enc.elbo_loss(torch.randn(4, 2), 0)
    bad_dec = VAE(MLP(2, 4), MLP(2, 5), 2, (2,))
    with pytest.raises(ValueError, match="decoder must return 2 values per sample"):
        bad_dec.sample(3, 0)
