"""GPU smoke test: a few training iterations and a sampler run on the GPU, per backend.

    python benchmarks/gpu_smoke.py [--out benchmarks/results/gpu_smoke.json]

Skips (and says so) each backend that has no GPU here. Nothing in either backend
pins the CPU: the Torch teacher works on the device of the energy's parameters, the
JAX one on JAX's default device. Writes timings and the devices used as JSON.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from vmt.data import load_dataset
from vmt.recipes import build_teacher, get_recipe, to_numpy


def _time(fn, repeat):
    fn()  # warm-up / compile
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - start) / repeat, out


def torch_smoke(iters, chains, steps):
    import torch

    import pyro_vmt

    if not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
    data = load_dataset("grid25")
    teacher = build_teacher(pyro_vmt, data, get_recipe("grid25"), seed=0)
    dev = torch.device("cuda")
    teacher = pyro_vmt.VariationalMCMCTeaching(teacher.energy.to(dev), teacher.vae.to(dev),
                                               teacher.config, rng=torch.Generator(dev).manual_seed(0))
    batch = torch.as_tensor(data.train[:200], device=dev)

    def train():
        info = teacher.step(batch)
        torch.cuda.synchronize()
        return info

    it, info = _time(train, iters)
    sampler = pyro_vmt.Langevin(teacher.energy, 0.05, steps)
    x0 = torch.randn(chains, 2, device=dev)

    def run():
        state, _ = sampler.run(torch.Generator(dev).manual_seed(1), x0)
        torch.cuda.synchronize()
        return state

    rt, state = _time(run, 3)
    return {"device": torch.cuda.get_device_name(0), "iteration_ms": 1e3 * it,
            "sampler_ms": 1e3 * rt, "chains": chains, "steps": steps,
            "loss_finite": bool(torch.isfinite(info.loss)), "on_gpu": state.position.is_cuda}


def jax_smoke(iters, chains, steps):
    import jax

    import numpyro_vmt

    if not any(d.platform == "gpu" for d in jax.devices()):
        return {"skipped": "jax sees no GPU device"}
    data = load_dataset("grid25")
    teacher = build_teacher(numpyro_vmt, data, get_recipe("grid25"), seed=0)
    batch = jax.device_put(data.train[:200])

    def train():
        info = teacher.step(batch)
        jax.block_until_ready(info)
        return info

    it, info = _time(train, iters)
    sampler = numpyro_vmt.Langevin(teacher.energy, 0.05, steps)
    x0 = jax.random.normal(jax.random.key(0), (chains, 2))

    def run():
        state, _ = sampler.run(1, x0)
        return jax.block_until_ready(state)

    rt, state = _time(run, 3)
    return {"device": str(jax.devices()[0]), "iteration_ms": 1e3 * it, "sampler_ms": 1e3 * rt,
            "chains": chains, "steps": steps, "loss_finite": bool(np.isfinite(to_numpy(info.loss))),
            "on_gpu": list(state.position.devices())[0].platform == "gpu"}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_smoke.json"))
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--chains", type=int, default=4096)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args()
    results = {"machine": platform.node(), "python": platform.python_version()}
    for name, fn in [("pyro", torch_smoke), ("numpyro", jax_smoke)]:
        try:
            results[name] = fn(args.iters, args.chains, args.steps)
        except ImportError as e:
            results[name] = {"skipped": f"not installed: {e}"}
        print(name, results[name])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
