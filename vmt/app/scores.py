"""The evaluation of a run: sample metrics, held-out likelihood, samples and pictures into a folder.

Used by [`vmt.app.runs`][vmt.app.runs] for every generation it evaluates: data sets (2-D
quadrature, digit scores, the MMD of a user's data), supervised tasks
([`vmt.app.tasks`][vmt.app.tasks]).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from vmt.app.runfolder import fault
from vmt.core.api import backend_of
from vmt.data import Dataset
from vmt.evaluation import plots
from vmt.evaluation.metrics import (digit_scores, estimated_log_likelihood, heldout_log_likelihood, mmd,
                                    mode_coverage, mode_mass_kl)

__all__ = ["evaluate_run", "evaluate", "is_task"]


def is_task(data) -> bool:
    """Whether ``data`` is a supervised task (pairs ``(x, y)``) rather than a data set."""
    return getattr(data, "cond_shape", None) is not None


def evaluate_run(teacher, data, recipe: Any, seed: int, out: Path, eval_samples: int = 5000,
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
        fault("samples", lambda: os.truncate(out / "samples.npy", os.path.getsize(out / "samples.npy") // 2))
        _pictures(out, teacher, data, samples)
    metrics["iterations"] = teacher.iteration
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


#: Accept tests of the exact sampler that draws a corrected teacher's evaluation samples.
EVAL_MH_STEPS = 30


def evaluate(teacher, dataset: Dataset, num_samples: int = 5000, seed: int = 0) -> Dict[str, Any]:
    """Sample metrics of the EBM (and of its VAE alone), the EBM's held-out log-likelihood
    with ``log Z`` estimated from proposal paths (any data set), and for 2-D data its
    exact held-out log-likelihood by quadrature beside it (and, for a mixture, the
    KL between the true and the EBM's mode masses). A teacher trained with
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
        if dataset.density.modes is not None:  # the EBM's own mode weights, by quadrature
            kl = mode_mass_kl(teacher.energy.numpy_energy, dataset.density.modes, dataset.density.bounds)
            out["ebm"]["mode_mass_kl"] = kl["kl"]
    return out | {"samples": samples}


def _sample_metrics(samples: np.ndarray, dataset: Dataset) -> Dict[str, Any]:
    density = dataset.density
    if dataset.name == "digits":
        return digit_scores(samples, dataset)
    out: Dict[str, Any] = {"mmd": mmd(samples, dataset.test)}
    if density is None:  # a user's data: the kernel two-sample distance to the held-out rows
        return out
    if density.modes is not None:
        out.update(mode_coverage(samples, density.modes, density.mode_sd))
    return out


def _pictures(out: Path, teacher, dataset: Dataset, samples: np.ndarray) -> None:
    if dataset.event_shape == (2,):
        plots.plot_samples_2d(samples, dataset.test, out / "samples.png", bounds=dataset.bounds,
                              title=f"{dataset.name}: EBM samples")
        plots.plot_energy_2d(teacher.energy.numpy_energy, dataset.bounds, out / "energy.png",
                             title="learned density exp(-E)/Z")
    elif dataset.image_shape is not None:
        plots.plot_digits(samples[:100], out / "digits.png", image_shape=dataset.image_shape,
                          title="EBM samples")
