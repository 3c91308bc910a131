"""Both kernels: a step size and a mass matrix per chain, adapted by the PPLs' own code.

One test body per property, run through both backends (Pyro: a batched kernel under
``run_chains``; NumPyro: ``MCMC(chain_method="vectorized")``)."""

import numpy as np
import pytest

from kernel_checks import assert_mcse

NARROW, WIDE = 0.01, 1.0  # the two modes' standard deviations
DRAWS = 500  # per chain after warm-up: the moment checks' tolerances follow from their ESS


@pytest.fixture(params=["pyro", "numpyro"])
def backend(request):
    pytest.importorskip({"pyro": "pyro", "numpyro": "numpyro"}[request.param])
    return request.param


def _run(backend, potential, init, num_warmup, num_samples, seed, **options):
    """Chains ``(C, draws, D)``, per-chain step sizes ``(C,)``, inverse mass matrices, acceptance ``(C,)``."""
    if backend == "pyro":
        import torch
        from pyro_vmt import LangevinKernel
        from pyro_vmt.chains import run_chains

        kernel = LangevinKernel(potential_fn=lambda p: potential(p["x"], torch), num_chains=init.shape[0],
                                rng=seed, **options)
        out = run_chains(kernel, num_samples, num_warmup, initial_params={"x": torch.tensor(init)},
                         progress=False)
        return (out.samples["x"].numpy(), np.asarray(kernel.step_size), np.asarray(kernel.inverse_mass_matrix),
                out.sample_stats["is_accepted"].double().mean(1).numpy())
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC
    from numpyro_vmt import LangevinKernel

    kernel = LangevinKernel(potential_fn=lambda p: potential(p["x"][None], jnp)[0], **options)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=init.shape[0],
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed), init_params={"x": jnp.asarray(init, dtype=jnp.float32)}, extra_fields=("accept_prob",))
    last = mcmc.last_state
    return (np.asarray(mcmc.get_samples(group_by_chain=True)["x"]), np.asarray(last.step_size),
            np.asarray(last.adapt_state.inverse_mass_matrix),
            np.asarray(mcmc.get_extra_fields(group_by_chain=True)["accept_prob"]).mean(1))


def _two_curvatures(x, xp):
    """Two modes, at −10 with sd 0.01 and at +10 with sd 1: a chain never leaves its mode."""
    x = x[..., 0]
    return xp.where(x < 0, 0.5 * ((x + 10) / NARROW) ** 2, 0.5 * ((x - 10) / WIDE) ** 2)


def test_each_chain_tunes_its_own_step_size(backend):
    """Two chains in a mode 100× narrower than the other two's. One shared step size
    sticks the narrow chains (checked below, with the geometric mean of the tuned step
    sizes); each chain's own dual averaging gives every chain its target acceptance and
    its mode's spread."""
    init = np.array([[-10.0], [-10.0], [10.0], [10.0]])
    x, steps, _, accept = _run(backend, _two_curvatures, init, 500, DRAWS, 1, step_size=0.1,
                               adapt_mass_matrix=False)
    assert steps.shape == (4,) and steps[2:].min() > 20 * steps[:2].max(), steps
    assert (np.abs(accept - 0.574) < 0.15).all(), accept
    for c, sd in enumerate((NARROW, NARROW, WIDE, WIDE)):
        centre = -10.0 if sd == NARROW else 10.0
        assert_mcse((x[c:c + 1, :, 0] - centre) ** 2, sd ** 2, np.sqrt(2) * sd ** 2, f"chain {c} variance")
    shared = float(np.exp(np.log(steps).mean()))
    _, _, _, stuck = _run(backend, _two_curvatures, init, 0, 300, 2, step_size=shared,
                          adapt_step_size=False, adapt_mass_matrix=False)
    assert stuck[:2].max() < 0.05 < stuck[2:].min(), stuck


def _badly_scaled(x, xp):
    """N(0, diag(1, 10⁴)), unnormalised."""
    return 0.5 * (x[..., 0] ** 2 + x[..., 1] ** 2 / 1e4)


@pytest.mark.parametrize("dense", [False, True])
def test_mass_matrix_adaptation_recovers_badly_scaled_variances(backend, dense):
    """Variances 1 and 10⁴: the adapted inverse mass matrix is close to them and the draws'
    variances match within Monte-Carlo error. With the identity mass matrix the step size
    that the narrow direction allows cannot cross the wide one in these many draws."""
    if dense and backend == "pyro":
        chains = 1  # the batched Pyro kernel keeps dense matrices for one chain (see LangevinKernel)
    else:
        chains = 4
    init = np.zeros((chains, 2))
    x, _, imm, _ = _run(backend, _badly_scaled, init, 600, DRAWS, 3, step_size=0.1, dense_mass=dense)
    diag = np.diagonal(imm, axis1=-2, axis2=-1) if dense else imm
    diag = diag.reshape(-1, 2)
    ratio = diag / [1.0, 1e4]  # one window's Welford estimate from a few hundred correlated draws
    assert ((ratio > 1 / 3) & (ratio < 3)).all(), diag
    for i, var in enumerate((1.0, 1e4)):
        assert_mcse(x[..., i] ** 2, var, np.sqrt(2) * var, f"var[{i}]")
    x_id, *_ = _run(backend, _badly_scaled, init, 600, DRAWS, 3, step_size=0.1, adapt_mass_matrix=False)
    assert (x_id[..., 1] ** 2).mean() < 0.5 * 1e4, "the identity mass matrix should not mix here"
