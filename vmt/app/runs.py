"""A training run on disk: train, save, load, evaluate — the one path every entry point uses.

A run folder holds

- ``checkpoint.ckpt`` — the full training state (resumable),
- ``run.json`` — backend, data set or task, seed and recipe: enough to rebuild the run,
- ``metrics.json`` — for a data set: sample quality, the EBM's held-out
  log-likelihood (exact by quadrature in 2-D), wall time, and the same sample metrics
  for the VAE alone; for a supervised task: its result table (VMT next to its
  baselines, :mod:`vmt.app.tasks`),
- ``samples.npy`` and pictures (``samples.png`` and ``energy.png`` in 2-D,
  ``digits.png`` for digits, the task's pictures) and ``history.png``.

Backend-neutral: a backend is reached through :func:`vmt.core.api.load_backend` and
the names every backend exports.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from vmt.app.recipes import Recipe, build_teacher, get_recipe
from vmt.core.api import backend_of, default_backend, load_backend
from vmt.data import Dataset, load_dataset
from vmt.data.tasks import TASKS, load_task
from vmt.evaluation import plots
from vmt.evaluation.metrics import digit_scores, estimated_log_likelihood, heldout_log_likelihood, mmd, mode_coverage

__all__ = ["CHECKPOINT", "load_data", "train_run", "load_run", "evaluate_run", "evaluate"]

CHECKPOINT = "checkpoint.ckpt"


def load_data(name: str, seed: int = 0):
    """A built-in data set (:class:`~vmt.data.Dataset`) or supervised task (:class:`~vmt.data.tasks.ConditionalTask`)."""
    return load_task(name, seed=seed) if name in TASKS else load_dataset(name, seed=seed)


def _train_arrays(data) -> Any:
    return (data.x_train, data.y_train) if is_task(data) else data.train


def is_task(data) -> bool:
    """Whether ``data`` is a supervised task (pairs ``(x, y)``) rather than a data set."""
    return getattr(data, "cond_shape", None) is not None


def train_run(name: str, out: Path, recipe: Optional[Recipe] = None, backend: Optional[str] = None, seed: int = 0,
              device: Optional[str] = None, threads: int = 1, progress: bool = True,
              eval_samples: int = 5000, command: Optional[str] = None, nproc: Optional[int] = None
              ) -> Dict[str, Any]:
    """Train on a built-in data set or task and write the whole run folder; returns the metrics.

    Parameters
    ----------
    name : str
        A data set of :data:`vmt.data.DENSITIES` or ``"digits"``, or a task of
        :data:`vmt.data.tasks.TASKS`.
    out : pathlib.Path
        The run folder (created).
    recipe : Recipe, optional
        Default: the built-in recipe of ``name``.
    backend : {"pyro", "numpyro"}, optional
        Default: the first installed.
    device, threads
        As ``select_device`` of the backend takes them.
    nproc : int, optional
        Data-parallel teaching on ``nproc`` devices (``docs/scaling.md``): JAX devices of
        this process, or this process is one of ``nproc`` torchrun ranks; only rank 0
        writes the run folder (and returns the metrics; the other ranks return ``{}``).
    """
    backend = backend or default_backend()
    module = load_backend(backend)
    dev = module.select_device(device, threads)
    mesh = None
    if nproc:
        mesh, dev = importlib.import_module(f"{module.__name__}.distributed").launch(nproc, dev)
    writer = int(os.environ.get("RANK", "0")) == 0  # torchrun's other ranks train and save, and write nothing
    recipe = recipe or get_recipe(name)
    data = load_data(name, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = build_teacher(module, data, recipe, seed, device=dev, mesh=mesh)
    kind = "task" if is_task(data) else "data"
    if writer:
        print(f"vmt train: {'task ' if kind == 'task' else ''}{name} with {backend} on {module.device_name(dev)}, "
              f"init={recipe.config.init}, {recipe.num_iters} iterations -> {out}"
              + (f", data-parallel on {nproc} devices" if nproc else ""))
    start = time.perf_counter()
    history = teacher.fit(_train_arrays(data), recipe.num_iters, recipe.batch_size, progress=progress)
    seconds = time.perf_counter() - start
    teacher.save(out / CHECKPOINT, **{kind: name}, seed=seed)  # collective on a torch mesh: every rank calls it
    if not writer:
        return {}
    run = {"backend": backend, kind: name, "seed": seed, "recipe": recipe.to_dict(),
           "command": command or " ".join(sys.argv), "python": platform.python_version(),
           "machine": platform.machine(), "device": module.device_name(dev), "nproc": nproc or 1}
    (out / "run.json").write_text(json.dumps(run, indent=2))
    header = {kind: name, "backend": backend, "init": recipe.config.init, "train_seconds": seconds}
    metrics = evaluate_run(teacher, data, recipe, seed, out, eval_samples, header)
    plots.plot_history(history, out / "history.png")
    return metrics


def load_run(run: Path, threads: int = 1, device: Optional[str] = None) -> Tuple[dict, Any, Recipe, Any]:
    """``(run.json, data, recipe, teacher)`` of a run folder, the teacher restored from its checkpoint."""
    run = Path(run)
    meta = json.loads((run / "run.json").read_text())
    module = load_backend(meta["backend"])
    dev = module.select_device(device, threads)
    data = load_data(meta.get("task") or meta["data"], meta["seed"])
    recipe = Recipe.from_dict(meta["recipe"])
    teacher = build_teacher(module, data, recipe, meta["seed"], device=dev)
    teacher.load(run / CHECKPOINT)
    return meta, data, recipe, teacher


def evaluate_run(teacher, data, recipe: Recipe, seed: int, out: Path, eval_samples: int = 5000,
                 header: Optional[dict] = None) -> Dict[str, Any]:
    """Evaluate a trained teacher, write ``metrics.json``, samples and pictures into ``out``.

    Returns what was written to ``metrics.json``: ``header`` (training facts) over
    what was there before, then the new results.
    """
    out = Path(out)
    previous = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    previous.update(header or {})
    if is_task(data):
        from vmt.app.tasks import evaluate_task

        metrics = dict(previous, rows=evaluate_task(teacher, data, recipe, seed, out))
    else:
        metrics = evaluate(teacher, data, eval_samples, seed=seed)
        samples = metrics.pop("samples")
        metrics = dict(previous, **metrics)
        np.save(out / "samples.npy", samples)
        _pictures(out, teacher, data, samples)
    metrics["iterations"] = teacher.iteration
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


#: Accept tests of the exact sampler that draws a corrected teacher's evaluation samples.
EVAL_MH_STEPS = 30


def evaluate(teacher, dataset: Dataset, num_samples: int = 5000, seed: int = 0) -> Dict[str, Any]:
    """Sample metrics of the EBM (and of its VAE alone), the EBM's held-out log-likelihood
    with ``log Z`` estimated from proposal paths (any data set), and for 2-D data its
    exact held-out log-likelihood by quadrature beside it. A teacher trained with
    ``correction="mh"`` is sampled exactly (``mh_steps=EVAL_MH_STEPS``)."""
    to_numpy = backend_of(teacher).to_numpy
    extra = {"mh_steps": EVAL_MH_STEPS} if getattr(teacher.config, "correction", None) else {}
    samples = to_numpy(teacher.sample(num_samples, rng=seed, **extra))
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


def _pictures(out: Path, teacher, dataset: Dataset, samples: np.ndarray) -> None:
    if dataset.density is not None:
        plots.plot_samples_2d(samples, dataset.test, out / "samples.png", bounds=dataset.bounds,
                              title=f"{dataset.name}: EBM samples")
        plots.plot_energy_2d(teacher.energy.numpy_energy, dataset.bounds, out / "energy.png",
                             title="learned density exp(-E)/Z")
    else:
        plots.plot_digits(samples[:100], out / "digits.png", image_shape=dataset.image_shape,
                          title="EBM samples")
