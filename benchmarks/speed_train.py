"""Part 3 of the speed benchmark: one VMT iteration through our API against a hand-written one.

Same data batch, same recipe (read from ``vmt.app.recipes`` at run time and run plain,
``common.timed_recipe``: the algorithm the hand-written loops implement), same initial
weights (``default_networks`` with the same seed). Torch: ``teacher.step(batch)``
against :mod:`handwritten_torch` with a hand-written ELBO (the floor) and with
Pyro's ``Trace_ELBO`` on a minimal model and guide (what a Pyro user would write).
JAX: ``teacher.step(batch)`` (commits after host-side checks) and the pure jitted
``teacher.update(state, batch)`` against :mod:`handwritten_jax` (raw JAX + optax,
hand-written ELBO).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import common

FULL_DATA = ["grid25", "digits"]
QUICK_DATA = ["grid25"]


def _recipe(name: str, quick: bool):
    recipe = common.timed_recipe(name)
    return recipe.replace(num_steps=3, batch_size=32) if quick else recipe


def torch_fns(name: str, quick: bool) -> Dict[str, Callable[[], Any]]:
    import torch

    import pyro_vmt
    from handwritten_torch import HandwrittenVMT
    from vmt.data import load_dataset
    from vmt.app.recipes import build_teacher

    dataset, recipe = load_dataset(name), _recipe(name, quick)
    teacher = build_teacher(pyro_vmt, dataset, recipe, seed=0)

    def hand(elbo):
        nets = pyro_vmt.nets.default_networks(dataset.event_shape, recipe.latent_dim, dataset.image_shape,
                                              recipe.hidden, rng=0)
        return HandwrittenVMT(*nets, recipe, dataset.event_shape, seed=0, elbo=elbo)

    batch = torch.as_tensor(dataset.train[:recipe.batch_size])
    hand_fast, hand_pyro = hand("hand"), hand("pyro")
    return {"ours_step": lambda: teacher.step(batch), "hand": lambda: hand_fast.step(batch),
            "hand_pyro_elbo": lambda: hand_pyro.step(batch)}


def jax_fns(name: str, quick: bool) -> Dict[str, Callable[[], Any]]:
    import jax.numpy as jnp

    import numpyro_vmt
    from handwritten_jax import HandwrittenVMT
    from vmt.data import load_dataset
    from vmt.app.recipes import build_teacher

    dataset, recipe = load_dataset(name), _recipe(name, quick)
    teacher = build_teacher(numpyro_vmt, dataset, recipe, seed=0)
    nets = numpyro_vmt.nets.default_networks(dataset.event_shape, recipe.latent_dim, dataset.image_shape,
                                             recipe.hidden, rng=0)
    hand = HandwrittenVMT(*nets, recipe, dataset.event_shape, seed=0)
    batch = jnp.asarray(dataset.train[:recipe.batch_size])
    held = {"state": teacher.state}

    def ours_update():
        held["state"], info = teacher.update(held["state"], batch)
        return common.block(info)

    return {"ours_step": lambda: teacher.step(batch), "ours_update": ours_update,
            "hand": lambda: common.block(hand.step(batch))}


PAIRS = {"torch": [("ours_step", "hand"), ("ours_step", "hand_pyro_elbo"), ("hand_pyro_elbo", "hand")],
         "jax": [("ours_step", "hand"), ("ours_update", "hand")]}
TARGETS = {"torch": 1.25, "jax": 1.05}


def run(args) -> List[Dict[str, Any]]:
    """One row per (backend, data set, pair of implementations)."""
    data = QUICK_DATA if args.quick else FULL_DATA
    min_time = 0.02 if args.quick else 0.3
    rows = []
    for backend, build in (("torch", torch_fns), ("jax", jax_fns)):
        for name in data:
            times = common.interleave(build(name, args.quick), args.repeats, min_time)
            recipe = _recipe(name, args.quick)
            for num, den in PAIRS[backend]:
                r = common.ratio(times, num, den)
                r.update(backend=backend, data=name, num=num, den=den, num_steps=recipe.config.num_steps,
                         batch=recipe.batch_size, target=TARGETS[backend] if num.startswith("ours") else None)
                rows.append(r)
                print(f"train {backend:5s} {name:7s} {num}/{den}: {common.fmt_ratio(r)} "
                      f"(wall {r['ratio_wall']:.3f})", flush=True)
    return rows
