"""Conditional EBM, conditional VAE and conditional teacher, both backends: the energy
on the concatenation plus the reference term (and as the PPL's model), the VAE's
sample shapes, exact resume, bad input and bad configurations. (Each PPL's SVI and
ELBO, the teacher's step against JAX's pure ``update``, and the statistical checks are
in ``tests/pyro_backend`` / ``tests/numpyro_backend``.)"""

import numpy as np
import pytest
from toy import pairs

INITS = ["vae", "noise", "generator"]


def make(B, init="vae", seed=0, **options):
    e_net, enc, dec = B.api.nets.conditional_networks((2,), (3,), 2, hidden=(16,), rng=seed)
    energy = B.api.ConditionalEnergyModel(e_net, (2,), (3,), ref_scale=3.0)
    vae = B.api.ConditionalVAE(enc, dec, 2, (2,), (3,), obs_scale=0.3)
    opts = dict(step_size=0.1, num_steps=3, init_bounds=(-2.0, 2.0)) | options
    return B.api.ConditionalVariationalMCMCTeaching(energy, vae, init=init, rng=seed, **opts)


def log_density(B, model, *args):
    """The log joint of ``model(*args)`` with every site observed or given."""
    if B.jax:
        from numpyro.infer.util import log_density as ld

        return float(ld(model, args, {}, {})[0])
    import pyro

    return float(pyro.poutine.trace(model).get_trace(*args).log_prob_sum())


def pair_net(B):
    """A net that takes the pair itself: ``w · Σy · Σx``."""
    if B.jax:
        import equinox as eqx
        import jax

        class PairNet(eqx.Module):
            w: jax.Array

            def __call__(self, y, x):
                return self.w * y.sum(1) * x.sum(1)
        return PairNet(B.array(1.0))
    torch = B._torch

    class PairNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

        def forward(self, y, x):
            return self.w * y.sum(1) * x.sum(1)
    return PairNet()


def test_energy_is_net_on_concatenation_plus_reference_and_a_ppl_model(backend):
    B = backend
    net = B.mlp(5, 1, (8,))
    energy = B.api.ConditionalEnergyModel(net, (2,), (3,), ref_scale=2.0)
    x, y = (B.array(a) for a in pairs(6))
    expected = B.numpy(net(B.xp.concatenate([y, x], 1)))[:, 0] + (B.numpy(y) ** 2).sum(1) / 8.0
    np.testing.assert_allclose(B.numpy(energy(y, x)), expected, rtol=1e-10)
    np.testing.assert_allclose(B.numpy(energy.potential(x)(y)), expected, rtol=1e-10)
    np.testing.assert_allclose(energy.numpy_energy(B.numpy(y), B.numpy(x)), expected, rtol=1e-10)
    # y observed: the model's log density is the unnormalised log p(y | x); x is an ordinary argument
    np.testing.assert_allclose(log_density(B, energy.model, x, y), -expected.sum(), rtol=1e-10)
    np.testing.assert_allclose(log_density(B, energy.model, x[0], y[0]), -expected[0], rtol=1e-10)
    pair_energy = B.api.ConditionalEnergyModel(pair_net(B), (2,), (3,), concat=False)
    np.testing.assert_allclose(B.numpy(pair_energy(y, x)), B.numpy(y).sum(1) * B.numpy(x).sum(1), rtol=1e-10)


def test_vae_samples_one_y_per_x_and_repeats_a_single_x(backend):
    B = backend
    _, enc, dec = B.api.nets.conditional_networks((2,), (3,), 2, hidden=(8,))
    cvae = B.api.ConditionalVAE(enc, dec, 2, (2,), (3,))
    x = B.array(pairs(5)[0], dtype=B.f32)
    assert tuple(cvae.sample(x, 0).shape) == (5, 2)
    if B.jax:
        import numpyro

        y = numpyro.handlers.trace(numpyro.handlers.seed(cvae.model, 0)).get_trace(x=x[0], num_samples=7)["y"]
    else:
        import pyro

        y = pyro.poutine.trace(cvae.model).get_trace(x=x[0], num_samples=7).nodes["y"]
    assert tuple(y["value"].shape) == (7, 2)
    np.testing.assert_allclose(B.numpy(cvae.sample(x, 1)), B.numpy(cvae.decode(cvae.sample_latent(5, 1), x)),
                               rtol=1e-6)


@pytest.mark.parametrize("init", INITS)
def test_save_load_resumes_bit_for_bit(backend, init, tmp_path):
    B = backend
    if B.jax and init != "vae":
        pytest.skip("one code path for every init in JAX; each init costs a compilation (resumed in torch)")
    data = pairs()
    straight = make(B, init)
    h_straight = straight.fit(data, num_iters=6, batch_size=16, progress=False)
    first = make(B, init)
    first.fit(data, num_iters=3, batch_size=16, progress=False)
    first.save(tmp_path / B.checkpoint, note="half-way")
    resumed = make(B, init, seed=123)
    assert resumed.load(tmp_path / B.checkpoint) == {"note": "half-way"}
    h_resumed = resumed.fit(data, num_iters=3, batch_size=16, progress=False)
    a, b = B.params(straight), B.params(resumed)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(h_straight["loss"][3:], h_resumed["loss"])
    np.testing.assert_array_equal(B.numpy(straight.sample(data[0][:5])), B.numpy(resumed.sample(data[0][:5])))


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
def test_bad_input_raises_and_changes_nothing(backend, case):
    B = backend
    fn, match = BAD[case]
    t = make(B)
    before = B.params(t)
    with pytest.raises(ValueError, match=match):
        fn(t)
    after = B.params(t)
    assert all(np.array_equal(v, after[k]) for k, v in before.items()) and t.iteration == 0


def test_bad_configurations_and_models_are_refused(backend):
    B, api = backend, backend.api
    name = api.__name__
    with pytest.raises(ValueError, match="supports init in"):
        make(B, "persistent")
    with pytest.raises(ValueError, match="num_samples must be None"):
        make(B, num_samples=8)
    e_net, enc, dec = api.nets.conditional_networks((2,), (3,), 2, hidden=(8,))
    with pytest.raises(ValueError, match=r"VAE conditioning shape \(4,\) differs"):
        api.ConditionalVariationalMCMCTeaching(api.ConditionalEnergyModel(e_net, (2,), (3,)),
                                               api.ConditionalVAE(B.mlp(6, 4), B.mlp(6, 2, seed=1), 2, (2,), (4,)))
    with pytest.raises(TypeError, match=f"energy must be a {name}.ConditionalEnergyModel"):
        api.ConditionalVariationalMCMCTeaching(api.EnergyModel(B.mlp(2, 1), (2,)),
                                               api.ConditionalVAE(enc, dec, 2, (2,), (3,)))
    with pytest.raises(ValueError, match=f"needs a {name}.VAE, got ConditionalVAE"):
        api.VariationalMCMCTeaching(api.EnergyModel(B.mlp(2, 1), (2,)), api.ConditionalVAE(enc, dec, 2, (2,), (3,)))
    with pytest.raises(ValueError, match=f"needs a {name}.ConditionalVAE, got VAE"):
        api.ConditionalVariationalMCMCTeaching(api.ConditionalEnergyModel(e_net, (2,), (3,)),
                                               B.vae(B.mlp(2, 4), B.mlp(2, 2, seed=1), 2, (2,)))
    with pytest.raises(ValueError, match="ConditionalVAE.model needs the conditioning input x"):
        api.ConditionalVAE(enc, dec, 2, (2,), (3,)).model(B.array(np.zeros((4, 2)), dtype=B.f32))
