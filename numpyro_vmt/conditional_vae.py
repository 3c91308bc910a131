r"""A conditional Gaussian VAE for NumPyro's SVI: the amortised sampler of ``p(y | x)`` (JAX).

$$
z \sim \mathcal N(0, I), \quad y \mid z, x \sim \mathcal N(g_\alpha(z, x), \sigma^2 I), \quad
q_\phi(z \mid y, x) = \mathcal N(\mu_\phi(y, x), \operatorname{diag} s_\phi(y, x)^2),
$$

the proposal of the conditional form of variational MCMC teaching (Xie, Zheng & Li,
AAAI 2021, https://arxiv.org/abs/2012.14936).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
from numpyro.handlers import condition
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import log_density

from numpyro_vmt.conditional_energy import _flat, _is_array, _shape, _shape_of
from numpyro_vmt.rng import RNG
from numpyro_vmt.vae import VAE, _require_key
from vmt.core.batch import shape_text

__all__ = ["ConditionalVAE"]

Array = jax.Array


class ConditionalVAE(VAE):
    r"""Conditional Gaussian VAE with ``model(y, x)``/``guide(y, x)`` for NumPyro's SVI.

    $$
    z \sim \mathcal N(0, I), \quad y \mid z, x \sim \mathcal N(g_\alpha([z, x]), \sigma^2),
    \quad q_\phi(z \mid y, x) = \mathcal N(\mu_\phi([y, x]), \operatorname{diag} s_\phi([y, x])^2),
    $$

    the ELBO $\mathbb E_q[\log p_\alpha(y \mid z, x)] - \beta\,\mathrm{KL}(q_\phi(z \mid y, x)\,\|\,p(z))$.
    A [`VAE`][numpyro_vmt.vae.VAE] whose encoder reads ``[flatten(y), flatten(x)]`` and
    whose decoder reads ``[z, flatten(x)]``; parameters are handled exactly as there
    (``eqx_module`` sites ``"encoder$params"``/``"decoder$params"``, so a user's plain
    ``numpyro.infer.SVI(cvae.model, cvae.guide, ...)`` trains them; the library's
    `elbo_loss()` substitutes the module's own arrays).

    Parameters
    ----------
    encoder : equinox.Module
        ``(n, prod(event_shape) + prod(cond_shape)) -> (n, 2·latent_dim)``.
    decoder : equinox.Module
        ``(n, latent_dim + prod(cond_shape)) -> (n, prod(event_shape))``.
    latent_dim : int
    event_shape, cond_shape : sequence of int
        Shapes of one ``y`` and one ``x``.
    obs_scale, kl_weight, name
        As for [`VAE`][numpyro_vmt.vae.VAE].
    """

    cond_shape: Tuple[int, ...] = eqx.field(static=True)

    def __init__(self, encoder: eqx.Module, decoder: eqx.Module, latent_dim: int, event_shape: Sequence[int],
                 cond_shape: Sequence[int], obs_scale: Optional[float] = None, kl_weight: float = 1.0,
                 name: str = ""):
        super().__init__(encoder, decoder, latent_dim, event_shape, obs_scale, kl_weight, name)
        self.cond_shape = _shape("cond_shape", cond_shape)

    def encode(self, y: Array, x: Array) -> Tuple[Array, Array]:
        """Location and scale of ``q(z | y, x)``, each ``(n, latent_dim)``."""
        return self._encode(self.encoder, jnp.concatenate([_flat(y), _flat(jnp.asarray(x, y.dtype))], 1))

    def decode(self, z: Array, x: Array) -> Array:
        """Decoder mean ``g(z, x)``, shape ``(n, *event_shape)``."""
        return self._decode(self.decoder, jnp.concatenate([z, _flat(jnp.asarray(x, z.dtype))], 1))

    def _inputs(self, y, x, num_samples, who: str):
        """Check ``(y, x)``; a single ``x`` is repeated for every row. Returns ``(y, x, n)``."""
        if x is None:
            raise ValueError(f"ConditionalVAE.{who} needs the conditioning input x")
        single = _is_array(x) and tuple(x.shape) == self.cond_shape
        if not _is_array(x) or not (single or tuple(x.shape[1:]) == self.cond_shape):
            raise ValueError(f"ConditionalVAE expects x of shape {shape_text(self.cond_shape)} or "
                             f"{tuple(self.cond_shape)}, got {_shape_of(x)}")
        if y is not None and (not _is_array(y) or y.ndim < 1 or tuple(y.shape[1:]) != self.event_shape):
            raise ValueError(f"ConditionalVAE expects y of shape {shape_text(self.event_shape)}, got {_shape_of(y)}")
        n = y.shape[0] if y is not None else (int(num_samples or 1) if single else x.shape[0])
        if single:
            x = jnp.broadcast_to(x[None], (n,) + self.cond_shape)
        if x.shape[0] != n:
            raise ValueError(f"y has {n} rows but x has {x.shape[0]}")
        if num_samples is not None and num_samples != n:
            raise ValueError(f"num_samples={num_samples!r} differs from the {n} rows of {'x' if y is None else 'y'}")
        return y, x, n

    def model(self, y: Optional[Array] = None, x: Optional[Array] = None,
              num_samples: Optional[int] = None) -> Array:
        """``z ~ N(0, I)``, ``y ~ N(g(z, x), σ²)``; observe ``y`` if given, else draw one per row of ``x``."""
        y, x, n = self._inputs(y, x, num_samples, "model")
        return self._generate(n, "y", y, lambda z: jnp.concatenate([z, _flat(jnp.asarray(x, z.dtype))], 1))

    def guide(self, y: Optional[Array] = None, x: Optional[Array] = None,
              num_samples: Optional[int] = None) -> Array:
        """``z ~ q(z | y, x)``, the amortised posterior."""
        if y is None:
            raise ValueError("ConditionalVAE.guide needs data y")
        y, x, n = self._inputs(y, x, num_samples, "guide")
        return self._posterior(jnp.concatenate([_flat(y), _flat(jnp.asarray(x, y.dtype))], 1))

    def sample(self, x: Array, rng: RNG) -> Array:
        """Decoder means ``g(z, x)``, one prior draw ``z`` per row of ``x`` (VMT's starting points)."""
        _, x, n = self._inputs(None, x, None, "sample")
        return jax.lax.stop_gradient(self.decode(self.sample_latent(n, rng), x))

    def elbo_loss(self, y: Array, x: Array, rng: RNG) -> Array:
        """Negative ELBO per pair, averaged over the batch (differentiable).

        As [`numpyro_vmt.VAE.elbo_loss()`][numpyro_vmt.vae.VAE.elbo_loss]: NumPyro's ``Trace_ELBO`` on `model()`
        / `guide()` with this module's arrays substituted for the parameter sites,
        the reparameterised ``z`` drawn from ``rng``.
        """
        key = _require_key(rng)
        y, x, n = self._inputs(y, x, None, "elbo_loss")
        return Trace_ELBO().loss(key, self._param_map(), self.model, self.guide, y, x) / n

    def joint_loss(self, y: Array, x: Array, z: Array) -> Array:
        """``−log p(y, z | x)`` per pair, averaged, for a known ``z`` (CoopNets' generator regression)."""
        y, x, n = self._inputs(y, x, None, "joint_loss")
        log_joint, _ = log_density(condition(self.model, data={"z": z}), (y, x), {}, self._param_map())
        return -log_joint / n
