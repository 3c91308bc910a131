r"""A conditional EBM and VAE with their conditioning input bound (JAX).

The proposal-path machinery of [`numpyro_vmt.correction`][numpyro_vmt.correction] and
[`numpyro_vmt.mh`][numpyro_vmt.mh] works on an unconditional energy ``E(y)`` and VAE. For
the conditional teacher each chain ``j`` targets $p_\theta(y \mid x_j) \propto
e^{-E_\theta(y \mid x_j)}$ and proposes from the conditional VAE at the same ``x_j``;
binding the batch ``x`` (one row per chain) turns the pair into exactly those
unconditional objects:

$$
E_x(y_j) = E_\theta(y_j \mid x_j), \qquad g_x(z_j) = g_\alpha(z_j, x_j), \qquad
r_x(z_j \mid y_j) = q_\phi(z_j \mid y_j, x_j).
$$
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import equinox as eqx
import jax

__all__ = ["GivenEnergy", "GivenVAE", "given"]

Array = jax.Array


class GivenEnergy(eqx.Module):
    """``y ↦ E(y | x)`` for the fixed batch ``x`` (row ``j`` of ``y`` with row ``j`` of ``x``)."""

    energy: Any
    x: Array

    @property
    def event_shape(self):
        return self.energy.event_shape

    def __call__(self, y: Array) -> Array:
        return self.energy(y, self.x)


class GivenVAE(eqx.Module):
    """The conditional VAE at the fixed batch ``x``: ``encode(y)``, ``decode(z)``, ``scale()``."""

    vae: Any
    x: Array

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    def scale(self) -> Array:
        return self.vae.scale()

    def encode(self, y: Array) -> Tuple[Array, Array]:
        return self.vae.encode(y, self.x)

    def decode(self, z: Array) -> Array:
        return self.vae.decode(z, self.x)


def given(energy: Any, vae: Optional[Any], x: Array) -> Tuple[GivenEnergy, Optional[GivenVAE]]:
    """``(E(· | x), VAE(· | x))``; the VAE stays ``None`` without one."""
    return GivenEnergy(energy, x), None if vae is None else GivenVAE(vae, x)
