r"""A conditional energy-based model ``E(y | x)`` (PyTorch / Pyro).

$$
p_\theta(y \mid x) = \frac{\exp(-E_\theta(y \mid x))}{Z_\theta(x)}, \qquad
E_\theta(y \mid x) = U_\theta(y, x) + \frac{\lVert y \rVert^2}{2 s^2},
$$

the model of the conditional form of variational MCMC teaching (Xie, Zheng & Li,
AAAI 2021, https://arxiv.org/abs/2012.14936), trained by
[`ConditionalVariationalMCMCTeaching`][pyro_vmt.conditional.ConditionalVariationalMCMCTeaching].
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import numpy as np
import pyro
import torch
from torch import nn

from pyro_vmt.energy import _FlatSite
from vmt.core.batch import shape_text

__all__ = ["ConditionalEnergyModel"]

Tensor = torch.Tensor


def _shape(name: str, shape: Sequence[int]) -> Tuple[int, ...]:
    out = tuple(int(d) for d in shape)
    if not out or any(d < 1 for d in out):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {shape!r}")
    return out


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _shape_of(t: Any):
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


class ConditionalEnergyModel(nn.Module):
    r"""Wrap ``net`` into ``E(y | x)``, one scalar per pair.

    $$
    E_\theta(y \mid x) = U_\theta(y, x) + \lVert y \rVert^2 / (2 s^2)
    $$

    Parameters
    ----------
    net : torch.nn.Module
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

    def __init__(self, net: nn.Module, event_shape: Sequence[int], cond_shape: Sequence[int],
                 ref_scale: Optional[float] = None, concat: bool = True):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self.event_shape = _shape("event_shape", event_shape)
        self.cond_shape = _shape("cond_shape", cond_shape)
        if ref_scale is not None and not (isinstance(ref_scale, (int, float)) and math.isfinite(ref_scale)
                                          and ref_scale > 0):
            raise ValueError(f"ref_scale must be a positive finite number or None, got {ref_scale!r}")
        self.ref_scale = None if ref_scale is None else float(ref_scale)
        self.concat = bool(concat)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        """Energies ``E(y | x)``, shape ``(n,)``, for ``y`` ``(n, *event_shape)`` and ``x`` ``(n, *cond_shape)``."""
        if not isinstance(y, Tensor) or y.ndim < 1 or tuple(y.shape[1:]) != self.event_shape:
            raise ValueError(f"ConditionalEnergyModel expects y of shape {shape_text(self.event_shape)}, "
                             f"got {_shape_of(y)}")
        if not isinstance(x, Tensor) or x.ndim < 1 or tuple(x.shape[1:]) != self.cond_shape:
            raise ValueError(f"ConditionalEnergyModel expects x of shape {shape_text(self.cond_shape)}, "
                             f"got {_shape_of(x)}")
        n = y.shape[0]
        if x.shape[0] != n:
            raise ValueError(f"y has {n} rows but x has {x.shape[0]}")
        out = self.net(torch.cat([_flat(y), _flat(x).to(y.dtype)], 1)) if self.concat else self.net(y, x)
        if out.shape == (n, 1):
            out = out[:, 0]
        if out.shape != (n,):
            raise ValueError(f"the energy network must return one scalar per sample, shape ({n},) or ({n}, 1); "
                             f"got {tuple(out.shape)} for {n} pairs")
        if self.ref_scale is not None:
            out = out + _flat(y).pow(2).sum(1) / (2 * self.ref_scale ** 2)
        return out

    def potential(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """The potential ``y ↦ E(y | x)`` for a fixed batch ``x`` (for [`Langevin`][pyro_vmt.langevin.Langevin])."""
        return lambda y: self(y, x)

    @torch.no_grad()
    def numpy_energy(self, y, x, batch_size: int = 65536):
        """``E(y | x)`` of numpy arrays (one row each) as a float64 numpy array (metrics, plots)."""
        p = next(self.parameters(), None)
        like = dict(dtype=p.dtype, device=p.device) if p is not None else {}
        y, x = np.asarray(y), np.asarray(x)
        out = [self(torch.as_tensor(y[i:i + batch_size], **like), torch.as_tensor(x[i:i + batch_size], **like))
               .cpu().double().numpy() for i in range(0, len(y), batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def model(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Pyro model of ``p(y | x) ∝ exp(−E(y | x))``: an improper flat site ``"y"`` plus a factor.

        ``x`` is an ordinary argument: a batch ``(n, *cond_shape)`` gives ``n``
        independent ``y`` inside ``pyro.plate("data", n)``; a single ``x`` of shape
        ``cond_shape`` gives one ``y`` (or one per chain of a vectorised kernel). A given
        ``y`` is observed: the model's log density is then the unnormalised ``−E(y | x)``.
        Sampling ``y`` with ``pyro.infer.MCMC`` works as for `EnergyModel.model()`.
        """
        support = _FlatSite(self.event_shape, like=next(self.parameters(), None))  # see EnergyModel.model
        if isinstance(x, Tensor) and tuple(x.shape) == self.cond_shape:
            y = pyro.sample("y", support, obs=y)  # any batch dims of y (a kernel's chains) share x
            flat = y.reshape((-1,) + tuple(self.event_shape))
            energy = self(flat, x.expand((flat.shape[0],) + tuple(self.cond_shape)))
            pyro.factor("energy", -energy.reshape(y.shape[:y.dim() - len(self.event_shape)]))
            return y
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.cond_shape:
            raise ValueError(f"ConditionalEnergyModel expects x of shape {shape_text(self.cond_shape)}, "
                             f"got {_shape_of(x)}")
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", support, obs=y)
            pyro.factor("energy", -self(y, x))
        return y
