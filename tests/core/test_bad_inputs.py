"""Every bad input is refused where it enters, in one line naming the problem, and creates nothing.

Table-driven: command-line cases (through ``main``, and a few through a real
subprocess for the exit status and the absence of a traceback) and API cases in
both backends. Each row expects a specific message.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmt.app.cli import main

ROOT = Path(__file__).resolve().parents[2]


def cli(args, capsys):
    """``(exit status, stderr)`` of ``vmt args`` run in this process."""
    return main(args), capsys.readouterr().err


TRAIN_CASES = [
    (["--iters", "-5"], "argument --iters: must be a non-negative integer, got -5"),
    (["--iters", "2.5"], "argument --iters: must be an integer, got '2.5'"),
    (["--hidden", "0"], "argument --hidden: must be comma-separated positive layer widths"),
    (["--hidden", "-1"], "argument --hidden: must be comma-separated positive layer widths"),
    (["--hidden", "a,b"], "argument --hidden: must be comma-separated positive layer widths"),
    (["--step-size", "-1"], "argument --step-size: must be a positive finite number, got -1.0"),
    (["--step-size", "nan"], "argument --step-size: must be a positive finite number, got nan"),
    (["--eval-samples", "0"], "argument --eval-samples: must be a positive integer, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be a positive integer, got 0"),
    (["--batch-size", "20000"], "batch_size 20000 is larger than the training data (10000 rows)"),
    (["--seed", "-1"], "argument --seed: must be a non-negative int, got -1"),
    (["--set", "nonsense=1"], "argument --set: must be KEY=VALUE with KEY one of"),
    (["--set", "grad_clip=-3"], "grad_clip must be a positive finite number, got -3"),
    (["--set", "betas=0.5,2"], "betas must lie in [0, 1), got 2"),
    (["--data", "nosuchset"], "--data 'nosuchset' is neither a built-in data set"),
    (["--data", "missing.csv"], "does not exist"),
    (["--task", "class", "--data", "digits"], "choose either --data (unconditional) or --task"),
    (["--checkpoint-every", "-2"], "argument --checkpoint-every: must be a non-negative integer"),
    (["--test-fraction", "1"], "argument --test-fraction: must lie in (0, 1), got 1.0"),
]


@pytest.mark.parametrize("args, message", TRAIN_CASES, ids=[" ".join(a) for a, _ in TRAIN_CASES])
def test_train_refuses_bad_options_before_creating_anything(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    code, err = cli(["train", "--backend", "pyro", "--out", str(out), "--quiet", *args], capsys)
    assert code == 2
    assert message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_out_that_is_a_file_or_a_foreign_folder(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = cli(["train", "--backend", "pyro", "--out", str(afile)], capsys)
    assert code == 2 and "is a file, not a folder" in err
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    code, err = cli(["train", "--backend", "pyro", "--out", str(tmp_path / "mine")], capsys)
    assert code == 2 and "is not empty and holds no vmt run (thesis.tex)" in err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]


def test_run_folder_errors(tmp_path, capsys):
    assert cli(["sample", str(tmp_path / "missing")], capsys) == (2, f"vmt sample: error: {tmp_path / 'missing'} "
                                                                  "does not exist\n")
    code, err = cli(["sample", str(tmp_path), "-n", "0"], capsys)
    assert code == 2 and "argument -n/--num-samples: must be a positive integer, got 0" in err
    code, err = cli(["evaluate", str(tmp_path), "--eval-samples", "0"], capsys)
    assert code == 2 and "argument --eval-samples: must be a positive integer, got 0" in err
    code, err = cli(["train", "--resume", str(tmp_path)], capsys)
    assert code == 2 and "holds no run to resume" in err
    code, err = cli(["train", "--resume", str(tmp_path), "--step-size", "0.1"], capsys)
    assert code == 2 and "--step-size cannot be combined with it" in err
    # an old-style run folder (no manifest) whose run.json lacks "data"
    (tmp_path / "run.json").write_text(json.dumps({"backend": "pyro", "seed": 0, "recipe": {}}))
    (tmp_path / "checkpoint.ckpt").write_bytes(b"")
    code, err = cli(["sample", str(tmp_path)], capsys)
    assert code == 2 and "run.json lacks data or task (exactly one)" in err and "Traceback" not in err


def test_version_and_help_show_recipe_defaults(capsys):
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("vmt (pyro-vmt) ")
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "[recipe default: grid25 0.04, digits 0.02]" in text and "--no-adjust" in text and "``" not in text
    from vmt.app.cli import _parser

    for action in _parser()._subparsers._group_actions[0].choices["train"]._actions:
        assert action.help, action.option_strings


def test_subprocess_errors_are_one_line_with_status_2(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    for args, message in [(["train", "--iters", "-5"], "--iters: must be a non-negative integer"),
                          (["train", "--backend", "pyro", "--step-size", "0", "--out", str(tmp_path / "o")],
                           "--step-size: must be a positive finite number")]:
        r = subprocess.run([sys.executable, "-m", "vmt", *args], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- the API, both backends
@pytest.fixture(params=["pyro", "numpyro"])
def backend(request):
    from vmt.core.api import load_backend

    pytest.importorskip("torch" if request.param == "pyro" else "jax")
    return load_backend(request.param)


@pytest.fixture
def teacher(backend):
    e_net, enc, dec = backend.nets.default_networks((2,), 2, hidden=(8,), rng=0)
    return backend.VariationalMCMCTeaching(backend.EnergyModel(e_net, (2,)), backend.VAE(enc, dec, 2, (2,)),
                                           rng=0, step_size=0.05, num_steps=2)


API_CASES = [
    ("sample(2.5)", lambda t, x: t.sample(2.5), "n must be a positive integer, got 2.5"),
    ("sample(0)", lambda t, x: t.sample(0), "n must be a positive integer, got 0"),
    ("fit batch_size > rows", lambda t, x: t.fit(x, 1, batch_size=10 ** 9, progress=False),
     "batch_size 1000000000 is larger than the data (50 rows)"),
    ("fit num_iters=-1", lambda t, x: t.fit(x, -1, 10, progress=False), "num_iters must be a non-negative integer"),
    ("fit NaN row", lambda t, x: t.fit(np.where(np.arange(50)[:, None] == 7, np.nan, x), 1, 10, progress=False),
     "(first: row 7)"),
    # found by benchmarks/bad_inputs.py
    ("fit no rows", lambda t, x: t.fit(x[:0], 1, 10, progress=False), "data has no rows (shape (0, 2))"),
    ("fit object array", lambda t, x: t.fit(x.astype(object), 1, 10, progress=False),
     "data must hold floating-point numbers, got dtype object"),
    ("fit strings", lambda t, x: t.fit(np.full((50, 2), "a"), 1, 10, progress=False),
     "data must hold floating-point numbers, got dtype <U1"),
    ("fit ragged list", lambda t, x: t.fit([[1.0, 2.0], [3.0]], 1, 1, progress=False),
     "data cannot be read as an array of numbers"),
    ("fit float64 1e39", lambda t, x: t.fit(x.astype(np.float64) * 1e39, 1, 10, progress=False),
     "data has values too large for the model's dtype float32 (they overflow to infinity"),
    ("sample(rng=-1)", lambda t, x: t.sample(3, rng=-1), "rng must be a non-negative int seed, got -1"),
    ("sample(rng=2.5)", lambda t, x: t.sample(3, rng=2.5), "or an int seed, got float"),
    ("unknown option", lambda t, x: type(t)(t.energy, t.vae, bogus=1), "unknown option bogus; the options are init,"),
    ("energy=None", lambda t, x: type(t)(None), "energy must be a "),
]


@pytest.mark.parametrize("what, call, message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_refuses_bad_numbers(teacher, what, call, message):
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    with pytest.raises(ValueError) as e:
        call(teacher, x)
    assert message in str(e.value)
    assert teacher.iteration == 0


def test_an_energy_net_returning_integers_is_named(backend):
    """Before: a RuntimeError deep in autograd (torch) or a wrong dot product (JAX) at the first step."""
    if backend.__name__ == "pyro_vmt":
        import torch

        class IntNet(torch.nn.Module):
            def forward(self, v):
                return v.sum(-1).round().long()
        energy, x = backend.EnergyModel(IntNet(), (2,)), torch.zeros(3, 2)
    else:
        import equinox as eqx
        import jax.numpy as jnp

        class IntNet(eqx.Module):
            def __call__(self, v):
                return jnp.round(v.sum(-1)).astype(jnp.int32)
        energy, x = backend.EnergyModel(IntNet(), (2,)), jnp.zeros((3, 2))
    with pytest.raises(ValueError, match=r"the energy network must return floating-point energies, got dtype int"):
        energy(x)


def test_a_save_into_a_file_s_place_is_one_line(teacher, tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OSError, match=r"cannot write .*afile/ck.*: its folder cannot be used") as e:
        teacher.save(tmp_path / "afile" / "ck")
    assert "\n" not in str(e.value)


def test_api_accepts_array_library_scalars(teacher, backend, tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
    teacher.fit(x, np.int64(1), np.int32(10), progress=False)
    assert teacher.sample(np.int64(3)).shape[0] == 3
    from vmt.app.recipes import Recipe
    from vmt.core.config import TeachingConfig

    r = Recipe(latent_dim=np.int32(2), hidden=(np.int64(8),), kl_weight=np.float32(1.0), num_iters=np.int64(3),
               config=TeachingConfig(step_size=np.float32(0.1), num_steps=np.int16(2)))
    assert r.num_iters == 3 and type(r.num_iters) is int and r.hidden == (8,)
    with pytest.raises(ValueError, match=r"num_iters must be a non-negative integer, got -5"):
        Recipe(num_iters=-5)
    with pytest.raises(ValueError, match=r"hidden must be one or more positive layer widths"):
        Recipe(hidden=(0,))


def test_exact_recipes_turn_plain_with_correction_none(capsys):
    """ring8's recipe is exact teaching; ``--correction none`` drops its MH-only options with
    it (unless given, when the clash is an error that names them), and an init the
    correction cannot use says how to turn it off."""
    def recipe(*args):
        assert main(["train", "--data", "ring8", "--print-recipe", *args]) == 0
        return json.loads(capsys.readouterr().out)["config"]

    exact = recipe()
    assert exact["correction"] == "mh" and exact["local_steps"] == 10 and exact["path_anneal"] is True
    plain = recipe("--correction", "none")
    assert plain["correction"] is None and plain["local_steps"] == 0 and plain["path_anneal"] is False
    assert plain["step_size"] == exact["step_size"] and recipe("--set", "correction=none")["local_steps"] == 0
    code, err = cli(["train", "--data", "ring8", "--correction", "none", "--local-steps", "3"], capsys)
    assert code == 2 and "local_steps=3 needs correction='mh'" in err
    code, err = cli(["train", "--data", "ring8", "--init", "persistent"], capsys)
    assert code == 2 and "--correction none" in err
