r"""A conditional EBM and VAE with their conditioning input bound (PyTorch).

The mirror of [`numpyro_vmt.given`][numpyro_vmt.given]: for the conditional teacher's
exact (``correction="mh"``) chains, chain ``j`` targets $p_\theta(y \mid x_j)$ and
proposes from the conditional VAE at the same ``x_j``; binding the batch ``x`` (one
row per chain) gives the unconditional energy and VAE that
[`pyro_vmt.correction`][pyro_vmt.correction] and [`pyro_vmt.mh`][pyro_vmt.mh] work on:

$$
E_x(y_j) = E_\theta(y_j \mid x_j), \qquad g_x(z_j) = g_\alpha(z_j, x_j), \qquad
r_x(z_j \mid y_j) = q_\phi(z_j \mid y_j, x_j).
$$
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn

__all__ = ["GivenEnergy", "GivenVAE", "given"]

Tensor = torch.Tensor


class GivenEnergy(nn.Module):
    """``y ↦ E(y | x)`` for the fixed batch ``x`` (row ``j`` of ``y`` with row ``j`` of ``x``)."""

    def __init__(self, energy: nn.Module, x: Tensor):
        super().__init__()
        self.energy, self.x = energy, x

    @property
    def event_shape(self):
        return self.energy.event_shape

    def forward(self, y: Tensor) -> Tensor:
        return self.energy(y, self.x)


class GivenVAE(nn.Module):
    """The conditional VAE at the fixed batch ``x``: ``encode(y)``, ``decode(z)``, ``scale()``."""

    def __init__(self, vae: nn.Module, x: Tensor):
        super().__init__()
        self.vae, self.x = vae, x

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    def scale(self) -> Tensor:
        return self.vae.scale()

    def encode(self, y: Tensor) -> Tuple[Tensor, Tensor]:
        return self.vae.encode(y, self.x)

    def decode(self, z: Tensor) -> Tensor:
        return self.vae.decode(z, self.x)


def given(energy: Any, vae: Optional[Any], x: Tensor) -> Tuple[GivenEnergy, Optional[GivenVAE]]:
    """``(E(· | x), VAE(· | x))``; the VAE stays ``None`` without one."""
    return GivenEnergy(energy, x), None if vae is None else GivenVAE(vae, x)
