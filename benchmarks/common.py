"""Shared helpers of the benchmarks: threads, machine record, interleaved timing, JSON.

Every speed number the benchmarks report is a *ratio* of two things timed side by
side in the same process, interleaved (A B, B A, A B, ...) over several repeats, with
the median of the per-repeat ratios as the estimate. The machines the benchmarks
run on are shared, so absolute times are not comparable across runs; each run
records the machine, its load and the versions next to its numbers.

Two clocks are kept: the process CPU time (``time.process_time``, all threads of
this process; insensitive to the time slices other jobs take on a busy machine) and
wall time, both with quartiles. The report's headline is the wall-time ratio for JAX
(XLA runs work on its own thread pool, which process CPU time of a pinned process
can miss) and the CPU-time ratio for torch; the other clock stands beside it.

Every result file is written by :func:`finish`, which stamps it with the git commit,
whether the tree was clean (:func:`git_state`) and the project files that ran
(:func:`loaded_code`); ``make_report.py`` marks a result stale when any of those
files differs between its commit and HEAD.

Import this module first in every benchmark: :func:`setup` fixes the thread counts,
which for JAX must happen before ``jax`` is imported.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PACKAGES = ("numpy", "torch", "pyro-ppl", "jax", "jaxlib", "numpyro", "optax", "equinox", "blackjax",
            "torchebm", "scikit-learn")


# ---------------------------------------------------------------------- command line
def parser(description: str, default_out: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--out``, ``--threads``, ``--repeats``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a tiny grid that runs in seconds (CI)")
    p.add_argument("--out", type=Path, default=RESULTS / default_out, help="JSON file to write")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of torch and XLA (default 1: the machines are shared)")
    p.add_argument("--repeats", type=int, default=None, help="timing repeats (default: 3 quick, 9 full)")
    return p


def setup(args: argparse.Namespace) -> None:
    """Fix the thread counts of torch and XLA (call before importing jax).

    With one thread (the default) the process is also pinned to one CPU. With
    ``--quick``, XLA compiles without its expensive optimisations: the quick runs
    exist to exercise the code paths, and compilation dominates their time.
    """
    n = int(args.threads)
    flags = f" --xla_cpu_multi_thread_eigen={'true' if n > 1 else 'false'} intra_op_parallelism_threads={n}"
    if args.quick:  # quick runs test the code paths, not the speed: compile fast
        flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + flags).strip()
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    args.pinned_cpu = None
    if n == 1 and hasattr(os, "sched_setaffinity"):
        # XLA's CPU runtime keeps a thread pool (its dot kernels run on it) whatever
        # the flags say; on one core, process CPU time and wall time measure the same.
        args.pinned_cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {args.pinned_cpu})
    torch = optional("torch")
    if torch is not None:
        torch.set_num_threads(n)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 9


def optional(name: str):
    """The module ``name``, or ``None`` when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# ---------------------------------------------------------------------- machine record
def _version(dist: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


#: The paths whose code produces the numbers (git pathspecs): the three packages, the
#: benchmark scripts, the examples a benchmark runs (``kernels_ess.py``) and
#: ``pyproject.toml`` (the dependencies). An edit anywhere else (tests, docs, other
#: examples, the results themselves, the page's renderers ``make_report.py`` and
#: ``report_text.py``) leaves every result current.
CODE = ("vmt", "pyro_vmt", "numpyro_vmt", ":(glob)benchmarks/*.py", ":(glob)examples/logistic_regression_*.py",
        "pyproject.toml", ":(exclude)benchmarks/make_report.py", ":(exclude)benchmarks/report_text.py")


def timed_recipe(name: str = "grid25"):
    """The recipe the speed benchmarks time: ``name``'s networks, K, batch and schedule, run
    plain (``vmt.app.recipes.PLAIN``, every chain from the VAE): the paper's algorithm,
    which the hand-written loops (``handwritten_torch``, ``handwritten_jax``) implement."""
    from vmt.app.recipes import PLAIN, get_recipe

    return get_recipe(name).replace(**PLAIN)


def same_code(commit: str, paths: Sequence[str] = CODE) -> bool:
    """Whether HEAD's tree equals ``commit``'s in every path of ``paths`` (default `CODE`), so its results still hold."""
    try:
        r = subprocess.run(["git", "diff", "--quiet", commit, "HEAD", "--", *paths], cwd=ROOT,
                           capture_output=True, text=True)
        return r.returncode == 0
    except OSError:
        return False


def loaded_code() -> List[str]:
    """The project's files that ran in this process, and ``pyproject.toml``: what its numbers depend on.

    Every module loaded from the packages, ``benchmarks/`` or ``examples/`` (the
    benchmark script itself included); recorded by :func:`finish` as ``meta["code"]``
    so that an edit to code a result never ran (another backend, another benchmark)
    leaves it current. A benchmark whose numbers come from child processes records
    the whole of `CODE` instead.
    """
    tops = {"vmt", "pyro_vmt", "numpyro_vmt", "benchmarks", "examples"}
    files = {"pyproject.toml"}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path:
            continue
        try:
            rel = Path(path).resolve().relative_to(ROOT)
        except ValueError:
            continue
        if rel.parts[0] in tops and rel.suffix == ".py":
            files.add(rel.as_posix())
    return sorted(files)


def provenance(meta: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``{"current": bool, "text": str}``: whether a result came from this code (HEAD, clean tree).

    Current: recorded at HEAD, or at a commit whose code equals HEAD's, from a clean
    tree. The code compared is what the result recorded it ran (``meta["code"]``, see
    :func:`loaded_code`), or `CODE` for results that did not record it. Stale
    otherwise: another commit, an uncommitted tree, or no commit recorded.
    """
    git = dict((meta or {}).get("git") or {})
    commit, head = git.get("commit"), git_state()["commit"]
    if not commit:
        return {"current": False, "text": "**stale**: no commit recorded"}
    short = commit[:10]
    if git.get("dirty"):
        return {"current": False, "text": f"**stale**: commit `{short}` with uncommitted changes"}
    paths = (meta or {}).get("code") or CODE
    if commit != head and not same_code(commit, paths):
        return {"current": False, "text": f"**stale**: commit `{short}`, code differs from HEAD `{(head or '?')[:10]}`"}
    return {"current": True, "text": f"commit `{short}`" + (" (HEAD)" if commit == head else " (same code as HEAD)")}


def git_state() -> Dict[str, Any]:
    """``{"commit": HEAD's sha or None, "dirty": whether tracked or untracked files in `CODE` differ}``.

    Only the code that produces the numbers counts: results and the pages made from them
    (a benchmark run rewrites them), tests and docs do not.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *CODE], cwd=ROOT,
                               capture_output=True, text=True).stdout
        return {"commit": head or None, "dirty": bool(dirty.strip())}
    except OSError:
        return {"commit": None, "dirty": None}


def machine() -> Dict[str, Any]:
    """Platform, CPU count and the current load average."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (None, None, None)
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average": [round(v, 2) for v in load],
            "python": sys.version.split()[0]}


def meta(args: argparse.Namespace, children: bool = False) -> Dict[str, Any]:
    """What a result file records besides its numbers.

    ``children``: the numbers come from child processes (``python -m vmt``, spawned
    workers), whose code this process does not see, so the result depends on all of `CODE`.
    """
    out = {"command": " ".join([Path(sys.executable).name] + sys.argv), "quick": bool(args.quick),
           "threads": int(args.threads), "pinned_cpu": getattr(args, "pinned_cpu", None),
           "repeats": int(args.repeats),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
           "versions": {name: _version(name) for name in PACKAGES}, "git": git_state()}
    if children:
        out["code"] = list(CODE)
    return out


def finish(payload: Dict[str, Any], out: Path, meta: Optional[Dict[str, Any]] = None) -> Path:
    """Add the end time and load to ``meta`` (default ``payload["meta"]``) and write ``payload`` to ``out``.

    The one writer of result files: ``meta["git"]`` (the commit and whether the tree
    was clean) is recorded here if the benchmark did not record it at its start, and
    ``meta["code"]`` (:func:`loaded_code`) unless the benchmark set it.
    """
    meta = payload.setdefault("meta", {}) if meta is None else meta
    meta.setdefault("git", git_state())
    meta.setdefault("code", loaded_code())
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    meta["load_average_end"] = machine()["load_average"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")
    print(f"wrote {out}")
    return out


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return float(value)


# ---------------------------------------------------------------------- timing
def _clock() -> Dict[str, float]:
    return {"cpu": time.process_time(), "wall": time.perf_counter()}


def _time_calls(fn: Callable[[], Any], number: int) -> Dict[str, float]:
    start = _clock()
    for _ in range(number):
        fn()
    end = _clock()
    return {k: (end[k] - start[k]) / number for k in start}


def calibrate(fns: Mapping[str, Callable[[], Any]], min_time: float) -> int:
    """Calls per measurement so that the fastest of ``fns`` takes at least ``min_time`` seconds.

    Each function is called once first (compilation, caches).
    """
    for fn in fns.values():
        fn()
    fastest = min(_time_calls(fn, 1)["wall"] for fn in fns.values())
    return max(1, int(round(min_time / max(fastest, 1e-6))))


def interleave(fns: Mapping[str, Callable[[], Any]], repeats: int, min_time: float = 0.05
               ) -> Dict[str, Dict[str, List[float]]]:
    """Time every function ``repeats`` times, rotating the order each repeat.

    Returns ``{name: {"cpu": [seconds per call, ...], "wall": [...]}}``.
    """
    number = calibrate(fns, min_time)
    names = list(fns)
    out = {name: {"cpu": [], "wall": []} for name in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        if r % 2:
            order = order[::-1]
        for name in order:
            t = _time_calls(fns[name], number)
            out[name]["cpu"].append(t["cpu"])
            out[name]["wall"].append(t["wall"])
    return out


def _quantile(values: Sequence[float], q: float) -> float:
    values = sorted(values)
    pos = q * (len(values) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def ratio(times: Mapping[str, Mapping[str, List[float]]], num: str, den: str) -> Dict[str, float]:
    """``num / den``: the median of the per-repeat ratios and their quartiles, CPU and wall time."""
    r_cpu = [a / b for a, b in zip(times[num]["cpu"], times[den]["cpu"])]
    r_wall = [a / b for a, b in zip(times[num]["wall"], times[den]["wall"])]
    return {"ratio": round(statistics.median(r_cpu), 4), "q25": round(_quantile(r_cpu, 0.25), 4),
            "q75": round(_quantile(r_cpu, 0.75), 4), "ratio_wall": round(statistics.median(r_wall), 4),
            "q25_wall": round(_quantile(r_wall, 0.25), 4), "q75_wall": round(_quantile(r_wall, 0.75), 4),
            "ms_" + num: round(1e3 * statistics.median(times[num]["cpu"]), 4),
            "ms_" + den: round(1e3 * statistics.median(times[den]["cpu"]), 4)}


def compare(fns: Mapping[str, Callable[[], Any]], baseline: str, repeats: int, min_time: float = 0.05
            ) -> Dict[str, Dict[str, float]]:
    """Interleave ``fns`` and return every other function's :func:`ratio` to ``baseline``."""
    times = interleave(fns, repeats, min_time)
    return {name: ratio(times, name, baseline) for name in fns if name != baseline}


# ---------------------------------------------------------------------- tables
def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_ratio(r: Mapping[str, float], clock: str = "cpu") -> str:
    """``1.03 [1.01, 1.05]``: the median ratio of ``clock`` ("cpu" or "wall") and its quartiles."""
    if clock == "cpu":
        return f"{r['ratio']:.3f} [{r['q25']:.2f}, {r['q75']:.2f}]"
    if "q25_wall" not in r:  # result files older than the wall-time quartiles
        return f"{r['ratio_wall']:.3f}"
    return f"{r['ratio_wall']:.3f} [{r['q25_wall']:.2f}, {r['q75_wall']:.2f}]"


def headline_clock(backend: str) -> str:
    """The clock a row's headline ratio uses: wall time for JAX, CPU time for torch."""
    return "wall" if backend in ("jax", "numpyro", "blackjax") else "cpu"


def headline(r: Mapping[str, float], backend: str) -> float:
    return r["ratio_wall"] if headline_clock(backend) == "wall" else r["ratio"]


# ---------------------------------------------------------------------- energies and points
#: The energies of the speed benchmarks: name -> (description, event shape).
ENERGIES = {
    "mlp2d": ("nets.MLP(2, 1, (128, 128)) on 2-D points", (2,)),
    "conv8x8": ("nets.ConvEnergyNet((8, 8)) on 8×8 images", (64,)),
}


def make_energy(backend: str, kind: str, seed: int = 0):
    """The ``EnergyModel`` ``kind`` (a key of :data:`ENERGIES`) of ``backend`` ("torch" or "jax")."""
    event = ENERGIES[kind][1]
    if backend == "torch":
        import torch

        from pyro_vmt import EnergyModel, nets

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = nets.MLP(2, 1, (128, 128)) if kind == "mlp2d" else nets.ConvEnergyNet((8, 8))
        return EnergyModel(net, event)
    from numpyro_vmt import EnergyModel, nets

    net = nets.MLP(2, 1, (128, 128), rng=seed) if kind == "mlp2d" else nets.ConvEnergyNet((8, 8), rng=seed)
    return EnergyModel(net, event)


def make_points(backend: str, kind: str, n: int, seed: int = 1):
    """``n`` standard normal starting points of the event shape of ``kind``, float32."""
    import numpy as np

    x = np.random.default_rng(seed).standard_normal((n,) + ENERGIES[kind][1]).astype(np.float32)
    if backend == "torch":
        import torch

        return torch.from_numpy(x)
    import jax.numpy as jnp

    return jnp.asarray(x)


def jax_split(module):
    """``(leaves, rebuild)`` of an equinox module: its array leaves as a flat list (cheap
    for ``jax.jit`` to take as an argument) and the function that rebuilds the module."""
    import equinox as eqx
    import jax

    dynamic, static = eqx.partition(module, eqx.is_array)
    leaves, treedef = jax.tree.flatten(dynamic)
    return leaves, lambda ls: eqx.combine(jax.tree.unflatten(treedef, ls), static)


def block(tree):
    """Wait for every array of a JAX pytree (the end of an asynchronous computation)."""
    import jax

    return jax.block_until_ready(tree)
