"""Bayesian logistic regression in NumPyro: SVI + AutoNormal, then guide-initialised MALA.

Simulated data with known coefficients. The fitted AutoNormal guide starts a batch of
MALA chains (``LangevinKernel`` in ``MCMC(chain_method="vectorized")``, one batched
gradient per step), which removes the guide's variational bias; NUTS is the
reference, and ULA (``adjust=False``) shows the price of skipping the Metropolis
correction. Prints an ArviZ summary of guide-MALA next to NUTS's and the bulk ESS
per second of each, timed on a second run that loads the compiled sampler from JAX's
persistent compilation cache (the first run's time, compilation included, is printed too).

    python examples/logistic_regression_numpyro.py            # < 2 min on a laptop CPU
    python examples/logistic_regression_numpyro.py --quick    # seconds, for tests
"""

import argparse
import tempfile
import time

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pandas as pd
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from numpyro_vmt.kernel import LangevinKernel
from numpyro_vmt.warmstart import initial_params_from_guide
from vmt.evaluation.diagnostics import min_ess

TRUE_BETA = np.array([1.0, -2.0, 0.5, 0.0])
TRUE_B0 = -0.5


def simulate(n, seed):
    rng = np.random.default_rng(seed)
    cov = 0.5 * np.eye(4) + 0.5  # correlated covariates
    x = rng.multivariate_normal(np.zeros(4), cov, size=n)
    p = 1 / (1 + np.exp(-(x @ TRUE_BETA + TRUE_B0)))
    return jnp.asarray(x), jnp.asarray((rng.uniform(size=n) < p).astype(float))


def model(x, y):
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(4), 2.0).to_event(1))
    b0 = numpyro.sample("b0", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ beta + b0), obs=y)


def timed_run(mcmc, key, *args, **kwargs):
    """Run ``mcmc`` twice; returns (first run s, second run s).

    NumPyro re-traces and re-compiles its sampling loop on every ``run``; with JAX's
    persistent compilation cache on (see ``main``) the second run loads the compiled
    loop, so its time is sampling plus tracing/initialisation overhead.
    """
    times = []
    for k in (key, jax.random.fold_in(key, 1)):
        t = time.perf_counter()
        mcmc.run(k, *args, **kwargs)
        jax.block_until_ready(mcmc.get_samples())
        times.append(time.perf_counter() - t)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run, for tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cache = tempfile.TemporaryDirectory()
    jax.config.update("jax_compilation_cache_dir", cache.name)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    n_data, chains = (200, 2) if args.quick else (500, 4)
    svi_steps, warmup, draws, nuts_draws = (200, 50, 100, 50) if args.quick else (1500, 300, 2000, 500)
    key_svi, key_mala, key_ula, key_nuts = jax.random.split(jax.random.key(args.seed), 4)
    x, y = simulate(n_data, args.seed)

    t = time.perf_counter()
    guide = AutoNormal(model)
    svi_result = SVI(model, guide, optax.adam(0.02), Trace_ELBO()).run(key_svi, svi_steps, x, y, progress_bar=False)
    jax.block_until_ready(svi_result.params)
    t_svi = time.perf_counter() - t

    init = initial_params_from_guide(guide, model, chains, args.seed, model_args=(x, y), params=svi_result.params)
    results, seconds, compile_s = {}, {}, {}
    kw = dict(num_warmup=warmup, num_samples=draws, num_chains=chains, progress_bar=False)
    mala = MCMC(LangevinKernel(model, step_size=0.05), chain_method="vectorized", **kw)
    compile_s["guide-MALA"], seconds["guide-MALA"] = timed_run(mala, key_mala, x, y, init_params=init,
                                                               extra_fields=("accept_prob", "step_size"))
    results["guide-MALA"] = az.from_numpyro(mala)
    step = float(np.median(mala.get_extra_fields()["step_size"]))

    ula = MCMC(LangevinKernel(model, step_size=step, adjust=False), chain_method="vectorized", **kw)
    compile_s["ULA"], seconds["ULA"] = timed_run(ula, key_ula, x, y, init_params=init)
    results["ULA"] = az.from_numpyro(ula)  # ULA at MALA's tuned step size, same starting points

    nuts = MCMC(NUTS(model), chain_method="sequential", **{**kw, "num_samples": nuts_draws})
    compile_s["NUTS"], seconds["NUTS"] = timed_run(nuts, key_nuts, x, y)
    results["NUTS"] = az.from_numpyro(nuts)

    cols = ["mean", "sd", "ess_bulk", "r_hat"]
    table = pd.concat({k: az.summary(results[k], kind="all")[cols] for k in ("guide-MALA", "NUTS")}, axis=1)
    table.insert(0, "truth", np.append(TRUE_B0, TRUE_BETA))
    print(f"SVI (AutoNormal, {svi_steps} steps): {t_svi:.1f} s\n")
    print(table.round(3).to_string(), "\n")
    nuts_mean = az.summary(results["NUTS"], kind="stats")["mean"].to_numpy()
    print(f"{'method':<11} {'draws':>11} {'1st run':>8} {'seconds':>8} {'min ESS':>8} {'ESS/s':>7} {'+SVI':>6} "
          f"{'|mean - NUTS|':>14}")
    rows = []  # what benchmarks/kernels_ess.py records
    for name in ("guide-MALA", "NUTS", "ULA"):
        ess = min_ess(results[name])
        gap = np.abs(az.summary(results[name], kind="stats")["mean"].to_numpy() - nuts_mean).max()
        n = nuts_draws if name == "NUTS" else draws
        with_svi = ess / (seconds[name] + (0 if name == "NUTS" else t_svi))
        rows.append(dict(method=name, chains=chains, draws=n, seconds=seconds[name], min_ess=ess,
                         ess_per_s=ess / seconds[name], ess_per_s_with_svi=with_svi, max_mean_gap=gap,
                         svi_seconds=t_svi, first_run_seconds=compile_s[name]))
        print(f"{name:<11} {f'{chains}x{n}':>11} {compile_s[name]:8.1f} {seconds[name]:8.2f} {ess:8.0f} "
              f"{ess / seconds[name]:7.0f} {with_svi:6.0f} {gap:14.3f}")
    print("\nseconds: warmup + draws of the second run (compiled loop from the cache); '+SVI' counts"
          " the SVI fit too."
          " min ESS: smallest bulk ESS over parameters. ULA's ESS counts draws of a biased chain."
          " NUTS runs its chains one after another (chain_method='sequential'), MALA/ULA vectorized.")
    cache.cleanup()
    return results, rows


if __name__ == "__main__":
    main()
