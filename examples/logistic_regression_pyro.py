"""Bayesian logistic regression in Pyro: SVI + AutoNormal, then guide-initialised MALA.

Simulated data with known coefficients. The fitted AutoNormal guide starts a batch of
MALA chains (``LangevinKernel(num_chains=C)`` driven by ``run_chains`` — many chains in
one process, one batched gradient per step), which removes the guide's variational
bias; NUTS (``pyro.infer.MCMC``) is the reference, and ULA (the same kernel with
``adjust=False``) shows the price of skipping the Metropolis correction. Prints an
ArviZ summary of guide-MALA next to NUTS's and the bulk ESS per second of each.

    python examples/logistic_regression_pyro.py            # < 2 min on a laptop CPU
    python examples/logistic_regression_pyro.py --quick    # seconds, for tests
"""

import argparse
import time
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_vmt import LangevinKernel, initial_params_from_guide
from pyro_vmt.chains import run_chains
from vmt.evaluation.diagnostics import min_ess, to_inference_data

TRUE_BETA = np.array([1.0, -2.0, 0.5, 0.0])
TRUE_B0 = -0.5


def simulate(n, seed):
    rng = np.random.default_rng(seed)
    cov = 0.5 * np.eye(4) + 0.5  # correlated covariates
    x = rng.multivariate_normal(np.zeros(4), cov, size=n)
    p = 1 / (1 + np.exp(-(x @ TRUE_BETA + TRUE_B0)))
    return torch.tensor(x), torch.tensor((rng.uniform(size=n) < p).astype(float))


def model(x, y):
    beta = pyro.sample("beta", dist.Normal(torch.zeros(4, dtype=x.dtype), 2.0).to_event(1))
    b0 = pyro.sample("b0", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 2.0))
    with pyro.plate("data", x.shape[0]):
        # (x * beta).sum(-1), not x @ beta: it broadcasts over a leading chain dimension,
        # which lets LangevinKernel(num_chains=C) evaluate all chains in one call
        pyro.sample("y", dist.Bernoulli(logits=(x * beta).sum(-1) + b0), obs=y)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run, for tests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: one thread beats the pool, for every method alike
    n_data, chains = (200, 2) if args.quick else (500, 4)
    svi_steps, warmup, draws, nuts_draws = (200, 50, 100, 50) if args.quick else (1500, 300, 2000, 500)
    pyro.set_rng_seed(args.seed)
    x, y = simulate(n_data, args.seed)

    t = time.perf_counter()
    guide = AutoNormal(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(svi_steps):
        svi.step(x, y)
    t_svi = time.perf_counter() - t

    results, seconds = {}, {}
    init = initial_params_from_guide(guide, model, chains, args.seed, model_args=(x, y))
    mala = LangevinKernel(model, step_size=0.05, num_chains=chains, rng=args.seed)
    t = time.perf_counter()
    out = run_chains(mala, draws, warmup, initial_params=init, model_args=(x, y))
    seconds["guide-MALA"], results["guide-MALA"] = time.perf_counter() - t, to_inference_data(*out)

    # ULA at MALA's tuned step size, from the same starting points
    ula = LangevinKernel(model, step_size=mala.step_size, adjust=False, num_chains=chains, rng=args.seed)
    t = time.perf_counter()
    out = run_chains(ula, draws, warmup, initial_params=init, model_args=(x, y))
    seconds["ULA"], results["ULA"] = time.perf_counter() - t, to_inference_data(*out)

    nuts = MCMC(NUTS(model), num_samples=nuts_draws, warmup_steps=warmup, num_chains=chains,
                disable_progbar=True)
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # more chains than CPUs: Pyro runs them one by one
        nuts.run(x, y)
    seconds["NUTS"] = time.perf_counter() - t
    results["NUTS"] = az.from_pyro(nuts, log_likelihood=False)

    cols = ["mean", "sd", "ess_bulk", "r_hat"]
    table = pd.concat({k: az.summary(results[k], kind="all")[cols] for k in ("guide-MALA", "NUTS")}, axis=1)
    table.insert(0, "truth", np.append(TRUE_B0, TRUE_BETA))
    print(f"SVI (AutoNormal, {svi_steps} steps): {t_svi:.1f} s\n")
    print(table.round(3).to_string(), "\n")
    nuts_mean = az.summary(results["NUTS"], kind="stats")["mean"].to_numpy()
    print(f"{'method':<11} {'draws':>11} {'seconds':>8} {'min ESS':>8} {'ESS/s':>7} {'+SVI':>6} {'|mean - NUTS|':>14}")
    rows = []  # what benchmarks/kernels_ess.py records
    for name in ("guide-MALA", "NUTS", "ULA"):
        ess = min_ess(results[name])
        gap = np.abs(az.summary(results[name], kind="stats")["mean"].to_numpy() - nuts_mean).max()
        n = nuts_draws if name == "NUTS" else draws
        with_svi = ess / (seconds[name] + (0 if name == "NUTS" else t_svi))
        rows.append(dict(method=name, chains=chains, draws=n, seconds=seconds[name], min_ess=ess,
                         ess_per_s=ess / seconds[name], ess_per_s_with_svi=with_svi, max_mean_gap=gap,
                         svi_seconds=t_svi))
        print(f"{name:<11} {f'{chains}x{n}':>11} {seconds[name]:8.1f} {ess:8.0f} {ess / seconds[name]:7.1f} "
              f"{with_svi:6.1f} {gap:14.3f}")
    print("\nseconds: warmup + draws; '+SVI' counts the SVI fit too. min ESS: smallest bulk ESS over"
          " parameters. ULA's ESS counts draws of a biased chain.")
    return results, rows


if __name__ == "__main__":
    main()
