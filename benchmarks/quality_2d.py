"""Sample quality on the 2-D densities: VMT against the baselines that share its code path.

    python benchmarks/quality_2d.py                         # 4 densities x 2 seeds x 2 backends
    python benchmarks/quality_2d.py --data grid25 --seeds 0,1,2 --backends torch
    python benchmarks/quality_2d.py --quick                 # seconds (CI)

For every density, seed, backend and method of :mod:`methods` (same recipe, same
number of energy-gradient evaluations): modes covered and the fraction of
high-quality samples (PacGAN's definition; mixtures only), the EBM's exact held-out
log-likelihood by quadrature next to minus the true entropy (its best possible
value), the MMD to held-out data, and the wall time of training. VMT's own VAE
(its decoder means, before any Langevin step) is reported as the row ``vmt (VAE)``.
Writes ``benchmarks/results/quality_2d.json`` and two figures next to it: samples and
learned densities, seed 0.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import methods  # noqa: E402

DATASETS = ("grid25", "8gaussians", "rings", "2spirals")
GRID = 160  # points per side of the density pictures


def _recipe(name: str, quick: bool):
    from vmt.app.recipes import get_recipe

    recipe = get_recipe(name)
    return recipe.replace(num_iters=8, num_steps=2, batch_size=32) if quick else recipe


def _loglik(energy_fn, dataset, quick: bool) -> Dict[str, Any]:
    from vmt.evaluation.metrics import heldout_log_likelihood

    opts = dict(num_points=32, max_points=64, tol=10.0) if quick else {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            q = heldout_log_likelihood(energy_fn, dataset.test, dataset.bounds, **opts)
        except ValueError as e:  # QuadratureError, or non-finite energies on the grid
            return {"loglik": None, "loglik_error": str(e)[:200]}
    out = {"loglik": round(q["log_likelihood"], 4), "loglik_se": round(q["standard_error"], 4),
           "log_z_quadrature": round(q["log_normalizer"], 4),
           "boundary_mass": q["boundary_mass"], "grid": q["num_points"]}
    if caught:
        out["loglik_warning"] = str(caught[-1].message)[:200]
    return out


def evaluate(samples: np.ndarray, dataset, energy_fn, quick: bool, trained=None) -> Dict[str, Any]:
    """The metrics of one set of samples (and of its energy, if any)."""
    from vmt.evaluation.metrics import mmd, mode_coverage, mode_mass_kl

    density = dataset.density
    finite = np.isfinite(samples).all(1)
    row: Dict[str, Any] = {"nonfinite": int((~finite).sum())}
    row["mmd"] = round(mmd(samples[finite], dataset.test, max_points=500 if quick else 2000), 5)
    if density.modes is not None:
        cov = mode_coverage(samples, density.modes, density.mode_sd)
        row.update(modes=f"{cov['modes_covered']}/{cov['num_modes']}", modes_covered=cov["modes_covered"],
                   high_quality=round(cov["high_quality_fraction"], 4))
    if energy_fn is not None:
        row.update(_loglik(energy_fn, dataset, quick))
        if density.modes is not None:
            row["mode_kl"] = round(mode_mass_kl(energy_fn, density.modes, density.bounds)["kl"], 4)
        if trained is not None:
            row.update(methods.estimated_loglik(trained, dataset.test, 1000 if quick else 10_000))
    if trained is not None:
        row.update(trained.stats)
    return row


def density_grid(energy_fn, bounds) -> np.ndarray:
    """``exp(−E)/Z`` on a ``GRID²`` midpoint grid (normalised on the box), for the pictures."""
    from vmt.evaluation.metrics import grid_midpoints

    points, _ = grid_midpoints(bounds, GRID)
    with np.errstate(all="ignore"):
        e = energy_fn(points)
    e = np.where(np.isfinite(e), e, np.inf)
    p = np.exp(-(e - e.min()))
    return (p / p.sum()).reshape(GRID, GRID)


def run_one(backend: str, name: str, seed: int, quick: bool, keep: Dict, which) -> List[Dict[str, Any]]:
    from vmt.data import load_dataset

    dataset, recipe = load_dataset(name, seed=seed), _recipe(name, quick)
    n = 500 if quick else 5000
    rows = []
    for method in which:
        if method == "vmt_mh" and "vmt" in which and methods.same_as_vmt(method, recipe):
            print(f"quality {backend} {name}: vmt_mh is the recipe (vmt), not run twice", flush=True)
            continue
        trained = methods.train(backend, method, dataset, recipe, seed)
        variants = [(method, False)] + ([("vmt (VAE)", True)] if method == "vmt" else [])
        for label, vae_of_vmt in variants:
            base = dict(backend=backend, data=name, seed=seed, method=label, **methods.describe(trained),
                        entropy=dataset.density.entropy)
            try:
                samples = methods.sample(trained, n, seed + 1000, vae_of_vmt)
            except FloatingPointError as e:  # DivergenceError while sampling
                rows.append(dict(base, error=f"sampling diverged: {str(e).split('.')[0]}"))
                continue
            efn = None if vae_of_vmt else methods.energy_fn(trained)
            rows.append(dict(base, **evaluate(samples, dataset, efn, quick, None if vae_of_vmt else trained)))
            if seed == keep["seed"]:
                keep["samples"][(backend, name, label)] = samples[:2000]
                if efn is not None:
                    keep["densities"][(backend, name, label)] = density_grid(efn, dataset.bounds)
            r = rows[-1]
            print(f"quality {backend:5s} {name:10s} seed {seed} {label:10s}: modes {r.get('modes', '-')}, "
                  f"hq {r.get('high_quality', '-')}, mode kl {r.get('mode_kl', '-')}, loglik {r.get('loglik', '-')} (best {-dataset.density.entropy:.3f}),"
                  f" est {r.get('est_loglik', '-')} ± {r.get('est_loglik_se', '-')}, acc {r.get('path_acceptance', '-')},"
                  f" mmd {r['mmd']:.4f}, {r['seconds']:.1f}s {r['error']}", flush=True)
    return rows


def plot_grid(keep: Dict, kind: str, backend: str, datasets, path: Path) -> Path:
    """Rows: data sets; columns: held-out data, then each method (seed ``keep['seed']``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vmt.data import load_dataset

    store = keep["samples"] if kind == "samples" else keep["densities"]
    labels = [m for m in ("vmt", "vmt (VAE)") + tuple(methods.METHODS[1:])
              if any((backend, d, m) in store for d in datasets)]
    cols = (["data"] if kind == "samples" else []) + labels
    fig = Figure(figsize=(1.9 * len(cols), 1.9 * len(datasets) + 0.5))
    axes = np.atleast_2d(fig.subplots(len(datasets), len(cols), squeeze=False))
    for r, name in enumerate(datasets):
        dataset = load_dataset(name, seed=keep["seed"])
        low, high = dataset.bounds
        for c, label in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if label == "data":
                pts = dataset.test
            elif (backend, name, label) in store:
                pts = store[(backend, name, label)]
            else:
                continue
            if kind == "samples":
                ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.4, linewidths=0, rasterized=True)
                ax.set_xlim(low, high)
                ax.set_ylim(low, high)
            else:
                ax.imshow(pts.T, origin="lower", extent=(low, high, low, high), cmap="magma")
            ax.set_aspect("equal")
    what = "samples" if kind == "samples" else "learned density exp(-E)/Z"
    fig.suptitle(f"2-D {what} ({backend}, seed {keep['seed']})")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=90)
    return path


def main(argv=None) -> Path:
    p = common.parser(__doc__.split("\n\n")[0], "quality_2d.json")
    p.add_argument("--data", default=None, help=f"comma-separated subset of {','.join(DATASETS)}")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1; quick: 0)")
    p.add_argument("--backends", default="torch,jax")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated subset of {','.join(methods.METHODS)} (quick: vmt,vae_only)")
    args = p.parse_args(argv)
    common.setup(args)
    datasets = args.data.split(",") if args.data else (["grid25"] if args.quick else list(DATASETS))
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1")).split(",")]
    backends = args.backends.split(",")
    which = (args.methods or ("vmt,vae_only" if args.quick else ",".join(methods.METHODS))).split(",")
    keep = {"seed": seeds[0], "samples": {}, "densities": {}}
    payload = {"meta": common.meta(args), "datasets": datasets, "seeds": seeds, "backends": backends,
               "methods": which,
               "recipes": {d: _recipe(d, args.quick).to_dict() for d in datasets}, "rows": []}
    for name in datasets:
        for seed in seeds:
            for backend in backends:
                payload["rows"] += run_one(backend, name, seed, args.quick, keep, which)
    payload["figures"] = {}
    for backend in backends:
        for kind in ("samples", "densities"):
            path = args.out.with_name(f"{args.out.stem}_{kind}_{backend}.png")
            payload["figures"][f"{kind}_{backend}"] = str(plot_grid(keep, kind, backend, datasets, path))
    return common.finish(payload, args.out)


if __name__ == "__main__":
    main()
