"""Randomness as an argument: an int seed or a ``torch.Generator``, never a global RNG."""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from vmt.core.checks import as_seed
from vmt.core.errors import ArgumentTypeError

__all__ = ["RNG", "as_rng"]

#: What every ``rng`` argument of the Torch backend takes.
RNG = Union[None, int, torch.Generator]


def as_rng(rng: RNG, device: Optional[torch.device] = None) -> Optional[torch.Generator]:
    """A ``torch.Generator`` on ``device`` from an int seed, or a given generator (``None`` stays ``None``).

    The Torch form of randomness as an argument; [`numpyro_vmt.as_rng()`][numpyro_vmt.rng.as_rng] is its JAX
    twin (a ``jax.random`` key from a seed or a key).
    """
    if rng is None or isinstance(rng, torch.Generator):
        return rng
    if not isinstance(rng, bool) and isinstance(rng, (int, np.integer)):
        as_seed(rng, "rng")
        return torch.Generator(device=device or "cpu").manual_seed(int(rng))
    raise ArgumentTypeError(f"rng must be a torch.Generator or an int seed, got {type(rng).__name__}")
