"""Conditional EBM, VAE and teacher, torch idioms (the shared behaviour is in
``tests/backends``): a plain Pyro SVI script, the library's ELBO, the teacher's step
and starting points, the importance-sampled likelihood, and MCMC on y given x."""

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vmt import ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching
from pyro_vmt.nets import conditional_networks
from toy import pairs

def make(init="vae", seed=0, **options):
    e_net, enc, dec = conditional_networks((2,), (3,), 2, hidden=(16,), rng=seed)
    energy = ConditionalEnergyModel(e_net, (2,), (3,), ref_scale=3.0)
    vae = ConditionalVAE(enc, dec, 2, (2,), (3,), obs_scale=0.3)
    opts = dict(step_size=0.1, num_steps=3, init_bounds=(-2.0, 2.0)) | options
    return ConditionalVariationalMCMCTeaching(energy, vae, init=init, rng=seed, **opts)


def params(t):
    return {k: v.clone() for k, v in list(t.energy.state_dict().items()) + [
        (f"v.{k}", v) for k, v in (t.vae.state_dict().items() if t.vae is not None else [])]}


def test_plain_pyro_svi_step_moves_encoder_and_decoder_weights():
    _, enc, dec = conditional_networks((2,), (3,), 2, hidden=(8,))
    cvae = ConditionalVAE(enc, dec, 2, (2,), (3,))
    before = {k: v.detach().clone() for k, v in cvae.named_parameters()}
    x, y = (torch.as_tensor(a) for a in pairs(16))
    svi = SVI(cvae.model, cvae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert np.isfinite(svi.step(y, x))  # the conditioning input is an ordinary argument
    moved = {k for k, v in cvae.named_parameters() if not torch.equal(v, before[k])}
    assert moved == set(before), f"not trained by SVI: {set(before) - moved}"


def test_library_elbo_is_local_reproducible_and_differentiable():
    _, enc, dec = conditional_networks((2,), (3,), 2, hidden=(8,))
    cvae = ConditionalVAE(enc, dec, 2, (2,), (3,))
    x, y = (torch.as_tensor(a) for a in pairs(8))
    loss = cvae.elbo_loss(y, x, 3)
    assert loss.item() == cvae.elbo_loss(y, x, 3).item()
    loss.backward()
    assert len(pyro.get_param_store()) == 0
    assert all(p.grad is not None for p in cvae.parameters())


def test_teacher_step_sample_and_starting_points():
    t = make()
    before = params(t)
    info = t.step(pairs(16))
    assert all(torch.isfinite(v) for v in info[:7])  # the MH fields are NaN without a correction
    assert all(not torch.equal(before[k], v) for k, v in params(t).items() if "weight" in k)
    x = pairs(7, seed=1)[0]
    assert t.sample(x).shape == (7, 2)
    torch.testing.assert_close(t.sample(x, num_steps=0, rng=5), t.vae.sample(torch.as_tensor(x), 5))


def test_importance_sampled_log_likelihood_is_exact_for_a_linear_gaussian_vae():
    """Decoder y = a z + c x + b with noise σ: p(y | x) = N(c x + b, a² + σ²) exactly. With the
    exact posterior as encoder every importance weight equals p(y | x) (the estimate is
    exact for any K); with another encoder it is a lower bound, close for K = 1000."""
    from vmt.app.tasks import vae_log_likelihood

    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(2, 2).double(), torch.nn.Linear(2, 1).double()
    cvae = ConditionalVAE(enc, dec, 1, (1,), (1,), obs_scale=0.5).double()
    g = np.random.default_rng(0)
    x, y = g.uniform(-1, 1, (200, 1)), g.standard_normal((200, 1))
    a, c, b = dec.weight[0, 0].item(), dec.weight[0, 1].item(), dec.bias[0].item()
    var = a * a + 0.25
    exact = (-0.5 * (y - c * x - b) ** 2 / var - 0.5 * np.log(2 * np.pi * var)).mean()
    rough = vae_log_likelihood(cvae, x, y, num_samples=1000, seed=1)["log_likelihood"]
    assert exact - 0.05 < rough < exact + 1e-3
    with torch.no_grad():  # q(z | y, x) = N(a (y − c x − b) / var, σ² / var): the exact posterior
        enc.weight.copy_(torch.tensor([[a / var, -a * c / var], [0.0, 0.0]]))
        sd = 0.5 / np.sqrt(var) - 1e-4
        enc.bias.copy_(torch.tensor([-a * b / var, float(np.log(np.expm1(sd)))]))
    est = vae_log_likelihood(cvae, x, y, num_samples=3, seed=1)["log_likelihood"]
    assert abs(est - exact) < 1e-6


def test_sampling_y_given_x_with_mcmc():
    """``ConditionalEnergyModel.model(x)`` with ``y`` latent runs under our batched kernel
    (y ~ N(x, I) here): MALA's independent final states match the moments."""
    from mcse import assert_gaussian_moments
    from pyro_vmt import LangevinKernel
    from pyro_vmt.chains import run_chains

    class Quadratic(torch.nn.Module):  # E(y | x) = ‖y − x‖² / 2 on the concatenation (y, x)
        def forward(self, yx):
            return 0.5 * ((yx[:, :2] - yx[:, 2:]) ** 2).sum(-1)

    energy = ConditionalEnergyModel(Quadratic(), (2,), (2,))
    x = torch.tensor([3.0, -3.0])
    out = run_chains(LangevinKernel(energy.model, step_size=0.5, num_chains=2000, rng=1), 1, 200, model_args=(x,))
    assert_gaussian_moments(out.samples["y"][:, -1].numpy(), [3.0, -3.0], np.eye(2))
