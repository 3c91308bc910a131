"""The ``vmt`` command line: ``vmt train``, ``vmt sample``, ``vmt evaluate``.

``vmt train`` with no arguments trains on the built-in 25-Gaussian grid with
whichever backend is installed and writes, into ``--out``:

- ``checkpoint.ckpt`` — the full training state (resumable),
- ``run.json`` — backend, data, seed and recipe, enough to rebuild the run,
- ``metrics.json`` — sample quality, the EBM's exact held-out log-likelihood (2-D),
  wall time, and the same sample metrics for the VAE alone,
- ``samples.npy``, ``samples.png`` (and ``energy.png`` for 2-D data, ``digits.png``
  for digits), ``history.png`` — the training curves.

``vmt train --task completion|class|regression1d`` trains the conditional variant on
a built-in supervised task (:mod:`vmt.tasks`) instead and writes the checkpoint,
``run.json``, ``metrics.json`` (the task's result table: VMT next to its baselines,
see :mod:`vmt.supervised`), the task's pictures and ``history.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np

from vmt import plots
from vmt.api import BACKENDS, default_backend, load_backend
from vmt.conditional import ConditionalRecipe, build_conditional_teacher, get_conditional_recipe
from vmt.data import DENSITIES, Dataset, load_dataset
from vmt.metrics import digit_scores, estimated_log_likelihood, heldout_log_likelihood, mmd, mode_coverage
from vmt.recipes import Recipe, build_teacher, get_recipe, to_numpy
from vmt.tasks import TASKS, load_task

__all__ = ["main", "evaluate"]

DATASETS = sorted(DENSITIES) + ["digits"]
CHECKPOINT = "checkpoint.ckpt"

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


def _recipe_from_args(args: argparse.Namespace):
    recipe = get_conditional_recipe(args.task) if args.task else get_recipe(args.data)
    changes = {field: getattr(args, flag) for flag, field in _OVERRIDES.items()
               if getattr(args, flag) is not None}
    if args.adjust:
        changes["adjust"] = True
    if args.correction is not None:
        changes["correction"] = None if args.correction == "none" else args.correction
    if args.stale_paths:
        changes["path_refresh"] = False
    if args.hidden:
        changes["hidden"] = tuple(int(h) for h in args.hidden.split(","))
    return recipe.replace(**changes)


def _backend(name: str, threads: int, device: Optional[str] = None):
    """Import a backend and choose its device.

    For torch, set its intra-op thread count (see ``--threads``) and return the
    ``torch.device`` to build the networks on; for JAX, make ``device`` JAX's
    default device and return ``None``. Without ``device``, a GPU when there is one.
    """
    module = load_backend(name)
    if name == "pyro":
        import torch

        if threads > 0:
            torch.set_num_threads(threads)
        try:
            dev = torch.device(device.replace("gpu", "cuda") if device else
                               "cuda" if torch.cuda.is_available() else "cpu")
        except RuntimeError as e:
            raise ValueError(f"--device {device}: {e}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: torch sees no CUDA device")
        return module, dev
    if device:
        import jax

        platform_name = device.split(":")[0].replace("cuda", "gpu")
        index = int(device.split(":")[1]) if ":" in device else 0
        try:
            jax.config.update("jax_default_device", jax.devices(platform_name)[index])
        except (RuntimeError, IndexError) as e:
            raise ValueError(f"--device {device}: JAX has no such device ({e})") from e
    return module, None


def _device_name(dev: Any) -> str:
    if dev is not None:
        return str(dev)
    import jax

    return str(jax.config.jax_default_device or jax.devices()[0])


def _load_run(run: Path, threads: int = 1, device: Optional[str] = None):
    meta = json.loads((run / "run.json").read_text())
    backend, dev = _backend(meta["backend"], threads, device)
    if "task" in meta:
        task = load_task(meta["task"], seed=meta["seed"])
        recipe = ConditionalRecipe.from_dict(meta["recipe"])
        teacher = build_conditional_teacher(backend, task, recipe, meta["seed"], device=dev)
        teacher.load(run / CHECKPOINT)
        return meta, task, recipe, teacher
    dataset = load_dataset(meta["data"], seed=meta["seed"])
    recipe = Recipe.from_dict(meta["recipe"])
    teacher = build_teacher(backend, dataset, recipe, meta["seed"], device=dev)
    teacher.load(run / CHECKPOINT)
    return meta, dataset, recipe, teacher


#: Accept tests of the exact sampler that draws a corrected teacher's evaluation samples.
EVAL_MH_STEPS = 30


def evaluate(teacher, dataset: Dataset, num_samples: int = 5000, seed: int = 0) -> Dict[str, Any]:
    """Sample metrics of the EBM (and of its VAE alone), the EBM's held-out log-likelihood
    with ``log Z`` estimated from proposal paths (any data set), and for 2-D data its
    exact held-out log-likelihood by quadrature beside it. A teacher trained with
    ``correction="mh"`` is sampled exactly (``mh_steps=EVAL_MH_STEPS``)."""
    mh_steps = EVAL_MH_STEPS if getattr(teacher.config, "correction", None) else 0
    samples = to_numpy(teacher.sample(num_samples, rng=seed, mh_steps=mh_steps))
    out: Dict[str, Any] = {"ebm": _sample_metrics(samples, dataset)}
    if teacher.config.init in ("vae", "generator"):
        out["vae"] = _sample_metrics(to_numpy(teacher.sample(num_samples, num_steps=0, rng=seed)), dataset)
    est = estimated_log_likelihood(teacher, dataset.test, seed=seed)
    out["ebm"].update(estimated_log_likelihood=est["log_likelihood"], estimate=est)
    if dataset.density is not None:
        ll = heldout_log_likelihood(teacher.energy.numpy_energy, dataset.test, dataset.density.bounds)
        out["ebm"].update(heldout_log_likelihood=ll["log_likelihood"], quadrature=ll)
        out["true_entropy"] = dataset.density.entropy
    return out | {"samples": samples}


def _sample_metrics(samples: np.ndarray, dataset: Dataset) -> Dict[str, Any]:
    density = dataset.density
    if density is None:
        return digit_scores(samples, dataset)
    out: Dict[str, Any] = {"mmd": mmd(samples, dataset.test)}
    if density.modes is not None:
        out.update(mode_coverage(samples, density.modes, density.mode_sd))
    return out


def _write_outputs(out: Path, teacher, dataset: Dataset, metrics: Dict[str, Any]) -> None:
    samples = metrics.pop("samples")
    np.save(out / "samples.npy", samples)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    if dataset.density is not None:
        plots.plot_samples_2d(samples, dataset.test, out / "samples.png", bounds=dataset.bounds,
                              title=f"{dataset.name}: EBM samples")
        plots.plot_energy_2d(teacher.energy.numpy_energy, dataset.bounds, out / "energy.png",
                             title="learned density exp(-E)/Z")
    else:
        plots.plot_digits(samples[:100], out / "digits.png", image_shape=dataset.image_shape,
                          title="EBM samples")


def _train(args: argparse.Namespace) -> Path:
    if args.task and args.data:
        raise ValueError("choose either --data (unconditional) or --task (supervised), not both")
    if args.task:
        return _train_task(args)
    args.data = args.data or "grid25"
    backend, out, recipe, module, dev = _setup(args, args.data)
    dataset = load_dataset(args.data, seed=args.seed)
    teacher = build_teacher(module, dataset, recipe, args.seed, device=dev)
    history, seconds = _fit_and_save(teacher, dataset.train, recipe, args, out, backend, dev, data=args.data)
    metrics = evaluate(teacher, dataset, args.eval_samples, seed=args.seed)
    metrics.update(data=args.data, backend=backend, init=recipe.config.init,
                   iterations=recipe.num_iters, train_seconds=seconds)
    _write_outputs(out, teacher, dataset, metrics)
    plots.plot_history(history, out / "history.png")
    _print_summary(metrics)
    return out


def _setup(args: argparse.Namespace, name: str):
    """The backend's name, the output folder (created), the recipe, the backend module and device."""
    backend = args.backend or default_backend()
    out = args.out or Path("runs") / f"{name}-{backend}"
    out.mkdir(parents=True, exist_ok=True)
    module, dev = _backend(backend, args.threads, args.device)
    return backend, out, _recipe_from_args(args), module, dev


def _fit_and_save(teacher, train: Any, recipe: Recipe, args: argparse.Namespace, out: Path, backend: str,
                  dev: Any, **what: str):
    """Fit ``teacher`` on ``train``, then write its checkpoint and ``run.json``.

    ``what`` is ``data=<name>`` or ``task=<name>``; returns the history and the seconds of training.
    """
    (kind, name), = what.items()
    print(f"vmt train: {'' if kind == 'data' else 'task '}{name} with {backend} on {_device_name(dev)}, "
          f"init={recipe.config.init}, {recipe.num_iters} iterations -> {out}")
    start = time.perf_counter()
    history = teacher.fit(train, recipe.num_iters, recipe.batch_size, progress=not args.quiet)
    seconds = time.perf_counter() - start
    teacher.save(out / CHECKPOINT, **what, seed=args.seed)
    run = {"backend": backend, **what, "seed": args.seed, "recipe": recipe.to_dict(),
           "command": " ".join(sys.argv), "python": platform.python_version(), "machine": platform.machine(),
           "device": _device_name(dev)}
    (out / "run.json").write_text(json.dumps(run, indent=2))
    return history, seconds


def _train_task(args: argparse.Namespace) -> Path:
    from vmt.supervised import evaluate_task

    backend, out, recipe, module, dev = _setup(args, args.task)
    task = load_task(args.task, seed=args.seed)
    teacher = build_conditional_teacher(module, task, recipe, args.seed, device=dev)
    history, seconds = _fit_and_save(teacher, (task.x_train, task.y_train), recipe, args, out, backend, dev,
                                     task=args.task)
    rows = evaluate_task(teacher, task, recipe, args.seed, out)
    metrics = {"task": args.task, "backend": backend, "init": recipe.config.init, "iterations": recipe.num_iters,
               "train_seconds": seconds, "rows": rows}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    plots.plot_history(history, out / "history.png")
    print(f"trained in {seconds:.1f}s")
    for name, row in rows.items():
        print(f"  {name:32s} " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
    return out


def _print_summary(metrics: Dict[str, Any]) -> None:
    ebm = metrics["ebm"]
    keys = ["modes_covered", "high_quality_fraction", "heldout_log_likelihood", "estimated_log_likelihood",
            "mmd", "frechet", "precision", "recall"]
    parts = [f"{k}={ebm[k]:.4g}" for k in keys if k in ebm]
    print(f"trained in {metrics['train_seconds']:.1f}s: " + ", ".join(parts))


def _sample(args: argparse.Namespace) -> Path:
    meta, dataset, _, teacher = _load_run(args.run, args.threads, args.device)
    if "task" in meta:  # one y for each of the first n test inputs, cycled
        cond = dataset.x_test[np.arange(args.num_samples) % len(dataset.x_test)]
        x = to_numpy(teacher.sample(cond, num_steps=args.num_steps, rng=args.seed))
    else:
        x = to_numpy(teacher.sample(args.num_samples, num_steps=args.num_steps, rng=args.seed,
                                    mh_steps=args.mh_steps))
    path = args.out or args.run / f"samples-{args.seed}.npy"
    np.save(path, x)
    print(f"wrote {x.shape[0]} samples to {path}")
    return path


def _evaluate(args: argparse.Namespace) -> Path:
    meta, dataset, recipe, teacher = _load_run(args.run, args.threads, args.device)
    if "task" in meta:
        from vmt.supervised import evaluate_task

        metrics = json.loads((args.run / "metrics.json").read_text())
        metrics["rows"] = evaluate_task(teacher, dataset, recipe, meta["seed"], args.run)
        (args.run / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        return args.run / "metrics.json"
    metrics = evaluate(teacher, dataset, args.eval_samples)
    previous = json.loads((args.run / "metrics.json").read_text()) if (args.run / "metrics.json").exists() else {}
    metrics.update(data=meta["data"], backend=meta["backend"], init=recipe.config.init,
                   iterations=teacher.iteration, train_seconds=previous.get("train_seconds", float("nan")))
    _write_outputs(args.run, teacher, dataset, metrics)
    _print_summary(metrics)
    return args.run / "metrics.json"


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        {"train": _train, "sample": _sample, "evaluate": _evaluate}[args.command](args)
    except (ValueError, ImportError, FileNotFoundError, FloatingPointError) as e:
        print(f"vmt {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
