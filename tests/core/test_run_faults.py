"""A run folder survives a kill at any point, resumes to exactly the uninterrupted run, and has one writer.

The kills are real (``os._exit`` in a ``vmt train`` subprocess, through the
``VMT_FAULT`` hook of :mod:`vmt.app.runfolder`) for the points the issue names, and
simulated in-process (an exception at the same hook, no clean-up runs in between)
for every point in both backends.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vmt.app.runfolder as runfolder
import vmt.app.runs as runs
from vmt.app.recipes import get_recipe
from vmt.app.runfolder import RunBusyError, RunFolder

ROOT = Path(__file__).resolve().parents[2]
ITERS, EVERY = 6, 2
SMALL = ["--iters", str(ITERS), "--checkpoint-every", str(EVERY), "--batch-size", "16", "--num-steps", "2",
         "--hidden", "16", "--eval-samples", "100", "--quiet"]


def recipe():
    return get_recipe("grid25").replace(num_iters=ITERS, batch_size=16, num_steps=2, hidden=(16,))


def train(out, backend, **kw):
    return runs.train_run("grid25", out, recipe(), backend, checkpoint_every=EVERY, eval_samples=100,
                          progress=False, **kw)


class Killed(BaseException):
    pass


def kill_at(monkeypatch, point):
    name, _, k = point.partition(":")
    hits = {"n": 0}

    def fault(where, before_exit=None):
        if where == name:
            hits["n"] += 1
            if hits["n"] == int(k or 1):
                if before_exit is not None:
                    before_exit()
                raise Killed(point)
    monkeypatch.setattr(runs, "fault", fault)
    monkeypatch.setattr(runfolder, "fault", fault)
    monkeypatch.setattr("vmt.app.scores.fault", fault)


def fingerprint(run):
    """What an exact resume must reproduce: every iteration's diagnostics and a fixed-seed draw."""
    meta, data, _, teacher = runs.load_run(run)
    h = np.load(Path(run) / "history.npz")
    from vmt.core.api import backend_of

    draw = backend_of(teacher).to_numpy(teacher.sample(5, rng=3))
    return teacher.iteration, {k: h[k] for k in h.files}, draw


def assert_same(a, b):
    assert a[0] == b[0]
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=k)
    np.testing.assert_array_equal(a[2], b[2])


def leftovers(run):
    return [str(p) for p in Path(run).rglob("*.tmp")]


@pytest.fixture(params=["pyro", "numpyro"], scope="module")
def backend(request):
    pytest.importorskip("torch" if request.param == "pyro" else "jax")
    return request.param


def cheap_evaluation(mp):
    """The real write path (samples.npy and its fault point, metrics.json) without the costly metrics and plots."""
    import vmt.app.scores as scores

    def evaluate(teacher, data, num_samples=5000, seed=0):
        from vmt.core.api import backend_of

        return {"ebm": {}, "samples": backend_of(teacher).to_numpy(teacher.sample(num_samples, rng=seed))}
    mp.setattr(scores, "evaluate", evaluate)
    mp.setattr(scores, "_pictures", lambda *a: None)
    mp.setattr(runs.plots, "plot_history", lambda *a, **k: None)


@pytest.fixture(scope="module")
def reference(backend, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        cheap_evaluation(mp)
        out = tmp_path_factory.mktemp("ref") / backend
        train(out, backend)
        return fingerprint(out)


POINTS = ["checkpoint:2", "run-json:2", "publish:2", "published:2", "samples", "publish:4"]  # 4th: the evaluation


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_anywhere_leaves_a_readable_run_that_resumes_exactly(backend, reference, point, tmp_path,
                                                                   monkeypatch):
    out = tmp_path / "run"
    cheap_evaluation(monkeypatch)
    kill_at(monkeypatch, point)
    with pytest.raises(Killed):
        train(out, backend)
    monkeypatch.undo()
    cheap_evaluation(monkeypatch)
    manifest = RunFolder(out).published()  # every listed file matches its hash
    it = runs.load_run(out)[3].iteration
    assert it == manifest["iteration"] and ITERS - EVERY <= it + EVERY  # at most EVERY iterations lost
    runs.resume_run(out, progress=False, eval_samples=100)
    assert leftovers(out) == []
    assert RunFolder(out).published()["stage"] == "evaluated"
    assert_same(fingerprint(out), reference)


def test_real_kills_in_a_subprocess(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    cheap_evaluation(monkeypatch)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for point, iteration in [("checkpoint:2", 2), ("run-json:2", 2), ("samples", 6)]:
        out = tmp_path / point.replace(":", "")
        r = subprocess.run([sys.executable, "-m", "vmt", "train", "--backend", "pyro", "--out", str(out), *SMALL],
                           env=dict(env, VMT_FAULT=point), capture_output=True, text=True)
        assert r.returncode == 77, r.stderr
        m = RunFolder(out).published()
        assert m["iteration"] == iteration and m["stage"] in ("training", "trained")
        assert runs.load_run(out)[3].iteration == iteration
        assert leftovers(out)  # the killed writer's partial generation ...
        runs.resume_run(out, progress=False, eval_samples=100)
        assert leftovers(out) == []  # ... is gone after the next start
        assert RunFolder(out).published()["iteration"] == ITERS


def test_evaluate_recovers_a_damaged_metrics_file(tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    cheap_evaluation(monkeypatch)
    out = tmp_path / "run"
    train(out, "pyro")
    target = (out / "metrics.json").resolve()
    target.write_text("{")  # damaged after publishing
    from vmt.app.cli import main

    assert main(["sample", str(out), "-n", "3", "--out", str(tmp_path / "s.npy")]) == 0  # needs no metrics
    assert main(["evaluate", str(out), "--eval-samples", "50"]) == 0
    assert "metrics.json does not match the manifest" in capsys.readouterr().err
    RunFolder(out).published()
    (out / "checkpoint.ckpt").resolve().write_bytes(b"garbage")
    assert main(["sample", str(out), "-n", "3"]) == 2
    assert "checkpoint.ckpt does not match the manifest" in capsys.readouterr().err


def test_one_writer_at_a_time(tmp_path, capsys, monkeypatch):
    """A second writer is refused while another process holds the lock; a crash releases it."""
    pytest.importorskip("torch")
    cheap_evaluation(monkeypatch)
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from vmt.app.runfolder import RunLock; "
         "lock = RunLock(sys.argv[1], 'vmt train'); print('locked', flush=True); time.sleep(60)", str(out)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusyError, match=rf"{out} is in use by pid {holder.pid} \(vmt train\)"):
            train(out, "pyro")
        from vmt.app.cli import main

        assert main(["evaluate", str(out)]) == 2  # no run yet: refused before the lock
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    train(out, "pyro")  # the killed holder's lock is gone
    assert RunFolder(out).published()["stage"] == "evaluated"


TORCH_FULL = ("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: file "
              "write failed\nframe #0: c10::ThrowEnforceNotMet(...)")


def fail_second_checkpoint_write(monkeypatch, backend, disk_full=True):
    """Make the 2nd checkpoint write fail as a full disk does: torch's writer error, or ``ENOSPC`` for numpyro."""
    import errno

    module = __import__(f"{backend}_vmt.checkpoint", fromlist=["x"])
    name = "torch" if backend == "pyro" else "np"
    lib = getattr(module, name)
    real = lib.save if backend == "pyro" else lib.savez
    calls = {"n": 0}

    def writer(f, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"half an archive")  # a partial write, then the failure
            if backend == "pyro":
                raise RuntimeError(TORCH_FULL)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, *args, **kw) if backend == "numpyro" else real(args[0], f, **kw)

    class Library:  # the backend's torch or numpy, with its writer replaced
        def __getattr__(self, attr):
            return getattr(lib, attr)

    proxy = Library()
    if backend == "pyro":  # torch.save(payload, f): the file comes second
        proxy.save = lambda obj, f, **kw: writer(f, obj, **kw)
    else:
        proxy.savez = writer
    monkeypatch.setattr(module, name, proxy)
    free = 0 if disk_full else 1 << 30
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": free})())


@pytest.mark.parametrize("disk_full", [True, False], ids=["full", "io-error"])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_last_generation(backend, disk_full, tmp_path,
                                                                              capsys, monkeypatch):
    if backend == "numpyro" and not disk_full:
        pytest.skip("an OSError keeps its own errno: only torch's writer error needs the disk check")
    from vmt.app.cli import main

    cheap_evaluation(monkeypatch)
    fail_second_checkpoint_write(monkeypatch, backend, disk_full)
    out = tmp_path / "run"
    code = main(["train", "--backend", backend, "--out", str(out), *SMALL])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    cause = "no space left on device" if disk_full else "write failed ([enforce fail at inline_container.cc:664]"
    assert f"vmt train: error: cannot write '{out / 'gen-0002.tmp' / 'checkpoint.ckpt'}': {cause}" in err, err
    assert f"{out} keeps its last published generation (iteration {EVERY}, stage 'training')" in err, err
    assert leftovers(out) == [] and not list(out.glob("gen-*.tmp"))
    assert RunFolder(out).published()["iteration"] == EVERY
    assert runs.load_run(out)[3].iteration == EVERY
