"""GPU smoke test: training iterations and a sampler run on the GPU, next to the CPU.

    python benchmarks/gpu_smoke.py [--out benchmarks/results/gpu_smoke.json]

For each backend with a GPU here (it says so and skips otherwise), times the same
workloads on the GPU and on the CPU of the same machine in one run (Torch's CPU on
one thread, as ``vmt`` runs it), and reports
``cpu_over_gpu`` (above 1: the GPU is faster):

- one training iteration of the grid25 recipe (MLPs, batch 200, K = 40) and of the
  digits recipe (conv energy, batch 100, K = 20) — ``teacher.step``;
- a Langevin run of the grid25 energy, ``--chains`` chains for ``--steps`` steps.

Nothing in either backend pins the CPU: the Torch teacher works on the device of the
energy's parameters (``build_teacher(..., device=)``), the JAX one on JAX's default
device (``jax.default_device``). Writes timings and the devices used as JSON.
"""

import argparse
import json
import os
import platform
import time
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


def torch_on(device, iters, chains, steps):
    """The Torch workloads on ``device`` (``"cuda"``, ``"cpu"``): their times in ms."""
    import torch

    import pyro_vmt

    dev, out = torch.device(device), {}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for name in ("grid25", "digits"):
        data = load_dataset(name)
        recipe = get_recipe(name)
        teacher = build_teacher(pyro_vmt, data, recipe, seed=0, device=dev)
        batch = torch.as_tensor(data.train[:recipe.batch_size], device=dev)

        def train():
            info = teacher.step(batch)
            sync()
            return info

        out[f"{name}_iteration_ms"], info = _time(train, iters)
        out[f"{name}_loss_finite"] = bool(torch.isfinite(info.loss))
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
    args = p.parse_args()
    results = {"machine": platform.node(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "versions": _versions(),
               "iters": args.iters, "chains": args.chains, "steps": args.steps}
    for name, fn in [("pyro", torch_smoke), ("numpyro", jax_smoke)]:
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
