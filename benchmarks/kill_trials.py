"""Kill ``vmt train`` with SIGKILL at random moments and with ``os._exit`` at chosen points; judge the folders.

For each trial a small ``vmt train`` subprocess runs on grid25 (``--iters 20
--checkpoint-every 5``) and is killed: half the trials at a chosen point of the run
folder's write path (the ``VMT_FAULT`` hook of :mod:`vmt.app.runfolder`, ``point:k``
with a random ``k``), half by SIGKILL after a random delay up to the length of an
uninterrupted run. Each iteration the child finishes is traced (``VMT_TRACE``). Then,
in this process:

- *unusable*: the folder holds a run (or trained past its first checkpoint) but
  its manifest, ``run.json`` or checkpoint cannot be read and loaded;
- *corrupt files*: files the manifest lists whose hash does not match;
- *iterations lost*: the last traced iteration minus the published one (must be ≤ 5);
- *leaked temp files*: ``*.tmp`` left after the next start (``resume_run``, in this
  process with the metrics and plots stubbed out), which must also finish the run.

The random kills fall uniformly between the child's first finished iteration and the
end of an uninterrupted run (measured once at the start).

Writes one JSON line per trial and a summary to ``benchmarks/results/kill_trials_<backend>.json``.

    python benchmarks/kill_trials.py --backend pyro --trials 50
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402
from vmt.app import runs  # noqa: E402
from vmt.app.runfolder import RunFolder, RunFolderError  # noqa: E402

ITERS, EVERY = 20, 5
POINTS = ["checkpoint", "run-json", "publish", "published", "samples"]


def command(backend: str, out: Path) -> list:
    return [sys.executable, "-m", "vmt", "train", "--backend", backend, "--out", str(out), "--iters", str(ITERS),
            "--checkpoint-every", str(EVERY), "--batch-size", "16", "--num-steps", "2", "--hidden", "16",
            "--eval-samples", "100", "--quiet"]


def judge(out: Path, trace: Path) -> dict:
    done = [int(v) for v in trace.read_text().split()] if trace.exists() else []
    last = max(done, default=0)
    row = {"traced_iteration": last}
    folder = RunFolder(out)
    try:
        m = folder.published(verify=False) if out.exists() else None
    except RunFolderError as e:
        return dict(row, unusable=True, error=str(e))
    if m is None:
        # no run published: fine while at most the first chunk was lost (a kill while its generation was written)
        return dict(row, unusable=last > EVERY, no_run_yet=True, lost=last)
    bad = []
    for name in m["files"]:
        try:
            folder.verify(m, [name])
        except RunFolderError:
            bad.append(name)
    row.update(published_iteration=m["iteration"], stage=m["stage"], corrupt=bad, lost=last - m["iteration"])
    try:
        runs.load_run(out)
        row["unusable"] = False
    except Exception as e:  # noqa: BLE001 - anything here is a finding
        row.update(unusable=True, error=f"{type(e).__name__}: {e}")
        return row
    row["tmp_before_restart"] = len(list(out.rglob("*.tmp")))
    runs.resume_run(out, progress=False, eval_samples=100)  # (metrics and plots stubbed: see main)
    m2 = folder.published()
    row.update(leaked_tmp_after_restart=len(list(out.rglob("*.tmp"))), resumed_to=m2["iteration"],
               resumed_stage=m2["stage"])
    return row


def _wait_for(trace: Path, proc) -> float:
    while not trace.exists() and proc.poll() is None:
        time.sleep(0.02)
    return time.perf_counter()


def _cheap_evaluation() -> None:
    """The resumes in this process write the same files without the costly metrics and plots."""
    import vmt.app.scores as scores
    from vmt.core.api import backend_of

    scores.evaluate = lambda teacher, data, num_samples=5000, seed=0: {
        "ebm": {}, "samples": backend_of(teacher).to_numpy(teacher.sample(num_samples, rng=seed))}
    scores._pictures = lambda *a: None
    runs.plots.plot_history = lambda *a, **k: None


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0], "kill_trials_<backend>.json")
    p.add_argument("--backend", default="pyro")
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    args.repeats = 1
    if args.out == common.RESULTS / "kill_trials_<backend>.json":
        args.out = common.RESULTS / f"kill_trials_{args.backend}.json"
    if args.quick:
        args.trials = min(args.trials, 4)
    meta = common.meta(args, children=True)  # the commit is stamped at the start: the trials take long
    _cheap_evaluation()
    rng = random.Random(args.seed)
    threads = {"OMP_NUM_THREADS": str(args.threads),
               "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={args.threads}"}
    env = dict(os.environ, PYTHONPATH=str(ROOT), **threads)
    work = Path(tempfile.mkdtemp(prefix="kill_trials_"))
    start = time.perf_counter()
    proc = subprocess.Popen(command(args.backend, work / "calibrate"), env=dict(env, VMT_TRACE=str(work / "c.trace")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = _wait_for(work / "c.trace", proc) - start
    proc.wait()
    full = time.perf_counter() - start - first  # from the first iteration to the end (evaluation included)
    rows = []
    for i in range(args.trials):
        out, trace = work / f"t{i}", work / f"t{i}.trace"
        chosen = i % 2 == 0
        e = dict(env, VMT_TRACE=str(trace))
        if chosen:
            point = POINTS[(i // 2) % len(POINTS)]
            k = 1 if point == "samples" else rng.randint(1, ITERS // EVERY + (point in ("publish", "published")))
            e["VMT_FAULT"] = f"{point}:{k}"
            r = subprocess.run(command(args.backend, out), env=e, capture_output=True, text=True)
            how = {"kill": e["VMT_FAULT"], "returncode": r.returncode}
        else:
            delay = rng.uniform(0, full)  # after the first iteration: kills during imports test nothing
            proc = subprocess.Popen(command(args.backend, out), env=e, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            _wait_for(trace, proc)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            how = {"kill": f"SIGKILL after {delay:.1f}s", "returncode": proc.returncode}
        row = dict(trial=i, **how, **judge(out, trace))
        rows.append(row)
        print(json.dumps(row), flush=True)
        shutil.rmtree(out, ignore_errors=True)
        summary = summarise(rows, args.backend, full)
        common.finish({"meta": meta, "summary": summary, "trials": rows}, args.out)  # after every trial
    print(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)


def summarise(rows: list, backend: str, full: float) -> dict:
    killed = [r for r in rows if r["returncode"] != 0]
    return {
        "backend": backend, "trials": len(rows), "killed_before_finishing": len(killed),
        "seconds_from_first_iteration_to_end": full, "iters": ITERS, "checkpoint_every": EVERY,
        "unusable_folders": sum(r["unusable"] for r in rows),
        "corrupt_files": sum(len(r.get("corrupt", [])) for r in rows),
        "max_iterations_lost": max((r["lost"] for r in rows), default=0),
        "leaked_tmp_after_restart": sum(r.get("leaked_tmp_after_restart", 0) for r in rows),
        "resumed_to_the_end": sum(r.get("resumed_to") == ITERS and r.get("resumed_stage") == "evaluated"
                                  for r in rows if "resumed_to" in r),
        "folders_with_a_run": sum("resumed_to" in r for r in rows),
        "machine_load": os.getloadavg(),
    }


if __name__ == "__main__":
    main()
