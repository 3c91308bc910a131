r"""Conditional variational MCMC teaching (JAX / NumPyro): supervised learning of ``p(y | x)``.

The conditional form of variational MCMC teaching (Xie, Zheng & Li, "Learning
Energy-Based Model with Variational Auto-Encoder as Amortized Sampler", AAAI 2021,
https://arxiv.org/abs/2012.14936, whose experiments include supervised
image-to-image translation; the conditional cooperative scheme is Xie et al.,
"Cooperative training of fast thinking initializer and slow thinking solver for
conditional learning", arXiv:1902.02812). A conditional EBM

$$
p_\theta(y \mid x) = \frac{\exp(-E_\theta(y \mid x))}{Z_\theta(x)}, \qquad
E_\theta(y \mid x) = U_\theta(y, x) + \frac{\lVert y \rVert^2}{2 s^2},
$$

and a conditional VAE $z \sim \mathcal N(0, I)$,
$y \mid z, x \sim \mathcal N(g_\alpha(z, x), \sigma^2 I)$,
$q_\phi(z \mid y, x) = \mathcal N(\mu_\phi(y, x), \operatorname{diag} s_\phi(y, x)^2)$
are trained on pairs $(x_j, y_j)$ exactly as the unconditional algorithm:

1. $z_j \sim \mathcal N(0, I)$, $y^{(0)}_j = g_\alpha(z_j, x_j)$;
2. $K$ Langevin steps on $y$ with $x_j$ fixed,
   $y^{(k+1)} = y^{(k)} - \tfrac{\delta^2}{2}\nabla_y E_\theta(y^{(k)} \mid x_j) + \delta\sigma\xi_k$;
3. energy step on $\frac1m\sum_j E_\theta(y_j \mid x_j) - E_\theta(\tilde y_j \mid x_j)$, the
   gradient of the conditional log-likelihood
   $\nabla_\theta \log p_\theta(y \mid x) = -\nabla_\theta E_\theta(y \mid x)
   + \mathbb E_{p_\theta(y' \mid x)}[\nabla_\theta E_\theta(y' \mid x)]$ with one negative sample per pair;
4. one SVI step of the conditional VAE on the ELBO with $(x_j, \tilde y_j)$ observed.

[`ConditionalVariationalMCMCTeaching`][numpyro_vmt.conditional.ConditionalVariationalMCMCTeaching] is [`VariationalMCMCTeaching`][numpyro_vmt.teaching.VariationalMCMCTeaching]
with the conditioning input passed through its jitted core (see
[`vmt.core.batch.with_context()`][vmt.core.batch.with_context]); ``update(state, (x, y))`` is its pure iteration.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.handlers import condition
from numpyro.infer import Trace_ELBO
from numpyro.infer.util import log_density

from numpyro_vmt import correction, distributed, mh
from numpyro_vmt.given import given
from numpyro_vmt.rng import RNG
from numpyro_vmt.nets import MLP
from numpyro_vmt.teaching import TeachingInfo, VariationalMCMCTeaching
from numpyro_vmt.update import keyed
from numpyro_vmt.vae import VAE, _require_key
from vmt.core.batch import batch_stream, check_conditional_config, shape_text, split_pair
from vmt.core.checks import as_count
from vmt.core.config import TeachingConfig

__all__ = ["ConditionalEnergyModel", "ConditionalVAE", "ConditionalVariationalMCMCTeaching",
           "conditional_networks"]

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


class ConditionalVariationalMCMCTeaching(VariationalMCMCTeaching):
    r"""Train a [`ConditionalEnergyModel`][numpyro_vmt.conditional.ConditionalEnergyModel] with a [`ConditionalVAE`][numpyro_vmt.conditional.ConditionalVAE] on pairs ``(x, y)``.

    The same algorithm, options, diagnostics, jitted core and checkpoints as
    [`VariationalMCMCTeaching`][numpyro_vmt.teaching.VariationalMCMCTeaching] (whose code runs it); batches are
    pairs ``(x, y)`` of arrays with one row per example, and every pair gets one
    Langevin chain on ``y`` with its own ``x`` fixed. ``init`` may be ``"vae"``
    (variational MCMC teaching), ``"noise"`` or ``"generator"``; ``num_samples`` must
    be ``None``. ``update(state, (x, y))`` is the pure iteration.

    With ``correction="mh"`` (exact teaching) the teacher keeps one persistent chain
    per training row ``j``, targeting $p_\theta(y \mid x_j)$: each iteration the
    minibatch's rows (drawn without replacement) propose fresh paths from the
    conditional VAE at their own ``x_j`` and accept them by Metropolis–Hastings
    ([`numpyro_vmt.mh.update_chains()`][numpyro_vmt.mh.update_chains] on
    [`numpyro_vmt.given`][numpyro_vmt.given]'s bound energy and VAE), so the negative
    samples follow the EBM's own branch weights, not the VAE's. The chains start from
    one proposal each on the first `fit()`; training then needs `fit()` on arrays (the
    rows must be known) and ``path_refresh=True`` (a row's chain is revisited only
    every ``n / m`` iterations, so a stale path term would be many updates old).

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_vmt import ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching
    >>> from numpyro_vmt.conditional import conditional_networks
    >>> e_net, enc, dec = conditional_networks((1,), (1,), latent_dim=1, hidden=(16,))
    >>> teacher = ConditionalVariationalMCMCTeaching(
    ...     ConditionalEnergyModel(e_net, (1,), (1,)), ConditionalVAE(enc, dec, 1, (1,), (1,)),
    ...     rng=0, step_size=0.05, num_steps=5)
    >>> x = np.linspace(0, 1, 50, dtype=np.float32)[:, None]
    >>> history = teacher.fit((x, 2 * x), num_iters=2, batch_size=10, progress=False)
    >>> teacher.sample(x[:3]).shape
    (3, 1)
    """

    _energy_cls, _vae_cls = ConditionalEnergyModel, ConditionalVAE

    def __init__(self, energy: ConditionalEnergyModel, vae: Optional[ConditionalVAE] = None,
                 config: Optional[TeachingConfig] = None, *, rng: RNG = 0, mesh: Any = None, **options: Any):
        super().__init__(energy, vae, config, rng=rng, mesh=mesh, **options)
        check_conditional_config(self.config)
        if self.vae is not None and self.vae.cond_shape != energy.cond_shape:
            raise ValueError(f"VAE conditioning shape {self.vae.cond_shape} differs from the energy's "
                             f"{energy.cond_shape}")
        if self.config.correction and mesh is not None:
            raise NotImplementedError("correction='mh' with the conditional teacher on a mesh is not implemented: "
                                      "its chains, one per training row, are not split over the devices")
        if self.config.correction and not self.config.path_refresh:
            raise ValueError("correction='mh' with the conditional teacher needs path_refresh=True: a row's chain "
                             "is revisited only every n/m iterations, so a stale path term would be many updates old")

    def _as_batch(self, batch: Any, name: str = "batch") -> Tuple[Array, Array]:
        x, y = split_pair(batch, name)
        x = self._as_array(x, f"{name} x", self._energy_static.cond_shape)
        y = self._as_array(y, f"{name} y", self._energy_static.event_shape)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{name}: x has {x.shape[0]} rows but y has {y.shape[0]}")
        return x, y

    def sample(self, x: Any, num_steps: Optional[int] = None, rng: RNG = None, mh_steps: int = 0) -> Array:
        r"""One ``y`` per row of ``x`` (repeat a row for several): the configured start, then Langevin.

        ``num_steps=0`` returns the starting points (the conditional VAE's own
        samples). Without ``rng`` the draw is seeded from the training seed and the
        iteration count, so it is reproducible and leaves training unaffected.
        ``mh_steps > 0`` makes the samples exact draws of $p_\theta(y \mid x)$ as far
        as the chains have mixed: one independence-sampler chain per row on whole
        proposal paths at that row's ``x``, as the unconditional `sample()`.
        """
        x = self._as_array(x, "x", self._energy_static.cond_shape)
        if mh_steps:
            vae, opts = self._proposal(num_steps)
            path, _ = mh.independent_mh(self._key(rng, 1), *given(self.energy, vae, x), x.shape[0],
                                        as_count("mh_steps", mh_steps), *opts, 0, self.config.wide_proposal(),
                                        anneal=self.config.path_anneal, local_steps=self.config.local_steps)
            return path.position
        return self._sample(x.shape[0], num_steps, rng, ctx=x)

    def step(self, batch: Any) -> TeachingInfo:
        """One iteration on a pair ``(x, y)`` of batches with ``m`` rows each; returns its diagnostics."""
        return super().step(batch)

    def fit(self, data: Any, num_iters: int = 1000, batch_size: int = 100, progress: bool = True,
            callback: Optional[Callable[["ConditionalVariationalMCMCTeaching", TeachingInfo], None]] = None
            ) -> Dict[str, np.ndarray]:
        """Run ``num_iters`` iterations on minibatches of pairs drawn (with replacement) from ``data = (x, y)``.

        Returns the history: one array per [`TeachingInfo`][vmt.core.api.TeachingInfo] field.
        With ``correction="mh"`` the first call starts one chain per row of ``data``.
        """
        if batch_stream(data) is None and keyed(self.config, data):
            self._start_row_chains(self._as_batch(data, "data"))
        return super().fit(data, num_iters, batch_size, progress, callback)

    def _start_row_chains(self, data: Tuple[Array, Array]) -> None:
        """One proposal path per training row, the chains' first states (once per data set)."""
        x = data[0]
        have, n = self.state.chains.position.shape[0], x.shape[0]
        if have == n:
            return
        if have:
            raise ValueError(f"this teacher keeps one chain per row of the {have} training pairs it was first "
                             f"fitted on (correction='mh'); fit() got {n} pairs")
        cfg = self.config
        vae, opts = self._proposal(None)
        m = n if vae is None else cfg.num_noise_chains(n)
        chains = correction.propose(jax.random.fold_in(self.state.seed, 3), *given(self.energy, vae, x), n,
                                    *opts, m, cfg.wide_proposal(), cfg.path_anneal)
        self.state = self.state._replace(chains=distributed.replicate(chains, self.mesh))


def conditional_networks(event_shape: Sequence[int], cond_shape: Sequence[int], latent_dim: int,
                         hidden: Sequence[int] = (128, 128), rng: int = 0) -> Tuple[eqx.Module, eqx.Module, eqx.Module]:
    """``(energy_net, encoder, decoder)`` MLPs for ``y`` of ``event_shape`` given ``x`` of ``cond_shape``.

    Energy ``[y, x] -> 1``, encoder ``[y, x] -> 2·latent_dim``, decoder ``[z, x] -> y``;
    the three get the keys of ``jax.random.split(rng, 3)``. The torch backend builds
    the same layers (``pyro_vmt.conditional``).
    """
    dy, dx = math.prod(int(d) for d in event_shape), math.prod(int(d) for d in cond_shape)
    k_energy, k_enc, k_dec = jax.random.split(_require_key(rng), 3)
    return (MLP(dy + dx, 1, hidden, rng=k_energy), MLP(dy + dx, 2 * latent_dim, hidden, rng=k_enc),
            MLP(latent_dim + dx, dy, hidden, rng=k_dec))
