"""Default networks (PyTorch): an MLP for vectors and a small conv net for images.

The JAX backend (``numpyro_vmt.nets``) builds the same layers in the same order with
the same parameter shapes, so weights can be copied across frameworks.
SiLU activations keep the energy smooth, which Langevin dynamics needs (a ReLU
energy has a piecewise-constant gradient).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["MLP", "ConvEnergyNet", "default_networks", "conditional_networks"]


class MLP(nn.Module):
    """Fully connected network on flattened inputs: ``(n, *shape) -> (n, out_features)``.

    Parameters
    ----------
    in_features, out_features : int
    hidden : sequence of int
        Widths of the hidden layers, each followed by SiLU.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (128, 128)):
        super().__init__()
        widths = [int(in_features), *map(int, hidden), int(out_features)]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            h = nn.functional.silu(layer(h))
        return self.layers[-1](h)


class ConvEnergyNet(nn.Module):
    """Small conv net for single-channel images given as flat vectors: ``(n, H·W) -> (n,)``.

    Three convolutions (3×3 stride 1, then two 4×4 stride 2, each halving the side)
    with SiLU, and a linear read-out. For 8×8 digits: 8×8 → 8×8 → 4×4 → 2×2.
    """

    def __init__(self, image_shape: Tuple[int, int] = (8, 8), channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        self.image_shape = tuple(int(d) for d in image_shape)
        if len(self.image_shape) != 2 or any(d < 4 or d % 4 for d in self.image_shape):
            raise ValueError(f"image_shape must be (H, W) with sides divisible by 4, got {image_shape!r}")
        c1, c2, c3 = (int(c) for c in channels)
        self.convs = nn.ModuleList([
            nn.Conv2d(1, c1, 3, stride=1, padding=1),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.Conv2d(c2, c3, 4, stride=2, padding=1),
        ])
        h, w = self.image_shape
        self.out = nn.Linear(c3 * (h // 4) * (w // 4), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(x.shape[0], 1, *self.image_shape)
        for conv in self.convs:
            h = nn.functional.silu(conv(h))
        return self.out(h.flatten(1))[:, 0]


def default_networks(event_shape: Sequence[int], latent_dim: int,
                     image_shape: Optional[Tuple[int, int]] = None,
                     hidden: Sequence[int] = (128, 128), rng: int = 0) -> Tuple[nn.Module, nn.Module, nn.Module]:
    """``(energy_net, encoder, decoder)`` for data of ``event_shape``, initialised from seed ``rng``.

    The energy is a [`ConvEnergyNet`][pyro_vmt.nets.ConvEnergyNet] when ``image_shape`` is given, else an
    [`MLP`][pyro_vmt.nets.MLP]; encoder (``→ 2·latent_dim``: location and pre-softplus scale) and
    decoder (``latent_dim →`` data) are MLPs. Initialisation runs on a fork of
    torch's global RNG, which is left as it was.
    """
    dim = math.prod(int(d) for d in event_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng)
        energy = ConvEnergyNet(image_shape) if image_shape is not None else MLP(dim, 1, hidden)
        encoder = MLP(dim, 2 * latent_dim, hidden)
        decoder = MLP(latent_dim, dim, hidden)
    return energy, encoder, decoder


def conditional_networks(event_shape: Sequence[int], cond_shape: Sequence[int], latent_dim: int,
                         hidden: Sequence[int] = (128, 128), rng: int = 0) -> Tuple[nn.Module, nn.Module, nn.Module]:
    """``(energy_net, encoder, decoder)`` MLPs for ``y`` of ``event_shape`` given ``x`` of ``cond_shape``.

    Energy ``[y, x] -> 1``, encoder ``[y, x] -> 2·latent_dim``, decoder ``[z, x] -> y``,
    initialised from seed ``rng`` on a fork of torch's global RNG (left as it was).
    The JAX backend builds the same layers (``numpyro_vmt.nets``).
    """
    dy, dx = math.prod(int(d) for d in event_shape), math.prod(int(d) for d in cond_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng)
        return MLP(dy + dx, 1, hidden), MLP(dy + dx, 2 * latent_dim, hidden), MLP(latent_dim + dx, dy, hidden)
