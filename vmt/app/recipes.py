"""Recipes: networks, options and budgets that train well on the built-in data and tasks.

One source of truth for the command line, the examples and the benchmarks. A
recipe is backend-neutral; [`build_teacher()`][vmt.app.recipes.build_teacher] turns it into a backend's
``VariationalMCMCTeaching`` (or, for a supervised task,
``ConditionalVariationalMCMCTeaching``) through the names every backend exports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Optional, Tuple

import math

import numpy as np

from vmt.core.checks import as_count, as_real
from vmt.core.config import TeachingConfig
from vmt.data.densities import get_density

__all__ = ["Recipe", "RECIPES", "TASK_RECIPES", "EXACT", "PLAIN", "get_recipe", "recipe_for_data", "build_teacher"]


def _is_count(value: Any) -> bool:
    try:
        as_count("hidden", value)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class Recipe:
    """Everything needed to train on one data set.

    Parameters
    ----------
    latent_dim : int
        VAE latent dimension.
    hidden : tuple of int
        Hidden widths of the MLPs (energy for vectors, encoder, decoder).
    ref_scale : float or None
        Gaussian reference scale of the energy (see ``EnergyModel``).
    obs_scale : float or None
        VAE observation scale (``None``: learned).
    kl_weight : float
        Weight of the KL term of the VAE's ELBO.
    num_iters, batch_size : int
        Training budget.
    config : TeachingConfig
        Sampler and optimiser options.
    """

    latent_dim: int = 2
    hidden: Tuple[int, ...] = (128, 128)
    ref_scale: Optional[float] = None
    obs_scale: Optional[float] = None
    kl_weight: float = 1.0
    num_iters: int = 2000
    batch_size: int = 200
    config: TeachingConfig = field(default_factory=TeachingConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.config, TeachingConfig):
            raise ValueError(f"config must be a TeachingConfig, got {type(self.config).__name__}")
        try:
            hidden = tuple(self.hidden)
        except TypeError:
            hidden = ()
        if not hidden or not all(_is_count(h) for h in hidden):
            raise ValueError(f"hidden must be one or more positive layer widths, e.g. (128, 128); got {self.hidden!r}")
        clean = dict(
            latent_dim=as_count("latent_dim", self.latent_dim),
            hidden=tuple(int(h) for h in hidden),
            ref_scale=None if self.ref_scale is None else as_real("ref_scale", self.ref_scale, low=0, low_open=True),
            obs_scale=None if self.obs_scale is None else as_real("obs_scale", self.obs_scale, low=0, low_open=True),
            kl_weight=as_real("kl_weight", self.kl_weight, low=0),
            num_iters=as_count("num_iters", self.num_iters, minimum=0),
            batch_size=as_count("batch_size", self.batch_size),
        )
        for name, value in clean.items():  # plain Python numbers, whatever scalar types came in
            object.__setattr__(self, name, value)

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with recipe fields or [`TeachingConfig`][vmt.core.config.TeachingConfig] fields changed.

        A learning-rate decay that spans the whole budget keeps doing so when
        ``num_iters`` changes.
        """
        names = {f.name for f in dataclasses.fields(self)}
        own = {k: v for k, v in changes.items() if k in names}
        cfg = {k: v for k, v in changes.items() if k not in names}
        if "num_iters" in own and "lr_decay_steps" not in cfg and self.config.lr_decay_steps == self.num_iters:
            cfg["lr_decay_steps"] = own["num_iters"] or None  # a decay over the whole run follows the budget
        new = dataclasses.replace(self, **own)
        return dataclasses.replace(new, config=new.config.replace(**cfg)) if cfg else new

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "config"}
        d["hidden"] = list(self.hidden)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        d = dict(d)
        config = TeachingConfig.from_dict(d.pop("config", {}))
        d["hidden"] = tuple(d.get("hidden", cls.hidden))
        return cls(config=config, **d)


# Tuned on grid25 (see docs/benchmarks.md): a step about 0.8 of the modes' sd with
# K = 40, a fast energy learning rate decayed by a cosine, a Gaussian reference term;
# plain teaching starts a quarter of the training chains from noise (the built-in data
# sets all train exact teaching, `EXACT`, which starts every chain from the VAE).
_TOY = Recipe(
    latent_dim=2,
    hidden=(128, 128),
    ref_scale=3.0,
    obs_scale=None,
    num_iters=10_000,
    batch_size=200,
    config=TeachingConfig(step_size=0.04, num_steps=40, energy_lr=3e-3, vae_lr=1e-3,
                          noise_fraction=0.25, lr_decay_steps=10_000, lr_final_ratio=0.1),
)


#: Exact Metropolis–Hastings teaching as the recipes use it (``docs/theory.md``): persistent
#: chains accept whole annealed, refreshed proposal paths, every chain from the VAE, 10
#: MALA moves on the chains between the path tests, learning rates decayed to 1 %.
EXACT = dict(correction="mh", path_anneal=True, noise_fraction=0.0, local_steps=10, lr_final_ratio=0.01)
#: What turns a recipe with `EXACT` back into plain teaching (the revised proposals are the
#: negative samples); the other fields stay the recipe's.
PLAIN = dict(correction=None, path_anneal=False, local_steps=0)


def _toy(name: str, **changes: Any) -> Recipe:
    # Noise initialisation and the replay buffer cover the density's own box.
    return _TOY.replace(init_bounds=get_density(name).bounds, **changes)


RECIPES = {
    # step_size ≈ 0.8 × the density's local scale (mode or ring/spiral noise sd). Exact
    # teaching on every 2-D data set: it won over three seeds (docs/benchmarks.md,
    # docs/theory.md): the held-out log-likelihood within 0.3 nats of the truth's where
    # plain teaching's EBM is a spike or lost modes. grid25's 25 sharp modes need a third
    # hidden layer to narrow: with two, the learned modes are 1.25–1.45 times too wide
    # (high-quality fraction 0.63–0.83 at 10k iterations, 0.90–0.95 at 20k, 0.92–0.97 at
    # 30k); with three, 1.0–1.07 times at 10k (docs/theory.md).
    "grid25": _toy("grid25", hidden=(128, 128, 128), **EXACT),
    "8gaussians": _toy("8gaussians", step_size=0.25, **EXACT),
    "ring8": _toy("ring8", step_size=0.008, **EXACT),
    "rings": _toy("rings", step_size=0.06, **EXACT),
    "2spirals": _toy("2spirals", step_size=0.08, **EXACT),
    # from a sweep on seeds 0-2 (docs/benchmarks.md): an energy learning rate of 1e-4 or
    # 3e-4 lets the VAE collapse to one image; 1e-3 with the VAE three times faster does not
    "digits": Recipe(latent_dim=8, hidden=(256, 256), obs_scale=0.1, num_iters=3000, batch_size=100,
                     config=TeachingConfig(step_size=0.02, num_steps=20, energy_lr=1e-3, vae_lr=3e-3,
                                           init_bounds=(-1.0, 1.0))),
}


# Supervised tasks (vmt.data.tasks): the three MLPs are the energy on [y, x], the
# encoder on [y, x] and the decoder on [z, x]; every field means what it means above.
TASK_RECIPES = {
    # Digits: half-strength Langevin noise (the reference code uses none on images) and a
    # sharp VAE likelihood (σ = 0.1) train both tasks in 1500 iterations, in both backends.
    "completion": Recipe(
        latent_dim=8, hidden=(256, 256), obs_scale=0.1, num_iters=1500, batch_size=100,
        config=TeachingConfig(step_size=0.05, num_steps=20, noise_scale=0.5, energy_lr=1e-3, vae_lr=3e-3)),
    "class": Recipe(
        latent_dim=8, hidden=(256, 256), obs_scale=0.1, num_iters=1500, batch_size=100,
        config=TeachingConfig(step_size=0.05, num_steps=20, noise_scale=0.5, energy_lr=1e-3, vae_lr=3e-3)),
    # 1-D two-branch regression: exact teaching (one chain per training row) learns the
    # branches' weights, which plain teaching leaves free (docs/conditional.md); 6000
    # iterations with the learning rates decayed to 1 %.
    "regression1d": Recipe(
        latent_dim=1, hidden=(32, 32), ref_scale=3.0, obs_scale=0.05, num_iters=6000, batch_size=200,
        config=TeachingConfig(step_size=0.05, num_steps=20, energy_lr=3e-3, vae_lr=3e-3,
                              init_bounds=(-3.0, 3.0), lr_decay_steps=6000, **EXACT)),
}


def recipe_for_data(data: Any) -> Tuple[Recipe, str]:
    r"""A recipe for data without a built-in one, and the sentence that says how it was chosen.

    The rule (``docs/own-data.md``), from the training split $x_1..x_n \in \mathbb R^d$:

    - ``step_size`` $\delta = r_{10} / d$, with $r_{10}$ the median distance
      from a point to its 10th nearest neighbour (over at most 2000 points): the
      local scale of the data, shrunk with the dimension as Langevin steps must be.
      On the six built-in data sets it lands within about a factor 4 of the hand-tuned steps.
    - ``init_bounds``: the data's range, widened by 10 % on each side; ``ref_scale``:
      the largest $|x|$ (a Gaussian reference about as wide as the data).
    - ``latent_dim`` $= \min(16, \max(2, \lceil d/8 \rceil))$; ``hidden``
      ``(128, 128)`` up to 16 dimensions, ``(256, 256)`` above.
    - the rest as on the 2-D data: 40 steps, Adam learning rates 3e-3 (energy) and
      1e-3 (VAE) decayed by a cosine to 0.1× over 2000 iterations, a quarter of the
      chains started from noise, batches of ``min(200, n)``.
    """
    from scipy.spatial import cKDTree

    x = np.asarray(data.train, np.float64).reshape(len(data.train), -1)
    n, d = x.shape
    sub = x[np.random.default_rng(0).permutation(n)[:2000]]
    k = min(10, len(sub) - 1)
    if k < 1:
        raise ValueError(f"{data.name}: {n} training rows are too few to choose a step size")
    r = float(np.median(cKDTree(sub).query(sub, k=k + 1)[0][:, k]))
    if not r > 0:
        raise ValueError(f"{data.name}: more than half of the points have {k} exact duplicates, so the "
                         "nearest-neighbour scale is 0; give --step-size yourself")
    low, high = float(x.min()), float(x.max())
    pad = 0.1 * (high - low)
    step = float(f"{r / d:.3g}")
    recipe = Recipe(
        latent_dim=min(16, max(2, math.ceil(d / 8))), hidden=(128, 128) if d <= 16 else (256, 256),
        ref_scale=float(f"{max(abs(low), abs(high)):.3g}"), num_iters=2000, batch_size=min(200, n),
        config=TeachingConfig(step_size=step, num_steps=40, energy_lr=3e-3, vae_lr=1e-3, noise_fraction=0.25,
                              lr_decay_steps=2000, lr_final_ratio=0.1,
                              init_bounds=(float(f"{low - pad:.3g}"), float(f"{high + pad:.3g}"))))
    why = (f"recipe from the data ({n} training rows, d={d}): step_size={step:g} (median 10th-neighbour "
           f"distance {r:.3g} / d), init_bounds={recipe.config.init_bounds} (range + 10%), "
           f"ref_scale={recipe.ref_scale:g} (max |x|), latent_dim={recipe.latent_dim}, hidden={recipe.hidden}")
    return recipe, why


def get_recipe(name: str) -> Recipe:
    """The recipe of a built-in data set or supervised task (``ValueError`` listing the names otherwise)."""
    recipe = RECIPES.get(name) or TASK_RECIPES.get(name)
    if recipe is None:
        raise ValueError(f"no recipe for {name!r}; choose one of {sorted(RECIPES) + sorted(TASK_RECIPES)}")
    return recipe


def build_teacher(backend: ModuleType, data: Any, recipe: Recipe, seed: int = 0, device: Any = None, mesh: Any = None):
    """A backend's teacher with the default networks of ``recipe`` for ``data``.

    ``data`` is a [`vmt.data.Dataset`][vmt.data.datasets.Dataset] (an unconditional
    ``VariationalMCMCTeaching``) or a [`vmt.data.tasks.ConditionalTask`][vmt.data.tasks.ConditionalTask] (a
    ``ConditionalVariationalMCMCTeaching``: energy, encoder and decoder take the
    task's ``x``). The networks are initialised from ``seed`` on the CPU, then placed
    on ``device`` (``backend.place``), so a seed gives the same initial weights on
    every device. ``mesh``: data-parallel teaching (``docs/scaling.md``).
    """
    event, cond = data.event_shape, getattr(data, "cond_shape", None)
    if cond is None:
        energy_net, encoder, decoder = backend.nets.default_networks(
            event, recipe.latent_dim, image_shape=data.image_shape, hidden=recipe.hidden, rng=seed)
        energy = backend.EnergyModel(energy_net, event, ref_scale=recipe.ref_scale)
        vae = backend.VAE(encoder, decoder, recipe.latent_dim, event, obs_scale=recipe.obs_scale,
                          kl_weight=recipe.kl_weight)
        teacher_cls = backend.VariationalMCMCTeaching
    else:
        energy_net, encoder, decoder = backend.nets.conditional_networks(
            event, cond, recipe.latent_dim, hidden=recipe.hidden, rng=seed)
        energy = backend.ConditionalEnergyModel(energy_net, event, cond, ref_scale=recipe.ref_scale)
        vae = backend.ConditionalVAE(encoder, decoder, recipe.latent_dim, event, cond, obs_scale=recipe.obs_scale,
                                     kl_weight=recipe.kl_weight)
        teacher_cls = backend.ConditionalVariationalMCMCTeaching
    return teacher_cls(backend.place(energy, device), backend.place(vae, device), recipe.config, rng=seed,
                       mesh=mesh)
