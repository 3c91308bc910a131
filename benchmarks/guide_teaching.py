"""Guide quality of MCMCTeaching vs SVI against ground truth, and the amortised warm start.

For each target (eight schools non-centred, an ill-conditioned Gaussian, a Bayesian
logistic regression on synthetic data, Haario's banana) and each seed, the same
mean-field ``AutoNormal`` guide is fitted by ``MCMCTeaching`` (NumPyro backend) with
fresh draws each iteration (``taught``, the paper's update), with persistent chains
(``taught_persistent``, ``persistent=True``), with persistent chains and a dense mass
matrix learned from their history (``taught_dense``, ``precondition="dense"``), and by
``SVI(Trace_ELBO)``, all at the same number of gradient evaluations of the model and
with the same Adam learning-rate schedule, and scored twice: with its parameters
averaged over the second half of the updates (Polyak–Ruppert, ``average_from``; SVI
by the same running mean) and at the last iterate (labels ending ``_last``). Its
draws (40,000 per guide) are compared with the ground truth: analytic moments for the Gaussian and
the banana, a long NUTS run (4 chains x 1000 draws after 500 warmup, seed 12345) otherwise.

Per target and method, over seeds (mean ± sd):

- ``mean_err``: ``max_j |m_j − m*_j| / sd*_j`` (and its mean over coordinates);
- ``sd_ratio``: ``sd_j / sd*_j`` — its min, median and max over coordinates, and the
  fraction of coordinates inside [0.8, 1.2];
- both in constrained space and (keys ending ``_u``) in the unconstrained space the
  guide and MALA work in (``log tau`` for eight schools; the other targets are
  unconstrained), with the per-coordinate values in each row;
- for the NUTS-referenced targets, the same scores of the *moment-matched* mean-field
  Gaussian in unconstrained space (the reference's means and sds there): the limit of
  a mean-field guide taught by a revision that mixes, i.e. what the family can reach;
- ``ess_per_grad``: min-over-coordinates bulk ESS per gradient evaluation (warmup
  included) of MALA (``LangevinKernel``, 4 vectorised chains) started from the taught
  guide, from the SVI guide, and of NUTS from ``init_to_median``;
- ``nuts``: NUTS's own draws (4 x 800 after 200 warmup) scored like a guide, with its
  gradient count: what MCMC itself reaches at its budget (a taught guide can be no
  better than the chains that teach it: the banana's heavy-tailed ``x2`` is the case).

    python benchmarks/guide_teaching.py                   # all targets, 3 seeds
    python benchmarks/guide_teaching.py --targets logistic banana --fast-compile
    python benchmarks/guide_teaching.py --quick           # tiny budget, two targets (CI)
    python benchmarks/guide_teaching.py --iters 400 --num-steps 10 --particles 16 --lr 0.05 --lr-decay 0.1
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (before jax: it fixes the thread counts)

TARGETS = ("eight_schools", "ill_gaussian", "logistic", "banana")


def build_targets():
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    y8 = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    s8 = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

    def eight_schools():
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = numpyro.sample("tau", dist.HalfCauchy(5.0))
        with numpyro.plate("schools", 8):
            theta_tilde = numpyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
            numpyro.sample("y", dist.Normal(mu + tau * theta_tilde, s8), obs=y8)

    # ill-conditioned Gaussian: D = 10, eigenvalues of the covariance log-spaced 1e-2..1, random rotation
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    cov = q @ np.diag(np.logspace(-2, 0, 10)) @ q.T
    mean = rng.normal(size=10)
    chol = jnp.asarray(np.linalg.cholesky(cov), dtype=jnp.float32)

    def ill_gaussian():
        numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(mean, jnp.float32), scale_tril=chol))

    x = rng.multivariate_normal(np.zeros(5), 0.3 * np.eye(5) + 0.7, size=200)
    p = 1 / (1 + np.exp(-(x @ np.array([1.0, -1.0, 0.5, 0.0, 0.25]) - 0.5)))
    xl, yl = jnp.asarray(x, jnp.float32), jnp.asarray((rng.uniform(size=200) < p).astype(np.float32))

    def logistic():
        beta = numpyro.sample("beta", dist.Normal(jnp.zeros(5), 2.0).to_event(1))
        b0 = numpyro.sample("b0", dist.Normal(0.0, 2.0))
        with numpyro.plate("data", 200):
            numpyro.sample("y", dist.Bernoulli(logits=xl @ beta + b0), obs=yl)

    def banana():  # Haario et al.'s banana, curvature b = 0.03, scale 10
        x1 = numpyro.sample("x1", dist.Normal(0.0, 10.0))
        numpyro.sample("x2", dist.Normal(0.03 * (x1 ** 2 - 100.0), 1.0))

    # analytic moments; both targets live on the real line, so both spaces agree
    gauss = (mean, np.sqrt(np.diag(cov)))
    # x1 ~ N(0, 10²); x2 | x1 ~ N(b(x1² − 100), 1): E x2 = 0, Var x2 = 1 + b²·2·10⁴
    banana_m = (np.zeros(2), np.array([10.0, np.sqrt(1 + 0.03 ** 2 * 2 * 10 ** 4)]))
    truth = {"ill_gaussian": (gauss, gauss), "banana": (banana_m, banana_m)}
    return {"eight_schools": eight_schools, "ill_gaussian": ill_gaussian, "logistic": logistic,
            "banana": banana}, truth


def supports(model):
    """``{site: support}`` of the model's latent sites."""
    import jax
    from numpyro import handlers

    tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace()
    return {k: s["fn"].support for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}


def flat_draws(samples, support=None):
    """``{site: (S, ...)}`` -> ``(S, D)`` in sorted site order: constrained values, or with
    ``support`` (``{site: support}``) the unconstrained ones the guide and MALA work in."""
    from numpyro.distributions import biject_to

    def value(k):
        v = samples[k] if support is None else biject_to(support[k]).inv(samples[k])
        return np.asarray(v).reshape(len(samples[k]), -1)

    return np.concatenate([value(k) for k in sorted(samples)], 1)


def moments(samples, support):
    """``(mean, sd)`` of the draws in constrained and in unconstrained space."""
    return tuple((x.mean(0), x.std(0)) for x in (flat_draws(samples), flat_draws(samples, support)))


def nuts_reference(model, num_samples, seed=12345):
    import jax
    from numpyro.infer import MCMC, NUTS

    mcmc = MCMC(NUTS(model), num_warmup=num_samples // 2, num_samples=num_samples, num_chains=4,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed))
    samples, support = mcmc.get_samples(), supports(model)
    return moments(samples, support), moment_matched(samples, support)


def moment_matched(samples, support, n=40000, seed=0):
    """Moments of the best mean-field Gaussian in unconstrained space for the forward KL (the one
    whose per-coordinate means and sds are the reference's there): the limit of a mean-field
    ``AutoNormal`` taught by a revision that mixes, in both spaces."""
    from numpyro.distributions import biject_to

    u = flat_draws(samples, support)
    z = np.random.default_rng(seed).normal(u.mean(0), u.std(0), size=(n, u.shape[1]))
    out, pos = {}, 0
    for k in sorted(samples):
        shape = np.shape(samples[k])[1:]
        size = int(np.prod(shape))
        out[k] = np.asarray(biject_to(support[k])(z[:, pos:pos + size].reshape((n,) + shape)))
        pos += size
    return moments(out, support)


def guide_moments(model, guide, params, seed, n=40000):
    """The guide's moments from ``n`` draws: a standardised mean error is known to about
    ``1/sqrt(n)`` = 0.005 (4000 draws left 0.016 per coordinate, the size of SVI's errors)."""
    import jax
    from numpyro.infer import Predictive

    sites = [k for k in sorted(guide.prototype_trace) if guide.prototype_trace[k]["type"] == "sample"
             and not guide.prototype_trace[k]["is_observed"]]
    s = Predictive(model, guide=guide, params=params, num_samples=n, return_sites=sites)(jax.random.key(seed))
    return moments({k: s[k] for k in sites}, supports(model))


def score(guide, truth):
    """Scores of guide moments against the truth's, in constrained space and (keys ending ``_u``) in
    the unconstrained space of the guide; each argument is ``((mean, sd), (mean_u, sd_u))``."""
    out = {}
    for suffix, (m, s), (m0, s0) in zip(("", "_u"), guide, truth):
        err, ratio = np.abs(m - m0) / s0, s / s0
        out.update({f"mean_err_max{suffix}": float(err.max()), f"mean_err_mean{suffix}": float(err.mean()),
                    f"sd_ratio_min{suffix}": float(ratio.min()), f"sd_ratio_median{suffix}": float(np.median(ratio)),
                    f"sd_ratio_max{suffix}": float(ratio.max()),
                    f"sd_in_band{suffix}": float(np.mean((ratio > 0.8) & (ratio < 1.2))),
                    f"mean_err{suffix}": err.tolist(), f"sd_ratio{suffix}": ratio.tolist()})
    return out


def min_ess(samples_by_chain):
    """Min over coordinates of ArviZ's bulk ESS; ``{site: (chains, draws, ...)}``."""
    import arviz as az

    ess = az.ess(az.from_dict(posterior={k: np.asarray(v) for k, v in samples_by_chain.items()}), method="bulk")
    return float(min(float(np.min(ess[k].values)) for k in ess.data_vars))


def main():
    p = common.parser(__doc__.splitlines()[0], "guide_teaching.json")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=None,
                   help="a subset of the targets (default: all; --quick: the first two)")
    p.add_argument("--fast-compile", action="store_true",
                   help="compile without XLA's expensive optimisations (compilation dominates small models)")
    p.add_argument("--iters", type=int, default=None, help="teaching iterations (default 1000; quick 30)")
    p.add_argument("--num-steps", type=int, default=None, help="K, MALA steps per revision (default 4; quick 5)")
    p.add_argument("--particles", type=int, default=None, help="n, particles per iteration (default 16; quick 8)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam's starting learning rate (default 0.05)")
    p.add_argument("--lr-decay", type=float, default=0.01,
                   help="the learning rate's final fraction, reached exponentially, for every method (default 0.01)")
    args = p.parse_args()
    if args.targets and args.out == common.RESULTS / "guide_teaching.json":
        args.out = common.RESULTS / f"guide_teaching_{'+'.join(args.targets)}.json"
    quick = args.quick
    args.quick = args.quick or args.fast_compile  # common.setup's fast-compilation flags
    common.setup(args)
    args.quick = quick
    if hasattr(os, "sched_setaffinity"):  # a quality benchmark: no need to hold one shared core
        os.sched_setaffinity(0, range(os.cpu_count()))
        args.pinned_cpu = None
    import jax
    import optax
    from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal
    from numpyro.infer.initialization import init_to_median

    from numpyro_vmt import LangevinKernel, MCMCTeaching, initial_params_from_guide

    def live_params(model, guide, svi_state):
        """The last iterate's constrained params (``MCMCTeaching.get_params`` gives the average)."""
        reader = SVI(model, guide, optax.adam(0.0), Trace_ELBO())
        reader.init(jax.random.key(0))
        return reader.get_params(svi_state)

    quick = args.quick
    # many short revisions: a guide scale that must grow 100-fold (the banana's) needs optimiser steps
    iters, K, n, n_svi = (30, 5, 8, 8) if quick else (1000, 4, 16, 8)
    iters, K, n = args.iters or iters, args.num_steps or K, args.particles or n
    ref_draws, warm, draws, chains = (200, 50, 100, 4) if quick else (1000, 200, 800, 4)
    lr = args.lr
    models, truth = build_targets()
    targets = args.targets or (TARGETS[:2] if quick else TARGETS)
    meta = common.meta(args)
    meta["fast_compile"] = bool(args.fast_compile)
    rows, refs, oracle = [], {}, {}
    for name in targets:
        model = models[name]
        t0 = time.process_time()
        if name in truth:
            refs[name] = truth[name]
        else:
            refs[name], oracle[name] = nuts_reference(model, ref_draws)
        ref_seconds = time.process_time() - t0
        evals = iters * (K + 1) * n
        guides, teachers = {}, {}
        for label, persistent, precondition in (("taught", False, True), ("taught_persistent", True, True),
                                                ("taught_dense", True, "dense")):
            guides[label] = AutoNormal(model)
            teachers[label] = MCMCTeaching(model, guides[label],
                                           optax.adam(optax.exponential_decay(lr, iters, args.lr_decay), b2=0.9),
                                           num_steps=K, num_particles=n, persistent=persistent,
                                           precondition=precondition, average_from=iters // 2)
        guide_s = AutoNormal(model)
        svi_steps = evals // n_svi
        svi = SVI(model, guide_s, optax.adam(optax.exponential_decay(lr, svi_steps, args.lr_decay)),
                  Trace_ELBO(num_particles=n_svi))
        svi_update = jax.jit(svi.update)
        kernel_kw = dict(num_warmup=warm, num_samples=draws, num_chains=chains, chain_method="vectorized",
                         progress_bar=False)
        mala = MCMC(LangevinKernel(model, step_size=0.1), **kernel_kw)
        nuts = MCMC(NUTS(model, init_strategy=init_to_median), **kernel_kw)
        for seed in range(args.seeds):
            row = {"target": name, "seed": seed, "grad_evals": evals, "iters": iters, "num_steps": K,
                   "lr": lr, "lr_decay": args.lr_decay, "num_particles": n, "svi_particles": n_svi, "reference_cpu_s": ref_seconds}
            fitted = {}
            for label, teaching in teachers.items():
                t = time.process_time()
                result = teaching.run(seed, iters)
                fitted[label] = (guides[label], result.params,
                                 live_params(model, guides[label], result.state.svi_state))
                row[label + "_cpu_s"] = time.process_time() - t
            t = time.process_time()
            state = svi.init(jax.random.key(seed))
            average = None  # the mean of the iterates after svi_steps // 2, as MCMCTeaching's average_from
            for i in range(svi_steps):
                state, _ = svi_update(state)
                if i >= svi_steps // 2:
                    live, k = svi.optim.get_params(state.optim_state), i + 1 - svi_steps // 2
                    average = live if average is None else jax.tree.map(lambda a, b: a + (b - a) / k, average, live)
            row["svi_cpu_s"] = time.process_time() - t
            fitted["svi"] = (guide_s, svi.constrain_fn(average), svi.get_params(state))
            for label, (guide, params, last) in fitted.items():
                row[label + "_last"] = score(guide_moments(model, guide, last, seed), refs[name])
                row[label] = score(guide_moments(model, guide, params, seed), refs[name])
                init = initial_params_from_guide(guide, model, chains, seed, params=params)
                mala.run(jax.random.key(100 + seed), init_params=init)
                ess = min_ess(mala.get_samples(group_by_chain=True))
                row[label]["mala_ess_per_grad"] = ess / (chains * (warm + draws))
            nuts.warmup(jax.random.key(200 + seed), collect_warmup=True, extra_fields=("num_steps",))
            warm_grads = int(np.sum(nuts.get_extra_fields()["num_steps"]))
            nuts.run(nuts.post_warmup_state.rng_key, extra_fields=("num_steps",))
            grads = warm_grads + int(np.sum(nuts.get_extra_fields()["num_steps"]))
            row["nuts_ess_per_grad"] = min_ess(nuts.get_samples(group_by_chain=True)) / grads
            # NUTS's own draws scored like a guide: what MCMC itself reaches at its budget
            row["nuts"], row["nuts_grads"] = score(moments(nuts.get_samples(), supports(model)), refs[name]), grads
            rows.append(row)
            print(name, seed, {label: {m: round(row[label][m], 3) for m in METRICS if m in row[label]}
                               for label in LABELS + LAST},
                  "nuts", row["nuts_ess_per_grad"], flush=True)
        # written after every target, so a long run keeps what it has finished
        summary = summarise(rows, [t for t in targets if t in refs])
        for k, v in oracle.items():  # the mean-field family's limit, against the same reference
            summary[k]["moment_matched"] = {m: {"mean": val, "sd": 0.0} for m, val in score(v, refs[k]).items()
                                            if m in METRICS}
        common.finish({"meta": meta, "rows": rows, "summary": summary,
                       "references": {k: {"mean": np.asarray(v[0][0]).tolist(), "sd": np.asarray(v[0][1]).tolist(),
                                          "mean_u": np.asarray(v[1][0]).tolist(), "sd_u": np.asarray(v[1][1]).tolist(),
                                          "kind": "analytic" if k in truth else f"NUTS 4x{ref_draws}"}
                                      for k, v in refs.items()}}, args.out)
    print_table(summary)


LABELS = ("taught", "taught_persistent", "taught_dense", "svi")
LAST = tuple(label + "_last" for label in LABELS)  # the same runs at their last iterate (no MALA run)
SCORES = ("mean_err_max", "mean_err_mean", "sd_ratio_min", "sd_ratio_median", "sd_ratio_max", "sd_in_band")
METRICS = SCORES + tuple(k + "_u" for k in SCORES) + ("mala_ess_per_grad",)


def _ms(values):
    values = [float(v) for v in values]
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(rows, targets):
    out = {}
    for name in targets:
        rs = [r for r in rows if r["target"] == name]
        out[name] = {label: {m: _ms([r[label][m] for r in rs]) for m in METRICS if m in rs[0][label]}
                     for label in LABELS + LAST + ("nuts",)}
        out[name]["nuts_grads"] = _ms([r["nuts_grads"] for r in rs])
        out[name]["nuts_ess_per_grad"] = _ms([r["nuts_ess_per_grad"] for r in rs])
        out[name]["grad_evals"] = rs[0]["grad_evals"]
    return out


def print_table(summary):
    def f(d):
        return f"{d['mean']:.3g} ± {d['sd']:.2g}"

    for space, u in (("constrained", ""), ("unconstrained (the guide's own space)", "_u")):
        print(f"\n{space}\n\n| target | guide | max mean err | sd ratio min / median / max | in [0.8, 1.2] |"
              " MALA ESS/grad |")
        print("|---|---|---|---|---|---|")
        for name, s in summary.items():
            for label in LABELS + LAST:
                d = s[label]
                ess = f(d["mala_ess_per_grad"]) if "mala_ess_per_grad" in d else ""
                print(f"| {name} | {label} | {f(d['mean_err_max' + u])} | {f(d['sd_ratio_min' + u])} / "
                      f"{f(d['sd_ratio_median' + u])} / {f(d['sd_ratio_max' + u])} | {f(d['sd_in_band' + u])} | "
                      f"{ess} |")
            if "moment_matched" in s:
                d = s["moment_matched"]
                print(f"| {name} | moment-matched mean-field (limit) | {f(d['mean_err_max' + u])} | "
                      f"{f(d['sd_ratio_min' + u])} / {f(d['sd_ratio_median' + u])} / {f(d['sd_ratio_max' + u])} | "
                      f"{f(d['sd_in_band' + u])} | |")
            d = s["nuts"]
            print(f"| {name} | NUTS draws (init_to_median, {s['nuts_grads']['mean']:.0f} grads) | "
                  f"{f(d['mean_err_max' + u])} | {f(d['sd_ratio_min' + u])} / {f(d['sd_ratio_median' + u])} / "
                  f"{f(d['sd_ratio_max' + u])} | {f(d['sd_in_band' + u])} | {f(s['nuts_ess_per_grad'])} |")


if __name__ == "__main__":
    main()
