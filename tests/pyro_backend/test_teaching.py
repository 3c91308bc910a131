"""VariationalMCMCTeaching (torch): exact resume, every initialisation, bad input,
divergence that loses nothing, atomic checkpoints."""

import os

import numpy as np
import pytest
import torch

from pyro_vmt import VAE, EnergyModel, VariationalMCMCTeaching
from pyro_vmt.nets import MLP
from vmt.core.errors import CheckpointError, DivergenceError

INITS = ["vae", "noise", "persistent", "generator"]


def make(init="vae", seed=0, **options):
    torch.manual_seed(seed)
    energy = EnergyModel(MLP(2, 1, (16, 16)), (2,))
    vae = VAE(MLP(2, 4, (16,)), MLP(2, 2, (16,)), 2, (2,))
    opts = dict(step_size=0.1, num_steps=3, buffer_size=50, init_bounds=(-2.0, 2.0)) | options
    return VariationalMCMCTeaching(energy, vae, init=init, rng=seed, **opts)


def data(n=64, seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal((n, 2)) * 0.5 + [1.0, -1.0]).astype(np.float32)


def params(t):
    out = {f"e.{k}": v.clone() for k, v in t.energy.state_dict().items()}
    if t.vae is not None:
        out |= {f"v.{k}": v.clone() for k, v in t.vae.state_dict().items()}
    return out


RESUME_CASES = [(init, {}) for init in INITS] + [
    (init, dict(noise_fraction=0.25, lr_decay_steps=4, lr_final_ratio=0.2)) for init in ("vae", "generator")]


@pytest.mark.parametrize("init, opts", RESUME_CASES)
def test_save_load_resumes_bit_for_bit(init, opts, tmp_path):
    x = data()
    straight = make(init, **opts)
    h_straight = straight.fit(x, num_iters=6, batch_size=16, progress=False)

    first = make(init, **opts)
    first.fit(x, num_iters=3, batch_size=16, progress=False)
    first.save(tmp_path / "ck.pt", note="half-way")
    resumed = make(init, seed=123, **opts)  # different init and RNG: everything must come from the file
    assert resumed.load(tmp_path / "ck.pt") == {"note": "half-way"}
    h_resumed = resumed.fit(x, num_iters=3, batch_size=16, progress=False)

    a, b = params(straight), params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    np.testing.assert_array_equal(h_straight["loss"][3:], h_resumed["loss"])
    assert resumed.iteration == 6
    if init == "persistent":
        assert torch.equal(straight.buffer, resumed.buffer)
    torch.testing.assert_close(straight.sample(5), resumed.sample(5), rtol=0, atol=0)


def test_a_checkpoint_from_another_device_keeps_its_weights_and_warns_about_the_rng(tmp_path):
    first = make()
    first.fit(data(), num_iters=2, batch_size=16, progress=False)
    state = first.state_dict()
    # what a CUDA run writes: a CUDA generator's state (seed and offset) tagged "cuda"
    state.update(rng=torch.zeros(16, dtype=torch.uint8), rng_device="cuda")
    moved = make(seed=7)
    with pytest.warns(RuntimeWarning, match="RNG is reseeded"):
        moved.load_state_dict(state)
    a, b = params(first), params(moved)
    assert all(torch.equal(a[k], b[k]) for k in a) and moved.iteration == 2
    moved.fit(data(), num_iters=1, batch_size=16, progress=False)  # and it trains on


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_resumes_bit_for_bit_on_cuda(tmp_path):
    def on_cuda(seed):
        t = make(seed=seed)
        return VariationalMCMCTeaching(t.energy.cuda(), t.vae.cuda(), t.config, rng=seed)

    x = data()
    straight = on_cuda(0)
    h_straight = straight.fit(x, num_iters=4, batch_size=16, progress=False)
    first = on_cuda(0)
    first.fit(x, num_iters=2, batch_size=16, progress=False)
    first.save(tmp_path / "ck.pt")
    resumed = on_cuda(3)
    resumed.load(tmp_path / "ck.pt")
    h_resumed = resumed.fit(x, num_iters=2, batch_size=16, progress=False)
    np.testing.assert_array_equal(h_straight["loss"][2:], h_resumed["loss"])


def test_training_does_not_use_or_move_the_global_rng():
    x = data()
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    t = make("vae")
    torch.random.set_rng_state(before)
    t.fit(x, num_iters=2, batch_size=8, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_step_returns_diagnostics_and_updates_everything():
    t = make("vae")
    before = params(t)
    info = t.step(torch.as_tensor(data(16)))
    assert set(info._fields) == {"loss", "energy_data", "energy_samples", "vae_loss",
                                 "acceptance_rate", "grad_norm", "energy_grad_norm",
                                 "path_acceptance", "weight_ess", "crossing_rate"}
    assert all(torch.isfinite(v) for v in info[:7])
    assert all(np.isnan(float(v)) for v in info[7:])  # no correction: the MH diagnostics are NaN
    assert float(info.loss) == pytest.approx(float(info.energy_data - info.energy_samples), abs=1e-5)
    after = params(t)
    assert all(not torch.equal(before[k], after[k]) for k in before if "weight" in k)


def test_generator_init_trains_decoder_but_not_encoder():
    t = make("generator")
    enc = {k: v.clone() for k, v in t.vae.encoder.state_dict().items()}
    dec = {k: v.clone() for k, v in t.vae.decoder.state_dict().items()}
    t.step(data(16))
    assert all(torch.equal(v, t.vae.encoder.state_dict()[k]) for k, v in enc.items())
    assert all(not torch.equal(v, t.vae.decoder.state_dict()[k]) for k, v in dec.items())


def test_learns_a_gaussian():
    """A short run on N((1, −1), 0.5² I) moves the EBM's samples onto the data."""
    t = make("vae", step_size=0.3, num_steps=10, energy_lr=3e-3, vae_lr=3e-3)
    t.fit(data(2000), num_iters=300, batch_size=64, progress=False)
    s = t.sample(2000).numpy()
    np.testing.assert_allclose(s.mean(0), [1.0, -1.0], atol=0.1)
    np.testing.assert_allclose(s.std(0), [0.5, 0.5], atol=0.1)


@pytest.mark.parametrize("batch, match", [
    (np.zeros((4, 3), np.float32), r"batch must have shape \(n, 2\), got \(4, 3\)"),
    (np.zeros(4, np.float32), r"batch must have shape \(n, 2\), got \(4,\)"),
    (np.zeros((0, 2), np.float32), r"got \(0, 2\)"),
    (np.zeros((4, 2), np.int64), "floating-point"),
    (np.array([[0.0, 1.0], [np.nan, 0.0], [np.inf, 1.0]], np.float32), r"non-finite values in 2 rows \(first: row 1\)"),
])
def test_bad_batches_raise(batch, match):
    t = make()
    before = params(t)
    with pytest.raises(ValueError, match=match):
        t.step(batch)
    assert all(torch.equal(v, params(t)[k]) for k, v in before.items())


@pytest.mark.parametrize("options, match", [
    (dict(step_size=0.0), "step_size must be a positive"),
    (dict(num_steps=0), "num_steps must be a positive"),
    (dict(init="bogus"), "init must be one of"),
    (dict(energy_lr=-1.0), "energy_lr must be a positive"),
    (dict(reinit_prob=2.0), "reinit_prob must lie in"),
    (dict(init_bounds=(1.0, -1.0)), "low < high"),
])
def test_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        make(**options)


def test_vae_is_required_for_vae_init_and_shapes_must_agree():
    energy = EnergyModel(MLP(2, 1), (2,))
    with pytest.raises(ValueError, match="needs a pyro_vmt.VAE"):
        VariationalMCMCTeaching(energy, None, init="vae")
    with pytest.raises(ValueError, match=r"event shape \(3,\) differs"):
        VariationalMCMCTeaching(energy, VAE(MLP(3, 4), MLP(2, 3), 2, (3,)))


def test_energy_network_with_wrong_output_shape_raises():
    energy = EnergyModel(MLP(2, 3), (2,))
    t = VariationalMCMCTeaching(energy, init="noise", step_size=0.1, num_steps=2)
    with pytest.raises(ValueError, match=r"one scalar per sample, shape \(4,\) or \(4, 1\); got \(4, 3\)"):
        t.step(data(4))


def test_divergence_raises_and_changes_nothing(tmp_path):
    class Exploding(torch.nn.Module):  # finite at the start, NaN after a big step
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.w * (0.5 * x ** 2 - torch.log(3 - x.abs())).sum(-1)

    t = VariationalMCMCTeaching(EnergyModel(Exploding(), (2,)), init="noise", rng=0,
                                step_size=3.0, num_steps=4, noise_scale=0.0, init_bounds=(-2.0, 2.0))
    w = t.energy.net.w.detach().clone()
    opt_state = t.energy_optim.state_dict()
    with pytest.raises(DivergenceError, match=r"Langevin diverged: \d+ of 8 chains .* first at step 0"):
        t.step(data(8))
    assert torch.equal(t.energy.net.w, w) and t.iteration == 0
    assert t.energy_optim.state_dict()["state"] == opt_state["state"]


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    t = make(step_size=0.1)
    t.save(tmp_path / "ck.pt")
    with pytest.raises(CheckpointError, match="step_size: checkpoint 0.1 vs this object 0.2"):
        make(step_size=0.2).load(tmp_path / "ck.pt")
    other_net = VariationalMCMCTeaching(EnergyModel(MLP(2, 1, (8,)), (2,)),
                                        VAE(MLP(2, 4, (16,)), MLP(2, 2, (16,)), 2, (2,)),
                                        step_size=0.1, num_steps=3, buffer_size=50, init_bounds=(-2.0, 2.0))
    with pytest.raises(CheckpointError, match="does not match these networks"):
        other_net.load(tmp_path / "ck.pt")


def test_corrupt_checkpoint_raises_clearly(tmp_path):
    path = tmp_path / "ck.pt"
    make().save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        make().load(path)
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        make().load(tmp_path / "x.pt")


def test_interrupted_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    t = make()
    t.save(path)
    good = path.read_bytes()
    t.fit(data(), num_iters=1, batch_size=8, progress=False)

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        t.save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ck.pt"]
