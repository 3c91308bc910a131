r"""Train and evaluate conditional variational MCMC teaching on the built-in supervised tasks.

[`evaluate_task()`][vmt.app.tasks.evaluate_task] is the result table of ``vmt train --task`` (through
[`vmt.app.runs`][vmt.app.runs]), the examples and ``benchmarks/conditional.py``; [`run_task()`][vmt.app.tasks.run_task]
trains a backend's ``ConditionalVariationalMCMCTeaching`` with the recipe of a task
([`vmt.app.recipes`][vmt.app.recipes]) in memory and evaluates it. The scores are those of
[`vmt.evaluation.task_metrics`][vmt.evaluation.task_metrics], the baselines those of
[`vmt.evaluation.baselines`][vmt.evaluation.baselines]. Backend-neutral: it goes through the names every
backend exports.

Rows of the result tables:

- ``completion``: VMT (conditional VAE + Langevin), the conditional VAE alone
  (``num_steps=0``), scikit-learn's ``MLPRegressor`` with the decoder's hidden
  widths trained by squared error (deterministic), and the bottom halves of the
  ``k`` training digits with the nearest top halves (a nonparametric sampler).
- ``class``: VMT, the conditional VAE alone, and real training digits (the floor).
- ``regression1d``: the true density, VMT's EBM (exact log-likelihood by quadrature
  over ``y``; samples by VAE + Langevin), the conditional VAE alone (log-likelihood by
  importance sampling with the encoder as proposal), and a NumPy mixture density
  network ([`vmt.evaluation.baselines.MixtureDensityNetwork`][vmt.evaluation.baselines.MixtureDensityNetwork]).

Every EBM row also carries its held-out ``log p(y | x)`` estimated from proposal paths
([`ebm_log_likelihood()`][vmt.app.tasks.ebm_log_likelihood]; beside the quadrature in
1-D, where it can be checked), and every CVAE row its importance-sampling estimate.

A teacher trained with ``correction="mh"`` (exact teaching) is named as such
([`vmt_row()`][vmt.app.tasks.vmt_row]) and its EBM samples are exact draws
(``mh_steps=EVAL_MH_STEPS`` accept tests on whole proposal paths per ``x``).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
from scipy.special import logsumexp

from vmt.app.recipes import build_teacher, get_recipe
from vmt.app.scores import EVAL_MH_STEPS
from vmt.core.api import backend_of, load_backend
from vmt.data.tasks import ConditionalTask, assemble_digits, load_task
from vmt.evaluation.baselines import MixtureDensityNetwork, fit_regressor, nearest_completions
from vmt.evaluation.features import DigitClassifier
from vmt.evaluation.task_metrics import branch_scores, class_scores, completion_scores, conditional_log_likelihood

__all__ = ["run_task", "evaluate_task", "sample_many", "vae_log_likelihood", "ebm_log_likelihood", "vmt_row",
           "REGRESSION_XS", "EST_PATHS"]

#: The inputs at which the 1-D task's samples are compared with the truth.
REGRESSION_XS = (0.5, 1.5, 2.5, 3.5)
#: Proposal paths per distinct ``x`` of the EBM's ``log Ẑ(x)`` estimate.
EST_PATHS = 1000
_LOG_2PI = math.log(2 * math.pi)


def sample_many(teacher, x: np.ndarray, k: int, num_steps: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """``k`` draws of ``y`` for every row of ``x``: shape ``(k, len(x), *event_shape)``.

    The EBM's draws (``num_steps`` not 0) of a teacher trained with ``correction="mh"``
    are exact: ``mh_steps=EVAL_MH_STEPS``.
    """
    y = backend_of(teacher).to_numpy(teacher.sample(np.concatenate([x] * k), num_steps=num_steps, rng=seed,
                                                    **_exact(teacher, num_steps)))
    return y.reshape((k, len(x)) + y.shape[1:])


def _exact(teacher, num_steps: Optional[int] = None) -> Dict[str, int]:
    return {"mh_steps": EVAL_MH_STEPS} if teacher.config.correction and num_steps != 0 else {}


def vmt_row(teacher) -> str:
    """The result-table name of the trained teacher's EBM: plain or exact (``correction="mh"``) VMT."""
    return "VMT exact (MH on CVAE + Langevin paths)" if teacher.config.correction else "VMT (CVAE + Langevin)"


def vae_log_likelihood(vae, x, y, num_samples: int = 256, seed: int = 0, chunk: int = 32) -> Dict[str, float]:
    r"""Importance-sampling estimate of a conditional VAE's held-out $\log p(y \mid x)$.

    $$
    \log p(y \mid x) \approx \log \frac1K \sum_{k=1}^K
    \frac{p(y \mid z_k, x)\, p(z_k)}{q(z_k \mid y, x)}, \qquad z_k \sim q(z \mid y, x),
    $$

    with the encoder as proposal (a stochastic lower bound whose bias shrinks as
    $K$ grows; the KL weight plays no part: this is the model's own density).
    Returns the mean over rows and its standard error.
    """
    numpy_call, to_numpy = backend_of(vae).numpy_call, backend_of(vae).to_numpy
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(y)
    loc, scale = numpy_call(vae, vae.encode, y, x)
    sigma = np.broadcast_to(np.asarray(to_numpy(vae.scale()), np.float64), y.shape[1:]).reshape(-1)
    g = np.random.default_rng(seed)
    log_w = []
    for start in range(0, num_samples, chunk):
        k = min(chunk, num_samples - start)
        eps = g.standard_normal((k, n, loc.shape[1]))
        z = loc[None] + scale[None] * eps
        mean = numpy_call(vae, vae.decode, z.reshape(k * n, -1), np.concatenate([x] * k)).reshape(k, n, -1)
        resid = (y.reshape(1, n, -1) - mean) / sigma
        log_lik = -0.5 * (resid ** 2).sum(-1) - np.log(sigma).sum() - 0.5 * resid.shape[-1] * _LOG_2PI
        log_w.append(log_lik - 0.5 * (z ** 2).sum(-1) + 0.5 * (eps ** 2).sum(-1) + np.log(scale).sum(-1)[None])
    ll = logsumexp(np.concatenate(log_w), axis=0) - math.log(num_samples)
    return {"log_likelihood": float(ll.mean()), "standard_error": float(ll.std(ddof=1) / math.sqrt(n)),
            "num_samples": num_samples}


def ebm_log_likelihood(teacher, x, y, num_samples: int = EST_PATHS, seed: int = 0) -> Dict[str, Any]:
    r"""The EBM's held-out $\log p(y \mid x)$ estimated from proposal paths, averaged over rows.

    ``teacher.log_prob(y, x)``: $-E(y \mid x) - \log \hat Z(x)$ with $\hat Z(x)$ the mean
    of ``num_samples`` path weights at each distinct ``x`` (biased *high*: the log-mean-exp
    underestimates $\log Z$). ``est_log_z_se`` is the median over rows of the standard
    error of $\log \hat Z(x)$.
    """
    lp, se = teacher.log_prob(y, x, num_samples=num_samples, rng=seed)
    return {"est_log_likelihood": float(lp.mean()), "est_log_z_se": float(np.median(se)),
            "est_method": f"{num_samples} proposal paths per x (log-mean-exp: biased high)"}


def _vae_est(teacher, task: ConditionalTask, seed: int) -> Dict[str, float]:
    ll = vae_log_likelihood(teacher.vae, task.x_test, task.y_test, seed=seed)
    return {"est_log_likelihood": ll["log_likelihood"], "est_method": "importance sampling, encoder as proposal"}


# ---------------------------------------------------------------------- the three evaluations
def _completion(teacher, task: ConditionalTask, recipe, seed: int, k: int, out: Optional[Path]) -> dict:
    classifier = DigitClassifier(seed=seed).fit(assemble_digits(task.x_train, task.y_train), task.train_labels)
    ebm = sample_many(teacher, task.x_test, k, seed=seed)
    vae = sample_many(teacher, task.x_test, k, num_steps=0, seed=seed)
    regressor = fit_regressor(task, recipe.hidden, seed).predict(task.x_test)[None].astype(np.float32)
    rows = {vmt_row(teacher): dict(completion_scores(ebm, task, classifier),
                                   **ebm_log_likelihood(teacher, task.x_test, task.y_test, seed=seed)),
            "CVAE alone": dict(completion_scores(vae, task, classifier), **_vae_est(teacher, task, seed)),
            "MLP regressor (squared error)": completion_scores(regressor, task, classifier),
            "nearest training pairs": completion_scores(nearest_completions(task, k), task, classifier)}
    if out is not None:
        from vmt.evaluation.plots import plot_digits

        idx = np.arange(10)
        cols = [assemble_digits(task.x_test[idx], task.y_test[idx]),
                assemble_digits(task.x_test[idx], regressor[0, idx])]
        cols += [assemble_digits(task.x_test[idx], vae[j, idx]) for j in range(3)]
        cols += [assemble_digits(task.x_test[idx], ebm[j, idx]) for j in range(min(k, 6))]
        plot_digits(np.stack(cols, 1).reshape(-1, 64), out / "completion.png", nrow=len(idx),
                    title="truth | regressor | CVAE x3 | VMT x6")
    return rows


def _class(teacher, task: ConditionalTask, seed: int, out: Optional[Path]) -> dict:
    classifier = DigitClassifier(seed=seed).fit(task.y_train, task.train_labels)
    labels = np.sort(task.train_labels)  # as many per class as real training digits: like-for-like Fréchet
    x = np.eye(10, dtype=np.float32)[labels]
    to_numpy = backend_of(teacher).to_numpy
    ebm = to_numpy(teacher.sample(x, rng=seed, **_exact(teacher)))
    vae = to_numpy(teacher.sample(x, num_steps=0, rng=seed))
    rows = {vmt_row(teacher): dict(class_scores(ebm, labels, task, classifier),
                                   **ebm_log_likelihood(teacher, task.x_test, task.y_test, seed=seed)),
            "CVAE alone": dict(class_scores(vae, labels, task, classifier), **_vae_est(teacher, task, seed)),
            "real training digits": class_scores(task.y_train, task.train_labels, task, classifier)}
    if out is not None:
        from vmt.evaluation.plots import plot_digits

        for name, s in (("class_vmt.png", ebm), ("class_vae.png", vae)):
            grid = np.stack([s[labels == c][:10] for c in range(10)])
            plot_digits(grid.reshape(-1, 64), out / name, nrow=10,
                        title=("VMT" if "vmt" in name else "CVAE alone") + ": one row per requested digit")
    return rows


def _regression(teacher, task: ConditionalTask, seed: int, m: int, out: Optional[Path]) -> dict:
    density, xs = task.density, np.asarray(REGRESSION_XS)
    mdn = MixtureDensityNetwork(num_components=3, hidden=32, seed=seed).fit(task.x_train, task.y_train)
    draws = {vmt_row(teacher): sample_many(teacher, xs[:, None].astype(np.float32), m, seed=seed)[..., 0].T,
             "CVAE alone": sample_many(teacher, xs[:, None].astype(np.float32), m, 0, seed)[..., 0].T,
             "MDN": np.stack([mdn.sample(np.full((m, 1), v), seed)[:, 0] for v in xs])}
    try:
        ebm_ll = conditional_log_likelihood(teacher.energy.numpy_energy, task.x_test, task.y_test, (-6.0, 6.0),
                                            split=0.0)
        above = np.asarray(ebm_ll.pop("mass_above"))
        ebm_ll["mean_branch_mass_error"] = float(np.abs(above - 0.5).mean())  # truth: 0
    except ValueError as e:  # a diverged or too-sharp energy: reported, not hidden
        ebm_ll = {"log_likelihood": float("nan"), "error": str(e)}
    lls = {vmt_row(teacher): dict(ebm_ll, method="exact (quadrature over y) of the EBM",
                                  **ebm_log_likelihood(teacher, task.x_test, task.y_test, seed=seed)),
           "CVAE alone": dict(vae_log_likelihood(teacher.vae, task.x_test, task.y_test, seed=seed),
                              method="importance sampling, encoder as proposal"),
           "MDN": {"log_likelihood": float(mdn.log_prob(task.y_test, task.x_test).mean()), "method": "exact"}}
    rows = {"truth": {"log_likelihood": float(density.log_prob(task.y_test, task.x_test).mean()), "method": "exact"}}
    for name, s in draws.items():
        rows[name] = dict(lls[name], **branch_scores(s, xs, density, seed))
    if out is not None:
        _plot_regression(teacher, mdn, draws, task, out / "regression1d.png")
    return rows


def _plot_regression(teacher, mdn, draws, task, path) -> None:
    from matplotlib.figure import Figure

    from vmt.evaluation.plots import _save

    grid = np.linspace(-2.6, 2.6, 521)[:, None]
    fig = Figure(figsize=(3.2 * len(REGRESSION_XS), 3.0))
    for ax, x, i in zip(fig.subplots(1, len(REGRESSION_XS)), REGRESSION_XS, range(len(REGRESSION_XS))):
        xg = np.full_like(grid, x)
        e = teacher.energy.numpy_energy(grid, xg)
        p_ebm = np.exp(-e - logsumexp(-e) - math.log(grid[1, 0] - grid[0, 0]))
        bins = np.linspace(-2.6, 2.6, 80)
        for (name, s), colour in zip(draws.items(), ("tab:blue", "tab:orange", "tab:green")):
            ax.hist(s[i], bins=bins, density=True, histtype="step", color=colour, label=f"{name} samples")
        ax.plot(grid[:, 0], np.exp(task.density.log_prob(grid, xg)), "k", lw=1, label="truth")
        ax.plot(grid[:, 0], p_ebm, "tab:blue", ls="--", lw=1, label="EBM exp(-E)/Z")
        ax.set_title(f"p(y | x = {x})")
        ax.set_xlabel("y")
    ax.legend(fontsize=6, loc="upper center")
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------- one entry point
def run_task(task_name: str, backend: Optional[str] = None, seed: int = 0, num_iters: Optional[int] = None,
             out: Optional[Path] = None, progress: bool = False, k: int = 10, m: int = 2000,
             **overrides: Any) -> Dict[str, Any]:
    """Train conditional VMT on a built-in task and evaluate it next to its baselines.

    Parameters
    ----------
    task_name : {"completion", "class", "regression1d"}
    backend : {"pyro", "numpyro"} or None
    seed : int
        Seed of the data split (digits) or draw (1-D), the networks and training.
    num_iters : int, optional
        Training iterations (default: the recipe's).
    out : pathlib.Path, optional
        Folder for the pictures (``completion.png``, ``class_vmt.png`` and
        ``class_vae.png``, or ``regression1d.png``).
    k : int
        Completions per test input (``completion``).
    m : int
        Samples per fixed ``x`` (``regression1d``).
    **overrides
        Recipe or [`TeachingConfig`][vmt.core.config.TeachingConfig] fields.

    Returns
    -------
    dict
        ``rows`` (method -> metrics), ``train_seconds``, ``eval_seconds``, ``recipe``,
        ``backend``, ``task``, ``seed``, and ``teacher`` (the trained object).
    """
    module = load_backend(backend)
    backend = module.__name__.split("_")[0]
    task = load_task(task_name, seed=seed)
    recipe = get_recipe(task_name).replace(**overrides)
    if num_iters is not None:
        recipe = recipe.replace(num_iters=num_iters)
    teacher = build_teacher(module, task, recipe, seed)
    start = time.perf_counter()
    history = teacher.fit((task.x_train, task.y_train), recipe.num_iters, recipe.batch_size, progress=progress)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    rows = evaluate_task(teacher, task, recipe, seed, out, k, m)
    return {"task": task_name, "backend": backend, "seed": seed, "rows": rows, "recipe": recipe.to_dict(),
            "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - start,
            "history": history, "teacher": teacher}


def evaluate_task(teacher, task: ConditionalTask, recipe, seed: int = 0, out: Optional[Path] = None,
                  k: int = 10, m: int = 2000) -> Dict[str, Dict[str, Any]]:
    """The result table of a trained teacher on ``task`` (method -> metrics); pictures into ``out``."""
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    if task.name == "completion":
        return _completion(teacher, task, recipe, seed, k, out)
    if task.name == "class":
        return _class(teacher, task, seed, out)
    return _regression(teacher, task, seed, m, out)
