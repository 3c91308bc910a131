"""Part 1 of the speed benchmark: our K-step Langevin run against the physical floor.

The floor is K back-to-back energy-gradient evaluations written the leanest way in
the same framework, with the position updated by the plain formula
``x ← x − (δ²/2)∇E(x) + δξ``:

- torch: a Python loop of ``torch.autograd.grad(E(x).sum(), x)``;
- JAX: a jitted ``lax.scan`` of ``jax.grad``.

Ours is ``Langevin(E, δ, K).run(rng, x0)`` (unadjusted), which also returns the
energy and gradient at the final point and per-step diagnostics, and so evaluates
the gradient ``K + 1`` times (once at ``x0``): ``ratio_per_eval`` divides that out.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List

import common

STEP = 0.05  # δ; the drift is δ²/2 ∇E and the noise δξ

FULL_GRID = {"mlp2d": [(64, 10), (64, 100), (512, 10), (512, 100), (4096, 10), (4096, 100)],
             "conv8x8": [(64, 10), (64, 100), (512, 10), (512, 100)]}
QUICK_GRID = {"mlp2d": [(64, 5)]}
# XLA's CPU convolutions (vmapped per sample by equinox) are ~10x slower than
# torch's here; the largest conv case would take minutes per repeat in JAX.
JAX_SKIP = {("conv8x8", 512, 100)}


def torch_floor(energy, x0, num_steps: int, seed: int):
    """K gradient evaluations and plain updates in raw torch; returns the last position."""
    import torch

    h = 0.5 * STEP * STEP
    gen = torch.Generator().manual_seed(seed)
    x = x0
    for _ in range(num_steps):
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        x = x - h * grad + STEP * torch.randn(x.shape, generator=gen)
    return x.detach()


def jax_floor(leaves, key, x0, rebuild: Callable, num_steps: int):
    """K gradient evaluations and plain updates as a ``lax.scan`` (jit this)."""
    import jax

    energy = rebuild(leaves)
    h = 0.5 * STEP * STEP

    def body(x, k):
        grad = jax.grad(lambda y: energy(y).sum())(x)
        return x - h * grad + STEP * jax.random.normal(k, x.shape, x.dtype), None

    return jax.lax.scan(body, x0, jax.random.split(key, num_steps))[0]


def torch_pair(kind: str, n: int, num_steps: int) -> Dict[str, Callable[[], Any]]:
    from pyro_vmt import Langevin

    energy, x0 = common.make_energy("torch", kind), common.make_points("torch", kind, n)
    sampler = Langevin(energy, STEP, num_steps)
    return {"ours": lambda: sampler.run(0, x0),
            "floor": lambda: torch_floor(energy, x0, num_steps, 0)}


def jax_pair(kind: str, n: int, num_steps: int) -> Dict[str, Callable[[], Any]]:
    import jax

    from numpyro_vmt import Langevin

    energy, x0 = common.make_energy("jax", kind), common.make_points("jax", kind, n)
    leaves, rebuild = common.jax_split(energy)
    floor = jax.jit(partial(jax_floor, rebuild=rebuild, num_steps=num_steps))
    sampler, key = Langevin(energy, STEP, num_steps), jax.random.PRNGKey(0)
    return {"ours": lambda: common.block(sampler.run(key, x0)),
            "floor": lambda: common.block(floor(leaves, key, x0))}


def run(args) -> List[Dict[str, Any]]:
    """Every case of the grid in both backends; one row per case."""
    grid = QUICK_GRID if args.quick else FULL_GRID
    min_time = 0.02 if args.quick else 0.2
    rows = []
    for backend, pair in (("torch", torch_pair), ("jax", jax_pair)):
        for kind, cases in grid.items():
            for n, k in cases:
                if backend == "jax" and (kind, n, k) in JAX_SKIP:
                    continue
                r = common.compare(pair(kind, n, k), "floor", args.repeats, min_time)["ours"]
                r.update(backend=backend, energy=kind, batch=n, num_steps=k,
                         ratio_per_eval=round(r["ratio"] * k / (k + 1), 4))
                rows.append(r)
                print(f"floor {backend:5s} {kind:7s} n={n:5d} K={k:3d}: {common.fmt_ratio(r)} "
                      f"(per eval {r['ratio_per_eval']:.3f}, wall {r['ratio_wall']:.3f})", flush=True)
    return rows
