"""Conditional EBM, conditional VAE and conditional teacher (torch): shapes, the Pyro
model and a plain SVI script, exact resume, bad input."""

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_vmt import (VAE, ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching, EnergyModel,
                      VariationalMCMCTeaching)
from pyro_vmt.conditional import conditional_networks
from pyro_vmt.nets import MLP

INITS = ["vae", "noise", "generator"]


def make(init="vae", seed=0, **options):
    e_net, enc, dec = conditional_networks((2,), (3,), 2, hidden=(16,), rng=seed)
    energy = ConditionalEnergyModel(e_net, (2,), (3,), ref_scale=3.0)
    vae = ConditionalVAE(enc, dec, 2, (2,), (3,), obs_scale=0.3)
    opts = dict(step_size=0.1, num_steps=3, init_bounds=(-2.0, 2.0)) | options
    return ConditionalVariationalMCMCTeaching(energy, vae, init=init, rng=seed, **opts)


def pairs(n=64, seed=0):
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 3)).astype(np.float32)
    return x, (x[:, :2] + 0.1 * g.standard_normal((n, 2))).astype(np.float32)


def params(t):
    return {k: v.clone() for k, v in list(t.energy.state_dict().items()) + [
        (f"v.{k}", v) for k, v in (t.vae.state_dict().items() if t.vae is not None else [])]}


def test_energy_is_net_on_concatenation_plus_reference_and_a_pyro_model():
    torch.manual_seed(0)
    net = MLP(5, 1, (8,))
    energy = ConditionalEnergyModel(net, (2,), (3,), ref_scale=2.0)
    x, y = (torch.as_tensor(a) for a in pairs(6))
    expected = net(torch.cat([y, x], 1))[:, 0] + (y ** 2).sum(1) / 8.0
    torch.testing.assert_close(energy(y, x), expected)
    torch.testing.assert_close(energy.potential(x)(y), expected)
    np.testing.assert_allclose(energy.numpy_energy(y.numpy(), x.numpy()), expected.detach().numpy(), rtol=1e-5)
    # y observed: the model's log density is the unnormalised log p(y | x); x is an ordinary argument
    tr = pyro.poutine.trace(energy.model).get_trace(x, y)
    torch.testing.assert_close(tr.log_prob_sum(), -expected.sum())
    single = pyro.poutine.trace(energy.model).get_trace(x[0], y[0])
    torch.testing.assert_close(single.log_prob_sum(), -expected[0])
    # a net that takes the pair itself
    pair_energy = ConditionalEnergyModel(_PairNet(), (2,), (3,), concat=False)
    torch.testing.assert_close(pair_energy(y, x), (y.sum(1) * x.sum(1)))


class _PairNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, y, x):
        return self.w * y.sum(1) * x.sum(1)


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


def test_vae_samples_one_y_per_x_and_repeats_a_single_x():
    _, enc, dec = conditional_networks((2,), (3,), 2, hidden=(8,))
    cvae = ConditionalVAE(enc, dec, 2, (2,), (3,))
    x = torch.as_tensor(pairs(5)[0])
    assert cvae.sample(x, 0).shape == (5, 2)
    assert pyro.poutine.trace(cvae.model).get_trace(x=x[0], num_samples=7).nodes["y"]["value"].shape == (7, 2)
    z = cvae.sample_latent(5, 1)
    torch.testing.assert_close(cvae.sample(x, 1), cvae.decode(z, x))


def test_teacher_step_sample_and_starting_points():
    t = make()
    before = params(t)
    info = t.step(pairs(16))
    assert all(torch.isfinite(v) for v in info)
    assert all(not torch.equal(before[k], v) for k, v in params(t).items() if "weight" in k)
    x = pairs(7, seed=1)[0]
    assert t.sample(x).shape == (7, 2)
    torch.testing.assert_close(t.sample(x, num_steps=0, rng=5), t.vae.sample(torch.as_tensor(x), 5))


@pytest.mark.parametrize("init", INITS)
def test_save_load_resumes_bit_for_bit(init, tmp_path):
    data = pairs()
    straight = make(init)
    h_straight = straight.fit(data, num_iters=6, batch_size=16, progress=False)
    first = make(init)
    first.fit(data, num_iters=3, batch_size=16, progress=False)
    first.save(tmp_path / "ck.pt", note="half-way")
    resumed = make(init, seed=123)
    assert resumed.load(tmp_path / "ck.pt") == {"note": "half-way"}
    h_resumed = resumed.fit(data, num_iters=3, batch_size=16, progress=False)
    a, b = params(straight), params(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(h_straight["loss"][3:], h_resumed["loss"])
    torch.testing.assert_close(straight.sample(data[0][:5]), resumed.sample(data[0][:5]), rtol=0, atol=0)


BAD = [
    (lambda t: t.step((np.zeros((4, 3), np.float32), np.zeros((5, 2), np.float32))), "batch: x has 4 rows but y has 5"),
    (lambda t: t.step((np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32))),
     r"batch y must have shape \(n, 2\), got \(4, 3\)"),
    (lambda t: t.step((np.full((4, 3), np.nan, np.float32), np.zeros((4, 2), np.float32))),
     r"batch x has non-finite values in 4 rows \(first: row 0\)"),
    (lambda t: t.step(np.zeros((4, 5), np.float32)), r"batch must be a pair \(x, y\)"),
    (lambda t: t.fit((np.zeros((4, 3), np.float32),), 1), r"data must be a pair \(x, y\) .* length 1"),
    (lambda t: t.sample(np.zeros((4, 2), np.float32)), r"x must have shape \(n, 3\), got \(4, 2\)"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_raises_and_changes_nothing(case):
    fn, match = BAD[case]
    t = make()
    before = params(t)
    with pytest.raises(ValueError, match=match):
        fn(t)
    assert all(torch.equal(v, params(t)[k]) for k, v in before.items()) and t.iteration == 0


def test_bad_configurations_and_models_are_refused():
    with pytest.raises(ValueError, match="supports init in"):
        make("persistent")
    with pytest.raises(ValueError, match="num_samples must be None"):
        make(num_samples=8)
    e_net, enc, dec = conditional_networks((2,), (3,), 2, hidden=(8,))
    with pytest.raises(ValueError, match=r"VAE conditioning shape \(4,\) differs"):
        ConditionalVariationalMCMCTeaching(ConditionalEnergyModel(e_net, (2,), (3,)),
                                           ConditionalVAE(MLP(6, 4), MLP(6, 2), 2, (2,), (4,)))
    with pytest.raises(TypeError, match="energy must be a pyro_vmt.ConditionalEnergyModel"):
        ConditionalVariationalMCMCTeaching(EnergyModel(MLP(2, 1), (2,)), ConditionalVAE(enc, dec, 2, (2,), (3,)))
    with pytest.raises(ValueError, match="needs a pyro_vmt.VAE, got ConditionalVAE"):
        VariationalMCMCTeaching(EnergyModel(MLP(2, 1), (2,)), ConditionalVAE(enc, dec, 2, (2,), (3,)))
    with pytest.raises(ValueError, match="needs a pyro_vmt.ConditionalVAE, got VAE"):
        ConditionalVariationalMCMCTeaching(ConditionalEnergyModel(e_net, (2,), (3,)),
                                           VAE(MLP(2, 4), MLP(2, 2), 2, (2,)))
    with pytest.raises(ValueError, match="ConditionalVAE.model needs the conditioning input x"):
        ConditionalVAE(enc, dec, 2, (2,), (3,)).model(torch.zeros(4, 2))


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
