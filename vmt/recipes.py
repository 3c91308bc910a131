"""Recipes: networks, options and budgets that train well on the built-in data.

One source of truth for the command line, the examples and the benchmarks. A
recipe is backend-neutral; :func:`build_teacher` turns it into a backend's
:class:`VariationalMCMCTeaching` through the names every backend exports.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Optional, Tuple

import numpy as np

from vmt.config import TeachingConfig
from vmt.data import Dataset, get_density

__all__ = ["Recipe", "RECIPES", "get_recipe", "build_teacher", "to_numpy"]


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

    def replace(self, **changes: Any) -> "Recipe":
        """A copy with recipe fields or :class:`TeachingConfig` fields changed.

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
# K = 40, a fast energy learning rate decayed by a cosine to 0.1x, a Gaussian
# reference term, and a quarter of the training chains started from noise.
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


def _toy(name: str, **changes: Any) -> Recipe:
    # Noise initialisation and the replay buffer cover the density's own box.
    return _TOY.replace(init_bounds=get_density(name).bounds, **changes)


RECIPES = {
    # step_size ≈ 0.8 × the density's local scale (mode or ring/spiral noise sd)
    "grid25": _toy("grid25"),
    "8gaussians": _toy("8gaussians", step_size=0.25),
    "ring8": _toy("ring8", step_size=0.008),
    "rings": _toy("rings", step_size=0.06),
    "2spirals": _toy("2spirals", step_size=0.08),
    # from a sweep on seeds 0-2 (docs/benchmarks.md): an energy learning rate of 1e-4 or
    # 3e-4 lets the VAE collapse to one image; 1e-3 with the VAE three times faster does not
    "digits": Recipe(latent_dim=8, hidden=(256, 256), obs_scale=0.1, num_iters=3000, batch_size=100,
                     config=TeachingConfig(step_size=0.02, num_steps=20, energy_lr=1e-3, vae_lr=3e-3,
                                           init_bounds=(-1.0, 1.0))),
}


def get_recipe(name: str) -> Recipe:
    """The recipe of a built-in data set (``ValueError`` listing the names otherwise)."""
    if name not in RECIPES:
        raise ValueError(f"no recipe for {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]


def build_teacher(backend: ModuleType, dataset: Dataset, recipe: Recipe, seed: int = 0, device: Any = None):
    """A backend's ``VariationalMCMCTeaching`` with the default networks of ``recipe``.

    ``device`` (Torch only) is where the networks, and so the whole run, live; the
    networks are initialised on the CPU first, so a seed gives the same initial
    weights on every device. The JAX backend places its arrays on JAX's default
    device (``jax.default_device``), so ``device`` must stay ``None`` there.
    """
    event = dataset.event_shape
    energy_net, encoder, decoder = backend.nets.default_networks(
        event, recipe.latent_dim, image_shape=dataset.image_shape, hidden=recipe.hidden, rng=seed)
    energy = backend.EnergyModel(energy_net, event, ref_scale=recipe.ref_scale)
    vae = backend.VAE(encoder, decoder, recipe.latent_dim, event, obs_scale=recipe.obs_scale,
                      kl_weight=recipe.kl_weight)
    energy, vae = to_device(energy, device), to_device(vae, device)
    return backend.VariationalMCMCTeaching(energy, vae, recipe.config, rng=seed)


def to_device(module: Any, device: Any) -> Any:
    """``module.to(device)`` for a Torch module; ``module`` itself when ``device`` is ``None``."""
    if device is None:
        return module
    if not hasattr(module, "to"):
        raise ValueError("device= places Torch modules only; for JAX use jax.default_device")
    return module.to(device)


def to_numpy(x: Any) -> np.ndarray:
    """A backend array (torch tensor on any device, jax array) as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)
