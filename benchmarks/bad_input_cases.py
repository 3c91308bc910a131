"""The fixtures and the command-line cases of ``bad_inputs.py`` (see there).

``World`` builds once what every case needs (teachers, checkpoints, data files, a
trained run per backend); ``cli_cases`` and ``subprocess_cases`` are the command-line
rows of the table, ``(backend, name, args, expect)``, with ``expect`` a regular
expression the one-line refusal must match, or ``OK`` for a valid input.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

BACKENDS = ("pyro", "numpyro")
OK = None  # the expectation of a valid input

# ---------------------------------------------------------------------- fixtures
class World:
    """What the cases need, built once: teachers, checkpoints, data files, a trained run per backend."""

    def __init__(self, tmp: Path):
        from vmt.core.api import load_backend

        self.tmp = tmp
        self.B = {b: load_backend(b) for b in BACKENDS}
        self.x = np.random.default_rng(0).normal(size=(50, 2)).astype(np.float32)
        self._teachers, self._runs, self._ckpts, self._saved_weight = {}, {}, {}, {}
        self.files = self._data_files()

    def teacher(self, b: str, **options):
        if options or b not in self._teachers:
            B = self.B[b]
            e_net, enc, dec = B.nets.default_networks((2,), 2, hidden=(8,), rng=0)
            t = B.VariationalMCMCTeaching(B.EnergyModel(e_net, (2,)), B.VAE(enc, dec, 2, (2,)), rng=0,
                                          **{"step_size": 0.05, "num_steps": 2, **options})
            if options:
                return t
            self._teachers[b] = t
        return self._teachers[b]

    def checkpoint(self, b: str) -> Path:
        if b not in self._ckpts:
            t = self.teacher(b)
            t.fit(self.x, 1, 10, progress=False)
            self._ckpts[b] = self.tmp / f"{b}.ckpt"
            t.save(self._ckpts[b])
            self._saved_weight[b] = self._first_weight(b).tobytes()
        return self._ckpts[b]

    def damaged(self, b: str, how: str) -> Path:
        raw = bytearray(self.checkpoint(b).read_bytes())
        path = self.tmp / f"{b}-{how}.ckpt"
        if how == "truncated":
            raw = raw[: len(raw) // 2]
        elif how == "flipped":
            raw[raw.find(self._saved_weight[b]) + 5] ^= 0x10  # inside the first energy weight
        elif how == "empty":
            raw = bytearray()
        elif how == "text":
            raw = bytearray(b"not a checkpoint")
        path.write_bytes(bytes(raw))
        if how == "nan":
            self._nan_weights(b, path)
        return path

    def _first_weight(self, b: str) -> np.ndarray:
        t = self.teacher(b)
        if b == "pyro":
            return next(t.energy.parameters()).detach().numpy()
        import jax

        return np.asarray(jax.tree.leaves(t.state.energy)[0])

    def _nan_weights(self, b: str, path: Path) -> None:
        """A checkpoint of valid format (checksum recomputed) whose first energy weight is NaN."""
        if b == "pyro":
            import torch

            from pyro_vmt.checkpoint import checksum

            payload = torch.load(path, weights_only=True)
            next(iter(payload["state"]["energy"].values())).view(-1)[0] = float("nan")
            payload["checksum"] = checksum({"state": payload["state"], "metadata": payload["metadata"]})
            torch.save(payload, path)
            return
        with np.load(path) as z:
            header, arrays = str(z["header"][()]), {k: z[k] for k in z.files if k != "header"}
        arrays["energy.0"] = arrays["energy.0"] * np.nan
        with open(path, "wb") as f:
            np.savez(f, header=np.array(header), **arrays)

    def run(self, b: str) -> Path:
        """A finished tiny run folder (metrics and plots stubbed out)."""
        if b not in self._runs:
            from vmt.app import runs
            from vmt.app.recipes import get_recipe

            out = self.tmp / f"run-{b}"
            recipe = get_recipe("grid25").replace(num_iters=2, batch_size=16, num_steps=2, hidden=(16,))
            with contextlib.redirect_stdout(io.StringIO()):
                runs.train_run("grid25", out, recipe, b, eval_samples=50, progress=False)
            self._runs[b] = out
        return self._runs[b]

    def _data_files(self) -> dict:
        d, f = self.tmp, {}
        rng = np.random.default_rng(0)
        good = rng.normal(size=(200, 2))
        f["ragged.csv"] = "1,2\n3,4,5\n6,7\n"
        f["nan.csv"] = "1,2\nnan,4\n5,6\n" * 20
        f["inf.csv"] = "1,2\ninf,4\n5,6\n" * 20
        f["text.csv"] = "1,2\na,b\n"
        f["empty.csv"] = ""
        f["onerow.csv"] = "1,2\n"
        for name, text in list(f.items()):
            (d / name).write_text(text)
            f[name] = d / name
        np.save(d / "big.npy", good * 1e39)
        np.save(d / "objects.npy", np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
        np.save(d / "nan.npy", np.where(np.arange(200)[:, None] == 3, np.nan, good))
        np.save(d / "strings.npy", np.array([["a", "b"]] * 20))
        np.save(d / "scalar.npy", np.array(3.0))
        np.save(d / "complex.npy", good.astype(np.complex64))
        np.savez(d / "two.npz", a=good, b=good)
        np.save(d / "small.npy", good[:30])
        (d / "afile").write_text("x")
        (d / "foreign").mkdir()
        (d / "foreign" / "thesis.tex").write_text("x")
        for name in ("big.npy", "objects.npy", "nan.npy", "strings.npy", "scalar.npy", "complex.npy", "two.npz",
                     "small.npy", "afile", "foreign"):
            f[name] = d / name
        return f


# ---------------------------------------------------------------------- the table
COUNT_VALUES = ["0", "-1", "nan", "inf", "abc", "2.5"]
COUNTS = {"num_steps", "buffer_size", "lr_decay_steps", "num_samples", "latent_dim", "num_iters", "batch_size"}
REAL_VALUES = ["0", "-1", "nan", "inf", "abc"]
# flag -> (minimum, words expected in its message) for counts
COUNT_FLAGS = {"--iters": 0, "--batch-size": 1, "--num-steps": 1, "--latent-dim": 1, "--eval-samples": 1,
               "--checkpoint-every": 0, "--threads": 0, "--seed": 0, "--nproc": 1}
# flag -> which of 0 is valid
REAL_FLAGS = {"--step-size": False, "--noise-scale": True, "--energy-lr": False, "--vae-lr": False,
              "--energy-reg": True, "--kl-weight": True, "--ref-scale": False, "--obs-scale": False,
              "--test-fraction": False}


def cli_cases(w: World) -> list:
    """``(backend, name, args, expect)`` of the command line (in this process)."""
    cases = []
    for b in BACKENDS:
        # a small run in case an input is (wrongly) accepted; each case's own options come after and win
        base = ["train", "--backend", b, "--quiet", "--out", w.tmp / f"never-{b}", "--iters", "1", "--eval-samples", "10"]
        for flag, minimum in COUNT_FLAGS.items():
            for v in COUNT_VALUES:
                valid = v == "0" and minimum == 0
                expect = OK if valid else re.escape(f"argument {flag}: must be")
                extra = ["--print-recipe"] if valid else []
                cases.append((b, f"train {flag} {v}", base + [flag, v] + extra, expect))
        for flag, zero_ok in REAL_FLAGS.items():
            for v in REAL_VALUES:
                valid = v == "0" and zero_ok
                expect = OK if valid else re.escape(f"argument {flag}: must")
                # a noise-free revision is valid for plain teaching only (the default recipe is exact)
                plain = ["--correction", "none"] if valid and flag == "--noise-scale" else []
                cases.append((b, f"train {flag} {v}" + (" --correction none" if plain else ""),
                              base + [flag, v] + plain + (["--print-recipe"] if valid else []), expect))
        cases.append((b, "train --noise-scale 0 (exact recipe)", base + ["--noise-scale", "0"],
                      re.escape("correction='mh' needs noise_scale > 0")))
        for v in ["0", "-1", "a,b", "", "8,,8", "2.5"]:
            cases.append((b, f"train --hidden {v!r}", base + ["--hidden", v], "argument --hidden: must be"))
        for v in ["0,0", "a", "28", "-1,4"]:
            cases.append((b, f"train --image-shape {v}", base + ["--image-shape", v], "argument --image-shape"))
        for s, words in [("step_size=-1", "step_size must be"), ("num_steps=2.5", "num_steps must be"),
                         ("betas=0.5", "betas must be"), ("grad_clip=nan", "grad_clip must be"),
                         ("buffer_size=0", "buffer_size must be"), ("reinit_prob=2", "reinit_prob must"),
                         ("lr_decay_steps=-1", "lr_decay_steps must"), ("correction=foo", "correction must"),
                         ("init=foo", "init must"), ("hidden=0", "hidden must"), ("latent_dim=abc", "latent_dim must"),
                         ("nonsense=1", "argument --set: must be KEY=VALUE"), ("num_iters=-5", "num_iters must"),
                         ("batch_size=0", "batch_size must"), ("init_bounds=1,-1", "init_bounds"),
                         ("noise_fraction=1.5", "noise_fraction must"), ("lr_final_ratio=2", "lr_final_ratio must"),
                         ("kl_weight=inf", "kl_weight must"), ("num_samples=-1", "num_samples must"),
                         ("step_size", "argument --set: must be KEY=VALUE")]:
            cases.append((b, f"train --set {s}", base + ["--set", s], re.escape(words)))
        f = w.files
        for name, words in [("ragged.csv", r"ragged\.csv.*(row|column|line)"), ("nan.csv", r"(NaN|non-finite|not finite)"),
                            ("inf.csv", r"(inf|non-finite|not finite)"), ("text.csv", r"text\.csv"),
                            ("empty.csv", r"empty\.csv.*(empty|no (data|rows))"), ("onerow.csv", r"(row|too few)"),
                            ("big.npy", r"float32"), ("objects.npy", r"(object|pickle)"),
                            ("nan.npy", r"(NaN|non-finite|not finite)"), ("strings.npy", r"(number|numeric|dtype)"),
                            ("scalar.npy", r"(shape|row|dimension)"), ("complex.npy", r"(complex|real)"),
                            ("two.npz", r"(array|one)"), ("afile", r"(extension|\.npy|format|suffix)")]:
            cases.append((b, f"train --data {name}", base + ["--data", f[name]], words))
        cases += [
            (b, "train --data missing.csv", base + ["--data", w.tmp / "missing.csv"], "does not exist"),
            (b, "train --data nosuchset", base + ["--data", "nosuchset"], "neither a built-in data set"),
            (b, "train --batch-size > file rows", base + ["--data", f["small.npy"], "--batch-size", "1000"],
             "larger than the training data"),
            (b, "train --batch-size > built-in rows", base + ["--batch-size", "20000"], "larger than the training data"),
            (b, "train --out a file", ["train", "--backend", b, "--out", f["afile"]], "is a file"),
            (b, "train --out a foreign folder", ["train", "--backend", b, "--out", f["foreign"]], "holds no vmt run"),
            (b, "train --task with --data", base + ["--task", "class", "--data", "digits"], "either --data"),
            (b, "train --init bogus", base + ["--init", "bogus"], "argument --init: invalid choice"),
            (b, "train --correction bogus", base + ["--correction", "bogus"], "argument --correction: invalid choice"),
            (b, "train --bogus", base + ["--bogus"], "unrecognized arguments: --bogus"),
            (b, "train --resume missing", ["train", "--resume", w.tmp / "nothing"], "does not exist"),
            (b, "train --resume with --step-size", ["train", "--resume", w.run(b), "--step-size", "0.1"],
             "cannot be combined"),
        ]
        run = w.run(b)
        for v in COUNT_VALUES:
            cases.append((b, f"sample -n {v}", ["sample", run, "-n", v], re.escape("argument -n/--num-samples: must")))
            if v != "0":
                cases.append((b, f"sample --num-steps {v}", ["sample", run, "--num-steps", v],
                              re.escape("argument --num-steps: must")))
                cases.append((b, f"sample --mh-steps {v}", ["sample", run, "--mh-steps", v],
                              re.escape("argument --mh-steps: must")))
                cases.append((b, f"sample --seed {v}", ["sample", run, "--seed", v], re.escape("argument --seed: must")))
            cases.append((b, f"evaluate --eval-samples {v}", ["evaluate", run, "--eval-samples", v],
                          re.escape("argument --eval-samples: must")))
        cases += [
            (b, "sample --out a folder", ["sample", run, "-n", "3", "--out", w.tmp], "(folder|directory)"),
            (b, "sample --out in a missing folder", ["sample", run, "-n", "3", "--out", w.tmp / "no" / "s.npy"],
             OK),
            (b, "sample of a missing run", ["sample", w.tmp / "nothing"], "does not exist"),
            (b, "sample of a non-run folder", ["sample", f["foreign"]], "not a vmt run folder"),
            (b, "sample of a file", ["sample", f["afile"]], "is a file"),
            (b, "evaluate of a missing run", ["evaluate", w.tmp / "nothing"], "does not exist"),
            (b, "sample --bogus", ["sample", run, "--bogus"], "unrecognized arguments"),
        ]
    cases.append(("cli", "no command", [], "required: command"))
    cases.append(("cli", "unknown command", ["fly"], "invalid choice: 'fly'"))
    return cases


def subprocess_cases(w: World) -> list:
    return [
        ("cli", "subprocess train --iters -5", ["train", "--iters", "-5"], "--iters: must be"),
        ("cli", "subprocess train --bogus", ["train", "--bogus"], "unrecognized arguments"),
        ("cli", "subprocess sample -n 0", ["sample", w.tmp / "x", "-n", "0"], "must be a positive integer"),
        ("pyro", "subprocess train --data objects.npy", ["train", "--backend", "pyro", "--out", w.tmp / "sp",
                                                         "--data", w.files["objects.npy"]], "(object|pickle)"),
        ("numpyro", "subprocess train --data big.npy", ["train", "--backend", "numpyro", "--out", w.tmp / "sp",
                                                        "--data", w.files["big.npy"]], "float32"),
    ]
