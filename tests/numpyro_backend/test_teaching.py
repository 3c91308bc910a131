"""VariationalMCMCTeaching (JAX): exact resume, every initialisation, the pure
``update`` core, bad input, divergence that loses nothing, atomic checkpoints."""

import json
import os

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
eqx = pytest.importorskip("equinox")

import jax.numpy as jnp  # noqa: E402

from numpyro_vmt import VAE, EnergyModel, VariationalMCMCTeaching  # noqa: E402
from numpyro_vmt.nets import MLP  # noqa: E402
from vmt.core.errors import CheckpointError, DivergenceError  # noqa: E402

INITS = ["vae", "noise", "persistent", "generator"]


def make(init="vae", seed=0, **options):
    energy = EnergyModel(MLP(2, 1, (16, 16), rng=seed), (2,))
    vae = VAE(MLP(2, 4, (16,), rng=seed + 1), MLP(2, 2, (16,), rng=seed + 2), 2, (2,))
    opts = dict(step_size=0.1, num_steps=3, buffer_size=50, init_bounds=(-2.0, 2.0)) | options
    return VariationalMCMCTeaching(energy, vae, init=init, rng=seed, **opts)


def data(n=64, seed=0):
    g = np.random.default_rng(seed)
    return (g.standard_normal((n, 2)) * 0.5 + [1.0, -1.0]).astype(np.float32)


def params(t):
    out = {f"e{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(eqx.filter(t.energy, eqx.is_inexact_array)))}
    if t.vae is not None:
        vae = eqx.filter(t.vae, eqx.is_inexact_array)
        out |= {f"enc{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(vae.encoder))}
        out |= {f"dec{i}": np.asarray(a) for i, a in enumerate(jax.tree.leaves(vae.decoder))}
    return out


def same_state(a, b):
    la, lb = jax.tree.leaves(a.state), jax.tree.leaves(b.state)
    return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


RESUME_CASES = [(init, {}) for init in INITS] + [
    (init, dict(noise_fraction=0.25, lr_decay_steps=4, lr_final_ratio=0.2)) for init in ("vae", "generator")]


@pytest.mark.parametrize("init, opts", RESUME_CASES)
def test_save_load_resumes_bit_for_bit(init, opts, tmp_path):
    x = data()
    straight = make(init, **opts)
    h_straight = straight.fit(x, num_iters=6, batch_size=16, progress=False)

    first = make(init, **opts)
    first.fit(x, num_iters=3, batch_size=16, progress=False)
    first.save(tmp_path / "ck.npz", note="half-way")
    resumed = make(init, seed=123, **opts)  # different init and RNG: everything must come from the file
    assert resumed.load(tmp_path / "ck.npz") == {"note": "half-way"}
    h_resumed = resumed.fit(x, num_iters=3, batch_size=16, progress=False)

    a, b = params(straight), params(resumed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert same_state(straight, resumed)  # optimiser states, keys, buffer, iteration too
    np.testing.assert_array_equal(h_straight["loss"][3:], h_resumed["loss"])
    assert resumed.iteration == 6
    if init == "persistent":
        np.testing.assert_array_equal(straight.buffer, resumed.buffer)
    np.testing.assert_array_equal(straight.sample(5), resumed.sample(5))


def test_update_is_pure_and_step_commits_it():
    t = make("vae")
    batch = jnp.asarray(data(16))
    state0 = t.state
    s1, info1 = t.update(state0, batch)
    s2, _ = t.update(state0, batch)
    assert t.state is state0 and t.iteration == 0  # update changes nothing on the object
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)))
    info = t.step(batch)
    assert t.iteration == 1
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(t.state), jax.tree.leaves(s1)))
    np.testing.assert_array_equal(info.loss, info1.loss)


def test_sample_does_not_consume_the_training_key():
    t = make("vae")
    a = t.sample(5)
    np.testing.assert_array_equal(a, t.sample(5))
    assert not np.array_equal(a, t.sample(5, rng=1))
    np.testing.assert_array_equal(t.sample(5, rng=1), t.sample(5, rng=jax.random.PRNGKey(1)))
    assert t.sample(5, num_steps=0).shape == (5, 2)
    assert t.iteration == 0 and same_state(t, make("vae"))


def test_step_returns_diagnostics_and_updates_everything():
    t = make("vae")
    before = params(t)
    info = t.step(jnp.asarray(data(16)))
    assert set(info._fields) == {"loss", "energy_data", "energy_samples", "vae_loss",
                                 "acceptance_rate", "grad_norm", "energy_grad_norm",
                                 "path_acceptance", "weight_ess", "crossing_rate"}
    assert all(np.isfinite(v) for v in info[:7])
    assert all(np.isnan(float(v)) for v in info[7:])  # no correction: the MH diagnostics are NaN
    assert float(info.loss) == pytest.approx(float(info.energy_data - info.energy_samples), abs=1e-5)
    after = params(t)
    weights = [k for k in before if before[k].ndim == 2]  # the energy's last bias gets no gradient
    assert all(not np.array_equal(before[k], after[k]) for k in weights)


def test_generator_init_trains_decoder_but_not_encoder():
    t = make("generator")
    before = params(t)
    t.step(data(16))
    after = params(t)
    assert all(np.array_equal(before[k], after[k]) for k in before if k.startswith("enc"))
    assert all(not np.array_equal(before[k], after[k]) for k in before if k.startswith("dec"))


def test_learns_a_gaussian():
    """A short run on N((1, −1), 0.5² I) moves the EBM's samples onto the data."""
    t = make("vae", step_size=0.3, num_steps=10, energy_lr=3e-3, vae_lr=3e-3)
    t.fit(data(2000), num_iters=300, batch_size=64, progress=False)
    s = np.asarray(t.sample(2000))
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
    state = t.state
    with pytest.raises(ValueError, match=match):
        t.step(batch)
    assert t.state is state


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
    energy = EnergyModel(MLP(2, 1, rng=0), (2,))
    with pytest.raises(ValueError, match="needs a numpyro_vmt.VAE"):
        VariationalMCMCTeaching(energy, None, init="vae")
    with pytest.raises(ValueError, match=r"event shape \(3,\) differs"):
        VariationalMCMCTeaching(energy, VAE(MLP(3, 4, rng=0), MLP(2, 3, rng=1), 2, (3,)))


def test_energy_network_with_wrong_output_shape_raises():
    energy = EnergyModel(MLP(2, 3, (8,), rng=0), (2,))
    t = VariationalMCMCTeaching(energy, init="noise", step_size=0.1, num_steps=2)
    with pytest.raises(ValueError, match=r"one scalar per sample, shape \(4,\) or \(4, 1\); got \(4, 3\)"):
        t.step(data(4))


def test_energy_model_is_a_numpyro_model_with_potential_e():
    from numpyro.infer.util import potential_energy

    energy = EnergyModel(MLP(2, 1, (8,), rng=0), (2,), ref_scale=2.0)
    x = jnp.array([[0.3, -1.0], [1.0, 2.0], [0.0, 0.5]])
    np.testing.assert_allclose(potential_energy(energy.model, (), {}, {"x": x[0]}), energy(x[:1])[0], rtol=1e-5)
    np.testing.assert_allclose(potential_energy(energy.model, (3,), {}, {"x": x}), energy(x).sum(), rtol=1e-5)
    np.testing.assert_allclose(energy.numpy_energy(np.asarray(x), batch_size=2), energy(x), rtol=1e-6)


class Exploding(eqx.Module):
    """Finite at the start, NaN after a big step."""

    w: jax.Array

    def __call__(self, x):
        return self.w * (0.5 * x ** 2 - jnp.log(3 - jnp.abs(x))).sum(-1)


def test_divergence_raises_and_changes_nothing():
    t = VariationalMCMCTeaching(EnergyModel(Exploding(jnp.ones(())), (2,)), init="noise", rng=0,
                                step_size=3.0, num_steps=4, noise_scale=0.0, init_bounds=(-2.0, 2.0))
    state = t.state
    with pytest.raises(DivergenceError, match=r"Langevin diverged: \d+ of 8 chains .* first at step 0"):
        t.step(data(8))
    assert t.state is state and t.iteration == 0
    assert float(t.energy.net.w) == 1.0


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    t = make(step_size=0.1)
    t.save(tmp_path / "ck.npz")
    with pytest.raises(CheckpointError, match="step_size: checkpoint 0.1 vs this object 0.2"):
        make(step_size=0.2).load(tmp_path / "ck.npz")
    other_net = VariationalMCMCTeaching(EnergyModel(MLP(2, 1, (8,), rng=0), (2,)),
                                        VAE(MLP(2, 4, (16,), rng=1), MLP(2, 2, (16,), rng=2), 2, (2,)),
                                        step_size=0.1, num_steps=3, buffer_size=50, init_bounds=(-2.0, 2.0))
    with pytest.raises(CheckpointError, match="does not match these networks"):
        other_net.load(tmp_path / "ck.npz")


def test_corrupt_checkpoint_raises_clearly(tmp_path):
    path = tmp_path / "ck.npz"
    make().save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        make().load(path)
    (tmp_path / "x.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        make().load(tmp_path / "x.npz")
    header = {"format": "pyro-vmt", "version": 1, "backend": "pyro"}
    np.savez(tmp_path / "torch.npz", header=np.array(json.dumps(header)))
    with pytest.raises(CheckpointError, match="written by the 'pyro' backend, not 'numpyro'"):
        make().load(tmp_path / "torch.npz")


def test_interrupted_save_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    t = make()
    t.save(path)
    good = path.read_bytes()
    t.step(data(16))

    def crash(f, **arrays):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        t.save(path)
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["ck.npz"]
