"""GPU smoke test: training iterations and a sampler run on the GPU, next to the CPU.

    python benchmarks/gpu_smoke.py [--out benchmarks/results/gpu_smoke.json]

For each backend with a GPU here (it says so and skips otherwise), times the same
workloads on the GPU and on the CPU of the same machine in one run (Torch's CPU on
one thread, as ``vmt`` runs it), and reports
``cpu_over_gpu`` (above 1: the GPU is faster):

- one training iteration of the grid25 recipe (MLPs, batch 200, K = 40) and of the
  digits recipe (conv energy, batch 100, K = 20) — ``teacher.step``;
- a Langevin run of the grid25 energy, ``--chains`` chains for ``--steps`` steps.

The Torch training iteration is timed twice, eager (``compile=False``) and with its
Langevin loop compiled (``compile=True``: ``torch.compile``, CUDA graphs on CUDA), each
with its first (compiling) iteration's time and its counts per iteration: host syncs
(patched ``.item()``/``bool()``/...), and on CUDA ``torch.profiler``'s kernel launches,
CUDA-graph launches, device-to-host copies and synchronisations. ``--cpu-only`` runs the
Torch CPU leg alone, on a machine without a GPU.

Nothing in either backend pins the CPU: the Torch teacher works on the device of the
energy's parameters (``build_teacher(..., device=)``), the JAX one on JAX's default
device (``jax.default_device``). Writes timings and the devices used as JSON.
"""

import argparse
import json
import os
import platform
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from vmt.data import load_dataset
from vmt.app.recipes import build_teacher, get_recipe


def _time(fn, repeat):
    fn()  # warm-up / compile; a second call, since JAX compiles again once its
    fn()  # arguments come back committed to a device (under jax.default_device)
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return 1e3 * (time.perf_counter() - start) / repeat, out


def _ratio(row):
    row["cpu_over_gpu"] = {k: row["cpu"][k] / row["gpu"][k] for k in row["gpu"] if k.endswith("_ms")}
    return row


def torch_counts(teacher, batch, iters):
    """Per iteration: host syncs (patched ``.item()``/``bool``/...: any device, an upper bound) and,
    on CUDA, ``torch.profiler``'s kernel launches, CUDA-graph launches, device-to-host copies
    and stream/device synchronisations."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from pyro_vmt.syncs import count_host_syncs

    with count_host_syncs() as syncs:
        for _ in range(iters):
            teacher.step(batch)
    out = {"host_syncs_per_iteration": sum(syncs.values()) / iters}
    if teacher.device.type != "cuda":
        return out
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            teacher.step(batch)
        torch.cuda.synchronize()
    names = Counter(e.name for e in prof.events())

    def count(*prefixes):
        return sum(v for k, v in names.items() if k.startswith(prefixes)) / iters

    out.update(kernel_launches_per_iteration=count("cudaLaunchKernel", "cuLaunchKernel"),
               graph_launches_per_iteration=count("cudaGraphLaunch"),
               dtoh_copies_per_iteration=count("Memcpy DtoH"),
               stream_syncs_per_iteration=count("cudaStreamSynchronize", "cudaDeviceSynchronize",
                                                "cudaEventSynchronize") - 1 / iters)  # less the final one
    return out


def torch_on(device, iters, chains, steps):
    """The Torch workloads on ``device`` (``"cuda"``, ``"cpu"``): their times in ms, eager and with
    the Langevin loop compiled (``compile=True``; CUDA graphs on CUDA), and their counts."""
    import torch

    import pyro_vmt

    dev, out = torch.device(device), {}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for name in ("grid25", "digits"):
        data = load_dataset(name)
        recipe = get_recipe(name)
        eager = build_teacher(pyro_vmt, data, recipe, seed=0, device=dev)
        batch = torch.as_tensor(data.train[:recipe.batch_size], device=dev)
        for label, compile in [("", False), ("compiled_", True)]:
            teacher = type(eager)(eager.energy, eager.vae, eager.config, rng=0, compile=compile)

            def train():
                info = teacher.step(batch)
                sync()
                return info

            start = time.perf_counter()
            train()
            out[f"{name}_{label}first_iteration_s"] = time.perf_counter() - start  # compiles when compiled
            out[f"{name}_{label}iteration_ms"], info = _time(train, iters)
            out[f"{name}_{label}loss_finite"] = bool(torch.isfinite(info.loss))
            if compile:
                out[f"{name}_compile_s"] = teacher.compile_seconds
                out[f"{name}_compile_fallback"] = teacher._compiled.failed
            out.update({f"{name}_{label}{k}": v for k, v in torch_counts(teacher, batch, min(iters, 5)).items()})
        if name == "grid25":
            sampler = pyro_vmt.Langevin(teacher.energy, 0.05, steps)
            x0 = torch.randn(chains, 2, device=dev)

            def run():
                state, _ = sampler.run(torch.Generator(dev).manual_seed(1), x0)
                sync()
                return state

            out["sampler_ms"], state = _time(run, 3)
            out["on_device"] = state.position.device.type == dev.type
    return out


def torch_cpu(iters, chains, steps):
    """The Torch workloads on this machine's CPU only (one thread), eager and compiled: ``--cpu-only``."""
    import torch

    torch.set_num_threads(1)
    return {"cpu_threads": 1, "cpu": torch_on("cpu", iters, chains, steps)}


def torch_smoke(iters, chains, steps):
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
    gpu = torch_on("cuda", iters, chains, steps)
    torch.set_num_threads(1)  # as `vmt` runs it: many threads slow these small ops down (see `vmt train --help`, --threads)
    row = {"device": torch.cuda.get_device_name(0), "cpu_threads": torch.get_num_threads(),
           "gpu": gpu, "cpu": torch_on("cpu", iters, chains, steps)}
    return _ratio(row)


def jax_on(device, iters, chains, steps):
    """The JAX workloads on ``device`` (a ``jax.Device``): their times in ms."""
    import jax

    import numpyro_vmt

    out = {}
    with jax.default_device(device) if device is not None else nullcontext():
        for name in ("grid25", "digits"):
            data = load_dataset(name)
            recipe = get_recipe(name)
            teacher = build_teacher(numpyro_vmt, data, recipe, seed=0)
            batch = jax.device_put(data.train[:recipe.batch_size], device)

            def train():
                return jax.block_until_ready(teacher.step(batch))

            out[f"{name}_iteration_ms"], info = _time(train, iters)
            out[f"{name}_loss_finite"] = bool(np.isfinite(float(info.loss)))
            if name == "grid25":
                sampler = numpyro_vmt.Langevin(teacher.energy, 0.05, steps)
                x0 = jax.device_put(np.random.default_rng(0).normal(size=(chains, 2)).astype(np.float32),
                                    device)

                def run():
                    return jax.block_until_ready(sampler.run(1, x0)[0])

                out["sampler_ms"], state = _time(run, 3)
                out["on_device"] = list(state.position.devices())[0].platform
    return out


def jax_smoke(iters, chains, steps):
    import jax

    if not any(d.platform == "gpu" for d in jax.devices()):
        return {"skipped": "jax sees no GPU device"}
    gpu, cpu = jax.devices("gpu")[0], jax.devices("cpu")[0]
    row = {"device": str(gpu), "gpu": jax_on(gpu, iters, chains, steps), "cpu": jax_on(cpu, iters, chains, steps)}
    return _ratio(row)


def _versions():
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "pyro-ppl", "jax", "jaxlib", "numpyro"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_smoke.json"))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--chains", type=int, default=4096)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--cpu-only", action="store_true",
                   help="only the Torch CPU leg, eager and compiled (for a machine without a GPU)")
    args = p.parse_args()
    results = {"machine": platform.node(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": _versions(),
               "iters": args.iters, "chains": args.chains, "steps": args.steps}
    legs = [("pyro_cpu", torch_cpu)] if args.cpu_only else [("pyro", torch_smoke), ("numpyro", jax_smoke)]
    for name, fn in legs:
        try:
            results[name] = fn(args.iters, args.chains, args.steps)
        except ImportError as e:
            results[name] = {"skipped": f"not installed: {e}"}
        print(name, json.dumps(results[name], indent=1))
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common  # the one writer of result files: it stamps the commit

    common.finish(results, args.out)


if __name__ == "__main__":
    main()
