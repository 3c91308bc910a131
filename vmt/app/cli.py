"""The ``vmt`` command line: ``vmt train``, ``vmt sample``, ``vmt evaluate``.

Parsing and checking only: every number is checked where it enters (one line, exit
status 2, nothing created on disk), then every command goes through
[`vmt.app.runs`][vmt.app.runs].
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from vmt.app.recipes import PLAIN, RECIPES, Recipe, get_recipe
from vmt.app.runs import CHECKPOINT_EVERY, evaluate_folder, load_run, resume_run, train_run
from vmt.core.api import BACKENDS, backend_of, default_backend
from vmt.core.checks import as_count, as_real, as_seed
from vmt.core.config import INITS, TeachingConfig
from vmt.data import DENSITIES
from vmt.data.files import is_data_file
from vmt.data.tasks import TASKS

__all__ = ["main"]

DATASETS = sorted(DENSITIES) + ["digits"]
DESCRIPTION = ("Variational MCMC teaching: train an energy-based model with a VAE as amortised Langevin sampler "
               "(vmt train), draw samples from a trained run (vmt sample), recompute its metrics (vmt evaluate).")

# command-line flag -> Recipe / TeachingConfig field
_OVERRIDES = {
    "iters": "num_iters", "batch_size": "batch_size", "latent_dim": "latent_dim",
    "ref_scale": "ref_scale", "obs_scale": "obs_scale", "kl_weight": "kl_weight",
    "init": "init", "step_size": "step_size", "num_steps": "num_steps",
    "noise_scale": "noise_scale", "energy_lr": "energy_lr", "vae_lr": "vae_lr",
    "energy_reg": "energy_reg", "adjust": "adjust", "hidden": "hidden", "correction": "correction",
    "local_steps": "local_steps",
}
_FIELDS = [f.name for f in dataclasses.fields(Recipe) if f.name != "config"] + \
    [f.name for f in dataclasses.fields(TeachingConfig)]


class _Parser(argparse.ArgumentParser):
    """Errors in one line (``vmt train: error: ...``), exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------- types: the checks of vmt.core.checks
def _type(check: Callable[[Any], Any], parse: Callable[[str], Any] = float, what: str = "a number"):
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        try:
            return check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).split(" must ", 1)[-1].join(["must ", ""])) from None
    convert.__name__ = what  # argparse names the type in its messages
    return convert


def _count(name: str, minimum: int = 1):
    return _type(lambda v: as_count(name, v, minimum), int, "an integer")


def _real(name: str, **bounds: Any):
    return _type(lambda v: as_real(name, v, **bounds))


def _optional_real(name: str, none_word: str):
    def parse(text: str) -> Any:
        return None if text.lower() in (none_word, "none") else float(text)
    return _type(lambda v: None if v is None else as_real(name, v, low=0, low_open=True), parse,
                 f"a positive number or {none_word!r}")


def _widths(text: str) -> tuple:
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated positive layer widths, e.g. 128,128; got {text!r}")
    return widths


def _image_shape(text: str) -> tuple:
    try:
        shape = tuple(int(w) for w in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"must be H,W (two positive integers), e.g. 28,28; got {text!r}")
    return shape


def _setting(text: str) -> tuple:
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or key not in _FIELDS:
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE with KEY one of {', '.join(_FIELDS)}; got {text!r}")
    raw = raw.strip()
    if raw.lower() in ("none", "null", "learned"):
        return key, None
    try:
        value = json.loads(raw.lower() if raw.lower() in ("true", "false") else raw)
    except ValueError:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
    return key, tuple(value) if isinstance(value, list) else value


def _default(field: str) -> str:
    """The recipe defaults of a field, shown in ``--help``."""
    def get(r: Recipe) -> Any:
        return getattr(r, field) if hasattr(r, field) else getattr(r.config, field)
    groups: Dict[str, list] = {}
    for name, recipe in RECIPES.items():
        groups.setdefault(str(get(recipe)), []).append(name)
    if len(groups) == 1:
        return f" [recipe default: {next(iter(groups))}]"
    if len(groups) > 2:  # one value per data set (e.g. the step size): the two ends of the range
        return f" [recipe default: grid25 {get(RECIPES['grid25'])}, digits {get(RECIPES['digits'])}]"
    return " [recipe default: " + "; ".join(f"{', '.join(names)} {value}" for value, names in groups.items()) + "]"


def _parser() -> argparse.ArgumentParser:
    from vmt import __version__

    p = _Parser(prog="vmt", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"vmt (pyro-vmt) {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=_count("--threads", 0), default=1,
                        help="torch intra-op threads (default 1: the small default networks run fastest on one "
                             "thread, and a multi-threaded torch slows down by orders of magnitude on a busy "
                             "machine; 0 keeps torch's default)")
    common.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1, gpu, ... (default: a GPU when the backend sees one, else the CPU)")

    t = sub.add_parser("train", parents=[common], description="Train an EBM with a VAE as amortised sampler and "
                       "write a run folder (checkpoints, run.json, metrics, samples, pictures).",
                       help="train an EBM with a VAE as amortised sampler")
    g = t.add_argument_group("what to train")
    g.add_argument("--backend", choices=sorted(BACKENDS), default=None, help="default: the first installed of "
                   "pyro, numpyro")
    g.add_argument("--data", default=None, metavar="NAME|FILE",
                   help=f"a built-in data set ({', '.join(DATASETS)}; default grid25) or your own .npy, .npz or "
                        ".csv file, one point per row (its recipe then comes from the data; vmt train prints it)")
    g.add_argument("--task", choices=TASKS, default=None,
                   help="a supervised task instead of --data: conditional EBM + conditional VAE")
    g.add_argument("--test-fraction", type=_real("--test-fraction", low=0, high=1, low_open=True, high_open=True),
                   default=0.2, help="for a data file: the fraction of rows held out for evaluation (default 0.2)")
    g.add_argument("--image-shape", type=_image_shape, default=None, metavar="H,W",
                   help="for a data file: its rows are H×W images (a convolutional energy, image pictures)")
    g.add_argument("--seed", type=_type(as_seed, int, "a non-negative integer"), default=0,
                   help="seed of the data split, the networks and training (default 0)")
    o = t.add_argument_group("the run folder")
    o.add_argument("--out", type=Path, default=None, help="a new or empty folder (default runs/<data>-<backend>)")
    o.add_argument("--checkpoint-every", type=_count("--checkpoint-every", 0), default=None,
                   metavar="N", help=f"publish a checkpoint every N iterations; a kill loses at most N "
                                     f"(default {CHECKPOINT_EVERY}, or the resumed run's own; 0: only at the end)")
    o.add_argument("--resume", type=Path, default=None, metavar="RUN",
                   help="continue RUN from its last checkpoint with its own recipe, data and seed (the result "
                        "equals the uninterrupted run's), then evaluate it")
    o.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    o.add_argument("--eval-samples", type=_count("--eval-samples"), default=5000,
                   help="samples drawn for the metrics (default 5000)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument("--print-recipe", action="store_true", help="print the recipe these options give and stop")
    r = t.add_argument_group("the recipe (default: the data set's or task's own; see --print-recipe)")
    r.add_argument("--iters", default=argparse.SUPPRESS, type=_count("--iters", 0), help="training iterations" + _default("num_iters"))
    r.add_argument("--batch-size", default=argparse.SUPPRESS, type=_count("--batch-size"), help="data rows per iteration" + _default("batch_size"))
    r.add_argument("--init", default=argparse.SUPPRESS, choices=INITS, help="where Langevin chains start: vae (VMT), noise (short-run EBM), "
                   "persistent (replay buffer), generator (CoopNets); --task accepts vae, noise, generator"
                   + _default("init"))
    r.add_argument("--step-size", default=argparse.SUPPRESS, type=_real("--step-size", low=0, low_open=True),
                   help="Langevin step size δ" + _default("step_size"))
    r.add_argument("--num-steps", default=argparse.SUPPRESS, type=_count("--num-steps"), help="Langevin steps K per revision"
                   + _default("num_steps"))
    r.add_argument("--noise-scale", default=argparse.SUPPRESS, type=_real("--noise-scale", low=0),
                   help="1 is Langevin, 0 the noise-free revision of the reference code" + _default("noise_scale"))
    r.add_argument("--adjust", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="Metropolis-adjusted steps (MALA); --no-adjust turns them off" + _default("adjust"))
    r.add_argument("--correction", default=argparse.SUPPRESS, choices=["none", "mh"],
                   help="mh: exact Metropolis-Hastings teaching, persistent chains accept whole proposal paths"
                   + _default("correction"))
    r.add_argument("--stale-paths", action="store_true",
                   help="with --correction mh: keep the current states' path terms instead of refreshing them "
                        "(cheaper, exact only for a fixed energy)")
    r.add_argument("--anneal-paths", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                   help="with --correction mh: anneal each proposal path from its start Gaussian to the energy"
                   + _default("path_anneal"))
    r.add_argument("--local-steps", default=argparse.SUPPRESS, type=_count("--local-steps", 0),
                   help="with --correction mh: MALA steps on the chains between the path tests"
                   + _default("local_steps"))
    r.add_argument("--energy-lr", default=argparse.SUPPRESS, type=_real("--energy-lr", low=0, low_open=True),
                   help="Adam learning rate of the energy" + _default("energy_lr"))
    r.add_argument("--vae-lr", default=argparse.SUPPRESS, type=_real("--vae-lr", low=0, low_open=True), help="Adam learning rate of the VAE"
                   + _default("vae_lr"))
    r.add_argument("--energy-reg", default=argparse.SUPPRESS, type=_real("--energy-reg", low=0), help="weight of the energy-magnitude penalty"
                   + _default("energy_reg"))
    r.add_argument("--ref-scale", default=argparse.SUPPRESS, type=_optional_real("--ref-scale", "none"),
                   help="scale of the energy's Gaussian reference term, or none" + _default("ref_scale"))
    r.add_argument("--obs-scale", default=argparse.SUPPRESS, type=_optional_real("--obs-scale", "learned"),
                   help="the VAE's observation scale, or learned" + _default("obs_scale"))
    r.add_argument("--kl-weight", default=argparse.SUPPRESS, type=_real("--kl-weight", low=0), help="weight of the KL term of the ELBO"
                   + _default("kl_weight"))
    r.add_argument("--latent-dim", default=argparse.SUPPRESS, type=_count("--latent-dim"), help="the VAE's latent dimension"
                   + _default("latent_dim"))
    r.add_argument("--hidden", default=argparse.SUPPRESS, type=_widths, help="hidden widths of the MLPs, e.g. 128,128" + _default("hidden"))
    r.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE",
                   help="any other recipe or TeachingConfig field, e.g. --set noise_fraction=0.1 --set "
                        "grad_clip=10 --set betas=0.9,0.999 --set lr_decay_steps=none (repeatable); fields: "
                        + ", ".join(_FIELDS))
    t.add_argument("--nproc", type=_count("--nproc"), default=None, metavar="N",
                   help="data-parallel teaching on N devices, the batch split over them (docs/scaling.md): "
                        "numpyro, N devices of this process; pyro, N processes started with torchrun "
                        "(gloo on CPU, nccl on GPU; checkpoints then only at the end)")

    s = sub.add_parser("sample", parents=[common], description="Draw samples from a trained run.",
                       help="draw samples from a trained run")
    s.add_argument("run", type=Path, help="the --out folder of vmt train")
    s.add_argument("-n", "--num-samples", type=_count("-n/--num-samples"), default=1000,
                   help="how many (default 1000); for a --task run: one y for each of the first n test inputs "
                        "x (cycled)")
    s.add_argument("--num-steps", type=_count("--num-steps", 0), default=None,
                   help="Langevin steps (default the recipe's; 0: the VAE's samples)")
    s.add_argument("--mh-steps", type=_count("--mh-steps", 0), default=0,
                   help="exact samples: accept tests of independence-sampler chains on whole proposal paths "
                        "(default 0: none)")
    s.add_argument("--seed", type=_type(as_seed, int, "a non-negative integer"), default=0, help="default 0")
    s.add_argument("--out", type=Path, default=None, help="default: <run>/samples-<seed>.npy")

    e = sub.add_parser("evaluate", parents=[common], description="Recompute the metrics, samples and pictures "
                       "of a run from its checkpoint (also after an interrupted or damaged run).",
                       help="recompute metrics.json of a trained run")
    e.add_argument("run", type=Path)
    e.add_argument("--eval-samples", type=_count("--eval-samples"), default=5000, help="default 5000")
    return p


def _recipe_from_args(args: argparse.Namespace, name: str) -> Optional[Recipe]:
    changes = {field: getattr(args, flag) for flag, field in _OVERRIDES.items() if hasattr(args, flag)}
    if args.stale_paths:
        changes["path_refresh"] = False
    if hasattr(args, "anneal_paths"):
        changes["path_anneal"] = args.anneal_paths
    changes.update(dict(args.set))
    if "correction" in changes and changes["correction"] in (None, "none"):
        # plain teaching on a recipe with exact teaching: its MH-only options go too, unless given
        changes = {**PLAIN, **changes, "correction": None}
    if is_data_file(name):
        if not changes:
            return None  # the data's own recipe (vmt.app.recipes.recipe_for_data), chosen after loading
        from vmt.app.recipes import recipe_for_data
        from vmt.app.runs import load_data

        base, why = recipe_for_data(load_data(name, args.seed, args.test_fraction, args.image_shape))
        print(f"vmt train: {why}; changed: {', '.join(f'{k}={v}' for k, v in changes.items())}")
    else:
        base = get_recipe(name)
    return base.replace(**changes)


def _train(args: argparse.Namespace) -> None:
    if args.resume is not None:
        given = [f"--{k.replace('_', '-')}" for k in ("data", "task", "backend", "out", "overwrite", "print_recipe")
                 if getattr(args, k) not in (None, False)]
        given += [f"--{k.replace('_', '-')}" for k in _OVERRIDES if hasattr(args, k)]
        given += ["--set"] if args.set else []
        given += ["--stale-paths"] if args.stale_paths else []
        given += ["--(no-)anneal-paths"] if hasattr(args, "anneal_paths") else []
        given += ["--nproc"] if args.nproc else []
        if given:
            raise ValueError(f"--resume continues a run with its own data, recipe and seed; {', '.join(given)} "
                             "cannot be combined with it (start a new run instead)")
        metrics = resume_run(args.resume, args.device, args.threads, not args.quiet, args.eval_samples,
                             args.checkpoint_every)
        _print_summary(metrics)
        return
    if args.task and args.data:
        raise ValueError("choose either --data (unconditional) or --task (supervised), not both")
    name = args.task or args.data or "grid25"
    if not (name in TASKS or name in DATASETS or is_data_file(name)):
        raise ValueError(f"--data {name!r} is neither a built-in data set ({', '.join(DATASETS)}) nor a file "
                         "ending in .npy, .npz or .csv")
    recipe = _recipe_from_args(args, name)
    if args.print_recipe:
        print(json.dumps(recipe.to_dict() if recipe else "the data's own recipe, printed by vmt train", indent=2))
        return
    backend = args.backend or default_backend()
    out = args.out or Path("runs") / f"{Path(name).stem if is_data_file(name) else name}-{backend}"
    nproc = args.nproc
    if backend == "pyro" and "LOCAL_RANK" in os.environ:  # one rank of torchrun: every rank teaches
        nproc = int(os.environ["WORLD_SIZE"])
    elif nproc and backend == "pyro":
        return _torchrun(args, out)
    metrics = train_run(name, out, recipe, backend, args.seed, args.device, args.threads, progress=not args.quiet,
                        eval_samples=args.eval_samples,
                        checkpoint_every=CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every,
                        overwrite=args.overwrite, test_fraction=args.test_fraction, image_shape=args.image_shape,
                        nproc=nproc)
    if metrics:  # the other ranks of a torchrun write nothing
        _print_summary(metrics)
    return out


def _torchrun(args: argparse.Namespace, out: Path) -> Path:
    """``vmt train --nproc N`` with the pyro backend: the same command on N ranks, started by torchrun."""
    argv, skip = [], False
    for a in args.argv:  # the ranks learn N from torchrun (and its parser would take --nproc for its own)
        if not skip and not a.startswith("--nproc"):
            argv.append(a)
        skip = a == "--nproc"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
           "-m", "vmt", *argv]
    if subprocess.run(cmd).returncode:
        raise ValueError(f"torchrun exited with an error: {' '.join(cmd)}")
    return out


def _print_summary(metrics: Dict[str, Any]) -> None:
    seconds = metrics.get("train_seconds", float("nan"))
    print(f"trained in {seconds:.1f}s" + (":" if "ebm" in metrics else ""), end="")
    if "ebm" in metrics:
        keys = ["modes_covered", "high_quality_fraction", "heldout_log_likelihood", "estimated_log_likelihood",
                "mode_mass_kl", "mmd", "frechet", "precision", "recall"]
        print(" " + ", ".join(f"{k}={metrics['ebm'][k]:.4g}" for k in keys if k in metrics["ebm"]))
    else:
        print()
        for name, row in metrics.get("rows", {}).items():
            print(f"  {name:32s} " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))


def _sample(args: argparse.Namespace) -> None:
    path = args.out or args.run / f"samples-{args.seed}.npy"
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder; give a file name such as {path / 'samples.npy'}")
    meta, data, _, teacher = load_run(args.run, args.threads, args.device)
    if "task" in meta:  # one y for each of the first n test inputs, cycled
        what = data.x_test[np.arange(args.num_samples) % len(data.x_test)]
    else:
        what = args.num_samples
    extra = {"mh_steps": args.mh_steps} if args.mh_steps else {}
    x = backend_of(teacher).to_numpy(teacher.sample(what, num_steps=args.num_steps, rng=args.seed, **extra))
    from vmt.core.checkpoint import atomic_write

    atomic_write(path, lambda f: np.save(f, x))
    print(f"wrote {x.shape[0]} samples to {path}")


def _evaluate(args: argparse.Namespace) -> None:
    _print_summary(evaluate_folder(args.run, args.eval_samples, args.threads, args.device))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``vmt argv``; returns the exit status (0 done, 2 a refused input, 130 interrupted)."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a refused option (its one line already printed)
        return e.code if isinstance(e.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        {"train": _train, "sample": _sample, "evaluate": _evaluate}[args.command](args)
    except (ValueError, ImportError, FileNotFoundError, FloatingPointError, OSError) as e:
        print(f"vmt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vmt {args.command}: interrupted; the run folder keeps its last published checkpoint "
              "(vmt train --resume RUN continues it)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
