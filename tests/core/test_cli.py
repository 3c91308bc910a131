"""The ``vmt`` command line end to end on a small budget (torch backend)."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pyro")

from vmt.app.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--backend", "pyro", "--data", "grid25", "--out", str(out), "--iters", "3",
                 "--batch-size", "16", "--num-steps", "2", "--eval-samples", "200", "--quiet"]) == 0
    return out


def test_train_writes_checkpoint_metrics_and_pictures(run):
    for name in ["checkpoint.ckpt", "run.json", "metrics.json", "samples.npy", "samples.png",
                 "energy.png", "history.png"]:
        assert (run / name).stat().st_size > 0, name
    m = json.loads((run / "metrics.json").read_text())
    assert m["backend"] == "pyro" and m["iterations"] == 3 and m["train_seconds"] > 0
    assert {"modes_covered", "high_quality_fraction", "heldout_log_likelihood", "mmd"} <= set(m["ebm"])
    assert 0 <= m["ebm"]["modes_covered"] <= 25 and "vae" in m
    assert np.load(run / "samples.npy").shape == (200, 2)
    assert json.loads((run / "run.json").read_text())["recipe"]["num_iters"] == 3


def test_sample_and_evaluate_from_the_run(run, tmp_path):
    out = tmp_path / "s.npy"
    assert main(["sample", str(run), "-n", "7", "--num-steps", "1", "--out", str(out)]) == 0
    assert np.load(out).shape == (7, 2)
    assert main(["sample", str(run), "-n", "5", "--num-steps", "0", "--out", str(out)]) == 0
    assert main(["evaluate", str(run), "--eval-samples", "100"]) == 0
    assert json.loads((run / "metrics.json").read_text())["iterations"] == 3


def test_digits_run(tmp_path):
    assert main(["train", "--backend", "pyro", "--data", "digits", "--out", str(tmp_path), "--iters", "2",
                 "--batch-size", "8", "--num-steps", "2", "--eval-samples", "64", "--quiet"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {"frechet", "precision", "recall", "frechet_floor"} <= set(m["ebm"])
    assert (tmp_path / "digits.png").exists()


def test_corrected_run_reports_the_estimated_likelihood(tmp_path):
    assert main(["train", "--backend", "pyro", "--data", "grid25", "--out", str(tmp_path), "--iters", "3",
                 "--batch-size", "16", "--num-steps", "2", "--eval-samples", "100", "--correction", "mh",
                 "--stale-paths", "--local-steps", "0", "--quiet"]) == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    recipe = json.loads((tmp_path / "run.json").read_text())["recipe"]["config"]
    assert recipe["correction"] == "mh" and recipe["path_refresh"] is False
    est = m["ebm"]["estimate"]
    assert np.isfinite(m["ebm"]["estimated_log_likelihood"]) and est["log_partition_se"] >= 0
    assert np.isfinite(m["ebm"]["heldout_log_likelihood"])  # quadrature beside it in 2-D
    assert main(["sample", str(tmp_path), "-n", "6", "--mh-steps", "2", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (6, 2)


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--backend", "pyro", "--out", str(tmp_path), "--step-size", "-1", "--quiet"]) == 2
    assert "argument --step-size: must be a positive" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "missing")]) == 2


def test_device_is_recorded_and_an_absent_one_is_a_clear_error(run, tmp_path, capsys):
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert json.loads((run / "run.json").read_text())["device"].startswith(expected)
    assert main(["sample", str(run), "-n", "3", "--device", "cpu", "--out", str(tmp_path / "c.npy")]) == 0
    if not torch.cuda.is_available():
        assert main(["sample", str(run), "-n", "3", "--device", "cuda"]) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "3", "--device", "abacus"]) == 2
    assert "--device abacus" in capsys.readouterr().err


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_run_resumes_on_the_cpu(tmp_path):
    out = tmp_path / "gpu"
    assert main(["train", "--backend", "pyro", "--device", "cuda", "--out", str(out), "--iters", "3",
                 "--batch-size", "16", "--num-steps", "2", "--eval-samples", "200", "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["device"].startswith("cuda")
    assert main(["evaluate", str(out), "--device", "cpu", "--eval-samples", "100"]) == 0
