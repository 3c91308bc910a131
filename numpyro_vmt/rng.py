"""Randomness as an argument: an int seed or a ``jax.random`` key, never a global RNG."""

from __future__ import annotations

from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from vmt.core.checks import as_seed
from vmt.core.errors import ArgumentTypeError

__all__ = ["RNG", "as_rng"]

#: What every ``rng`` argument of the JAX backend takes.
RNG = Union[None, int, jax.Array]


def as_rng(rng: RNG, device: Any = None) -> Optional[jax.Array]:
    """A ``jax.random`` key from an int seed, or a given key (``None`` stays ``None``).

    The JAX form of randomness as an argument; [`pyro_vmt.as_rng()`][pyro_vmt.rng.as_rng] is its Torch
    twin. ``device`` is accepted for the same signature and unused: a key is placed
    where the computation that consumes it runs.
    """
    if rng is None:
        return None
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        as_seed(rng, "rng")
        return jax.random.PRNGKey(int(rng))
    if isinstance(rng, (jax.Array, np.ndarray)) and (
            jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) or rng.dtype == jnp.uint32):
        return rng
    raise ArgumentTypeError(f"rng must be a jax.random key or an int seed, got {type(rng).__name__}")
