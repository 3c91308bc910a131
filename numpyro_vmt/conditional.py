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

from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_vmt import correction, distributed, mh
from numpyro_vmt.conditional_energy import ConditionalEnergyModel
from numpyro_vmt.conditional_vae import ConditionalVAE
from numpyro_vmt.given import given
from numpyro_vmt.rng import RNG
from numpyro_vmt.teaching import TeachingInfo, VariationalMCMCTeaching
from numpyro_vmt.update import keyed
from vmt.core.batch import batch_stream, check_conditional_config, split_pair
from vmt.core.checks import as_count
from vmt.core.config import TeachingConfig

__all__ = ["ConditionalVariationalMCMCTeaching"]

Array = jax.Array


class ConditionalVariationalMCMCTeaching(VariationalMCMCTeaching):
    r"""Train a [`ConditionalEnergyModel`][numpyro_vmt.conditional_energy.ConditionalEnergyModel] with a [`ConditionalVAE`][numpyro_vmt.conditional_vae.ConditionalVAE] on pairs ``(x, y)``.

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
    every ``n / m`` iterations, so a stale path term would be many updates old). On a
    mesh the chains are replicated and each device moves the chains of its block of
    the minibatch's rows: the numbers of one device, as for the other options.

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_vmt import ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching
    >>> from numpyro_vmt.nets import conditional_networks
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

    def log_partition(self, x: Any, num_samples: int = 1000, rng: RNG = None, num_steps: Optional[int] = None,
                      batch_size: int = 20_000) -> Tuple[np.ndarray, np.ndarray]:
        r"""Estimate $\log Z_\theta(x_j) = \log\int e^{-E_\theta(y \mid x_j)}\,dy$ per row of ``x``.

        ``num_samples`` proposal paths per row, from the conditional VAE at that row's
        ``x_j`` (or the wide Gaussian without one) and the Langevin run, weighted as in
        the unconditional
        [`log_partition()`][numpyro_vmt.teaching.VariationalMCMCTeaching.log_partition] through
        [`given`][numpyro_vmt.given.given]; at most ``batch_size`` paths at a time.
        Returns ``(log_z, standard_error)``, numpy arrays of one value per row; the
        log-mean-exp is biased *low* (so likelihoods from it are biased *high*).
        """
        x = self._as_array(x, "x", self._energy_static.cond_shape)
        s = as_count("num_samples", num_samples)
        rows = max(1, as_count("batch_size", batch_size) // s)
        vae, opts = self._proposal(num_steps)
        key, out = self._key(rng, 2), []
        for i, start in enumerate(range(0, x.shape[0], rows)):
            xs = jnp.repeat(x[start:start + rows], s, axis=0)
            path = correction.propose(jax.random.fold_in(key, i), *given(self.energy, vae, xs), xs.shape[0], *opts,
                                      0, self.config.wide_proposal(), self.config.path_anneal)
            out.append(jax.vmap(correction.log_mean_exp)(path.log_weight.reshape(-1, s)))
        log_z, se = (np.concatenate([np.asarray(o[j], np.float64) for o in out]) for j in (0, 1))
        return log_z, se

    def log_prob(self, y: Any, x: Any, num_samples: int = 1000, rng: RNG = None, num_steps: Optional[int] = None
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """``log p(y_j | x_j) = −E(y_j | x_j) − log Ẑ(x_j)`` per row (numpy), and the standard
        errors of the ``log Ẑ(x_j)``; each distinct row of ``x`` is estimated once
        (see `log_partition()` for the bias)."""
        x, y = self._as_batch((x, y), "(x, y)")
        x_host = np.asarray(x)
        distinct, which = np.unique(x_host.reshape(len(x_host), -1), axis=0, return_inverse=True)
        log_z, se = self.log_partition(distinct.reshape((-1,) + x_host.shape[1:]), num_samples, rng, num_steps)
        which = which.reshape(-1)
        return -self.energy.numpy_energy(np.asarray(y), x_host) - log_z[which], se[which]

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
