"""Weak scaling of data-parallel teaching: iteration time on 1, 2 and 4 devices at a fixed per-device batch.

- JAX (``numpyro_vmt``, ``mesh=N``): a subprocess with
  ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (on CPU) or the GPUs JAX sees,
  timing ``teacher.step`` on meshes of 1, 2, 4 devices, interleaved in one process.
- Torch (``pyro_vmt``, a ``DeviceMesh`` over gloo ranks on CPU, nccl on GPU): for each
  N, N processes started by ``torch.multiprocessing.spawn``; rank 0 times the steps
  between two barriers. The rounds run in the order 1 2 4 4 2 1 ... to spread drifts of
  the machine's load.

Each device revises ``--per-device`` chains on a batch of as many data rows (the grid25
recipe's networks and K). With :math:`t_N` the median wall time per iteration on N
devices (global batch :math:`N b`) and :math:`t_1(Nb)` one device on the same global
batch, the table gives

- ``weak`` :math:`= t_1(b) / t_N` — 1 when N devices do N times the work in the same time;
- ``eff`` :math:`= t_1(Nb) / (N\\,t_N)` — the parallel efficiency at equal global batch
  (1 when N devices are N times as fast as one).

On a CPU the "devices" share the machine's cores (and its memory bandwidth); beyond the
number of idle physical cores they can only take turns, so both numbers fall like
``cores / N``. The JSON records the machine, its load, the git commit and whether the
tree was clean.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

import common

DEVICES = (1, 2, 4)


def _build(mod, batch_rows: int, num_steps: int, mesh=None, seed: int = 0):
    recipe = common.timed_recipe("grid25").replace(num_steps=num_steps)
    e_net, enc, dec = mod.nets.default_networks((2,), recipe.latent_dim, hidden=recipe.hidden, rng=seed)
    teacher = mod.VariationalMCMCTeaching(
        mod.EnergyModel(e_net, (2,), ref_scale=recipe.ref_scale),
        mod.VAE(enc, dec, recipe.latent_dim, (2,), obs_scale=recipe.obs_scale, kl_weight=recipe.kl_weight),
        recipe.config.replace(num_samples=None), rng=seed, mesh=mesh)  # one chain per data row
    batch = np.random.default_rng(seed).standard_normal((batch_rows, 2)).astype(np.float32)
    return teacher, batch


# ---------------------------------------------------------------------- JAX: one process, forced host devices
def jax_worker(per_device: int, num_steps: int, repeats: int, iters: int) -> Dict[str, Any]:
    import jax

    import numpyro_vmt as mod

    fns, out = {}, {"devices_seen": jax.device_count(), "platform": jax.devices()[0].platform}
    for n in DEVICES:
        if n > jax.device_count():
            continue
        points = [(f"{n}dev", n if n > 1 else None)] + ([(f"1dev_b{n}", None)] if n > 1 else [])
        for name, mesh in points:
            teacher, batch = _build(mod, per_device * n, num_steps, mesh)

            def call(teacher=teacher, batch=batch):
                for _ in range(iters):
                    teacher.step(batch)
                jax.block_until_ready(teacher.state)

            fns[name] = call
    times = common.interleave(fns, repeats, min_time=0.2)
    out["times"] = {name: {clock: [x / iters for x in v] for clock, v in t.items()} for name, t in times.items()}
    return out


def run_jax(args) -> Dict[str, Any]:
    flags = f"--xla_force_host_platform_device_count={max(DEVICES)}"
    if args.quick:  # the quick run exercises the code path: compile fast
        flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, XLA_FLAGS=flags)
    cmd = [sys.executable, __file__, "--jax-worker", "--per-device", str(args.per_device), "--num-steps",
           str(args.num_steps), "--repeats", str(args.repeats), "--iters", str(args.iters)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=common.ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- Torch: N gloo processes per point
def _torch_rank(rank: int, world: int, tmp: str, per_device: int, num_steps: int, iters: int, warmup: int,
                global_rows: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg-{world}-{global_rows}", rank=rank,
                            world_size=world)
    from torch.distributed.device_mesh import init_device_mesh

    import pyro_vmt as mod

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("data",)) if world > 1 else None
    teacher, batch = _build(mod, global_rows, num_steps, mesh)
    for _ in range(warmup):
        teacher.step(batch)
    dist.barrier()
    start = (time.perf_counter(), time.process_time())
    for _ in range(iters):
        teacher.step(batch)
    dist.barrier()
    wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    if rank == 0:
        Path(f"{tmp}/t-{world}-{global_rows}.json").write_text(json.dumps({"wall": wall / iters, "cpu": cpu / iters}))
    dist.destroy_process_group()


def run_torch(args) -> Dict[str, Any]:
    import torch.multiprocessing as mp

    points = [(n, args.per_device * n) for n in DEVICES] + [(1, args.per_device * n) for n in DEVICES if n > 1]
    times: Dict[str, Dict[str, List[float]]] = {}
    for r in range(args.repeats):
        for world, rows in (points if r % 2 == 0 else points[::-1]):
            name = f"{world}dev" if rows == args.per_device * world else f"1dev_b{rows // args.per_device}"
            with tempfile.TemporaryDirectory() as tmp:
                mp.spawn(_torch_rank, args=(world, tmp, args.per_device, args.num_steps, args.iters, 2, rows),
                         nprocs=world, join=True)
                t = json.loads(Path(f"{tmp}/t-{world}-{rows}.json").read_text())
            times.setdefault(name, {"wall": [], "cpu": []})
            for clock in ("wall", "cpu"):
                times[name][clock].append(t[clock])
    return {"times": times}


# ---------------------------------------------------------------------- table
def summarise(times: Dict[str, Dict[str, List[float]]]) -> List[Dict[str, Any]]:
    med = {k: statistics.median(v["wall"]) for k, v in times.items()}
    rows = []
    for n in DEVICES:
        if f"{n}dev" not in med:
            continue
        t_n, t_1 = med[f"{n}dev"], med["1dev"]
        t_1_same = med.get(f"1dev_b{n}", t_1) if n > 1 else t_1
        rows.append({"devices": n, "ms_per_iter": round(1e3 * t_n, 3), "ms_one_device_same_batch": round(1e3 * t_1_same, 3),
                     "weak": round(t_1 / t_n, 3), "eff": round(t_1_same / (n * t_n), 3),
                     "wall_samples_ms": [round(1e3 * v, 3) for v in times[f"{n}dev"]["wall"]]})
    return rows


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0], "scaling_devices.json")
    p.add_argument("--per-device", type=int, default=100, help="chains and data rows per device (default 100)")
    p.add_argument("--num-steps", type=int, default=None, help="Langevin steps K (default: the grid25 recipe's)")
    p.add_argument("--iters", type=int, default=None, help="iterations per timing (default 3 quick, 10 full)")
    p.add_argument("--backends", default="jax,torch")
    p.add_argument("--jax-worker", action="store_true", help=argparse_hidden())
    args = p.parse_args()
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.iters is None:
        args.iters = 3 if args.quick else 10
    if args.num_steps is None:
        from vmt.app.recipes import get_recipe

        args.num_steps = 3 if args.quick else get_recipe("grid25").config.num_steps
    if args.quick:
        args.per_device = min(args.per_device, 16)
    if args.jax_worker:
        print(json.dumps(jax_worker(args.per_device, args.num_steps, args.repeats, args.iters)))
        return
    payload: Dict[str, Any] = {"meta": common.meta(args, children=True), "per_device": args.per_device, "num_steps": args.num_steps,
                               "iters": args.iters}
    for backend in args.backends.split(","):
        raw = run_jax(args) if backend == "jax" else run_torch(args)
        payload[backend] = dict(raw, rows=summarise(raw["times"]))
        print(backend)
        print(common.md_table(["devices", "ms/iter", "ms/iter 1 device same batch", "weak t1(b)/tN", "eff t1(Nb)/(N tN)"],
                              [[r["devices"], r["ms_per_iter"], r["ms_one_device_same_batch"], r["weak"], r["eff"]]
                               for r in payload[backend]["rows"]]))
    common.finish(payload, args.out)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
