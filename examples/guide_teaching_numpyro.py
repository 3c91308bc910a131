"""Teach a NumPyro guide with MCMC (MCMCTeaching) on eight schools and a logistic regression.

The same ``AutoNormal`` guide is fitted twice, by ``SVI(Trace_ELBO)`` and by
``MCMCTeaching`` (draw from the guide, revise with K MALA steps, raise log q at the
revised draws) at the same number of gradient evaluations of the model, and both
are compared with NUTS: a table of posterior means and standard deviations, and an
ArviZ forest plot per model (``--out``). Eight schools is the non-centred
parameterisation; the logistic regression has correlated covariates, so the
mean-field SVI guide's standard deviations come out too small.

    python examples/guide_teaching_numpyro.py             # < 2 min on one CPU core
    python examples/guide_teaching_numpyro.py --quick     # seconds, for tests
"""

import argparse
import time
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal

from numpyro_vmt import MCMCTeaching

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCHOOLS_Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y, sigma):
    mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
    with numpyro.plate("schools", y.shape[-1]):
        theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def logistic(x, y):
    beta = numpyro.sample("beta", dist.Normal(jnp.zeros(x.shape[-1]), 2.0).to_event(1))
    b0 = numpyro.sample("b0", dist.Normal(0.0, 2.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", dist.Bernoulli(logits=x @ beta + b0), obs=y)


def logistic_data(n, seed):
    rng = np.random.default_rng(seed)
    cov = 0.3 * np.eye(4) + 0.7  # strongly correlated covariates
    x = rng.multivariate_normal(np.zeros(4), cov, size=n)
    p = 1 / (1 + np.exp(-(x @ np.array([1.0, -1.0, 0.5, 0.0]) - 0.5)))
    return jnp.asarray(x, dtype=jnp.float32), jnp.asarray((rng.uniform(size=n) < p).astype(np.float32))


def fit(model, data, iters, num_steps, num_particles, seed, persistent=False, precondition=True):
    """The same AutoNormal by SVI and by MCMCTeaching at equal model-gradient evaluations."""
    fits = {}
    guide = AutoNormal(model)
    schedule = optax.exponential_decay(0.05, iters, 0.1)
    teaching = MCMCTeaching(model, guide, optax.adam(schedule, b2=0.9), num_steps=num_steps,
                            num_particles=num_particles, persistent=persistent,
                            precondition=precondition)
    t = time.perf_counter()
    result = teaching.run(seed, iters, *data)
    fits["taught"] = (guide, result.params, time.perf_counter() - t)
    # SVI: one gradient of the model per particle per step (reparameterised ELBO)
    evals = iters * (num_steps + 1) * num_particles
    svi_particles = 8
    svi_steps = evals // svi_particles
    svi_guide = AutoNormal(model)
    svi = SVI(model, svi_guide, optax.adam(optax.exponential_decay(0.05, svi_steps, 0.1)),
              Trace_ELBO(num_particles=svi_particles))
    t = time.perf_counter()
    svi_result = svi.run(jax.random.key(seed), svi_steps, *data, progress_bar=False)
    fits["SVI"] = (svi_guide, svi_result.params, time.perf_counter() - t)
    return fits, evals


def draws(model, guide, params, data, sites, seed, num_samples=2000):
    """Guide draws as ArviZ data (one chain)."""
    samples = Predictive(model, guide=guide, params=params, num_samples=num_samples,
                         return_sites=sites)(jax.random.key(seed), *data)
    return az.from_dict(posterior={k: np.asarray(v)[None] for k, v in samples.items()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for tests")
    parser.add_argument("--out", type=Path, default=Path("guide_teaching_numpyro"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--persistent", action="store_true",
                        help="teach with persistent chains (MCMCTeaching(persistent=True), docs/guide_teaching.md)")
    parser.add_argument("--dense", action="store_true",
                        help="revise with a dense mass matrix learned from past revisions (precondition='dense')")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    iters, nuts = (30, 30) if args.quick else (400, 400)  # quick: past the first mass window (25)
    problems = {
        "eight_schools": (eight_schools, (SCHOOLS_Y, SCHOOLS_SIGMA), ["mu", "tau", "theta_tilde"]),
        "logistic": (logistic, logistic_data(200, args.seed), ["beta", "b0"]),
    }
    for name, (model, data, sites) in problems.items():
        fits, evals = fit(model, data, iters, num_steps=10, num_particles=8, seed=args.seed,
                           persistent=args.persistent,
                           precondition="dense" if args.dense else True)
        mcmc = MCMC(NUTS(model), num_warmup=nuts, num_samples=nuts, progress_bar=False)
        mcmc.run(jax.random.key(args.seed), *data)
        results = {"NUTS": az.from_numpyro(mcmc)}
        for label, (guide, params, _) in fits.items():
            results[label] = draws(model, guide, params, data, sites, args.seed)
        ref = az.summary(results["NUTS"], var_names=sites, kind="stats")
        print(f"\n{name}: {evals} model-gradient evaluations for each guide "
              f"(taught {fits['taught'][2]:.0f} s, SVI {fits['SVI'][2]:.0f} s, compilation included); "
              f"NUTS {nuts}+{nuts} draws")
        print(f"{'site':<16} {'NUTS mean':>9} {'NUTS sd':>8} | {'taught sd/NUTS':>14} {'SVI sd/NUTS':>11} | "
              f"{'taught |dm|/sd':>14} {'SVI |dm|/sd':>11}")
        rows = {k: az.summary(results[k], var_names=sites, kind="stats") for k in ("taught", "SVI")}
        for site in ref.index:
            m, s = ref.loc[site, "mean"], ref.loc[site, "sd"]
            r = {k: (rows[k].loc[site, "sd"] / s, abs(rows[k].loc[site, "mean"] - m) / s) for k in rows}
            print(f"{site:<16} {m:9.3f} {s:8.3f} | {r['taught'][0]:14.2f} {r['SVI'][0]:11.2f} | "
                  f"{r['taught'][1]:14.2f} {r['SVI'][1]:11.2f}")
        az.plot_forest([results["NUTS"], results["taught"], results["SVI"]],
                       model_names=["NUTS", "taught (MCMCTeaching)", "SVI (Trace_ELBO)"],
                       var_names=sites, combined=True, hdi_prob=0.9, figsize=(7, 6))
        plt.title(f"{name}: AutoNormal guide vs NUTS")
        plt.savefig(args.out / f"{name}_forest.png", dpi=90, bbox_inches="tight")
        plt.close("all")
    print(f"\nforest plots in {args.out}/")


if __name__ == "__main__":
    main()
