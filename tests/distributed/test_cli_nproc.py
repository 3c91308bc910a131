"""``vmt train --nproc N``: the pyro backend restarts the command under torchrun (without
``--nproc``, which torchrun's own parser would take), the numpyro backend asks JAX for N
devices and names the flag that makes them on a CPU."""

import subprocess

import pytest

from vmt.app import cli


def test_pyro_nproc_starts_torchrun_without_the_flag(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, *args, **kwargs):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    argv = ["train", "--backend", "pyro", "--nproc", "3", "--iters", "2", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    cmd = seen["cmd"]
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3"]
    assert cmd[5:] == ["-m", "vmt", "train", "--backend", "pyro", "--iters", "2", "--out", str(tmp_path)]


def test_pyro_nproc_reports_a_failed_torchrun(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(cli.subprocess, "run", lambda cmd, *a, **k: subprocess.CompletedProcess(cmd, 1))
    assert cli.main(["train", "--backend", "pyro", "--nproc=2", "--out", str(tmp_path)]) == 2
    assert "torchrun exited with an error" in capsys.readouterr().err


def test_numpyro_nproc_needs_that_many_devices(tmp_path, capsys):
    pytest.importorskip("jax")
    import jax

    n = jax.device_count() + 1
    assert cli.main(["train", "--backend", "numpyro", "--nproc", str(n), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"mesh={n} devices, but JAX sees {n - 1}" in err
    assert f"--xla_force_host_platform_device_count={n}" in err
