"""Float options take NumPy, JAX and torch scalars; the JAX functional API takes traced
values, so a step-size sweep can be vmapped through ``Langevin``."""

import numpy as np
import pytest


def test_jax_step_size_sweep_vmapped_through_langevin():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from numpyro_vmt import Langevin

    potential = lambda x: 0.5 * (x ** 2).sum(-1)  # noqa: E731  -- N(0, 1)

    def final_variance(step_size):
        state, _ = Langevin(potential, step_size, 300).run(jax.random.key(0), jnp.zeros((4000, 1)))
        return state.position.var()

    sweep = jnp.array([0.2, 0.6, 1.0])
    got = np.asarray(jax.vmap(final_variance)(sweep))
    one_by_one = [float(final_variance(float(h))) for h in sweep]
    np.testing.assert_allclose(got, one_by_one, rtol=1e-5)
    # ULA on N(0, 1) with h = δ²/2 has stationary variance 1 / (1 − h/2)
    exact = 1 / (1 - np.asarray(sweep) ** 2 / 4)
    assert (np.abs(got - exact) < 3.3 * exact * np.sqrt(2 / 4000)).all(), (got, exact)


@pytest.mark.parametrize("backend", ["pyro", "numpyro"])
def test_scalars_of_every_array_library_are_taken(backend):
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    mod = pytest.importorskip(f"{backend}_vmt")
    scalars = [np.float32(0.3), np.float64(0.3), np.array(0.3), jnp.float32(0.3), torch.tensor(0.3)]
    potential = (lambda x: 0.5 * (x ** 2).sum(-1))
    position = torch.zeros(5, 2) if backend == "pyro" else jnp.zeros((5, 2))
    for h in scalars:
        sampler = mod.Langevin(potential, h, 3, noise_scale=h, adjust=True)
        assert sampler.step_size == pytest.approx(0.3) and isinstance(sampler.step_size, float)
        state, _ = sampler.run(0, position)
        assert tuple(state.position.shape) == (5, 2)
        state, _ = mod.step(0, mod.init(position, potential), potential, h, h, True)
        assert np.isfinite(np.asarray(state.position)).all()
        kernel = mod.LangevinKernel(potential_fn=lambda p: 0.5 * (p["x"] ** 2).sum(), step_size=h,
                                    target_accept_prob=np.float32(0.6))
        assert kernel.step_size == pytest.approx(0.3)
