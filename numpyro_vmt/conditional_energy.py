r"""A conditional energy-based model ``E(y | x)`` (JAX / equinox).

$$
p_\theta(y \mid x) = \frac{\exp(-E_\theta(y \mid x))}{Z_\theta(x)}, \qquad
E_\theta(y \mid x) = U_\theta(y, x) + \frac{\lVert y \rVert^2}{2 s^2},
$$

the model of the conditional form of variational MCMC teaching (Xie, Zheng & Li,
AAAI 2021, https://arxiv.org/abs/2012.14936), trained by
[`ConditionalVariationalMCMCTeaching`][numpyro_vmt.conditional.ConditionalVariationalMCMCTeaching].
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from vmt.core.batch import shape_text

__all__ = ["ConditionalEnergyModel"]

Array = jax.Array


def _shape(name: str, shape: Sequence[int]) -> Tuple[int, ...]:
    out = tuple(int(d) for d in shape)
    if not out or any(d < 1 for d in out):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {shape!r}")
    return out


def _flat(t: Array) -> Array:
    return t.reshape(t.shape[0], -1)


def _is_array(t: Any) -> bool:
    return isinstance(t, (jax.Array, np.ndarray))


def _shape_of(t: Any):
    return tuple(t.shape) if _is_array(t) else type(t).__name__


@eqx.filter_jit
def _energies(model, y, x):
    return model(y, x)


class ConditionalEnergyModel(eqx.Module):
    r"""Wrap ``net`` into ``E(y | x)``, one scalar per pair.

    $$
    E_\theta(y \mid x) = U_\theta(y, x) + \lVert y \rVert^2 / (2 s^2)
    $$

    Parameters
    ----------
    net : equinox.Module
        With ``concat=True``: maps the concatenation ``[flatten(y), flatten(x)]``,
        shape ``(n, prod(event_shape) + prod(cond_shape))``, to ``(n,)`` or ``(n, 1)``.
        With ``concat=False``: called as ``net(y, x)`` on the unflattened batches.
    event_shape : sequence of int
        Shape of one ``y`` (what Langevin dynamics moves).
    cond_shape : sequence of int
        Shape of one conditioning input ``x``.
    ref_scale : float, optional
        Scale ``s`` of the Gaussian reference term on ``y``; ``None`` for none.
    concat : bool
        How ``net`` is called (see ``net``).
    """

    net: eqx.Module
    event_shape: Tuple[int, ...] = eqx.field(static=True)
    cond_shape: Tuple[int, ...] = eqx.field(static=True)
    ref_scale: Optional[float] = eqx.field(static=True)
    concat: bool = eqx.field(static=True)

    def __init__(self, net: eqx.Module, event_shape: Sequence[int], cond_shape: Sequence[int],
                 ref_scale: Optional[float] = None, concat: bool = True):
        if not isinstance(net, eqx.Module):
            raise TypeError(f"net must be an equinox.Module, got {type(net).__name__}")
        self.net = net
        self.event_shape = _shape("event_shape", event_shape)
        self.cond_shape = _shape("cond_shape", cond_shape)
        if ref_scale is not None and not (isinstance(ref_scale, (int, float)) and math.isfinite(ref_scale)
                                          and ref_scale > 0):
            raise ValueError(f"ref_scale must be a positive finite number or None, got {ref_scale!r}")
        self.ref_scale = None if ref_scale is None else float(ref_scale)
        self.concat = bool(concat)

    def __call__(self, y: Array, x: Array) -> Array:
        """Energies ``E(y | x)``, shape ``(n,)``, for ``y`` ``(n, *event_shape)`` and ``x`` ``(n, *cond_shape)``."""
        if not _is_array(y) or y.ndim < 1 or tuple(y.shape[1:]) != self.event_shape:
            raise ValueError(f"ConditionalEnergyModel expects y of shape {shape_text(self.event_shape)}, "
                             f"got {_shape_of(y)}")
        if not _is_array(x) or x.ndim < 1 or tuple(x.shape[1:]) != self.cond_shape:
            raise ValueError(f"ConditionalEnergyModel expects x of shape {shape_text(self.cond_shape)}, "
                             f"got {_shape_of(x)}")
        n = y.shape[0]
        if x.shape[0] != n:
            raise ValueError(f"y has {n} rows but x has {x.shape[0]}")
        x = jnp.asarray(x, dtype=y.dtype)
        out = self.net(jnp.concatenate([_flat(y), _flat(x)], 1)) if self.concat else self.net(y, x)
        if out.shape == (n, 1):
            out = out[:, 0]
        if out.shape != (n,):
            raise ValueError(f"the energy network must return one scalar per sample, shape ({n},) or ({n}, 1); "
                             f"got {tuple(out.shape)} for {n} pairs")
        if self.ref_scale is not None:
            out = out + (_flat(y) ** 2).sum(1) / (2 * self.ref_scale ** 2)
        return out

    def potential(self, x: Array) -> Callable[[Array], Array]:
        """The potential ``y ↦ E(y | x)`` for a fixed batch ``x`` (for [`Langevin`][numpyro_vmt.langevin.Langevin])."""
        return lambda y: self(y, x)

    def numpy_energy(self, y, x, batch_size: int = 65536):
        """``E(y | x)`` of numpy arrays (one row each) as a float64 numpy array (metrics, plots)."""
        leaves = [a for a in jax.tree.leaves(self) if eqx.is_inexact_array(a)]
        dtype = leaves[0].dtype if leaves else None
        y, x = np.asarray(y), np.asarray(x)
        out = [np.asarray(_energies(self, jnp.asarray(y[i:i + batch_size], dtype=dtype),
                                    jnp.asarray(x[i:i + batch_size], dtype=dtype)), dtype=np.float64)
               for i in range(0, len(y), batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def model(self, x: Array, y: Optional[Array] = None) -> Array:
        """NumPyro model of ``p(y | x) ∝ exp(−E(y | x))``: an improper flat site ``"y"`` plus a factor.

        ``x`` is an ordinary argument: a batch ``(n, *cond_shape)`` gives ``n``
        independent ``y`` inside ``numpyro.plate("data", n)``; a single ``x`` of shape
        ``cond_shape`` gives one ``y``. A given ``y`` is observed: the model's log
        density is then the unnormalised ``−E(y | x)``.
        """
        support = dist.ImproperUniform(constraints.real, (), self.event_shape)
        if _is_array(x) and tuple(x.shape) == self.cond_shape:
            y = numpyro.sample("y", support, obs=y)  # any batch dims of y share x
            flat = y.reshape((-1,) + tuple(self.event_shape))
            energy = self(flat, jnp.broadcast_to(x, (flat.shape[0],) + tuple(self.cond_shape)))
            numpyro.factor("energy", -energy.reshape(y.shape[:y.ndim - len(self.event_shape)]))
            return y
        if not _is_array(x) or tuple(x.shape[1:]) != self.cond_shape:
            raise ValueError(f"ConditionalEnergyModel expects x of shape {shape_text(self.cond_shape)}, "
                             f"got {_shape_of(x)}")
        with numpyro.plate("data", x.shape[0]):
            y = numpyro.sample("y", support, obs=y)
            numpyro.factor("energy", -self(y, x))
        return y
