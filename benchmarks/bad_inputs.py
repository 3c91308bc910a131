"""Probe both backends with a table of bad inputs; classify what each one gets back.

Every case runs a bad (or a tricky but valid) input through the API of a backend
(`VariationalMCMCTeaching`, ``fit``, ``sample``, ``save``, ``load``, `Langevin`,
`LangevinKernel`, `TeachingConfig`, `Recipe`, the data-file reader) or through the
command line (``vmt.app.cli.main`` in this process; a few through a real
``python -m vmt`` subprocess for the exit status and the absence of a traceback).
Each outcome is classified automatically:

- ``clear``: refused with a project error type, ``ValueError``, ``OSError`` raised by
  the project's own code, or a non-zero exit, in one line that holds the table's
  expected words;
- ``deep``: any other exception type, an exception raised inside torch/jax/numpy, a
  multi-line message or a traceback;
- ``silent``: accepted although it should have been refused;
- ``misleading``: refused in one line that lacks the expected words (or a valid input
  refused);
- ``ok``: a valid input accepted.

Numeric options are generated systematically: each count flag and argument with
``0, -1, nan, inf, abc, 2.5`` and each real with ``0, -1, nan, inf, abc``.
Writes ``benchmarks/results/bad_inputs.json`` (one row per case, counts per class and
backend).

    python benchmarks/bad_inputs.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import common  # noqa: E402  (before jax: it fixes the thread counts)

import numpy as np  # noqa: E402

from bad_input_cases import BACKENDS, COUNTS, OK, World, cli_cases, subprocess_cases  # noqa: E402
CLASSES = ("clear", "deep", "silent", "misleading", "ok")


# ---------------------------------------------------------------------- classification
def _project_frame(tb) -> bool:
    """Whether the innermost frame of a traceback lies in this repository (not in a library)."""
    frames = traceback.extract_tb(tb)
    return bool(frames) and frames[-1].filename.startswith(str(ROOT)) and "site-packages" not in frames[-1].filename


def classify_exception(e: BaseException, expect) -> tuple:
    text = str(e).strip()
    if isinstance(e, SystemExit):
        return ("misleading" if expect is OK else "clear"), f"SystemExit({e.code})"
    allowed = isinstance(e, (ValueError, FloatingPointError, OSError))
    if not allowed or not _project_frame(e.__traceback__) or "\n" in text or not text:
        return "deep", f"{type(e).__name__}: {text[:300]}"
    return _judge_line(text, expect), f"{type(e).__name__}: {text}"


def _judge_line(text: str, expect) -> str:
    if expect is OK:
        return "misleading"
    return "clear" if re.search(expect, text) else "misleading"


def run_api(fn, expect) -> tuple:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except BaseException as e:  # noqa: BLE001 - every outcome is a finding
        if isinstance(e, KeyboardInterrupt):
            raise
        return classify_exception(e, expect)
    return ("ok" if expect is OK else "silent"), "accepted"


def run_cli(args, expect) -> tuple:
    from vmt.app.cli import main

    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main([str(a) for a in args])
    except BaseException as e:  # noqa: BLE001 - an exception out of main is a traceback for the user
        if isinstance(e, KeyboardInterrupt):
            raise
        return "deep", f"{type(e).__name__} escaped main: {str(e)[:300]}"
    return _judge_exit(code, err.getvalue(), expect)


def _judge_exit(code: int, err: str, expect) -> tuple:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if code == 0:
        return ("ok" if expect is OK else "silent"), "exit 0"
    if len(lines) != 1 or "Traceback" in err:
        return "deep", f"exit {code}: {' | '.join(lines[-3:])[:400]}"
    return _judge_line(lines[0], expect), f"exit {code}: {lines[0]}"


def run_subprocess(args, expect) -> tuple:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-m", "vmt", *map(str, args)], capture_output=True, text=True, env=env)
    return _judge_exit(r.returncode, r.stderr, expect)


def api_cases(w: World) -> list:
    """``(backend, name, fn, expect)`` of the API."""
    import jax.numpy as jnp
    import torch

    from vmt.app.recipes import Recipe
    from vmt.core.config import TeachingConfig

    cases = []
    numbers = {"0": 0, "-1": -1, "nan": float("nan"), "inf": float("inf"), "abc": "abc", "2.5": 2.5, "None": None}
    scalars = {"np.float32": lambda v: np.float32(v), "np.float64": lambda v: np.float64(v),
               "torch": lambda v: torch.tensor(v), "jnp": lambda v: jnp.float32(v)}
    ints = {"np.int64": lambda v: np.int64(v), "np.int32": lambda v: np.int32(v),
            "torch": lambda v: torch.tensor(v), "jnp": lambda v: jnp.int32(v)}
    for b in BACKENDS:
        B, x = w.B[b], w.x
        T = lambda b=b: w.teacher(b)  # noqa: E731
        for k, v in numbers.items():
            cases.append((b, f"sample({k})", lambda v=v, T=T: T().sample(v), r"\bn must be a positive integer"))
            if k != "0":  # (0 Langevin steps: the VAE's samples; mh_steps=0: none; None: the default)
                cases.append((b, f"sample(num_steps={k})", lambda v=v, T=T: T().sample(3, num_steps=v),
                              OK if k == "None" else "num_steps must be"))
                if k != "None":
                    cases.append((b, f"sample(mh_steps={k})", lambda v=v, T=T: T().sample(3, mh_steps=v),
                                  "mh_steps must be"))
                cases.append((b, f"sample(rng={k})", lambda v=v, T=T: T().sample(3, rng=v),
                              OK if k == "None" else "rng must be"))
            cases.append((b, f"fit(num_iters={k})", lambda v=v, T=T: T().fit(x, v, 10, progress=False),
                          "num_iters must be") if k != "0" else
                         (b, "fit(num_iters=0)", lambda T=T: T().fit(x, 0, 10, progress=False), OK))
            cases.append((b, f"fit(batch_size={k})", lambda v=v, T=T: T().fit(x, 1, v, progress=False),
                          "batch_size must be"))
        for name, make in ints.items():
            cases.append((b, f"sample({name} 3)", lambda make=make, T=T: T().sample(make(3)), OK))
            cases.append((b, f"fit(num_iters={name} 1)", lambda make=make, T=T: T().fit(x, make(1), 10, progress=False),
                          OK))
        bad_data = {
            "NaN row": (np.where(np.arange(50)[:, None] == 7, np.nan, x), r"row 7"),
            "inf row": (np.where(np.arange(50)[:, None] == 9, np.inf, x), r"row 9"),
            "float64 1e39": (x.astype(np.float64) * 1e39, "float32"),
            "wrong width": (np.zeros((50, 3), np.float32), r"(shape|event_shape|\(2,\))"),
            "1-D": (np.zeros(50, np.float32), r"(shape|event_shape|\(2,\))"),
            "no rows": (np.zeros((0, 2), np.float32), r"(no rows|empty|0 rows|larger than)"),
            "object array": (np.array([[{"a": 1}, 2]] * 50, dtype=object), r"(object|number|numeric|dtype)"),
            "strings": (np.array([["a", "b"]] * 50), r"(number|numeric|dtype|str)"),
            "complex": (x.astype(np.complex64), r"(complex|real)"),
            "batch_size > rows": (x, r"larger than the data \(50 rows\)"),
        }
        for name, (data, words) in bad_data.items():
            bs = 10 ** 6 if "batch_size" in name else 10
            cases.append((b, f"fit data {name}", lambda data=data, bs=bs, T=T: T().fit(data, 1, bs, progress=False),
                          words))
        cases.append((b, "fit data list of lists", lambda T=T: T().fit(x.tolist(), 1, 10, progress=False), OK))
        cases.append((b, "fit data float64 normal", lambda T=T: T().fit(x.astype(np.float64), 1, 10, progress=False),
                      OK))
        # the teacher's own numbers
        for opt, zero_ok in [("step_size", False), ("noise_scale", True), ("energy_lr", False), ("vae_lr", False),
                             ("energy_reg", True), ("num_steps", False)]:
            for k, v in numbers.items():
                if k == "None" or (k == "0" and zero_ok) or (k == "2.5" and opt not in COUNTS):
                    continue
                cases.append((b, f"teacher({opt}={k})", lambda opt=opt, v=v, b=b: w.teacher(b, **{opt: v}),
                              f"{opt} must"))
        for name, make in scalars.items():
            cases.append((b, f"teacher(step_size={name} 0.05)", lambda make=make, b=b: w.teacher(
                b, step_size=make(0.05)), OK))
        cases += [
            (b, "teacher(init='bogus')", lambda b=b: w.teacher(b, init="bogus"), "init must"),
            (b, "teacher(bogus=1)", lambda b=b: w.teacher(b, bogus=1), "bogus"),
            (b, "teacher(rng=-1)", lambda T=T, B=B: B.VariationalMCMCTeaching(T().energy, T().vae, rng=-1), "(seed|rng) must"),
            (b, "teacher(energy=None)", lambda B=B: B.VariationalMCMCTeaching(None), "energy"),
            (b, "teacher(adjust=True, noise_scale=0)", lambda b=b: w.teacher(b, adjust=True, noise_scale=0),
             "noise_scale > 0"),
        ]
        # Langevin and its kernel
        pot = (lambda z: (z ** 2).sum(-1) / 2)
        for opt, zero_ok in [("step_size", False), ("num_steps", False), ("noise_scale", True)]:
            for k, v in numbers.items():
                if k == "None" or (k == "0" and zero_ok) or (k == "2.5" and opt not in COUNTS):
                    continue
                kw = {"step_size": 0.1, **{opt: v}}
                cases.append((b, f"Langevin({opt}={k})", lambda kw=kw, B=B: B.Langevin(pot, **kw), f"{opt} must"))
        for name, make in scalars.items():
            cases.append((b, f"Langevin(step_size={name} 0.1)", lambda make=make, B=B: B.Langevin(pot, make(0.1)), OK))
            cases.append((b, f"LangevinKernel(step_size={name} 0.1)",
                          lambda make=make, B=B: B.LangevinKernel(potential_fn=pot, step_size=make(0.1)), OK))
        for k in ("0", "-1", "nan", "inf", "abc"):
            cases.append((b, f"LangevinKernel(step_size={k})",
                          lambda v=numbers[k], B=B: B.LangevinKernel(potential_fn=pot, step_size=v), "step_size must"))
        for k, v in [("0", 0.0), ("1.5", 1.5), ("nan", float("nan"))]:
            cases.append((b, f"LangevinKernel(target_accept_prob={k})",
                          lambda v=v, B=B: B.LangevinKernel(potential_fn=pot, target_accept_prob=v), "target_accept_prob"))
        cases.append((b, "LangevinKernel() without model or potential", lambda B=B: B.LangevinKernel(),
                      "(model|potential_fn)"))
        cases.append((b, "LangevinKernel(adjust, noise_scale=0)",
                      lambda B=B: B.LangevinKernel(potential_fn=pot, adjust=True, noise_scale=0), "noise_scale > 0"))
        # an energy net that returns integers
        cases.append((b, "energy net returning integers", lambda b=b: _integer_energy(w, b), "(integer|float)"))
        # checkpoints
        other = "numpyro" if b == "pyro" else "pyro"
        cases += [
            (b, "load the other backend's checkpoint", lambda T=T, o=other: T().load(w.checkpoint(o)),
             f"written by the '{other}' backend"),
            (b, "load a truncated checkpoint", lambda T=T, b=b: T().load(w.damaged(b, "truncated")),
             "(truncated|not a complete)"),
            (b, "load a checkpoint with a flipped byte", lambda T=T, b=b: T().load(w.damaged(b, "flipped")),
             "(checksum|CRC|damaged|cannot read)"),
            (b, "load a checkpoint with NaN weights", lambda T=T, b=b: T().load(w.damaged(b, "nan")), "non-finite"),
            (b, "load an empty file", lambda T=T, b=b: T().load(w.damaged(b, "empty")), "(not a complete|cannot read)"),
            (b, "load a text file", lambda T=T, b=b: T().load(w.damaged(b, "text")), "(not a complete|cannot read)"),
            (b, "load a missing file", lambda T=T: T().load(w.tmp / "missing.ckpt"), "no checkpoint file"),
            (b, "load a folder", lambda T=T: T().load(w.tmp), "(folder|directory|not a complete|cannot read)"),
            (b, "load into other widths", lambda b=b: _other_widths(w, b).load(w.checkpoint(b)), "does not match"),
            (b, "save under a file", lambda T=T: T().save(w.files["afile"] / "ck"), "(afile|Not a directory|cannot)"),
            (b, "save to a folder", lambda T=T: T().save(w.tmp), "(folder|directory|cannot write)"),
        ]
        cases.append((b, "load_file objects.npy", lambda: _load_file(w.files["objects.npy"]), "(object|pickle)"))
    # backend-neutral configuration
    for field, zero_ok in [("step_size", False), ("num_steps", False), ("noise_scale", True), ("energy_lr", False),
                           ("vae_lr", False), ("energy_reg", True), ("buffer_size", False), ("reinit_prob", True),
                           ("noise_fraction", True), ("lr_decay_steps", False), ("grad_clip", False),
                           ("num_samples", False), ("lr_final_ratio", True)]:
        for k, v in numbers.items():
            if (k == "0" and zero_ok) or (k == "2.5" and field not in COUNTS) or (k == "None" and field in ("lr_decay_steps", "grad_clip", "num_samples")):
                continue
            cases.append(("core", f"TeachingConfig({field}={k})", lambda f=field, v=v: TeachingConfig(**{f: v}),
                          f"{field} must"))
    for field in ("latent_dim", "num_iters", "batch_size", "kl_weight"):
        for k, v in numbers.items():
            if (k == "0" and field in ("num_iters", "kl_weight")) or (k == "2.5" and field not in COUNTS):
                continue
            cases.append(("core", f"Recipe({field}={k})", lambda f=field, v=v: Recipe(**{f: v}), f"{field} must"))
    for name, v in [("(0,)", (0,)), ("(-1,)", (-1,)), ("'a,b'", "a,b"), ("()", ()), ("(2.5,)", (2.5,))]:
        cases.append(("core", f"Recipe(hidden={name})", lambda v=v: Recipe(hidden=v), "hidden must"))
    for name, make in {**scalars}.items():
        cases.append(("core", f"TeachingConfig(step_size={name} 0.1)",
                      lambda make=make: TeachingConfig(step_size=make(0.1)), OK))
    cases.append(("core", "TeachingConfig(betas=(0.5, 2))", lambda: TeachingConfig(betas=(0.5, 2)), "betas must"))
    cases.append(("core", "TeachingConfig(init_bounds=(1, -1))", lambda: TeachingConfig(init_bounds=(1, -1)),
                  "init_bounds"))
    cases.append(("core", "TeachingConfig(correction='foo')", lambda: TeachingConfig(correction="foo"),
                  "correction must"))
    return cases


def _integer_energy(w: World, b: str):
    B = w.B[b]
    e_net, enc, dec = B.nets.default_networks((2,), 2, hidden=(8,), rng=0)
    if b == "pyro":
        import torch

        class IntNet(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(2, 1)

            def forward(self, x):
                return self.lin(x).squeeze(-1).round().long()
        net = IntNet()
    else:
        import equinox as eqx
        import jax
        import jax.numpy as jnp

        class IntNet(eqx.Module):
            lin: eqx.nn.Linear

            def __call__(self, x):
                return jnp.round(jax.vmap(self.lin)(x)[:, 0]).astype(jnp.int32)
        net = IntNet(eqx.nn.Linear(2, 1, key=jax.random.PRNGKey(0)))
    t = B.VariationalMCMCTeaching(B.EnergyModel(net, (2,)), B.VAE(enc, dec, 2, (2,)), rng=0, step_size=0.05,
                                  num_steps=2)
    t.fit(w.x, 1, 10, progress=False)


def _other_widths(w: World, b: str):
    B = w.B[b]
    e_net, enc, dec = B.nets.default_networks((2,), 2, hidden=(4,), rng=0)
    return B.VariationalMCMCTeaching(B.EnergyModel(e_net, (2,)), B.VAE(enc, dec, 2, (2,)), rng=0, step_size=0.05,
                                     num_steps=2)


def _load_file(path):
    from vmt.data.files import load_file

    return load_file(path)


# ---------------------------------------------------------------------- main
def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "bad_inputs.json")
    p.add_argument("--no-subprocess", action="store_true", help="skip the few real `python -m vmt` cases")
    args = p.parse_args()
    common.setup(args)
    meta = common.meta(args, children=True)
    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bad_inputs_") as tmp:
        w = World(Path(tmp))
        table = [("api", *c) for c in api_cases(w)] + [("cli", *c) for c in cli_cases(w)]
        if not args.no_subprocess:
            table += [("subprocess", *c) for c in subprocess_cases(w)]
        if args.quick:
            table = table[::10]
        for via, backend, name, what, expect in table:
            t0 = time.perf_counter()
            runner = {"api": run_api, "cli": run_cli, "subprocess": run_subprocess}[via]
            outcome, got = runner(what, expect)
            rows.append({"via": via, "backend": backend, "case": name, "expect": "accept" if expect is OK else expect,
                         "outcome": outcome, "got": got, "seconds": round(time.perf_counter() - t0, 3)})
            if outcome not in ("clear", "ok"):
                print(f"{outcome:10s} {backend:8s} {name}: {got}", flush=True)
    summary = {"cases": len(rows), "seconds": round(time.perf_counter() - start, 1),
               "by_class": {c: sum(r["outcome"] == c for r in rows) for c in CLASSES},
               "by_backend": {b: {c: sum(r["outcome"] == c and r["backend"] == b for r in rows) for c in CLASSES}
                              for b in sorted({r["backend"] for r in rows})}}
    print(json.dumps(summary, indent=1))
    common.finish({"meta": meta, "summary": summary, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
