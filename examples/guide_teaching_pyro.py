"""Teach a Pyro guide with MCMC (MCMCTeaching) on eight schools and a logistic regression.

The same ``AutoNormal`` guide is fitted twice, by ``SVI(Trace_ELBO)`` and by
``MCMCTeaching`` (draw from the guide, revise with K MALA steps, raise log q at the
revised draws) at the same number of gradient evaluations of the model, and both
are compared with NUTS: a table of posterior means and standard deviations, and an
ArviZ forest plot per model (``--out``). Eight schools is the non-centred
parameterisation; the logistic regression has correlated covariates, so the
mean-field SVI guide's standard deviations come out too small.

    python examples/guide_teaching_pyro.py             # < 2 min on one CPU core
    python examples/guide_teaching_pyro.py --quick     # seconds, for tests
"""

import argparse
import time
from pathlib import Path

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_vmt import MCMCTeaching

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCHOOLS_Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SCHOOLS_SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", y.shape[-1]):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)


def logistic(x, y):
    beta = pyro.sample("beta", dist.Normal(torch.zeros(x.shape[-1]), 2.0).to_event(1))
    b0 = pyro.sample("b0", dist.Normal(0.0, 2.0))
    with pyro.plate("data", x.shape[0]):
        # (x * beta).sum(-1), not x @ beta: it broadcasts over the particle dimension
        pyro.sample("y", dist.Bernoulli(logits=(x * beta).sum(-1) + b0), obs=y)


def logistic_data(n, seed):
    rng = np.random.default_rng(seed)
    cov = 0.3 * np.eye(4) + 0.7  # strongly correlated covariates
    x = rng.multivariate_normal(np.zeros(4), cov, size=n)
    p = 1 / (1 + np.exp(-(x @ np.array([1.0, -1.0, 0.5, 0.0]) - 0.5)))
    return torch.tensor(x, dtype=torch.float32), torch.tensor((rng.uniform(size=n) < p).astype(np.float32))


def fit(model, data, iters, num_steps, num_particles, seed, persistent=False, precondition=True):
    """The same AutoNormal by SVI and by MCMCTeaching at equal model-gradient evaluations."""
    guides = {}
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoNormal(model)
    teaching = MCMCTeaching(model, guide, pyro.optim.ClippedAdam({"lr": 0.05, "betas": (0.9, 0.9),
                                                                  "lrd": 0.1 ** (1 / iters)}),
                            num_steps=num_steps, num_particles=num_particles, persistent=persistent,
                            precondition=precondition)
    t = time.perf_counter()
    teaching.run(seed, iters, *data)
    guides["taught"] = (guide, time.perf_counter() - t)
    # SVI: one gradient of the model per particle per step (reparameterised ELBO)
    evals = iters * (num_steps + 1) * num_particles
    svi_particles = 8
    svi_steps = evals // svi_particles
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi_guide = AutoNormal(model)
    svi = SVI(model, svi_guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.1 ** (1 / svi_steps)}),
              Trace_ELBO(num_particles=svi_particles, vectorize_particles=True))
    t = time.perf_counter()
    for _ in range(svi_steps):
        svi.step(*data)
    guides["SVI"] = (svi_guide, time.perf_counter() - t)
    return guides, evals


def draws(model, guide, data, sites, num_samples=2000):
    """Guide draws as ArviZ data (one chain), shaped like the model's sites."""
    trace = pyro.poutine.trace(model).get_trace(*data)
    shapes = {k: s["value"].shape for k, s in trace.nodes.items() if s["type"] == "sample"}
    samples = Predictive(model, guide=guide, num_samples=num_samples, return_sites=sites)(*data)
    return az.from_dict(posterior={k: v.detach().reshape((1, num_samples) + shapes[k]).numpy()
                                   for k, v in samples.items()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for tests")
    parser.add_argument("--out", type=Path, default=Path("guide_teaching_pyro"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--persistent", action="store_true",
                        help="teach with persistent chains (MCMCTeaching(persistent=True), docs/guide_teaching.md)")
    parser.add_argument("--dense", action="store_true",
                        help="revise with a dense mass matrix learned from past revisions (precondition='dense')")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    iters, nuts = (30, 30) if args.quick else (400, 400)  # quick: past the first mass window (25)
    problems = {
        "eight_schools": (eight_schools, (SCHOOLS_Y, SCHOOLS_SIGMA), ["mu", "tau", "theta_tilde"]),
        "logistic": (logistic, logistic_data(200, args.seed), ["beta", "b0"]),
    }
    for name, (model, data, sites) in problems.items():
        guides, evals = fit(model, data, iters, num_steps=10, num_particles=8, seed=args.seed,
                            persistent=args.persistent,
                            precondition="dense" if args.dense else True)
        pyro.set_rng_seed(args.seed)
        mcmc = MCMC(NUTS(model), warmup_steps=nuts, num_samples=nuts, disable_progbar=True)
        mcmc.run(*data)
        results = {"NUTS": az.from_pyro(mcmc)}
        for label, (guide, _) in guides.items():
            results[label] = draws(model, guide, data, sites)
        ref = az.summary(results["NUTS"], var_names=sites, kind="stats")
        print(f"\n{name}: {evals} model-gradient evaluations for each guide "
              f"(taught {guides['taught'][1]:.0f} s, SVI {guides['SVI'][1]:.0f} s); NUTS {nuts}+{nuts} draws")
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
