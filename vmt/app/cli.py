"""The ``vmt`` command line: ``vmt train``, ``vmt sample``, ``vmt evaluate``.

``vmt train`` with no arguments trains on the built-in 25-Gaussian grid with
whichever backend is installed and writes a run folder (see :mod:`vmt.app.runs`);
``vmt train --task completion|class|regression1d`` trains the conditional variant on a
built-in supervised task instead. Parsing only: every command goes through
:mod:`vmt.app.runs`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from vmt.app.recipes import get_recipe
from vmt.app.runs import evaluate_run, load_run, train_run
from vmt.core.api import BACKENDS, backend_of, default_backend
from vmt.data import DENSITIES
from vmt.data.tasks import TASKS

__all__ = ["main"]

DATASETS = sorted(DENSITIES) + ["digits"]

# command-line flag -> Recipe / TeachingConfig field
_OVERRIDES = {
    "iters": "num_iters", "batch_size": "batch_size", "latent_dim": "latent_dim",
    "ref_scale": "ref_scale", "obs_scale": "obs_scale", "kl_weight": "kl_weight",
    "init": "init", "step_size": "step_size", "num_steps": "num_steps",
    "noise_scale": "noise_scale", "energy_lr": "energy_lr", "vae_lr": "vae_lr",
    "energy_reg": "energy_reg",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vmt", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the small default networks run "
                             "fastest on one thread, and a multi-threaded torch slows down by orders "
                             "of magnitude on a busy machine; 0 keeps torch's default)")
    common.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1, gpu, ... (default: a GPU when the backend sees one, "
                             "else the CPU)")

    t = sub.add_parser("train", parents=[common], help="train an EBM with a VAE as amortised sampler")
    t.add_argument("--backend", choices=sorted(BACKENDS), default=None,
                   help="default: the first installed of pyro, numpyro")
    t.add_argument("--data", choices=DATASETS, default=None, help="default: grid25")
    t.add_argument("--task", choices=TASKS, default=None,
                   help="a supervised task instead of --data: conditional EBM + conditional VAE")
    t.add_argument("--out", type=Path, default=None, help="default: runs/<data or task>-<backend>")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--iters", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--init", choices=["vae", "noise", "persistent", "generator"],
                   help="--task accepts vae, noise, generator")
    t.add_argument("--step-size", type=float)
    t.add_argument("--num-steps", type=int)
    t.add_argument("--noise-scale", type=float)
    t.add_argument("--adjust", action="store_true", help="Metropolis-adjusted steps (MALA)")
    t.add_argument("--correction", choices=["none", "mh"], default=None,
                   help="mh: exact Metropolis-Hastings teaching, persistent chains accept whole "
                        "proposal paths (default: the recipe's)")
    t.add_argument("--stale-paths", action="store_true",
                   help="with --correction mh: keep the current states' path terms instead of "
                        "refreshing them (cheaper, exact only for a fixed energy)")
    t.add_argument("--anneal-paths", action="store_true",
                   help="with --correction mh: anneal each proposal path from its start Gaussian to the energy")
    t.add_argument("--energy-lr", type=float)
    t.add_argument("--vae-lr", type=float)
    t.add_argument("--energy-reg", type=float)
    t.add_argument("--ref-scale", type=float)
    t.add_argument("--obs-scale", type=float)
    t.add_argument("--kl-weight", type=float)
    t.add_argument("--latent-dim", type=int)
    t.add_argument("--hidden", type=str, help="hidden widths, e.g. 128,128")
    t.add_argument("--eval-samples", type=int, default=5000)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--nproc", type=int, default=None,
                   help="data-parallel teaching on N devices, the batch split over them (docs/scaling.md): "
                        "numpyro, N devices of this process; pyro, N processes started with torchrun "
                        "(gloo on CPU, nccl on GPU)")

    s = sub.add_parser("sample", parents=[common], help="draw samples from a trained run")
    s.add_argument("run", type=Path, help="the --out folder of vmt train")
    s.add_argument("-n", "--num-samples", type=int, default=1000,
                   help="for a --task run: one y for each of the first n test inputs x (cycled)")
    s.add_argument("--num-steps", type=int, default=None, help="Langevin steps (0: the VAE's samples)")
    s.add_argument("--mh-steps", type=int, default=0,
                   help="exact samples: accept tests of independence-sampler chains on whole proposal paths")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", type=Path, default=None, help="default: <run>/samples-<seed>.npy")

    e = sub.add_parser("evaluate", parents=[common], help="recompute metrics.json of a trained run")
    e.add_argument("run", type=Path)
    e.add_argument("--eval-samples", type=int, default=5000)
    return p


def _recipe_from_args(args: argparse.Namespace, name: str):
    recipe = get_recipe(name)
    changes = {field: getattr(args, flag) for flag, field in _OVERRIDES.items()
               if getattr(args, flag) is not None}
    if args.adjust:
        changes["adjust"] = True
    if args.correction is not None:
        changes["correction"] = None if args.correction == "none" else args.correction
    if args.stale_paths:
        changes["path_refresh"] = False
    if args.anneal_paths:
        changes["path_anneal"] = True
    if args.hidden:
        changes["hidden"] = tuple(int(h) for h in args.hidden.split(","))
    return recipe.replace(**changes)


def _train(args: argparse.Namespace) -> Path:
    if args.task and args.data:
        raise ValueError("choose either --data (unconditional) or --task (supervised), not both")
    name = args.task or args.data or "grid25"
    backend = args.backend or default_backend()
    out = args.out or Path("runs") / f"{name}-{backend}"
    nproc = args.nproc
    if backend == "pyro" and "LOCAL_RANK" in os.environ:  # one rank of torchrun: every rank teaches
        nproc = int(os.environ["WORLD_SIZE"])
    elif nproc and backend == "pyro":
        return _torchrun(args, out)
    metrics = train_run(name, out, _recipe_from_args(args, name), backend, args.seed, args.device, args.threads,
                        progress=not args.quiet, eval_samples=args.eval_samples, nproc=nproc)
    if metrics:  # the other ranks of a torchrun write nothing
        _print_summary(metrics)
    return out


def _torchrun(args: argparse.Namespace, out: Path) -> Path:
    """``vmt train --nproc N`` with the pyro backend: the same command on N ranks, started by torchrun."""
    if args.nproc < 1:
        raise ValueError(f"--nproc must be a positive number of processes, got {args.nproc}")
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
    print(f"trained in {metrics['train_seconds']:.1f}s" + (":" if "ebm" in metrics else ""), end="")
    if "ebm" in metrics:
        keys = ["modes_covered", "high_quality_fraction", "heldout_log_likelihood", "estimated_log_likelihood",
                "mmd", "frechet", "precision", "recall"]
        print(" " + ", ".join(f"{k}={metrics['ebm'][k]:.4g}" for k in keys if k in metrics["ebm"]))
    else:
        print()
        for name, row in metrics["rows"].items():
            print(f"  {name:32s} " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))


def _sample(args: argparse.Namespace) -> Path:
    meta, data, _, teacher = load_run(args.run, args.threads, args.device)
    if "task" in meta:  # one y for each of the first n test inputs, cycled
        what = data.x_test[np.arange(args.num_samples) % len(data.x_test)]
    else:
        what = args.num_samples
    extra = {"mh_steps": args.mh_steps} if args.mh_steps else {}
    x = backend_of(teacher).to_numpy(teacher.sample(what, num_steps=args.num_steps, rng=args.seed, **extra))
    path = args.out or args.run / f"samples-{args.seed}.npy"
    np.save(path, x)
    print(f"wrote {x.shape[0]} samples to {path}")
    return path


def _evaluate(args: argparse.Namespace) -> Path:
    meta, data, recipe, teacher = load_run(args.run, args.threads, args.device)
    metrics = evaluate_run(teacher, data, recipe, meta["seed"], args.run, args.eval_samples)
    metrics.setdefault("train_seconds", float("nan"))
    _print_summary(metrics)
    return args.run / "metrics.json"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        {"train": _train, "sample": _sample, "evaluate": _evaluate}[args.command](args)
    except (ValueError, ImportError, FileNotFoundError, FloatingPointError) as e:
        print(f"vmt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
