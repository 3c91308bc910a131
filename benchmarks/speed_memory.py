"""Part 4b of the speed benchmark: the memory of a K-step run must not grow with K.

A K-step ``Langevin.run`` returns per-step diagnostics of shape ``(K, n)`` (acceptance
rate, accepted flag, gradient norm, divergence flag: 10 bytes per chain and step in
float32), so its *output* grows with K by design. What must not grow is everything
else: the working memory of the run.

- JAX: the compiled run's own memory analysis,
  ``jax.jit(run).lower(...).compile().memory_analysis()``: ``temp_size_in_bytes``
  (working buffers) and ``output_size_in_bytes``, from the compiler, exactly.
- torch on CPU (no allocator statistics there): one fresh subprocess per K, with
  glibc's ``MALLOC_MMAP_THRESHOLD_`` lowered so that freed tensor memory goes back
  to the system; the run's memory is the growth of the peak resident set (Linux's
  ``VmHWM``, reset just before the run) over the run, and the working memory that
  growth minus the bytes of the returned state and diagnostics.

The criterion: working memory at K = 1000 within 10 % (plus 1 MiB of measurement
granularity for the RSS) of K = 10.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import common
from speed_floor import STEP

FULL = {"cases": [("mlp2d", 4096), ("conv8x8", 256)], "steps": [10, 100, 1000]}
QUICK = {"cases": [("mlp2d", 256)], "steps": [10, 50]}
MIB = 2 ** 20


def jax_memory(kind: str, n: int, num_steps: int, adjust: bool = False) -> Dict[str, int]:
    """The compiler's memory analysis of a jitted ``Langevin(...).run``."""
    import jax

    from numpyro_vmt import Langevin

    energy, x0 = common.make_energy("jax", kind), common.make_points("jax", kind, n)
    run = jax.jit(lambda key, x: Langevin(energy, STEP, num_steps, adjust=adjust).run(key, x))
    m = run.lower(jax.random.PRNGKey(0), x0).compile().memory_analysis()
    return {"temp": int(m.temp_size_in_bytes), "output": int(m.output_size_in_bytes),
            "argument": int(m.argument_size_in_bytes)}


def _status(field: str) -> int:
    """A size field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def torch_child(kind: str, n: int, num_steps: int) -> Dict[str, int]:
    """Runs in a fresh process: growth of the peak resident set over one run, and the output's bytes.

    The peak is the kernel's high-water mark ``VmHWM``, reset just before the run by
    writing 5 to ``/proc/self/clear_refs`` (``ru_maxrss`` would not do: it keeps the
    peak of the parent process across ``fork``/``exec``).
    """
    import gc

    import torch

    from pyro_vmt import Langevin

    torch.set_num_threads(1)
    energy, x0 = common.make_energy("torch", kind), common.make_points("torch", kind, n)
    sampler = Langevin(energy, STEP, num_steps)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status("VmRSS")
    state, info = sampler.run(0, x0)
    peak = _status("VmHWM")
    output = sum(t.nbytes for t in state) + sum(t.nbytes for t in info)
    return {"peak_rss": peak, "growth": peak - before, "output": output}


def torch_memory(kind: str, n: int, steps: List[int], fresh: bool = True) -> Dict[int, Dict[str, int]]:
    """:func:`torch_child` for each K, each in a fresh process (``fresh=False``: one process for all)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="16384", OMP_NUM_THREADS="1")
    out = {}
    for group in ([[k] for k in steps] if fresh else [steps]):
        code = ("import json, sys; sys.path.insert(0, %r); import speed_memory; "
                "print(json.dumps([speed_memory.torch_child(%r, %d, k) for k in %r]))"
                ) % (str(common.ROOT / "benchmarks"), kind, n, group)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        out.update(zip(group, json.loads(res.stdout.strip().splitlines()[-1])))
    return out


def run(args) -> List[Dict[str, Any]]:
    """One row per (backend, energy, K), with the verdict on the largest K against the smallest."""
    grid = QUICK if args.quick else FULL
    rows = []
    for kind, n in grid["cases"]:
        for backend in ("torch", "jax"):
            if backend == "torch":  # quick: one process for every K (it tests the code, not the numbers)
                per_k = torch_memory(kind, n, grid["steps"], fresh=not args.quick)
                for m in per_k.values():
                    m["working"] = m["growth"] - m["output"]
            else:
                per_k = {k: jax_memory(kind, n, k) for k in grid["steps"]}
                for m in per_k.values():
                    m["working"] = m["temp"]
            rows += [dict(m, backend=backend, energy=kind, chains=n, num_steps=k) for k, m in per_k.items()]
            lo, hi = per_k[min(per_k)], per_k[max(per_k)]
            slack = 0 if backend == "jax" else MIB
            ok = hi["working"] <= 1.10 * lo["working"] + slack
            ratio = round(hi["working"] / lo["working"], 3) if lo["working"] >= MIB else None  # else: noise
            rows[-1].update(working_ratio=ratio, within_10pc=ok)
            print(f"memory {backend:5s} {kind:7s} n={n}: working MiB " +
                  ", ".join(f"K={k}: {m['working'] / MIB:.1f}" for k, m in per_k.items()) +
                  f"; output MiB at K={max(per_k)}: {hi['output'] / MIB:.1f}; within 10%: {ok}", flush=True)
    return rows
