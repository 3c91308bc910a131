"""The tables `make_report.py` writes into other pages than docs/benchmarks.md, and the
line that says where a result came from.

``docs/kernels.md`` gets the ESS/s table of ``kernels_ess.json`` and
``docs/guide_teaching.md`` the tables of every ``guide_teaching*.json``, each between
its page's markers, so the prose around them stays hand-written. Like the rest of the
page renderers this folder is not part of the measured code (``common.CODE`` takes
``benchmarks/*.py`` only): editing it leaves every result current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import common  # benchmarks/ is on the path: this package is imported as make_report's `report`
from common import md_table


def run_line(meta: Dict[str, Any], timing: bool = True) -> str:
    """Where a result came from: commit (current or stale), command, machine, versions, load, time."""
    stamp = common.provenance(meta)["text"]
    m, v = meta["machine"], meta["versions"]
    versions = ", ".join(f"{k} {v[k]}" for k in ("torch", "pyro-ppl", "jax", "numpyro", "blackjax", "torchebm") if v.get(k))
    how = f"{meta['threads']} thread(s); {meta['repeats']} interleaved repeats; " if timing else ""
    return (f"{stamp}; `{meta['command']}` on {m['platform']} ({m['cpu_count']} CPUs), python {m['python']}, {versions}; "
            f"load average {m['load_average'][0]} at the start and {meta.get('load_average_end', ['?'])[0]} at the "
            f"end; {how}{meta['started']} to {meta.get('finished', '?')}.")


KERNELS_START, KERNELS_END = "<!-- kernels-ess:start -->", "<!-- kernels-ess:end -->"


def kernels_table(kernels: Dict[str, Any], docs: Path) -> Path:
    """The ESS/s table of ``docs/kernels.md`` (between its markers) from ``kernels_ess.json``."""
    names = {"pyro": "Pyro", "numpyro": "NumPyro"}
    rows = [(names[r["backend"]], r["method"], f"{r['chains']}×{r['draws']}", float(r["seconds"]),
             round(r["min_ess"]), float(r["ess_per_s"]), float(r["ess_per_s_with_svi"]),
             "—" if r["method"] == "NUTS" else round(r["max_mean_gap"], 3),
             round(r["first_run_seconds"], 1) if "first_run_seconds" in r else "—") for r in kernels["rows"]]
    block = "\n".join([KERNELS_START, "Run: " + run_line(kernels["meta"], timing=False), "",
                       md_table(["backend", "method", "chains × draws", "seconds", "min ESS", "ESS/s",
                                 "ESS/s incl. SVI", "max \\|mean − NUTS\\|", "first run s"], rows), KERNELS_END])
    page = docs / "kernels.md"
    text = page.read_text()
    if KERNELS_START not in text:
        raise SystemExit(f"{page} has no {KERNELS_START} … {KERNELS_END} block for the table")
    head, rest = text.split(KERNELS_START, 1)
    page.write_text(head + block + rest.split(KERNELS_END, 1)[1])
    print(f"wrote the ESS table of {page}")
    return page


GUIDE_START, GUIDE_END = "<!-- guide-teaching:start -->", "<!-- guide-teaching:end -->"
_GUIDES = {"taught": "taught", "taught_persistent": "taught, persistent",
           "taught_dense": "taught, persistent, dense mass", "svi": "SVI"}
# each method averaged (its own label), then the same run at its last iterate (``*_last``)
GUIDE_LABELS = {k: v for key, name in _GUIDES.items() for k, v in ((key, name), (key + "_last", name + " (last iterate)"))}
GUIDE_LABELS["moment_matched"] = "moment-matched mean-field (limit)"


def guide_teaching_tables(files: List[Dict[str, Any]], docs: Path) -> Path:
    """The tables of ``docs/guide_teaching.md`` (between its markers) from ``guide_teaching*.json``."""
    def f(d, digits=2):
        return f"{d['mean']:.{digits}f} ± {d['sd']:.{digits}f}"

    def scores(d, u):  # max mean error, sd ratios, fraction in band
        return (f(d["mean_err_max" + u]), " / ".join(f(d[f"sd_ratio_{k}{u}"]) for k in ("min", "median", "max")),
                f(d["sd_in_band" + u]))

    block = [GUIDE_START]
    for data in files:
        block += ["Run: " + run_line(data["meta"], timing=False) + " "
                  + ", ".join(f"{name}: {s['grad_evals']} model gradients per guide"
                              for name, s in data["summary"].items()) + ".", ""]
    # a target run at several budgets gets one block of rows per budget, smallest first
    runs = sorted(((name, s) for data in files for name, s in data["summary"].items()),
                  key=lambda r: r[1]["grad_evals"])
    budgets = {}
    for name, s in runs:
        budgets.setdefault(name, []).append(s["grad_evals"])
    summary = {}
    for name, s in sorted(runs, key=lambda r: list(budgets).index(r[0])):
        several = len(set(budgets[name])) > 1
        summary[f"{name} ({s['grad_evals'] // 1000}k grads)" if several else name] = s
    for space, u in (("Constrained space (the model's parameters)", ""),
                     ("Unconstrained space (where the guide and MALA work)", "_u")):
        rows = []
        for name, s in summary.items():
            for label in [k for k in GUIDE_LABELS if k in s]:
                d = s[label]
                rows.append((name, GUIDE_LABELS[label], *scores(d, u),
                             f(d["mala_ess_per_grad"], 3) if "mala_ess_per_grad" in d else ""))
            # NUTS's own draws, scored like a guide
            rows.append((name, f"NUTS draws (init_to_median, {s['nuts_grads']['mean']:,.0f} grads)",
                         *scores(s["nuts"], u), f(s["nuts_ess_per_grad"], 3)))
        block += [f"**{space}**, mean ± sd over seeds:", "",
                  md_table(["target", "guide", "max mean err", "sd ratio min / median / max", "in [0.8, 1.2]",
                            "MALA ESS/grad"], rows), ""]
    block.append(GUIDE_END)
    page = docs / "guide_teaching.md"
    text = page.read_text()
    if GUIDE_START not in text:
        raise SystemExit(f"{page} has no {GUIDE_START} … {GUIDE_END} block for the tables")
    head, rest = text.split(GUIDE_START, 1)
    page.write_text(head + "\n".join(block) + rest.split(GUIDE_END, 1)[1])
    print(f"wrote the tables of {page}")
    return page
