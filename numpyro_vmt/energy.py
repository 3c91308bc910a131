r"""Energy-based model: a network turned into a per-sample energy (JAX / NumPyro).

$$
E_\theta(x) = U_\theta(x) + \frac{\lVert x \rVert^2}{2 s^2},
\qquad p_\theta(x) \propto \exp(-E_\theta(x)),
$$

where $U_\theta$ is the network and the optional Gaussian reference term of
scale $s$ (``ref_scale``) is the one of the reference implementation of
Xie, Zheng & Li (AAAI 2021, https://arxiv.org/abs/2012.14936). The sign convention
is NumPyro's ``potential_fn``: energy is the negative log unnormalised density.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from vmt.core.errors import energy_dtype_message

__all__ = ["EnergyModel"]


@eqx.filter_jit
def _energies(model, x):
    return model(x)


class EnergyModel(eqx.Module):
    """Wrap ``net`` into ``E(x)``, one scalar per sample.

    Parameters
    ----------
    net : equinox.Module
        Maps a batch ``(n, *event_shape)`` to ``(n,)`` or ``(n, 1)`` (a batched
        network, as in the torch backend; wrap a per-sample equinox network in a
        module that ``jax.vmap``-s it).
    event_shape : sequence of int
        Shape of one sample, e.g. ``(2,)`` or ``(64,)``.
    ref_scale : float, optional
        Scale ``s`` of the Gaussian reference term ``‖x‖²/(2s²)``; ``None`` for none.

    Notes
    -----
    The module is an ``equinox.Module`` (a pytree: its parameters are the
    floating-point array leaves) and also gives a NumPyro model (`model()`)
    with a ``numpyro.factor`` site, so it runs under ``numpyro.infer.MCMC`` or
    inside a user's own model as a learned prior.
    """

    net: eqx.Module
    event_shape: Tuple[int, ...] = eqx.field(static=True)
    ref_scale: Optional[float] = eqx.field(static=True)

    def __init__(self, net: eqx.Module, event_shape: Sequence[int], ref_scale: Optional[float] = None):
        if not isinstance(net, eqx.Module):
            raise TypeError(f"net must be an equinox.Module, got {type(net).__name__}")
        self.net = net
        self.event_shape = tuple(int(d) for d in event_shape)
        if not self.event_shape or any(d < 1 for d in self.event_shape):
            raise ValueError(f"event_shape must be a non-empty tuple of positive ints, got {event_shape!r}")
        if ref_scale is not None and not (isinstance(ref_scale, (int, float)) and math.isfinite(ref_scale)
                                          and ref_scale > 0):
            raise ValueError(f"ref_scale must be a positive finite number or None, got {ref_scale!r}")
        self.ref_scale = None if ref_scale is None else float(ref_scale)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Energies ``E(x)``, shape ``(n,)``, for ``x`` of shape ``(n, *event_shape)``."""
        if x.shape[1:] != self.event_shape:
            raise ValueError(
                f"EnergyModel expects inputs of shape (n, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        out = self.net(x)
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(energy_dtype_message(out.dtype))
        n = x.shape[0]
        if out.shape == (n, 1):
            out = out[:, 0]
        if out.shape != (n,):
            raise ValueError(
                f"the energy network must return one scalar per sample, shape ({n},) or ({n}, 1); "
                f"got {tuple(out.shape)} for input of shape {tuple(x.shape)}"
            )
        if self.ref_scale is not None:
            out = out + (x.reshape(n, -1) ** 2).sum(1) / (2 * self.ref_scale ** 2)
        return out

    def numpy_energy(self, x, batch_size: int = 65536):
        """Energies of a numpy array ``(n, *event_shape)`` as a float64 numpy array (for metrics and plots)."""
        leaves = [a for a in jax.tree.leaves(self) if eqx.is_inexact_array(a)]
        dtype = leaves[0].dtype if leaves else None
        out = [np.asarray(_energies(self, jnp.asarray(np.asarray(x[i:i + batch_size]), dtype=dtype)), dtype=np.float64)
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def model(self, num_samples: Optional[int] = None) -> jax.Array:
        """NumPyro model of ``p(x) ∝ exp(−E(x))``: an improper flat site ``"x"`` plus a factor.

        With ``num_samples``, ``"x"`` carries a batch of that many independent draws
        (inside ``numpyro.plate("samples", num_samples)``). The energy is evaluated over
        whatever batch dimensions ``x`` has (the plates of an enclosing model), so the
        model can be called inside a larger one as its prior.
        """
        support = dist.ImproperUniform(constraints.real, (), self.event_shape)
        if num_samples is None:
            x = numpyro.sample("x", support)
            numpyro.factor("energy", -self._batched(x))
            return x
        with numpyro.plate("samples", num_samples):
            x = numpyro.sample("x", support)
            numpyro.factor("energy", -self._batched(x))
        return x

    def _batched(self, x: jax.Array) -> jax.Array:
        """``E`` over any leading batch dimensions of ``x``."""
        batch = x.shape[:x.ndim - len(self.event_shape)]
        return self(x.reshape((-1,) + tuple(self.event_shape))).reshape(batch)
