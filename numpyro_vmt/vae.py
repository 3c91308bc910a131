r"""Variational auto-encoder as a NumPyro model + guide (the amortised sampler of VMT).

Generative model and inference network:

$$
z \sim \mathcal N(0, I_d), \qquad x \mid z \sim \mathcal N\big(g_\alpha(z), \operatorname{diag}(\sigma^2)\big),
\qquad q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x), \operatorname{diag}(s_\phi(x)^2)\big),
$$

trained by maximising the ELBO
$\mathbb E_q[\log p_\alpha(x \mid z)] - \beta\,\mathrm{KL}(q_\phi(z \mid x)\,\|\,p(z))$
(``β = kl_weight``). In variational MCMC teaching (Xie, Zheng & Li, AAAI 2021,
https://arxiv.org/abs/2012.14936) the observed ``x`` are the Langevin-revised
samples and the sampler's starting points are decoder means ``g_α(z)``.

[`VAE.model()`][numpyro_vmt.vae.VAE.model] and [`VAE.guide()`][numpyro_vmt.vae.VAE.guide] register the encoder and decoder with
``numpyro.contrib.module.eqx_module`` (and a learned observation scale with
``numpyro.param``), so they work unchanged in a user's plain
``numpyro.infer.SVI(vae.model, vae.guide, optax.adam(...), Trace_ELBO())`` script.
Inside the library ([`VAE.elbo_loss()`][numpyro_vmt.vae.VAE.elbo_loss], [`VAE.joint_loss()`][numpyro_vmt.vae.VAE.joint_loss]) the module's own
arrays are substituted for those parameter sites, so the loss is the same objective
as SVI's and is differentiable with respect to the module's array leaves.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import eqx_module
from numpyro.handlers import condition
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import log_density

from numpyro_vmt.rng import RNG, as_rng

__all__ = ["VAE"]


class VAE(eqx.Module):
    """Gaussian VAE with ``model``/``guide`` for NumPyro's SVI.

    Parameters
    ----------
    encoder : equinox.Module
        ``(n, *event_shape) -> (n, 2·latent_dim)``: location and pre-softplus scale of q(z | x).
    decoder : equinox.Module
        ``(n, latent_dim) -> (n, prod(event_shape))``: the mean ``g(z)``.
    latent_dim : int
    event_shape : sequence of int
    obs_scale : float or None
        Fixed observation standard deviation ``σ``, or ``None`` to learn one per data
        dimension, ``σ = exp(log_obs_scale)``, initialised at 1.
    kl_weight : float
        ``β``, the weight of the KL term (scales the ``"z"`` site in model and guide).
    name : str
        Prefix of the NumPyro parameter names (two VAEs in one model need two names).

    Notes
    -----
    The parameter sites are ``"encoder$params"``, ``"decoder$params"`` (equinox
    parameter pytrees, see ``numpyro.contrib.module.eqx_module``) and
    ``"log_obs_scale"`` (learned scale only), each prefixed by ``name + "."`` when a
    name is given. After a plain SVI run, ``svi.get_params(state)`` holds the trained
    values; ``numpyro.infer.Predictive(vae.model, params=...)`` samples with them.
    """

    encoder: eqx.Module
    decoder: eqx.Module
    log_obs_scale: Union[jax.Array, float]
    latent_dim: int = eqx.field(static=True)
    event_shape: Tuple[int, ...] = eqx.field(static=True)
    kl_weight: float = eqx.field(static=True)
    name: str = eqx.field(static=True)
    learned_scale: bool = eqx.field(static=True)

    def __init__(self, encoder: eqx.Module, decoder: eqx.Module, latent_dim: int,
                 event_shape: Sequence[int], obs_scale: Optional[float] = None,
                 kl_weight: float = 1.0, name: str = ""):
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = int(latent_dim)
        self.event_shape = tuple(int(d) for d in event_shape)
        self.name = str(name)
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if not (isinstance(kl_weight, (int, float)) and math.isfinite(kl_weight) and kl_weight > 0):
            raise ValueError(f"kl_weight must be a positive finite number, got {kl_weight!r}")
        self.kl_weight = float(kl_weight)
        # A learned scale is an array leaf (a parameter); a fixed one is a Python
        # float, which no optimiser sees.
        if obs_scale is None:
            self.learned_scale = True
            self.log_obs_scale = jnp.zeros(self.event_shape, dtype=_dtype_of(decoder))
        elif isinstance(obs_scale, (int, float)) and math.isfinite(obs_scale) and obs_scale > 0:
            self.learned_scale = False
            self.log_obs_scale = math.log(obs_scale)
        else:
            raise ValueError(f"obs_scale must be a positive finite number or None, got {obs_scale!r}")

    # ------------------------------------------------------------------ networks
    def scale(self) -> jax.Array:
        """The observation standard deviation ``σ`` (fixed or learned)."""
        return jnp.exp(jnp.asarray(self.log_obs_scale, dtype=_dtype_of(self.decoder)))

    def encode(self, x: jax.Array) -> Tuple[jax.Array, jax.Array]:
        """Location and scale of ``q(z | x)``, each ``(n, latent_dim)``."""
        return self._encode(self.encoder, x)

    def decode(self, z: jax.Array) -> jax.Array:
        """Decoder mean ``g(z)``, shape ``(n, *event_shape)``."""
        return self._decode(self.decoder, z)

    def _encode(self, encoder, x):
        out = encoder(x)
        if out.shape != (x.shape[0], 2 * self.latent_dim):
            raise ValueError(f"the encoder must return shape (n, {2 * self.latent_dim}), got {tuple(out.shape)}")
        loc, raw = out[:, :self.latent_dim], out[:, self.latent_dim:]
        return loc, jax.nn.softplus(raw) + 1e-4

    def _decode(self, decoder, z):
        out = decoder(z)
        n = z.shape[0]
        if out.size != n * math.prod(self.event_shape):
            raise ValueError(
                f"the decoder must return {math.prod(self.event_shape)} values per sample "
                f"(event shape {self.event_shape}), got shape {tuple(out.shape)}")
        return out.reshape((n,) + self.event_shape)

    # ------------------------------------------------------------------ NumPyro
    def _pname(self, site: str) -> str:
        return f"{self.name}.{site}" if self.name else site

    def _check(self, x: Any) -> None:
        if (not isinstance(x, (jax.Array, np.ndarray)) or tuple(x.shape[1:]) != self.event_shape
                or x.ndim < 2):
            shape = tuple(x.shape) if isinstance(x, (jax.Array, np.ndarray)) else type(x).__name__
            raise ValueError(f"VAE expects data of shape (n, {', '.join(map(str, self.event_shape))}), got {shape}")

    def _log_obs_scale(self):
        if self.learned_scale:
            return numpyro.param(self._pname("log_obs_scale"), self.log_obs_scale)
        return self.log_obs_scale

    def model(self, x: Optional[jax.Array] = None, num_samples: Optional[int] = None) -> jax.Array:
        """``z ~ N(0, I)``, ``x ~ N(g(z), σ²)``; observe ``x`` if given, else draw ``num_samples``."""
        if x is None and num_samples is None:
            raise ValueError("VAE.model needs data x or num_samples")
        if x is not None:
            self._check(x)
        n = x.shape[0] if x is not None else int(num_samples)
        return self._generate(n, "x", x, lambda z: z)

    def _generate(self, n: int, site: str, obs: Optional[jax.Array],
                  decoder_input: Callable[[jax.Array], jax.Array]) -> jax.Array:
        """The generative model of `model()` (and of the conditional VAE's, whose decoder also
        reads the condition): ``n`` latents ``z ~ N(0, I)`` (KL-weighted),
        ``site ~ N(g(decoder_input(z)), σ²)``."""
        decoder = eqx_module(self._pname("decoder"), self.decoder)
        log_scale = self._log_obs_scale()
        dtype = _dtype_of(self.decoder)
        with numpyro.plate("data", n):
            with numpyro.handlers.scale(scale=self.kl_weight):
                z = numpyro.sample("z", dist.Normal(jnp.zeros((n, self.latent_dim), dtype), 1.0).to_event(1))
            loc = self._decode(decoder, decoder_input(z))
            scale = jnp.broadcast_to(jnp.exp(jnp.asarray(log_scale, dtype=loc.dtype)), loc.shape[1:])
            return numpyro.sample(site, dist.Normal(loc, scale).to_event(len(self.event_shape)), obs=obs)

    def guide(self, x: Optional[jax.Array] = None, num_samples: Optional[int] = None) -> jax.Array:
        """``z ~ q(z | x)``, the amortised posterior."""
        if x is None:
            raise ValueError("VAE.guide needs data x")
        self._check(x)
        return self._posterior(x)

    def _posterior(self, encoder_input: jax.Array) -> jax.Array:
        """The guide's site: ``z ~ q(z | encoder_input)`` per row (KL-weighted), shared with the conditional VAE."""
        encoder = eqx_module(self._pname("encoder"), self.encoder)
        loc, scale = self._encode(encoder, encoder_input)
        with numpyro.plate("data", encoder_input.shape[0]):
            with numpyro.handlers.scale(scale=self.kl_weight):
                return numpyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _param_map(self) -> Dict[str, Any]:
        """This module's arrays under the names of the model's and guide's parameter sites."""
        params = {
            self._pname("encoder") + "$params": eqx.filter(self.encoder, eqx.is_inexact_array),
            self._pname("decoder") + "$params": eqx.filter(self.decoder, eqx.is_inexact_array),
        }
        if self.learned_scale:
            params[self._pname("log_obs_scale")] = self.log_obs_scale
        return params

    # ------------------------------------------------------------------ sampling
    def sample_latent(self, n: int, rng: RNG) -> jax.Array:
        """``z ~ N(0, I)``, shape ``(n, latent_dim)``, drawn from ``rng``."""
        key = _require_key(rng)
        return jax.random.normal(key, (int(n), self.latent_dim), dtype=_dtype_of(self.decoder))

    def sample(self, n: int, rng: RNG) -> jax.Array:
        """Decoder means ``g(z)`` of ``n`` prior draws (the starting points of VMT's Langevin runs)."""
        return jax.lax.stop_gradient(self.decode(self.sample_latent(n, rng)))

    def elbo_loss(self, x: jax.Array, rng: RNG) -> jax.Array:
        """Negative ELBO per sample, averaged over the batch (differentiable).

        NumPyro's ``Trace_ELBO`` on `model()` / `guide()` with this module's
        arrays substituted for the parameter sites — the objective of SVI — and the
        reparameterised ``z`` drawn from ``rng``.
        """
        key = _require_key(rng)
        self._check(x)
        return Trace_ELBO().loss(key, self._param_map(), self.model, self.guide, x) / x.shape[0]

    def joint_loss(self, x: jax.Array, z: jax.Array) -> jax.Array:
        """``−log p(x, z)`` per sample, averaged, for a known ``z`` (CoopNets' generator regression)."""
        self._check(x)
        conditioned = condition(self.model, data={"z": z})
        log_joint, _ = log_density(conditioned, (x,), {}, self._param_map())
        return -log_joint / x.shape[0]


def _dtype_of(module: Any):
    for leaf in jax.tree.leaves(module):
        if eqx.is_inexact_array(leaf):
            return leaf.dtype
    return jnp.zeros(()).dtype


def _require_key(rng: RNG) -> jax.Array:
    key = as_rng(rng)
    if key is None:
        raise ValueError("rng is required: pass a jax.random key or an int seed")
    return key
