"""Data-parallel teaching in JAX: a 4-device mesh gives the parameters of one device.

The mesh needs several devices, and XLA fixes the number of CPU devices when JAX starts,
so the run is a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(``jax_worker.py``); the rest of the suite keeps one device.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("jax_worker.py"))], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


# float32: the sums over the batch and the chains run in another order on 4 devices,
# so the parameters agree to a few ulps of the float32 relative precision (1.2e-7)
# after three Adam steps; a shard that used other random draws, or a gradient that was
# summed instead of averaged, moves them by 1e-3 or more.
TOL = 2e-6


def test_four_devices_give_the_parameters_of_one(result):
    assert result["devices"] == 4
    assert result["fit_vae"] < TOL          # fit: minibatch and VAE chains drawn inside the jitted iteration
    assert result["fit_loss"] < TOL
    assert result["step_persistent"] < TOL  # step: given batch, 32 chains from a replay buffer
    assert result["conditional"] < TOL      # the context is split with its rows


def test_exact_teaching_on_four_devices_gives_the_numbers_of_one(result):
    # correction="mh": the persistent chains move as on one device, and so do the parameters;
    # conditionally one replicated chain per training row, each device moving its rows' block
    for key in ("mh", "mh_chains", "conditional_mh", "conditional_mh_chains"):
        assert result[key] < TOL, key
    gap, acceptance = result["conditional_mh_acceptance"]
    assert gap < 1e-6 and 0 < acceptance < 1  # the same accept decisions, and both kinds happened


def test_parameters_are_replicated_on_every_device(result):
    assert result["replicated"]


def test_checkpoints_move_between_sharded_and_single_device_runs(result):
    assert result["checkpoint_iteration"] == 4
    assert result["checkpoint"] < TOL


def test_bad_configurations_are_named(result):
    assert "batch size is 6" in result["err_batch"] and "multiple of 4" in result["err_batch"]
    assert "batch_size is 10" in result["err_fit_batch"]
    assert "num_samples" in result["err_chains"] and "is 6" in result["err_chains"]
    assert "no 'data' axis" in result["err_axis"]
    assert "JAX sees 4" in result["err_count"] and "xla_force_host_platform_device_count=8" in result["err_count"]
