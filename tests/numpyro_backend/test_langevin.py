"""Langevin sampler, JAX idioms (the shared behaviour is in ``tests/backends``): the
run is jit-able and vmap-able, stops gradients, and takes typed keys."""

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")

import jax.numpy as jnp  # noqa: E402

from numpyro_vmt import Langevin, LangevinInfo, LangevinState, init, step  # noqa: E402


def test_no_gradient_flows_through_the_chain():
    """The JAX analogue of torch's "no graph kept": the run is jit-able and its
    output is stop-gradient'ed with respect to the potential's parameters."""
    def run(w, x0, key):
        energy = lambda x: (x @ w) ** 2  # noqa: E731
        state, _ = Langevin(energy, 0.1, num_steps=5).run(key, x0)
        return state.position.sum()

    w = jnp.array([1.0, -2.0])
    grad = jax.jit(jax.grad(run))(w, jnp.ones((3, 2)), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(grad, 0.0)


def test_runs_under_jit_and_vmap_and_on_image_shaped_events():
    energy = lambda x: 0.5 * (x ** 2).reshape(x.shape[0], -1).sum(1)  # noqa: E731
    sampler = Langevin(energy, 0.1, num_steps=2)
    state, info = jax.jit(sampler.run)(jax.random.PRNGKey(0), jnp.ones((4, 1, 3, 3)))
    assert state.position.shape == (4, 1, 3, 3) and state.grad.shape == (4, 1, 3, 3)
    assert isinstance(state, LangevinState) and isinstance(info, LangevinInfo)
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    batched, binfo = jax.vmap(lambda k: sampler.run(k, jnp.ones((4, 2))))(keys)
    assert batched.position.shape == (3, 4, 2) and binfo.is_divergent.shape == (3, 2, 4)
    one = jax.jit(lambda k, s: step(k, s, energy, 0.1))(keys[0], init(jnp.ones((4, 2)), energy))
    assert one[0].position.shape == (4, 2)


def test_typed_keys_are_accepted():
    s = Langevin(lambda x: 0.5 * (x ** 2).sum(-1), 0.3, num_steps=4)
    x0 = jnp.zeros((8, 2))
    np.testing.assert_array_equal(s.run(7, x0)[0].position, s.run(jax.random.PRNGKey(7), x0)[0].position)
    assert s.run(jax.random.key(7), x0)[0].position.shape == (8, 2)
