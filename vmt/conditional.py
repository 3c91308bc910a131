r"""The backend-neutral part of conditional variational MCMC teaching.

Both backends' ``conditional`` modules (:mod:`pyro_vmt.conditional`,
:mod:`numpyro_vmt.conditional`) check their input with these functions, so the same
bad input is rejected with the same message whichever backend runs it. Also here:
the recipes of the three built-in supervised tasks (:mod:`vmt.tasks`) and
:func:`build_conditional_teacher`, which turns a recipe into a backend's
``ConditionalVariationalMCMCTeaching`` through the names every backend exports.

The algorithm is the one of Xie, Zheng & Li, "Learning Energy-Based Model with
Variational Auto-Encoder as Amortized Sampler", AAAI 2021
(https://arxiv.org/abs/2012.14936), applied to pairs :math:`(x, y)`: the energy is
:math:`E_\theta(y \mid x)`, the Langevin runs move :math:`y` with :math:`x` fixed and
start at the conditional VAE's :math:`g_\alpha(z, x)`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Sequence, Tuple

from vmt.config import TeachingConfig
from vmt.recipes import Recipe, to_device

__all__ = [
    "CONDITIONAL_INITS",
    "check_conditional_config",
    "split_pair",
    "shape_text",
    "ConditionalRecipe",
    "CONDITIONAL_RECIPES",
    "get_conditional_recipe",
    "build_conditional_teacher",
]

#: The initialisations the conditional teacher supports. A replay buffer of ``y``
#: (``"persistent"``) has no ``x`` to pair its chains with, so it is refused.
CONDITIONAL_INITS = ("vae", "noise", "generator")


def check_conditional_config(config: TeachingConfig) -> None:
    """Raise ``ValueError`` for options the conditional teacher cannot honour."""
    if config.init not in CONDITIONAL_INITS:
        raise ValueError(f"the conditional teacher supports init in {CONDITIONAL_INITS}, got {config.init!r}: "
                         "a replay buffer of y has no x to pair its chains with")
    if config.num_samples is not None:
        raise ValueError("num_samples must be None for the conditional teacher: every pair (x, y) of a "
                         f"batch gets one Langevin chain, started at its own x; got {config.num_samples!r}")


def split_pair(batch: Any, name: str = "batch") -> Tuple[Any, Any]:
    """``(x, y)`` from a pair (tuple or list of two arrays); ``ValueError`` otherwise."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = f"{type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) \
            else type(batch).__name__
        raise ValueError(f"{name} must be a pair (x, y) of arrays with one row per example, got {what}")
    return batch[0], batch[1]


def shape_text(shape: Sequence[int]) -> str:
    """``(n, 3, 4)`` for an event shape ``(3, 4)``: the batched shape, as error messages write it."""
    return f"(n, {', '.join(map(str, shape))})"


# ---------------------------------------------------------------------- recipes
# The fields of an unconditional recipe mean the same here: the three MLPs are the
# energy on [y, x], the encoder on [y, x] and the decoder on [z, x].
ConditionalRecipe = Recipe


CONDITIONAL_RECIPES = {
    # Digits: half-strength Langevin noise (the reference code uses none on images) and a
    # sharp VAE likelihood (σ = 0.1) train both tasks in 1500 iterations, in both backends.
    "completion": ConditionalRecipe(
        latent_dim=8, hidden=(256, 256), obs_scale=0.1, num_iters=1500, batch_size=100,
        config=TeachingConfig(step_size=0.05, num_steps=20, noise_scale=0.5, energy_lr=1e-3, vae_lr=3e-3)),
    "class": ConditionalRecipe(
        latent_dim=8, hidden=(256, 256), obs_scale=0.1, num_iters=1500, batch_size=100,
        config=TeachingConfig(step_size=0.05, num_steps=20, noise_scale=0.5, energy_lr=1e-3, vae_lr=3e-3)),
    "regression1d": ConditionalRecipe(
        latent_dim=1, hidden=(32, 32), ref_scale=3.0, obs_scale=0.05, num_iters=2000, batch_size=200,
        config=TeachingConfig(step_size=0.05, num_steps=20, energy_lr=3e-3, vae_lr=3e-3,
                              init_bounds=(-3.0, 3.0))),
}


def get_conditional_recipe(name: str) -> ConditionalRecipe:
    """The recipe of a built-in supervised task (``ValueError`` listing the names otherwise)."""
    if name not in CONDITIONAL_RECIPES:
        raise ValueError(f"no conditional recipe for {name!r}; choose one of {sorted(CONDITIONAL_RECIPES)}")
    return CONDITIONAL_RECIPES[name]


def build_conditional_teacher(backend: ModuleType, task: Any, recipe: ConditionalRecipe, seed: int = 0,
                              device: Any = None):
    """A backend's ``ConditionalVariationalMCMCTeaching`` with the MLPs of ``recipe`` for ``task``.

    ``task`` is a :class:`vmt.tasks.ConditionalTask` (anything with ``event_shape``
    and ``cond_shape``). The networks come from the backend's
    ``conditional.conditional_networks`` with seed ``seed``; ``device`` as in
    :func:`vmt.recipes.build_teacher`.
    """
    event, cond = task.event_shape, task.cond_shape
    energy_net, encoder, decoder = backend.conditional.conditional_networks(
        event, cond, recipe.latent_dim, hidden=recipe.hidden, rng=seed)
    energy = backend.ConditionalEnergyModel(energy_net, event, cond, ref_scale=recipe.ref_scale)
    vae = backend.ConditionalVAE(encoder, decoder, recipe.latent_dim, event, cond, obs_scale=recipe.obs_scale,
                                 kl_weight=recipe.kl_weight)
    energy, vae = to_device(energy, device), to_device(vae, device)
    return backend.ConditionalVariationalMCMCTeaching(energy, vae, recipe.config, rng=seed)
