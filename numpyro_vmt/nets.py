"""Default networks (JAX / equinox): an MLP for vectors and a small conv net for images.

The same layers in the same order with the same parameter shapes as the torch
backend (``pyro_vmt.nets``): equinox's ``Linear`` and ``Conv2d`` store their weights
in torch's layouts (``(out, in)`` and ``(out, in, kh, kw)``; equinox keeps a conv
bias as ``(out, 1, 1)`` where torch has ``(out,)``), so weights copy across
frameworks. SiLU activations keep the energy smooth, which Langevin dynamics needs
(a ReLU energy has a piecewise-constant gradient).

Like the torch networks, these act on a *batch*: ``(n, *shape) -> (n, ...)``.

The one difference from the torch signatures: JAX has no global RNG, so
[`MLP`][numpyro_vmt.nets.MLP] and [`ConvEnergyNet`][numpyro_vmt.nets.ConvEnergyNet] take a keyword-only ``rng`` (an int seed or
a ``jax.random`` key) for their initialisation, where torch draws from its global
RNG. [`default_networks()`][numpyro_vmt.nets.default_networks] has the same signature in both backends.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import equinox as eqx
import jax

from numpyro_vmt.rng import RNG, as_rng

__all__ = ["MLP", "ConvEnergyNet", "default_networks", "conditional_networks"]


def _linear(layer: eqx.nn.Linear, h: jax.Array) -> jax.Array:
    return h @ layer.weight.T + layer.bias


def _key(rng: RNG) -> jax.Array:
    key = as_rng(rng)
    if key is None:
        raise ValueError("rng is required: pass a jax.random key or an int seed")
    return key


class MLP(eqx.Module):
    """Fully connected network on flattened inputs: ``(n, *shape) -> (n, out_features)``.

    Parameters
    ----------
    in_features, out_features : int
    hidden : sequence of int
        Widths of the hidden layers, each followed by SiLU.
    rng : int or jax.random key, keyword-only
        Seed of the initialisation (equinox's default, the same law as torch's).
    """

    layers: Tuple[eqx.nn.Linear, ...]

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (128, 128), *,
                 rng: RNG):
        widths = [int(in_features), *map(int, hidden), int(out_features)]
        keys = jax.random.split(_key(rng), len(widths) - 1)
        self.layers = tuple(eqx.nn.Linear(a, b, key=k) for a, b, k in zip(widths[:-1], widths[1:], keys))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            h = jax.nn.silu(_linear(layer, h))
        return _linear(self.layers[-1], h)


class ConvEnergyNet(eqx.Module):
    """Small conv net for single-channel images given as flat vectors: ``(n, H·W) -> (n,)``.

    Three convolutions (3×3 stride 1, then two 4×4 stride 2, each halving the side)
    with SiLU, and a linear read-out. For 8×8 digits: 8×8 → 8×8 → 4×4 → 2×2.
    Each sample is a channel-first ``(1, H, W)`` array; the batch is ``vmap``-ed.
    """

    convs: Tuple[eqx.nn.Conv2d, ...]
    out: eqx.nn.Linear
    image_shape: Tuple[int, int] = eqx.field(static=True)

    def __init__(self, image_shape: Tuple[int, int] = (8, 8), channels: Sequence[int] = (16, 32, 64), *,
                 rng: RNG):
        self.image_shape = tuple(int(d) for d in image_shape)
        if len(self.image_shape) != 2 or any(d < 4 or d % 4 for d in self.image_shape):
            raise ValueError(f"image_shape must be (H, W) with sides divisible by 4, got {image_shape!r}")
        c1, c2, c3 = (int(c) for c in channels)
        k1, k2, k3, k4 = jax.random.split(_key(rng), 4)
        self.convs = (
            eqx.nn.Conv2d(1, c1, 3, stride=1, padding=1, key=k1),
            eqx.nn.Conv2d(c1, c2, 4, stride=2, padding=1, key=k2),
            eqx.nn.Conv2d(c2, c3, 4, stride=2, padding=1, key=k3),
        )
        h, w = self.image_shape
        self.out = eqx.nn.Linear(c3 * (h // 4) * (w // 4), 1, key=k4)

    def _one(self, h: jax.Array) -> jax.Array:
        for conv in self.convs:
            h = jax.nn.silu(conv(h))
        return self.out(h.reshape(-1))[0]

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.reshape(x.shape[0], 1, *self.image_shape)
        return jax.vmap(self._one)(h)


def default_networks(event_shape: Sequence[int], latent_dim: int,
                     image_shape: Optional[Tuple[int, int]] = None,
                     hidden: Sequence[int] = (128, 128), rng: int = 0) -> Tuple[eqx.Module, eqx.Module, eqx.Module]:
    """``(energy_net, encoder, decoder)`` for data of ``event_shape``, initialised from seed ``rng``.

    The energy is a [`ConvEnergyNet`][numpyro_vmt.nets.ConvEnergyNet] when ``image_shape`` is given, else an
    [`MLP`][numpyro_vmt.nets.MLP]; encoder (``→ 2·latent_dim``: location and pre-softplus scale) and
    decoder (``latent_dim →`` data) are MLPs. The three networks get the three keys
    of ``jax.random.split(rng, 3)``. The parameter dtype is JAX's default float
    (float64 when ``jax_enable_x64`` is on).
    """
    dim = math.prod(int(d) for d in event_shape)
    k_energy, k_enc, k_dec = jax.random.split(_key(rng), 3)
    energy = (ConvEnergyNet(image_shape, rng=k_energy) if image_shape is not None
              else MLP(dim, 1, hidden, rng=k_energy))
    encoder = MLP(dim, 2 * latent_dim, hidden, rng=k_enc)
    decoder = MLP(latent_dim, dim, hidden, rng=k_dec)
    return energy, encoder, decoder


def conditional_networks(event_shape: Sequence[int], cond_shape: Sequence[int], latent_dim: int,
                         hidden: Sequence[int] = (128, 128), rng: int = 0) -> Tuple[eqx.Module, eqx.Module, eqx.Module]:
    """``(energy_net, encoder, decoder)`` MLPs for ``y`` of ``event_shape`` given ``x`` of ``cond_shape``.

    Energy ``[y, x] -> 1``, encoder ``[y, x] -> 2·latent_dim``, decoder ``[z, x] -> y``;
    the three get the keys of ``jax.random.split(rng, 3)``. The torch backend builds
    the same layers (``pyro_vmt.nets``).
    """
    dy, dx = math.prod(int(d) for d in event_shape), math.prod(int(d) for d in cond_shape)
    k_energy, k_enc, k_dec = jax.random.split(_key(rng), 3)
    return (MLP(dy + dx, 1, hidden, rng=k_energy), MLP(dy + dx, 2 * latent_dim, hidden, rng=k_enc),
            MLP(latent_dim + dx, dy, hidden, rng=k_dec))
