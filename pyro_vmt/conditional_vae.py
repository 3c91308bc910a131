r"""A conditional Gaussian VAE for Pyro's SVI: the amortised sampler of ``p(y | x)`` (PyTorch).

$$
z \sim \mathcal N(0, I), \quad y \mid z, x \sim \mathcal N(g_\alpha(z, x), \sigma^2 I), \quad
q_\phi(z \mid y, x) = \mathcal N(\mu_\phi(y, x), \operatorname{diag} s_\phi(y, x)^2),
$$

the proposal of the conditional form of variational MCMC teaching (Xie, Zheng & Li,
AAAI 2021, https://arxiv.org/abs/2012.14936).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import pyro
import torch
from pyro import poutine
from pyro.nn import pyro_method
from torch import nn

from pyro_vmt.conditional_energy import _flat, _shape, _shape_of
from pyro_vmt.rng import RNG, as_rng
from pyro_vmt.vae import VAE, _LocalParams, reparameterised_elbo, rng_for_pyro
from vmt.core.batch import shape_text

__all__ = ["ConditionalVAE"]

Tensor = torch.Tensor


class ConditionalVAE(VAE):
    r"""Conditional Gaussian VAE with ``model(y, x)``/``guide(y, x)`` for Pyro's SVI.

    $$
    z \sim \mathcal N(0, I), \quad y \mid z, x \sim \mathcal N(g_\alpha([z, x]), \sigma^2),
    \quad q_\phi(z \mid y, x) = \mathcal N(\mu_\phi([y, x]), \operatorname{diag} s_\phi([y, x])^2),
    $$

    the ELBO $\mathbb E_q[\log p_\alpha(y \mid z, x)] - \beta\,\mathrm{KL}(q_\phi(z \mid y, x)\,\|\,p(z))$.
    A [`VAE`][pyro_vmt.vae.VAE] whose encoder reads ``[flatten(y), flatten(x)]`` and
    whose decoder reads ``[z, flatten(x)]``; parameters are handled exactly as
    there (``pyro_method``: a user's plain ``SVI(cvae.model, cvae.guide, ...)`` trains
    the weights; the library's `elbo_loss()` uses module-local parameters).

    Parameters
    ----------
    encoder : torch.nn.Module
        ``(n, prod(event_shape) + prod(cond_shape)) -> (n, 2·latent_dim)``.
    decoder : torch.nn.Module
        ``(n, latent_dim + prod(cond_shape)) -> (n, prod(event_shape))``.
    latent_dim : int
    event_shape, cond_shape : sequence of int
        Shapes of one ``y`` and one ``x``.
    obs_scale, kl_weight, name
        As for [`VAE`][pyro_vmt.vae.VAE].
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, event_shape: Sequence[int],
                 cond_shape: Sequence[int], obs_scale: Optional[float] = None, kl_weight: float = 1.0,
                 name: str = ""):
        super().__init__(encoder, decoder, latent_dim, event_shape, obs_scale, kl_weight, name)
        self.cond_shape = _shape("cond_shape", cond_shape)

    def encode(self, y: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Location and scale of ``q(z | y, x)``, each ``(n, latent_dim)``."""
        return super().encode(torch.cat([_flat(y), _flat(x).to(y.dtype)], 1))

    def decode(self, z: Tensor, x: Tensor) -> Tensor:
        """Decoder mean ``g(z, x)``, shape ``(n, *event_shape)``."""
        return super().decode(torch.cat([z, _flat(x).to(z.dtype)], 1))

    def _inputs(self, y, x, num_samples, who: str):
        """Check ``(y, x)``; a single ``x`` is repeated for every row. Returns ``(y, x, n)``."""
        if x is None:
            raise ValueError(f"ConditionalVAE.{who} needs the conditioning input x")
        single = isinstance(x, Tensor) and tuple(x.shape) == self.cond_shape
        if not isinstance(x, Tensor) or not (single or tuple(x.shape[1:]) == self.cond_shape):
            raise ValueError(f"ConditionalVAE expects x of shape {shape_text(self.cond_shape)} or "
                             f"{tuple(self.cond_shape)}, got {_shape_of(x)}")
        if y is not None and (not isinstance(y, Tensor) or y.ndim < 1 or tuple(y.shape[1:]) != self.event_shape):
            raise ValueError(f"ConditionalVAE expects y of shape {shape_text(self.event_shape)}, got {_shape_of(y)}")
        n = y.shape[0] if y is not None else (int(num_samples or 1) if single else x.shape[0])
        if single:
            x = x.unsqueeze(0).expand((n,) + self.cond_shape)
        if x.shape[0] != n:
            raise ValueError(f"y has {n} rows but x has {x.shape[0]}")
        if num_samples is not None and num_samples != n:
            raise ValueError(f"num_samples={num_samples!r} differs from the {n} rows of {'x' if y is None else 'y'}")
        return y, x, n

    @pyro_method
    def model(self, y: Optional[Tensor] = None, x: Optional[Tensor] = None,
              num_samples: Optional[int] = None) -> Tensor:
        """``z ~ N(0, I)``, ``y ~ N(g(z, x), σ²)``; observe ``y`` if given, else draw one per row of ``x``."""
        y, x, n = self._inputs(y, x, num_samples, "model")
        return self._generate(n, "y", y, lambda z: self.decode(z, x))

    @pyro_method
    def guide(self, y: Optional[Tensor] = None, x: Optional[Tensor] = None,
              num_samples: Optional[int] = None) -> Tensor:
        """``z ~ q(z | y, x)``, the amortised posterior."""
        if y is None:
            raise ValueError("ConditionalVAE.guide needs data y")
        y, x, n = self._inputs(y, x, num_samples, "guide")
        return self._posterior(*self.encode(y, x))

    @torch.no_grad()
    def sample(self, x: Tensor, rng: RNG) -> Tensor:
        """Decoder means ``g(z, x)``, one prior draw ``z`` per row of ``x`` (VMT's starting points)."""
        _, x, n = self._inputs(None, x, None, "sample")
        return self.decode(self.sample_latent(n, rng), x)

    def elbo_loss(self, y: Tensor, x: Tensor, rng: RNG) -> Tensor:
        """Negative ELBO per pair, averaged over the batch (differentiable).

        As [`pyro_vmt.VAE.elbo_loss()`][pyro_vmt.vae.VAE.elbo_loss]: the ELBO of Pyro's ``Trace_ELBO`` on `model()` /
        `guide()`, ``z`` drawn from ``rng``'s state lent to torch's RNG,
        module-local parameters (the global Pyro parameter store is not touched).
        """
        gen = as_rng(rng, y.device if isinstance(y, Tensor) else None)
        if gen is None:
            raise ValueError("rng is required: pass a torch.Generator or an int seed")
        y, x, n = self._inputs(y, x, None, "elbo_loss")
        with rng_for_pyro(gen, y.device), _LocalParams():
            return -reparameterised_elbo(self.model, self.guide, y, x) / n

    def joint_loss(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        """``−log p(y, z | x)`` per pair, averaged, for a known ``z`` (CoopNets' generator regression)."""
        y, x, n = self._inputs(y, x, None, "joint_loss")
        with _LocalParams(), pyro.validation_enabled(False):
            trace = poutine.trace(poutine.condition(self.model, data={"z": z})).get_trace(y, x)
            return -trace.log_prob_sum() / n
