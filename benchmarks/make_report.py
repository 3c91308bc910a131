"""Write docs/benchmarks.md (tables) and docs/img/benchmarks/ (pictures) from the result files.

    python benchmarks/make_report.py               # read benchmarks/results/*.json
    python benchmarks/make_report.py --run         # run every benchmark first (long)
    python benchmarks/make_report.py --run --quick # the quick versions (seconds)

Reads ``speed.json``, ``gpu_smoke.json`` (if a GPU run was copied there), every ``quality_2d*.json`` (rows merged: e.g. one file per
backend) and every ``quality_digits*.json`` from ``--results``; ``kernels_ess.json`` goes
into the table of ``docs/kernels.md``, every ``guide_teaching*.json`` into the tables
of ``docs/guide_teaching.md`` (those two pages' tables are rendered by ``report/pages.py``).
The prose of the page lives here, next to the tables it explains; the numbers come
only from the JSON.

Every result file carries the commit it was made at (``meta.git``, written by
``common.finish``). A result from other code than HEAD's, or from an uncommitted
tree, is marked **stale** next to its table and in the list at the top of the page;
``--strict`` refuses to write the page instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import math
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import report_text  # noqa: E402
from common import md_table  # noqa: E402
from report.pages import guide_teaching_tables, kernels_table, run_line  # noqa: E402

IMG = Path("img") / "benchmarks"  # relative to the docs folder


def _load(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def _copy(src: str, docs: Path, name: str) -> str:
    """Copy a picture into ``docs/img/benchmarks/`` and return its link, relative to docs/."""
    dest = docs / IMG / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return (IMG / name).as_posix()


def _ok(value: float, target: float) -> str:
    return "yes" if value <= target else "**no**"


def _clocks(r: Dict[str, Any], backend: str):
    """The headline ratio (wall time for JAX, CPU time for torch) and the other clock's, labelled."""
    head = common.headline_clock(backend)
    other = "cpu" if head == "wall" else "wall"
    return (f"{common.fmt_ratio(r, head)} ({head})", f"{common.fmt_ratio(r, other)} ({other})")


# ---------------------------------------------------------------------- speed
def speed_section(speed: Dict[str, Any], docs: Path) -> List[str]:
    out = ["## Speed", "", report_text.SPEED_INTRO, "", "Run: " + run_line(speed["meta"]), ""]
    if "floor" in speed:
        rows = [(r["backend"], r["energy"], r["batch"], r["num_steps"], *_clocks(r, r["backend"]),
                 r["ratio_per_eval"], r["ms_floor"], _ok(common.headline(r, r["backend"]), 1.10)) for r in speed["floor"]]
        out += ["### 1. Sampler against the floor", "", report_text.FLOOR, "",
                md_table(["backend", "energy", "chains", "K", "ours / floor [quartiles]", "other clock",
                          "per gradient eval (CPU)", "floor ms (CPU)", "≤ 1.10"], rows), "", report_text.FLOOR_AFTER, ""]
    if "peers" in speed:
        rows = [(r["peer"], r["variant"], r["energy"], r["chains"], r["num_steps"], *_clocks(r, r["backend"]),
                 r["speedup"], _ok(common.headline(r, r["backend"]), 1.0)) if "skipped" not in r
                else (r["peer"], "skipped: " + r["skipped"], "", "", "", "", "", "", "") for r in speed["peers"]]
        out += ["### 2. Against the peers", "", report_text.PEERS, "",
                md_table(["peer", "ours", "energy", "chains", "K", "ours / peer [quartiles]", "other clock",
                          "speed-up (CPU)", "≤ 1.0"], rows), "", report_text.PEERS_AFTER, ""]
    if "train" in speed:
        rows = [(r["backend"], r["data"], r["num_steps"], r["batch"], f"{r['num']} / {r['den']}",
                 *_clocks(r, r["backend"]), r["target"],
                 _ok(common.headline(r, r["backend"]), r["target"]) if r["target"] else "") for r in speed["train"]]
        out += ["### 3. Training step against a hand-written one", "", report_text.TRAIN, "",
                md_table(["backend", "data", "K", "batch", "ratio", "headline [quartiles]", "other clock", "target",
                          "met"], rows),
                "", report_text.TRAIN_AFTER, ""]
    if "scaling" in speed:
        link = _copy(speed["scaling"]["plot"], docs, "speed_scaling.png")
        base = speed["scaling"]["base"]
        out += ["### 4. Scaling and memory", "", report_text.SCALING.format(**base), "",
                f"![time per iteration against K, batch size and dimension]({link})", ""]
    if "memory" in speed:
        rows = [(r["backend"], r["energy"], r["chains"], r["num_steps"], round(r["working"] / 2 ** 20, 2),
                 round(r["output"] / 2 ** 20, 2), r.get("working_ratio", ""),
                 {True: "yes", False: "**no**"}.get(r.get("within_10pc"), "")) for r in speed["memory"]]
        out += [report_text.MEMORY, "",
                md_table(["backend", "energy", "chains", "K", "working MiB", "output MiB", "working K_max / K_min",
                          "within 10 %"], rows), ""]
    return out


# ---------------------------------------------------------------------- quality
def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def _pm(values, digits: int = 3):
    values = [v for v in values if v is not None]
    if not values:
        return None
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    if not all(math.isfinite(v) for v in values):  # e.g. a mode-mass KL of inf: no spread to show
        return " / ".join(f"{v:.{digits}f}" for v in values)
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def quality_2d_section(files: List[Dict[str, Any]], docs: Path) -> List[str]:
    files = [f for f in files if f["rows"]]  # a file whose every row was rerun is only listed at the top
    rows = [r for f in files for r in f["rows"]]
    out = ["## Sample quality: 2-D densities", "", report_text.QUALITY_2D, ""]
    for f in files:
        out += ["Run: " + run_line(f["meta"], timing=False) + f" Backends {', '.join(f['backends'])}; seeds "
                f"{', '.join(map(str, f['seeds']))}; data sets {', '.join(f['datasets'])}; methods "
                f"{', '.join(f.get('methods', []))}.", ""]
    current = [f for f in files if not f["rows"][0].get("stale")]
    recipes = {d: r for f in [f for f in files if f not in current] + current for d, r in f["recipes"].items()}
    for name in [d for d in ("grid25", "8gaussians", "rings", "2spirals", "ring8") if d in recipes]:
        rec = recipes[name]
        cfg = rec["config"]
        out += [f"### {name}", "", f"Recipe: {rec['num_iters']} iterations, K = {cfg['num_steps']}, "
                f"{rec['batch_size']} chains, step size {cfg['step_size']}, ref_scale {rec['ref_scale']}, "
                f"noise_fraction {cfg.get('noise_fraction', 0)} (for `vmt` and `generator`), learning rates "
                f"decayed to {cfg.get('lr_final_ratio')}×, correction {cfg.get('correction') or 'none'}"
                + (" (`vmt` = `vmt_mh`; the baselines and `vmt_paper` plain)" if cfg.get("correction") else "")
                + ".", ""]
        table = []
        keys = sorted({(r["backend"], r["method"]) for r in rows if r["data"] == name},
                      key=lambda k: (k[0] != "torch", report_text.METHOD_ORDER.index(k[1])))
        for backend, method in keys:
            rs = [r for r in rows if r["data"] == name and r["backend"] == backend and r["method"] == method]
            modes = _mean([r.get("modes_covered") for r in rs])
            num_modes = rs[0].get("modes", "/").split("/")[-1] or None
            errors = "; ".join(sorted({r["error"] for r in rs if r.get("error")}))
            warn = "boundary" if any(r.get("loglik_warning") for r in rs) else ""
            warn += " **stale**" if any(r.get("stale") for r in rs) else ""
            lls = [r.get("loglik") for r in rs]
            ll_err = "; ".join(sorted({r["loglik_error"][:60] for r in rs if r.get("loglik_error")}))
            table.append((backend, method, len(rs), None if modes is None else f"{modes:.1f}/{num_modes}",
                          _pm([r.get("high_quality") for r in rs]), _pm(lls, 2) or (ll_err or "–"),
                          f"{-rs[0]['entropy']:.3f}" if rs[0].get("entropy") is not None else None,
                          _pm([r.get("est_loglik") for r in rs], 2), _pm([r.get("mode_kl") for r in rs], 3),
                          _pm([r.get("mmd") for r in rs], 4), _pm([r.get("seconds") for r in rs], 0),
                          " ".join(x for x in (errors, warn) if x)))
        out += [md_table(["backend", "method", "seeds", "modes", "high quality", "held-out log-lik",
                          "best (−H)", "est. log-lik (paths)", "mode-mass KL", "MMD²", "train s", "notes"],
                         table), ""]
    for f in files:
        for key, path in f.get("figures", {}).items():
            if Path(path).exists():
                out += [f"![{key}]({_copy(path, docs, Path(path).name)})", ""]
    return out + [report_text.QUALITY_2D_AFTER, ""]


def quality_digits_section(files: List[Dict[str, Any]], docs: Path) -> List[str]:
    out = ["## Sample quality: 8×8 digits", "", report_text.DIGITS, ""]
    for f in files:
        rec, cfg = f["recipe"], f["recipe"]["config"]
        out += ["Run: " + run_line(f["meta"], timing=False) + f" Backends {', '.join(f['backends'])}; seeds "
                f"{', '.join(map(str, f['seeds']))}; {f['num_samples']} samples per method; "
                f"recipe: {rec['num_iters']} iterations, K = {cfg['num_steps']}, {rec['batch_size']} chains; "
                f"classifier test accuracy {f['classifier_test_accuracy']:.3f}.", ""]
    # one table: the seeds of every file merged; rows of a stale file say so
    stale = [not common.provenance(f.get("meta"))["current"] for f in files]  # one git check per file
    rows = [dict(r, stale=old) for f, old in zip(files, stale) for r in f["rows"]]
    floor = rows[0] if rows else {}
    table = []
    for backend in dict.fromkeys(b for f in files for b in f["backends"]):
        for method in [m for m in report_text.METHOD_ORDER if any(r["method"] == m and r["backend"] == backend
                                                                  for r in rows)]:
            rs = [r for r in rows if r["method"] == method and r["backend"] == backend]
            table.append((backend, method, len(rs), _pm([r.get("frechet") for r in rs], 2),
                          _pm([r.get("precision") for r in rs]), _pm([r.get("recall") for r in rs]),
                          _pm([r.get("est_loglik") for r in rs], 1) or "–",
                          _pm([r.get("vae_bound") for r in rs], 1) or "–",
                          _pm([r.get("seconds") for r in rs], 0),
                          "; ".join(sorted({r["error"] for r in rs if r["error"]}
                                           | ({"**stale**" + (" (some seeds)" if not all(r["stale"] for r in rs) else "")}
                                              if any(r["stale"] for r in rs) else set())
                                           | ({"log Ẑ carried by one path (se ≈ 1): est. log-lik unreliable"}
                                              if any(r.get("est_log_z_se", 0) >= 0.9 for r in rs) else set())))))
    table.append(("", "held-out digits (floor)", "", f"{floor.get('frechet_floor', 0):.2f}",
                  f"{floor.get('precision_floor', 0):.3f}", f"{floor.get('recall_floor', 0):.3f}", "", "", "", ""))
    out += [md_table(["backend", "method", "seeds", "Fréchet", "precision", "recall", "est. log-lik (paths)",
                      "VAE bound (ELBO)", "train s", "notes"], table), ""]
    for f in files:
        pics = [(k, _copy(p, docs, Path(p).parent.name + "_" + Path(p).name))
                for k, p in f.get("figures", {}).items() if Path(p).exists()]
        if pics:
            out += [md_table([k for k, _ in pics], [[f"![{k}]({link})" for k, link in pics]]), ""]
    if all(f["backends"] == ["torch"] for f in files):
        out += [report_text.DIGITS_AFTER, ""]
    return out


# ------------------------------------------------------------------------ GPU
WORKLOADS = {"grid25_iteration_ms": "training iteration, grid25 (MLPs, batch 200, K=40)",
             "digits_iteration_ms": "training iteration, digits (conv energy, batch 100, K=20)",
             "sampler_ms": "Langevin run, grid25 energy ({chains} chains × {steps} steps)"}


def gpu_section(gpu: Dict[str, Any]) -> List[str]:
    rows = []
    for backend in ("pyro", "numpyro"):
        r = gpu.get(backend, {})
        if "gpu" not in r:
            continue
        for key, label in WORKLOADS.items():
            rows.append([backend, label.format(**gpu), r["gpu"][key], r["cpu"][key], r["cpu_over_gpu"][key]])
    if not rows:
        return []
    device = gpu.get("pyro", {}).get("device") or gpu.get("numpyro", {}).get("device")
    versions = ", ".join(f"{k} {v}" for k, v in gpu.get("versions", {}).items())
    run = common.provenance(gpu.get("meta"))["text"] + f"; run: python {gpu['python']}" + (f", {versions}" if versions else "") + (
        f", {gpu['started']}" if "started" in gpu else "") + f"; {gpu['iters']} timed iterations after two warm-ups."
    return ["## GPU", "", report_text.GPU_INTRO.format(device=device, cpus=gpu.get("cpu_count", "?")), "", run, "",
            md_table(["backend", "workload", "GPU ms", "CPU ms", "CPU / GPU"], rows), "",
            report_text.GPU_AFTER, ""]


def provenance_section(results: Path) -> List[str]:
    """One line per result file: the commit it came from, current or **stale**."""
    lines = ["## Where the numbers come from", "", report_text.PROVENANCE, ""]
    for path in sorted(results.glob("*.json")):
        data = _load(path)
        lines.append(f"- `{path.name}`: {common.provenance(data.get('meta') if isinstance(data, dict) else None)['text']}")
    return lines + [""]


def stale_files(results: Path) -> List[str]:
    return [p.name for p in sorted(results.glob("*.json"))
            if not common.provenance((_load(p) or {}).get("meta"))["current"]]


def supersede(files: List[Dict[str, Any]], key=("data", "backend", "method", "seed")) -> List[Dict[str, Any]]:
    """The files with each row kept only in the file that ran it last among the current
    ones (or, when no current file has it, the last stale one): a rerun of a data set,
    backend, method and seed replaces the earlier row in every merged table, and a file's
    other rows stay (``row["stale"]``: their file is stale, which the tables say)."""
    def rank(f):
        return (common.provenance(f.get("meta"))["current"], f.get("meta", {}).get("finished", ""))

    owner = {}
    for i, f in enumerate(files):
        for r in f["rows"]:
            k = tuple(r.get(c) for c in key)
            if k not in owner or rank(f) >= rank(files[owner[k]]):
                owner[k] = i
    stale = [not rank(f)[0] for f in files]
    return [dict(f, rows=[dict(r, stale=stale[i]) for r in f["rows"] if owner[tuple(r.get(c) for c in key)] == i])
            for i, f in enumerate(files)]


def write(results: Path, docs: Path, strict: bool = False) -> Path:
    stale = stale_files(results)
    if strict and stale:
        raise SystemExit(f"stale results (not from HEAD's code, or from an uncommitted tree): {', '.join(stale)}; "
                         "rerun them, or drop --strict to publish them marked")
    for old in (docs / IMG).glob("*.png"):  # every picture there is made below: none outlives its result file
        old.unlink()
    speed = _load(results / "speed.json")
    q2d = supersede([_load(p) for p in sorted(results.glob("quality_2d*.json"))])
    qdig = [_load(p) for p in sorted(results.glob("quality_digits*.json"))]
    kernels = _load(results / "kernels_ess.json")
    if kernels:
        kernels_table(kernels, docs)
    guides = [_load(p) for p in sorted(results.glob("guide_teaching*.json"))]
    if guides:
        guide_teaching_tables(guides, docs)
    lines = ["# Benchmarks", "", report_text.INTRO, ""]
    lines += provenance_section(results)
    lines += report_text.summary(speed, q2d, qdig) + [""]
    if speed:
        lines += speed_section(speed, docs)
    if q2d:
        lines += quality_2d_section(q2d, docs)
    if qdig:
        lines += quality_digits_section(qdig, docs)
    gpu = _load(results / "gpu_smoke.json")
    if gpu:
        lines += gpu_section(gpu)
    page = docs / "benchmarks.md"
    page.write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {page}")
    return page


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=common.RESULTS)
    p.add_argument("--docs", type=Path, default=common.ROOT / "docs")
    p.add_argument("--run", action="store_true", help="run the benchmarks first")
    p.add_argument("--quick", action="store_true", help="with --run: the quick versions")
    p.add_argument("--strict", action="store_true", help="refuse to write when a result is stale")
    args = p.parse_args(argv)
    if args.run:
        for script in ("speed.py", "quality_2d.py", "quality_digits.py", "kernels_ess.py"):
            out = args.results / script.replace(".py", ".json")
            cmd = [sys.executable, str(Path(__file__).with_name(script)), "--out", str(out)]
            subprocess.run(cmd + (["--quick"] if args.quick else []), check=True)
    return write(args.results, args.docs, args.strict)


if __name__ == "__main__":
    main()
