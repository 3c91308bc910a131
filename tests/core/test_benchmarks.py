"""The benchmarks' quick versions run and write the result files the report reads,
so the benchmarks cannot rot: each runs in a subprocess with a temporary output and
its JSON is checked for the expected keys; then the report is built from them."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

pytest.importorskip("torch")
pytest.importorskip("pyro")
pytest.importorskip("jax")
pytest.importorskip("numpyro")


def run_quick(script: str, out: Path, *extra: str) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, str(BENCH / script), "--quick", "--out", str(out), *extra],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    meta = data["meta"]
    assert meta["quick"] and "--quick" in meta["command"]
    assert {"platform", "cpu_count", "load_average", "python"} <= set(meta["machine"])
    assert {"torch", "jax", "pyro-ppl", "numpyro", "blackjax", "torchebm"} <= set(meta["versions"])
    assert set(meta["git"]) == {"commit", "dirty"} and len(meta["git"]["commit"]) == 40
    return data


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


def test_speed_quick(results):
    data = run_quick("speed.py", results / "speed.json")
    assert {"floor", "peers", "train", "scaling", "memory", "targets"} <= set(data)
    for row in data["floor"]:
        assert {"backend", "energy", "batch", "num_steps", "ratio", "q25", "q75", "ratio_wall",
                "ratio_per_eval"} <= set(row) and row["ratio"] > 0
    assert {r["backend"] for r in data["floor"]} == {"torch", "jax"}
    assert {r["peer"] for r in data["peers"]} == {"blackjax", "torchebm", "pyro", "numpyro"}
    assert all("ratio" in r or "skipped" in r for r in data["peers"])
    assert {(r["backend"], r["num"], r["den"]) for r in data["train"]} >= {
        ("torch", "ours_step", "hand"), ("jax", "ours_step", "hand"), ("jax", "ours_update", "hand")}
    assert Path(data["scaling"]["plot"]).exists() and data["scaling"]["points"]
    assert {"working", "output", "backend", "num_steps"} <= set(data["memory"][0])
    assert all("within_10pc" in r for r in data["memory"] if r["num_steps"] == max(m["num_steps"] for m in data["memory"]))


def test_quality_2d_quick(results):
    data = run_quick("quality_2d.py", results / "quality_2d.json")
    rows = data["rows"]
    assert {r["backend"] for r in rows} == {"torch", "jax"}
    assert {r["method"] for r in rows} >= {"vmt", "vmt (VAE)", "vae_only"}
    for row in rows:
        assert {"data", "seed", "mmd", "seconds", "grad_evals", "entropy"} <= set(row)
        assert "modes" in row and "high_quality" in row  # grid25 is a mixture
    assert all("loglik" in r for r in rows if r["method"] == "vmt")
    assert all(Path(p).exists() for p in data["figures"].values())


def test_quality_digits_quick(results):
    data = run_quick("quality_digits.py", results / "quality_digits.json")
    assert {r["method"] for r in data["rows"]} >= {"vmt", "vmt (VAE)", "vae_only", "noise"}
    for row in data["rows"]:
        assert {"frechet", "precision", "recall", "frechet_floor", "seconds"} <= set(row)
        # the EBMs' held-out log-likelihood from their own proposal paths, the VAEs' own bound
        ebm = row["method"] in ("vmt", "noise")
        assert ("est_loglik" in row) is ebm and ("vae_bound" in row) is not ebm, row
        assert math.isfinite(row["est_loglik" if ebm else "vae_bound"])
    assert all(Path(p).exists() for p in data["figures"].values())


def test_kernels_ess_quick(results):
    data = run_quick("kernels_ess.py", results / "kernels_ess.json")
    assert {(r["backend"], r["method"]) for r in data["rows"]} == {
        (b, m) for b in ("pyro", "numpyro") for m in ("guide-MALA", "NUTS", "ULA")}
    for row in data["rows"]:
        assert {"seconds", "min_ess", "ess_per_s", "ess_per_s_with_svi", "max_mean_gap"} <= set(row)
        assert row["seconds"] > 0 and row["min_ess"] > 0


def _report(results, docs, *extra):
    return subprocess.run([sys.executable, str(BENCH / "make_report.py"), "--results", str(results),
                           "--docs", str(docs), *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_results_from_other_code_are_marked_stale(tmp_path):
    """A result from another commit (or an uncommitted tree, or none recorded) is marked
    on the page; ``--strict`` refuses to write it; the same commit's clean result is not."""
    sys.path.insert(0, str(BENCH))
    import common

    head = common.git_state()["commit"]
    results, docs = tmp_path / "results", tmp_path / "docs"
    results.mkdir(), docs.mkdir()
    gpu = {"python": "3", "iters": 1, "chains": 1, "steps": 1}  # the smallest file the report reads
    for name, git in [("gpu_smoke.json", {"commit": "0" * 40, "dirty": False}),
                      ("a.json", {"commit": head, "dirty": True}), ("b.json", None),
                      ("c.json", {"commit": head, "dirty": False})]:
        (results / name).write_text(json.dumps(dict(gpu, meta={"git": git} if git else {})))
    result = _report(results, docs)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (docs / "benchmarks.md").read_text()
    assert "- `gpu_smoke.json`: **stale**: commit `0000000000`, code differs from HEAD" in page
    assert "- `a.json`: **stale**: commit" in page and "with uncommitted changes" in page
    assert "- `b.json`: **stale**: no commit recorded" in page
    assert f"- `c.json`: commit `{head[:10]}` (HEAD)" in page
    strict = _report(results, docs, "--strict")
    assert strict.returncode != 0 and "stale results" in strict.stderr
    assert all(n in strict.stderr for n in ("gpu_smoke.json", "a.json", "b.json")) and "c.json" not in strict.stderr


def test_only_code_that_produces_the_numbers_makes_results_stale(tmp_path, monkeypatch):
    """``same_code`` compares the packages, the benchmark scripts, the examples a benchmark
    runs and ``pyproject.toml``; an edit to tests, docs, results, another example or the
    page's renderers does not make a result from the earlier commit stale."""
    sys.path.insert(0, str(BENCH))
    import common

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    files = ["vmt/a.py", "pyro_vmt/a.py", "numpyro_vmt/a.py", "benchmarks/speed.py", "benchmarks/results/s.json",
             "pyproject.toml", "tests/test_a.py", "docs/a.md", "examples/plot.py", "examples/logistic_regression_pyro.py",
             "benchmarks/make_report.py", "benchmarks/report_text.py", "benchmarks/report/pages.py"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("0\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    base = git("rev-parse", "HEAD")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    for name in files:
        (tmp_path / name).write_text("1\n")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", name)
        produces = not name.startswith(("benchmarks/results", "tests", "docs", "examples/plot",
                                         "benchmarks/make_report", "benchmarks/report_text", "benchmarks/report/"))
        assert common.same_code(base) is not produces, name
        git("reset", "-q", "--hard", base)
    assert common.same_code("0" * 40) is False  # a commit git does not know
    # a result that recorded the files it ran goes stale only when one of those changes
    meta = {"git": {"commit": base, "dirty": False}, "code": ["vmt/a.py", "benchmarks/speed.py", "pyproject.toml"]}
    for name in ["pyro_vmt/a.py", "numpyro_vmt/a.py", "examples/logistic_regression_pyro.py", "vmt/a.py"]:
        (tmp_path / name).write_text("2\n")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", name)
        assert common.provenance(meta)["current"] is (name not in meta["code"]), name
        git("reset", "-q", "--hard", base)
    assert common.provenance(dict(meta, code=None))["current"] is True  # at the commit itself


def test_results_record_the_code_they_ran():
    """``loaded_code`` names the project modules this process loaded (not the virtual
    environment's), so a result records what its numbers depend on."""
    sys.path.insert(0, str(BENCH))
    import common
    import vmt.core.config  # noqa: F401

    code = common.loaded_code()
    assert {"benchmarks/common.py", "vmt/core/config.py", "pyproject.toml"} <= set(code)
    assert all(c.split("/")[0] in {"vmt", "pyro_vmt", "numpyro_vmt", "benchmarks", "examples", "pyproject.toml"}
               for c in code), code


def test_report_is_built_from_the_results(results, tmp_path):
    if not all((results / f).exists() for f in ("speed.json", "quality_2d.json", "quality_digits.json")):
        pytest.skip("needs the quick results of the tests above (run the whole file)")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kernels.md").write_text((ROOT / "docs" / "kernels.md").read_text())
    result = _report(results, docs)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (docs / "benchmarks.md").read_text()
    if (results / "kernels_ess.json").exists():  # the ESS table of docs/kernels.md is generated too
        kernels = (docs / "kernels.md").read_text()
        assert "| Pyro | guide-MALA |" in kernels and "Not generated yet" not in kernels
    assert "## Where the numbers come from" in page
    for heading in ("## Targets at a glance", "### 1. Sampler against the floor", "### 2. Against the peers",
                    "### 3. Training step", "### 4. Scaling and memory", "## Sample quality: 2-D densities",
                    "## Sample quality: 8×8 digits"):
        assert heading in page
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page)
    assert links
    for link in links:
        assert (docs / link).exists(), link


def test_a_rerun_supersedes_the_earlier_row(monkeypatch):
    """In the merged 2-D tables a data set, backend, method and seed appears once: from the
    current file that finished last, else the last stale one; a file's other rows stay,
    flagged when their file is stale."""
    sys.path.insert(0, str(BENCH))
    import common
    import make_report

    monkeypatch.setattr(common, "provenance", lambda meta: {"current": meta["current"], "text": ""})

    def row(method, seed):
        return {"data": "ring8", "backend": "jax", "method": method, "seed": seed}

    old = {"meta": {"current": False, "finished": "1"}, "rows": [row("vmt", 0), row("noise", 0)]}
    new = {"meta": {"current": True, "finished": "0"}, "rows": [row("vmt", 0), row("vmt", 1)]}
    older = {"meta": {"current": False, "finished": "0"}, "rows": [row("noise", 0), row("persistent", 0)]}
    kept = make_report.supersede([old, new, older])
    methods = [[(r["method"], r["seed"], r["stale"]) for r in f["rows"]] for f in kept]
    assert methods == [[("noise", 0, True)], [("vmt", 0, False), ("vmt", 1, False)], [("persistent", 0, True)]]


def test_the_baseline_target_names_who_beats_vmt_and_on_what():
    """grid25's "better than every baseline" row: a baseline with sharper samples fails the
    target and is named with the metric it wins; a collapsed baseline (no finite
    log-likelihood) counts as beaten; all beaten on all three passes."""
    sys.path.insert(0, str(BENCH))
    import report_text

    def row(method, hq, ll, kl):
        return {"data": "grid25", "backend": "jax", "method": method, "seed": 0, "high_quality": hq, "loglik": ll,
                "mode_kl": kl, "modes_covered": 25, "entropy": 0.065}

    def target(*baselines):
        rows = [row("vmt", 0.96, -0.2, 0.03), *baselines]
        return next(line for line in report_text.quality_targets([{"rows": rows}], []) if "every EBM baseline" in line)

    line = target(row("noise", 0.98, -66.0, 66.0), row("vmt_paper", 0.0, None, None), row("generator", 0.2, -15, 12))
    assert line.endswith("| no |")
    assert "not than noise (its high quality 0.980)" in line and "vmt_paper (no finite log-lik)" in line
    assert target(row("generator", 0.2, -15, 12), row("vmt_paper", 0.0, None, None)).endswith("| yes |")
    assert "its mode kl" in target(row("persistent", 0.5, -15, 0.01))
