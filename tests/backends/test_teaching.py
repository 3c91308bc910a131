"""VariationalMCMCTeaching, both backends: exact resume for every initialisation, the
diagnostics of a step, bad input, divergence that loses nothing, atomic checkpoints.
(Framework idioms — torch's global RNG and devices, JAX's pure ``update`` and its
training key — are in ``tests/pyro_backend`` / ``tests/numpyro_backend``.)"""

import os

import numpy as np
import pytest

from vmt.core.errors import CheckpointError, DivergenceError
from toy import gaussian_data as data


def make(B, init="vae", seed=0, **options):
    energy = B.api.EnergyModel(B.mlp(2, 1, (16, 16), seed=seed), (2,))
    vae = B.vae(B.mlp(2, 4, (16,), seed=seed + 1), B.mlp(2, 2, (16,), seed=seed + 2), 2, (2,))
    opts = dict(step_size=0.1, num_steps=3, buffer_size=50, init_bounds=(-2.0, 2.0)) | options
    return B.api.VariationalMCMCTeaching(energy, vae, init=init, rng=seed, **opts)


def assert_same_params(B, a, b):
    pa, pb = B.params(a), B.params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k], err_msg=k)


# every init once; the two with a VAE also with a learning-rate schedule and a noise fraction
# (a superset of their plain code path, and one compilation fewer each in JAX)
RESUME_CASES = [(init, {}) for init in ("noise", "persistent")] + [
    (init, dict(noise_fraction=0.25, lr_decay_steps=4, lr_final_ratio=0.2)) for init in ("vae", "generator")]


@pytest.mark.parametrize("init, opts", RESUME_CASES)
def test_save_load_resumes_bit_for_bit(backend, init, opts, tmp_path):
    B, x = backend, data()
    straight = make(B, init, **opts)
    h_straight = straight.fit(x, num_iters=6, batch_size=16, progress=False)

    first = make(B, init, **opts)
    first.fit(x, num_iters=3, batch_size=16, progress=False)
    first.save(tmp_path / B.checkpoint, note="half-way")
    resumed = make(B, init, seed=123, **opts)  # different init and RNG: everything must come from the file
    assert resumed.load(tmp_path / B.checkpoint) == {"note": "half-way"}
    h_resumed = resumed.fit(x, num_iters=3, batch_size=16, progress=False)

    assert_same_params(B, straight, resumed)
    if B.jax:  # optimiser states, keys, buffer, iteration: the whole state pytree
        import jax

        la, lb = jax.tree.leaves(straight.state), jax.tree.leaves(resumed.state)
        assert len(la) == len(lb) and all(np.array_equal(a, b) for a, b in zip(la, lb))
    np.testing.assert_array_equal(h_straight["loss"][3:], h_resumed["loss"])
    assert resumed.iteration == 6
    if init == "persistent":
        np.testing.assert_array_equal(B.numpy(straight.buffer), B.numpy(resumed.buffer))
    np.testing.assert_array_equal(B.numpy(straight.sample(5)), B.numpy(resumed.sample(5)))


def test_step_returns_diagnostics_and_updates_everything(backend):
    B = backend
    t = make(B, "vae")
    before = B.params(t)
    info = t.step(B.array(data(16)))
    assert set(info._fields) == {"loss", "energy_data", "energy_samples", "vae_loss",
                                 "acceptance_rate", "grad_norm", "energy_grad_norm",
                                 "path_acceptance", "weight_ess", "crossing_rate"}
    assert all(np.isfinite(float(v)) for v in info[:7])
    assert all(np.isnan(float(v)) for v in info[7:])  # no correction: the MH diagnostics are NaN
    assert float(info.loss) == pytest.approx(float(info.energy_data - info.energy_samples), abs=1e-5)
    after = B.params(t)
    weights = [k for k in before if before[k].ndim == 2]  # the energy's last bias gets no gradient
    assert weights and all(not np.array_equal(before[k], after[k]) for k in weights)


def test_generator_init_trains_decoder_but_not_encoder(backend):
    B = backend
    t = make(B, "generator")
    before = B.params(t)
    t.step(data(16))
    after = B.params(t)
    assert all(np.array_equal(before[k], after[k]) for k in before if k.startswith("encoder"))
    assert all(not np.array_equal(before[k], after[k]) for k in before if k.startswith("decoder"))


def test_learns_a_gaussian(backend):
    """A short run on N((1, −1), 0.5² I) moves the EBM's samples onto the data."""
    B = backend
    t = make(B, "vae", step_size=0.3, num_steps=10, energy_lr=3e-3, vae_lr=3e-3)
    t.fit(data(2000), num_iters=300, batch_size=64, progress=False)
    s = B.numpy(t.sample(2000))
    np.testing.assert_allclose(s.mean(0), [1.0, -1.0], atol=0.1)
    np.testing.assert_allclose(s.std(0), [0.5, 0.5], atol=0.1)


@pytest.mark.parametrize("batch, match", [
    (np.zeros((4, 3), np.float32), r"batch must have shape \(n, 2\), got \(4, 3\)"),
    (np.zeros(4, np.float32), r"batch must have shape \(n, 2\), got \(4,\)"),
    (np.zeros((0, 2), np.float32), r"batch has no rows \(shape \(0, 2\)\)"),
    (np.zeros((4, 2), np.int64), "floating-point"),
    (np.array([[0.0, 1.0], [np.nan, 0.0], [np.inf, 1.0]], np.float32), r"non-finite values in 2 rows \(first: row 1\)"),
])
def test_bad_batches_raise_and_change_nothing(backend, batch, match):
    B = backend
    t = make(B)
    before = B.params(t)
    with pytest.raises(ValueError, match=match):
        t.step(batch)
    after = B.params(t)
    assert all(np.array_equal(v, after[k]) for k, v in before.items()) and t.iteration == 0


@pytest.mark.parametrize("options, match", [
    (dict(step_size=0.0), "step_size must be a positive"),
    (dict(num_steps=0), "num_steps must be a positive"),
    (dict(init="bogus"), "init must be one of"),
    (dict(energy_lr=-1.0), "energy_lr must be a positive"),
    (dict(reinit_prob=2.0), "reinit_prob must lie in"),
    (dict(init_bounds=(1.0, -1.0)), "low < high"),
])
def test_bad_options_raise(backend, options, match):
    with pytest.raises(ValueError, match=match):
        make(backend, **options)


def test_vae_is_required_for_vae_init_and_shapes_must_agree(backend):
    B = backend
    energy = B.api.EnergyModel(B.mlp(2, 1), (2,))
    with pytest.raises(ValueError, match=f"needs a {B.api.__name__}.VAE"):
        B.api.VariationalMCMCTeaching(energy, None, init="vae")
    with pytest.raises(ValueError, match=r"event shape \(3,\) differs"):
        B.api.VariationalMCMCTeaching(energy, B.vae(B.mlp(3, 4), B.mlp(2, 3, seed=1), 2, (3,)))


def test_energy_network_with_wrong_output_shape_raises(backend):
    B = backend
    t = B.api.VariationalMCMCTeaching(B.api.EnergyModel(B.mlp(2, 3, (8,)), (2,)), init="noise",
                                      step_size=0.1, num_steps=2)
    with pytest.raises(ValueError, match=r"one scalar per sample, shape \(4,\) or \(4, 1\); got \(4, 3\)"):
        t.step(data(4))


def exploding(B):
    """``w · Σ (x²/2 − log(3 − |x|))``: finite at the start, NaN after a big step."""
    if B.jax:
        import equinox as eqx
        import jax

        class Exploding(eqx.Module):
            w: jax.Array

            def __call__(self, x):
                return self.w * (0.5 * x ** 2 - B.xp.log(3 - B.xp.abs(x))).sum(-1)
        return Exploding(B.array(1.0))
    torch = B._torch

    class Exploding(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

        def forward(self, x):
            return self.w * (0.5 * x ** 2 - torch.log(3 - x.abs())).sum(-1)
    return Exploding()


def test_divergence_raises_and_changes_nothing(backend):
    B = backend
    t = B.api.VariationalMCMCTeaching(B.api.EnergyModel(exploding(B), (2,)), init="noise", rng=0,
                                      step_size=3.0, num_steps=4, noise_scale=0.0, init_bounds=(-2.0, 2.0))
    state = t.state if B.jax else {k: v.clone() for k, v in t.energy_optim.state_dict()["state"].items()}
    with pytest.raises(DivergenceError, match=r"Langevin diverged: \d+ of 8 chains .* first at step 0"):
        t.step(data(8))
    assert float(B.numpy(t.energy.net.w)) == 1.0 and t.iteration == 0
    if B.jax:
        assert t.state is state
    else:
        assert t.energy_optim.state_dict()["state"] == state


def test_checkpoint_from_another_configuration_is_refused(backend, tmp_path):
    B, path = backend, tmp_path / backend.checkpoint
    make(B, step_size=0.1).save(path)
    with pytest.raises(CheckpointError, match="step_size: checkpoint 0.1 vs this object 0.2"):
        make(B, step_size=0.2).load(path)
    other_net = B.api.VariationalMCMCTeaching(
        B.api.EnergyModel(B.mlp(2, 1, (8,)), (2,)), B.vae(B.mlp(2, 4, (16,), seed=1), B.mlp(2, 2, (16,), seed=2), 2, (2,)),
        step_size=0.1, num_steps=3, buffer_size=50, init_bounds=(-2.0, 2.0))
    with pytest.raises(CheckpointError, match="does not match these networks"):
        other_net.load(path)


def test_corrupt_checkpoint_raises_clearly(backend, tmp_path):
    B, path = backend, tmp_path / backend.checkpoint
    make(B).save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        make(B).load(path)
    (tmp_path / f"x{path.suffix}").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        make(B).load(tmp_path / f"x{path.suffix}")


def test_interrupted_save_leaves_the_old_checkpoint(backend, tmp_path, monkeypatch):
    B, path = backend, tmp_path / backend.checkpoint
    t = make(B)
    t.save(path)
    good = path.read_bytes()
    t.step(data(16))

    def crash(f, *args, **kwargs):
        f = args[0] if not hasattr(f, "write") else f  # torch.save(obj, f) / np.savez(f, **arrays)
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(*((np, "savez") if B.jax else (B._torch, "save")), crash)
    with pytest.raises(KeyboardInterrupt):
        t.save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == [path.name]
