"""Part 4a of the speed benchmark: time per VMT iteration against K, batch size and data dimension.

Each point is ``teacher.step(batch)`` with one option changed from the base
configuration (the grid25 recipe run plain, ``common.timed_recipe``: its K, its batch size, 2-D data), timed
interleaved with the base configuration in the same process, so the plotted
number is a ratio: time per iteration relative to the base. Data of dimension d
are standard normal points; the networks are the recipe's MLPs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np

import common

FULL_AXES = {"num_steps": [5, 10, 40, 80], "batch": [50, 100, 400, 800], "dim": [8, 32, 128]}
QUICK_AXES = {"num_steps": [2]}


def _base(quick: bool) -> Dict[str, int]:
    recipe = common.timed_recipe("grid25")
    if quick:  # the configuration of speed_train's quick run: its compilation is reused
        return {"num_steps": 3, "batch": 32, "dim": 2}
    return {"num_steps": recipe.config.num_steps, "batch": recipe.batch_size, "dim": 2}


def make_step(backend: str, num_steps: int, batch: int, dim: int, seed: int = 0) -> Callable[[], Any]:
    """``teacher.step`` on a fixed standard normal batch, for the grid25 recipe with K and d changed."""
    from vmt import load_backend
    mod = load_backend("pyro" if backend == "torch" else "numpyro")
    recipe = common.timed_recipe("grid25").replace(num_steps=num_steps)
    e_net, enc, dec = mod.nets.default_networks((dim,), recipe.latent_dim, hidden=recipe.hidden, rng=seed)
    teacher = mod.VariationalMCMCTeaching(
        mod.EnergyModel(e_net, (dim,), ref_scale=recipe.ref_scale),
        mod.VAE(enc, dec, recipe.latent_dim, (dim,), obs_scale=recipe.obs_scale, kl_weight=recipe.kl_weight),
        recipe.config, rng=seed)
    data = np.random.default_rng(seed).standard_normal((batch, dim)).astype(np.float32)
    if backend == "torch":
        import torch

        data = torch.from_numpy(data)
    else:
        import jax.numpy as jnp

        data = jnp.asarray(data)
    return lambda: teacher.step(data)


def run(args) -> Dict[str, Any]:
    """``{"base": ..., "points": [...]}``: one point per (backend, axis, value)."""
    base = _base(args.quick)
    axes = QUICK_AXES if args.quick else FULL_AXES
    min_time = 0.02 if args.quick else 0.2
    points = []
    for backend in ("torch", "jax"):
        for axis, values in axes.items():
            for value in values:
                cfg = dict(base, **{axis: value})
                fns = {"point": make_step(backend, **cfg), "base": make_step(backend, **base)}
                r = common.compare(fns, "base", args.repeats, min_time)["point"]
                r.update(backend=backend, axis=axis, value=value, relative_cost=value / base[axis])
                points.append(r)
                print(f"scaling {backend:5s} {axis:9s}={value:4d}: time/base {common.fmt_ratio(r)}", flush=True)
    return {"base": base, "points": points}


def plot(result: Dict[str, Any], path: Path) -> Path:
    """Three panels (K, batch, dimension): time per iteration relative to the base, per backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    base, points = result["base"], result["points"]
    titles = {"num_steps": "Langevin steps K", "batch": "batch size (chains = batch)", "dim": "data dimension d"}
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 3)
    for ax, axis in zip(axes, titles):
        for backend, colour in (("torch", "tab:red"), ("jax", "tab:blue")):
            pts = sorted(((p["value"], p["ratio"], p["q25"], p["q75"]) for p in points
                          if p["backend"] == backend and p["axis"] == axis), key=lambda t: t[0])
            pts = [(base[axis], 1.0, 1.0, 1.0)] + pts
            pts.sort(key=lambda t: t[0])
            x, y, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
            ax.errorbar(x, y, yerr=[y - lo, hi - y], marker="o", color=colour, label=backend, capsize=2)
        if axis != "dim":
            xs = np.array(sorted({p["value"] for p in points if p["axis"] == axis} | {base[axis]}), dtype=float)
            ax.plot(xs, xs / base[axis], "k:", label="proportional")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(titles[axis])
        ax.set_title(f"base: {base[axis]}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time per iteration / base")
    axes[0].legend()
    fig.suptitle("VMT iteration (teacher.step): cost relative to the base configuration, interleaved")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path
