"""Conditional variational MCMC teaching on the three supervised tasks, in both backends.

    python benchmarks/conditional.py                  # seeds 0, 1, 2: about 20 minutes on a 2-core CPU
    python benchmarks/conditional.py --seeds 0        # one seed
    python benchmarks/conditional.py --quick          # tiny budgets: checks the pipeline only

Every cell of the tables is the mean ± sd over the seeds (each seed trains both
backends afresh; the shared reference rows are computed per seed too). The pictures
are those of the first seed.

Trains with the recipes of :mod:`vmt.app.recipes` (the examples' defaults); a task whose
recipe is exact (``correction="mh"``) is also trained with the paper's plain algorithm,
shown as its own VMT row. Writes

- ``benchmarks/results/conditional.json`` — every metric, timings, recipes, machine;
- ``docs/img/conditional/<backend>/*.png`` — completions, generated digits per class,
  the 1-D conditional densities;
- the result tables of ``docs/conditional.md``, between its ``results`` markers.
"""

import argparse
import platform
import re
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from vmt.app.recipes import PLAIN, get_recipe  # noqa: E402
from vmt.app.tasks import run_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("pyro", "numpyro")
COLUMNS = {
    "completion": [("best_of_k_rmse", "best-of-10 RMSE ↓"), ("mean_rmse", "mean RMSE ↓"),
                   ("diversity", "diversity"), ("accuracy", "classifier accuracy ↑"),
                   ("est_log_likelihood", "est. held-out log p(y ∣ x) ↑")],
    "class": [("accuracy", "classifier accuracy ↑"), ("frechet", "Fréchet per class ↓"),
              ("frechet_floor", "floor (real train vs test)"), ("est_log_likelihood", "est. held-out log p(y ∣ x) ↑")],
    "regression1d": [("log_likelihood", "held-out log p(y ∣ x) ↑"),
                     ("est_log_likelihood", "EBM: path estimate ↑"),
                     ("log_likelihood_balanced", "branch-balanced ↑"),
                     ("mean_branch_mass_error", "EBM branch-mass error ↓"),
                     ("mean_branch_imbalance", "samples: branch imbalance ↓"),
                     ("mean_wasserstein", "samples: W1 ↓ (floor)")],
}
SHARED = {"MLP regressor (squared error)", "nearest training pairs", "real training digits", "truth", "MDN"}


def _cell(values):
    values = np.array([v for v in values if isinstance(v, float)])
    if not values.size:
        return ""
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}" if values.size > 1 else f"{values.mean():.3f}"


def table(task, results):
    """One row per method and backend; each cell the mean ± sd over the seeds."""
    cols = COLUMNS[task]
    lines = ["| method | backend | " + " | ".join(c[1] for c in cols) + " | train s |",
             "|---|---|" + "---:|" * (len(cols) + 1)]
    groups = {}  # (name, backend) -> [(row, result)], in first-seen order
    for res in results:
        for name, row in res["rows"].items():
            backend = "—" if name in SHARED else res["backend"]
            if name in SHARED and any(r["seed"] == res["seed"] for _, r in groups.get((name, backend), [])):
                continue  # a shared row once per seed
            groups.setdefault((name, backend), []).append((row, res))
    for (name, backend), rows in groups.items():
        cells = [_cell([row.get(k) for row, _ in rows]) for k, _ in cols]
        if task == "regression1d" and "mean_wasserstein" in rows[0][0]:
            cells[-1] += f" ({np.mean([row['mean_wasserstein_floor'] for row, _ in rows]):.3f})"
        secs = "" if name in SHARED else f"{np.mean([res['train_seconds'] for _, res in rows]):.0f}"
        lines.append(f"| {name} | {backend} | " + " | ".join(cells) + f" | {secs} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny budgets (pipeline check), nothing in docs/")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    results, start = {}, time.perf_counter()
    for task in COLUMNS:
        results[task] = []
        for seed in seeds:
            for backend in BACKENDS:
                out = None if args.quick or seed != seeds[0] else ROOT / "docs" / "img" / "conditional" / backend
                # a task whose recipe is exact also runs the paper's plain algorithm (its VMT row only)
                for plain in (False, True) if get_recipe(task).config.correction else (False,):
                    res = run_task(task, backend, seed=seed, num_iters=5 if args.quick else None,
                                   out=None if plain else out, m=200 if args.quick else 2000, **(PLAIN if plain else {}))
                    print(f"{task} {backend} seed {seed}{' (plain)' if plain else ''}: trained "
                          f"{res['train_seconds']:.1f}s, evaluated {res['eval_seconds']:.1f}s", flush=True)
                    res.pop("teacher"), res.pop("history")
                    if plain:
                        res["rows"] = {name: row for name, row in res["rows"].items() if name.startswith("VMT")}
                    results[task].append(res)
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "python": platform.python_version(),
               **{pkg: version(pkg) for pkg in ("torch", "pyro-ppl", "jax", "numpyro", "scikit-learn")}}
    payload = {"machine": machine, "seeds": seeds, "total_seconds": time.perf_counter() - start,
               "results": results, "meta": {"command": " ".join(["python"] + sys.argv), "git": common.git_state(),
                                            "started": started}}
    tables = "\n\n".join(f"**{task}**\n\n{table(task, res)}" for task, res in results.items())
    print(tables)
    if args.quick:
        return payload
    out = ROOT / "benchmarks" / "results" / "conditional.json"
    common.finish(payload, out)
    page = ROOT / "docs" / "conditional.md"
    stamp = (f"_Generated by `{payload['meta']['command']}` (seeds {', '.join(map(str, seeds))}; mean ± sd; "
             f"{payload['total_seconds'] / 60:.0f} min) on {machine['processor']}, {machine['platform']}; "
             f"torch {machine['torch']}, jax {machine['jax']}; commit {payload['meta']['git']['commit']}"
             f"{' (uncommitted changes)' if payload['meta']['git']['dirty'] else ''}._")
    block = f"<!-- results:start -->\n{stamp}\n\n{tables}\n<!-- results:end -->"
    text = page.read_text()
    page.write_text(re.sub(r"<!-- results:start -->.*<!-- results:end -->", lambda _: block, text, flags=re.S))
    print(f"wrote {out} and the tables of {page}")
    return payload


if __name__ == "__main__":
    main()
