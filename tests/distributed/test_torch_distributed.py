"""Data-parallel teaching in Torch: 2 gloo ranks give the parameters of one process fed
the same random draws (rank r's generator, ``rank_seed(seed, r)``, for block r).

The ranks are started by ``torch.multiprocessing.spawn`` in a subprocess
(``torch_worker.py``), so no process group outlives it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("torch_worker.py"))], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_two_ranks_give_the_parameters_of_one_process(result):
    # float64: the all-reduce sums two blocks in another order than one process does
    assert result["vs_one_device"] < 1e-12
    assert result["ranks_agree"] == 0.0            # every rank takes the same step
    assert result["persistent_ranks_agree"] == 0.0
    assert result["plain_differs"] > 1e-3          # rank 1's draws are not the plain run's
    assert result["loss_finite"]


def test_checkpoint_holds_every_rank_and_resumes(result):
    assert result["ckpt_buffer_rows"] == 64 and result["ckpt_rank_rngs"] == 2
    assert all(o["resumed"] == 0.0 for o in result["rank_outputs"])
    # one process loads it: the whole buffer, and a warning that its RNG cannot continue
    assert result["single_buffer_rows"] == 64
    assert "generators of 2 ranks and this run has 1" in result["single_load_warning"]


def test_exact_teaching_shards_the_chains(result):
    """correction="mh" on a mesh: each rank moves its 16 of the 32 chains, the ranks take
    the same parameter step and report the same diagnostics (averaged over the ranks),
    the checkpoint holds all 32 and resumes bit for bit, and one process can load it and
    train on."""
    assert result["mh_ranks_agree"] == 0.0
    for out in result["rank_outputs"]:
        assert out["mh_chain_rows"] == 16 and out["mh_resumed"] == 0.0
        assert 0.0 <= out["mh_diagnostics"][0] <= 1.0 and out["mh_diagnostics"][1] > 0
    rank0, rank1 = result["rank_outputs"]
    assert rank0["mh_diagnostics"] == rank1["mh_diagnostics"]
    assert result["mh_ckpt_chain_rows"] == 32 and result["mh_single_chain_rows"] == 32


def test_exact_conditional_teaching_keeps_each_ranks_rows(result):
    """Conditional correction="mh" on a mesh: rank r keeps the chains of its block of the
    40 training rows (20 each) and draws its half of every minibatch from them; the ranks
    take the same parameter step, the checkpoint holds all 40 chains and resumes bit for
    bit (a checkpoint that mixed up the blocks would not), one process loads it and trains
    on, and a number of rows that does not split is named."""
    assert result["cmh_ranks_agree"] == 0.0
    for out in result["rank_outputs"]:
        assert out["cmh_chain_rows"] == 20 and out["cmh_resumed"] == 0.0
        assert 0.0 <= out["cmh_acceptance"] <= 1.0
        assert "39 training pairs" in out["cmh_err_rows"] and "multiple of 2" in out["cmh_err_rows"]
    assert result["cmh_ckpt_chain_rows"] == 40 and result["cmh_single_chain_rows"] == 40


def test_divergence_on_one_rank_stops_both(result):
    rank0, rank1 = result["rank_outputs"]
    assert "1 of 2 ranks failed" in rank0["err_divergence"]
    assert "Langevin diverged (test)" in rank1["err_divergence"]
    assert rank0["moved_after_divergence"] == rank1["moved_after_divergence"] == 0.0


def test_bad_configurations_are_named(result):
    for out in result["rank_outputs"]:
        assert "batch size is 5" in out["err_batch"] and "multiple of 2" in out["err_batch"]
        assert "batch_size is 7" in out["err_fit"]
        assert "no 'data' dimension" in out["err_axis"]
        assert out["err_rng"].startswith("TypeError") and "int seed" in out["err_rng"]
