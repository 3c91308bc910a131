r"""Energy-based model: a network turned into a per-sample energy (PyTorch / Pyro).

$$
E_\theta(x) = U_\theta(x) + \frac{\lVert x \rVert^2}{2 s^2},
\qquad p_\theta(x) \propto \exp(-E_\theta(x)),
$$

where $U_\theta$ is the network and the optional Gaussian reference term of
scale $s$ (``ref_scale``) is the one of the reference implementation of
Xie, Zheng & Li (AAAI 2021, https://arxiv.org/abs/2012.14936). The sign convention
is Pyro's ``potential_fn``: energy is the negative log unnormalised density.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from vmt.core.errors import energy_dtype_message

__all__ = ["EnergyModel"]


class EnergyModel(nn.Module):
    """Wrap ``net`` into ``E(x)``, one scalar per sample.

    Parameters
    ----------
    net : torch.nn.Module
        Maps a batch ``(n, *event_shape)`` to ``(n,)`` or ``(n, 1)``.
    event_shape : sequence of int
        Shape of one sample, e.g. ``(2,)`` or ``(64,)``.
    ref_scale : float, optional
        Scale ``s`` of the Gaussian reference term ``‖x‖²/(2s²)``; ``None`` for none.

    Notes
    -----
    The module is also a Pyro model (`model()`) with a ``pyro.factor`` site, so
    it runs under ``pyro.infer.MCMC`` or inside a user's own model as a learned prior.
    """

    def __init__(self, net: nn.Module, event_shape: Sequence[int], ref_scale: Optional[float] = None):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self.event_shape = tuple(int(d) for d in event_shape)
        if not self.event_shape or any(d < 1 for d in self.event_shape):
            raise ValueError(f"event_shape must be a non-empty tuple of positive ints, got {event_shape!r}")
        if ref_scale is not None and not (isinstance(ref_scale, (int, float)) and math.isfinite(ref_scale)
                                          and ref_scale > 0):
            raise ValueError(f"ref_scale must be a positive finite number or None, got {ref_scale!r}")
        self.ref_scale = None if ref_scale is None else float(ref_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Energies ``E(x)``, shape ``(n,)``, for ``x`` of shape ``(n, *event_shape)``."""
        if x.shape[1:] != self.event_shape:
            raise ValueError(
                f"EnergyModel expects inputs of shape (n, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        out = self.net(x)
        if not out.is_floating_point():
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
            out = out + x.reshape(n, -1).pow(2).sum(1) / (2 * self.ref_scale ** 2)
        return out

    @torch.no_grad()
    def numpy_energy(self, x, batch_size: int = 65536):
        """Energies of a numpy array ``(n, *event_shape)`` as a float64 numpy array (for metrics and plots)."""
        p = next(self.parameters(), None)
        like = dict(dtype=p.dtype, device=p.device) if p is not None else {}
        out = [self(torch.as_tensor(np.asarray(x[i:i + batch_size]), **like)).cpu().double().numpy()
               for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def model(self, num_samples: Optional[int] = None) -> torch.Tensor:
        """Pyro model of ``p(x) ∝ exp(−E(x))``: an improper flat site ``"x"`` plus a factor.

        With ``num_samples``, ``"x"`` carries a batch of that many independent draws
        (inside ``pyro.plate("samples", num_samples)``). The energy is evaluated over
        whatever batch dimensions ``x`` has (the plates of an enclosing model, the
        chains of a vectorised kernel), so the model can be called inside a larger
        one as its prior. The flat site's ``sample`` gives the origin: nothing can be
        drawn from an improper density, but ``pyro.infer.MCMC``'s initialisation
        (``init_to_uniform`` reads only its shape) and plate-nesting guess can run,
        as they do with NumPyro's ``ImproperUniform``.
        """
        support = _FlatSite(self.event_shape, like=next(self.parameters(), None))
        if num_samples is None:
            x = pyro.sample("x", support)
            pyro.factor("energy", -self._batched(x))
            return x
        with pyro.plate("samples", num_samples):
            x = pyro.sample("x", support)
            pyro.factor("energy", -self._batched(x))
        return x

    def _batched(self, x: torch.Tensor) -> torch.Tensor:
        """``E`` over any leading batch dimensions of ``x``."""
        batch = x.shape[:x.dim() - len(self.event_shape)]
        return self(x.reshape((-1,) + tuple(self.event_shape))).reshape(batch)


class _FlatSite(dist.ImproperUniform):
    """The flat site of [`EnergyModel.model()`][pyro_vmt.energy.EnergyModel.model] (see there); ``sample`` returns zeros."""

    def __init__(self, event_shape, batch_shape=(), like: Optional[torch.Tensor] = None):
        super().__init__(constraints.real, batch_shape, event_shape)
        self._like = like

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        like = {} if self._like is None else {"dtype": self._like.dtype, "device": self._like.device}
        return torch.zeros(torch.Size(sample_shape) + self.batch_shape + self.event_shape, **like)

    def expand(self, batch_shape, _instance=None):
        new = super().expand(batch_shape, _instance=self._get_checked_instance(_FlatSite, _instance))
        new._like = self._like
        return new
