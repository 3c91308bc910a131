"""VariationalMCMCTeaching, JAX idioms (the shared behaviour is in ``tests/backends``):
the pure ``update`` and the step that commits it, sampling that leaves the training
key alone, the energy as a NumPyro model, and a checkpoint of the other backend."""

import json

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")
eqx = pytest.importorskip("equinox")

import jax.numpy as jnp  # noqa: E402

from numpyro_vmt import VAE, EnergyModel, VariationalMCMCTeaching  # noqa: E402
from numpyro_vmt.nets import MLP  # noqa: E402
from vmt.core.errors import CheckpointError  # noqa: E402
from toy import gaussian_data as data  # noqa: E402

INITS = ["vae", "noise", "persistent", "generator"]


def make(init="vae", seed=0, **options):
    energy = EnergyModel(MLP(2, 1, (16, 16), rng=seed), (2,))
    vae = VAE(MLP(2, 4, (16,), rng=seed + 1), MLP(2, 2, (16,), rng=seed + 2), 2, (2,))
    opts = dict(step_size=0.1, num_steps=3, buffer_size=50, init_bounds=(-2.0, 2.0)) | options
    return VariationalMCMCTeaching(energy, vae, init=init, rng=seed, **opts)


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


def test_energy_model_is_a_numpyro_model_with_potential_e():
    from numpyro.infer.util import potential_energy

    energy = EnergyModel(MLP(2, 1, (8,), rng=0), (2,), ref_scale=2.0)
    x = jnp.array([[0.3, -1.0], [1.0, 2.0], [0.0, 0.5]])
    np.testing.assert_allclose(potential_energy(energy.model, (), {}, {"x": x[0]}), energy(x[:1])[0], rtol=1e-5)
    np.testing.assert_allclose(potential_energy(energy.model, (3,), {}, {"x": x}), energy(x).sum(), rtol=1e-5)
    np.testing.assert_allclose(energy.numpy_energy(np.asarray(x), batch_size=2), energy(x), rtol=1e-6)


def test_a_checkpoint_of_the_other_backend_is_refused(tmp_path):
    header = {"format": "pyro-vmt", "version": 1, "backend": "pyro"}
    np.savez(tmp_path / "torch.npz", header=np.array(json.dumps(header)))
    with pytest.raises(CheckpointError, match="written by the 'pyro' backend, not 'numpyro'"):
        make().load(tmp_path / "torch.npz")
