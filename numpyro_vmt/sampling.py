r"""The teacher's sampling and evaluation (JAX): samples of the EBM and estimates of $\log Z$.

[`SamplingMixin`][numpyro_vmt.sampling.SamplingMixin] holds the methods of
[`VariationalMCMCTeaching`][numpyro_vmt.teaching.VariationalMCMCTeaching] that read the trained networks
without changing them: [`sample()`][numpyro_vmt.teaching.VariationalMCMCTeaching.sample],
[`log_partition()`][numpyro_vmt.teaching.VariationalMCMCTeaching.log_partition] and
[`log_prob()`][numpyro_vmt.teaching.VariationalMCMCTeaching.log_prob]. They use the teacher's ``config``,
``state``, ``energy``, ``vae``, ``_spec`` and ``_as_batch()``.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import jax
import numpy as np

from numpyro_vmt import correction, mh
from numpyro_vmt.rng import RNG, as_rng
from numpyro_vmt.update import Diagnosis, sample_core
from vmt.core.checks import as_count, check_num_steps
from vmt.core.errors import DivergenceError, divergence_message

__all__ = ["SamplingMixin"]

Array = jax.Array


class SamplingMixin:
    """Sampling and evaluation methods of [`VariationalMCMCTeaching`][numpyro_vmt.teaching.VariationalMCMCTeaching]."""

    def sample(self, n: int, num_steps: Optional[int] = None, rng: RNG = None, mh_steps: int = 0) -> Array:
        """``n`` samples of the EBM: the configured initialisation, then ``num_steps`` Langevin steps.

        ``num_steps=0`` returns the starting points (e.g. the VAE's own samples).
        Without ``rng`` the draw is seeded from the training seed and the iteration
        count, so it is reproducible and leaves training unaffected.
        ``mh_steps > 0`` makes the samples exact: ``n`` independence-sampler chains on
        whole proposal paths (the decoder with its observation noise, or the wide
        Gaussian without a VAE, then the Langevin run), ``mh_steps`` accept tests each, each
        after the config's ``local_steps`` MALA moves
        (see [`numpyro_vmt.mh.independent_mh()`][numpyro_vmt.mh.independent_mh]); they are samples of
        ``exp(−E)/Z`` as far as the chains have mixed.
        """
        if mh_steps:
            vae, opts = self._proposal(num_steps)
            path, _ = mh.independent_mh(self._key(rng, 1), self.energy, vae, as_count("n", n),
                                                as_count("mh_steps", mh_steps), *opts, 0,
                                                self.config.wide_proposal(), anneal=self.config.path_anneal,
                                                local_steps=self.config.local_steps)
            return path.position
        return self._sample(as_count("n", n), num_steps, rng)

    def _proposal(self, num_steps: Optional[int]):
        cfg = self.config
        vae = self.vae if cfg.init == "vae" else None
        num_steps = cfg.num_steps if num_steps is None else check_num_steps(num_steps)
        noise_scale = cfg.noise_scale if cfg.noise_scale > 0 else 1.0
        return vae, (cfg.step_size, num_steps, noise_scale, cfg.adjust)

    def _key(self, rng: RNG, salt: int) -> Array:
        key = as_rng(rng)
        return jax.random.fold_in(jax.random.fold_in(self.state.seed, self.state.iteration), salt) if key is None else key

    def log_partition(self, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None,
                      batch_size: int = 2000) -> Tuple[float, float]:
        r"""Estimate $\log Z = \log\int e^{-E(x)}dx$ and its standard error from proposal paths.

        The paths are this teacher's own proposals: the VAE's decoder with its
        observation noise (``init="vae"``), else the Gaussian over ``init_bounds``
        (every other ``init``), followed by ``num_steps`` Langevin steps (default: the
        configured ``K``; ``noise_scale=0`` is replaced by 1, a noise-free run has no
        density), annealed when ``path_anneal`` is set. See
        [`numpyro_vmt.correction.log_partition()`][numpyro_vmt.correction.log_partition]: the log-mean-exp is biased *low*,
        so likelihoods from it are biased *high*, by an amount the standard error does
        not capture when the weights' ESS is small.
        """
        vae, opts = self._proposal(num_steps)
        return correction.log_partition(self._key(rng, 2), self.energy, vae, as_count("num_samples", num_samples),
                                        *opts, 0, self.config.wide_proposal(), batch_size,
                                        anneal=self.config.path_anneal)

    def log_prob(self, x: Any, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None
                 ) -> Tuple[np.ndarray, float]:
        """``log p(x) = −E(x) − log Ẑ`` per row of ``x`` (numpy), and the standard error of
        ``log Ẑ`` (shared by every row; see `log_partition()` for the bias)."""
        x = self._as_batch(x, "x")
        log_z, se = self.log_partition(num_samples, rng, num_steps)
        return -self.energy.numpy_energy(np.asarray(x)) - log_z, se

    def _sample(self, n: int, num_steps: Optional[int], rng: RNG, ctx: Optional[Array] = None) -> Array:
        key = as_rng(rng)
        if key is None:
            key = jax.random.fold_in(self.state.seed, self.state.iteration)
        if num_steps is None:
            num_steps = self.config.num_steps
        elif num_steps != 0:
            num_steps = check_num_steps(num_steps)
        x, diag = sample_core(self._spec, self.state, key, n, int(num_steps), ctx)
        if diag is not None:
            raise_if_diverged(jax.device_get(diag), n, self.config.step_size)
        return x


def raise_if_diverged(diag: Diagnosis, n: int, step_size: float) -> None:
    """Raise the error of a run whose start was non-finite or whose chains diverged (``diag`` on the host)."""
    if diag.bad_start:
        raise ValueError(f"initial position is non-finite in {int(diag.bad_start)} of {n} chains")
    if diag.bad_start_energy:
        raise ValueError(f"energy or its gradient is non-finite at the initial position of "
                         f"{int(diag.bad_start_energy)} of {n} chains")
    if diag.num_divergent:
        raise DivergenceError(divergence_message(int(diag.first_divergent), int(diag.num_divergent), n, step_size))
