r"""The teacher's sampling and evaluation (PyTorch): samples of the EBM and estimates of $\log Z$.

[`SamplingMixin`][pyro_vmt.sampling.SamplingMixin] holds the methods of
[`VariationalMCMCTeaching`][pyro_vmt.teaching.VariationalMCMCTeaching] that read the trained networks
without changing them: [`sample()`][pyro_vmt.teaching.VariationalMCMCTeaching.sample],
[`log_partition()`][pyro_vmt.teaching.VariationalMCMCTeaching.log_partition] and
[`log_prob()`][pyro_vmt.teaching.VariationalMCMCTeaching.log_prob]. They use the teacher's ``config``,
``energy``, ``vae``, ``buffer``, ``sampler``, ``generator``, ``device``, ``iteration`` and
``_as_batch()``.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch

from pyro_vmt import correction, mh
from pyro_vmt.langevin import Langevin
from pyro_vmt.rng import RNG, as_rng
from pyro_vmt.update import raise_if_diverged, revise, start_chains
from vmt.core.batch import with_context
from vmt.core.checks import as_count, check_num_steps

__all__ = ["SamplingMixin"]

Tensor = torch.Tensor


class SamplingMixin:
    """Sampling and evaluation methods of [`VariationalMCMCTeaching`][pyro_vmt.teaching.VariationalMCMCTeaching]."""

    def _sampler(self, ctx: Optional[Tensor]) -> Langevin:
        cfg = self.config
        return self.sampler if ctx is None else Langevin(
            with_context(self.energy, ctx), cfg.step_size, cfg.num_steps, cfg.noise_scale, cfg.adjust)

    def sample(self, n: int, num_steps: Optional[int] = None, rng: RNG = None, mh_steps: int = 0) -> Tensor:
        """``n`` samples of the EBM: the configured initialisation, then ``num_steps`` Langevin steps.

        ``num_steps=0`` returns the starting points (e.g. the VAE's own samples).
        Without ``rng`` the draw is seeded from the training RNG's seed and the
        iteration count, so it is reproducible and leaves training unaffected.
        ``mh_steps > 0`` makes the samples exact: ``n`` independence-sampler chains on
        whole proposal paths, ``mh_steps`` accept tests each, each after the config's
        ``local_steps`` MALA moves (see
        [`pyro_vmt.mh.independent_mh()`][pyro_vmt.mh.independent_mh]).
        """
        if mh_steps:
            vae, opts = self._proposal(num_steps)
            path, _ = mh.independent_mh(self._generator(rng, 1), self.energy, vae, as_count("n", n),
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

    def _generator(self, rng: RNG, salt: int) -> torch.Generator:
        gen = as_rng(rng, self.device)
        if gen is None:
            seed = (self.generator.initial_seed() * 1_000_003 + self.iteration * 7 + salt) % 2 ** 63
            gen = torch.Generator(device=self.device).manual_seed(seed)
        return gen

    def log_partition(self, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None,
                      batch_size: int = 2000) -> Tuple[float, float]:
        r"""Estimate $\log Z$ and its standard error from this teacher's proposal paths.

        See [`numpyro_vmt.VariationalMCMCTeaching.log_partition()`][numpyro_vmt.teaching.VariationalMCMCTeaching.log_partition]: the decoder with
        its observation noise (``init="vae"``) or the Gaussian over ``init_bounds``,
        then the Langevin run; biased *low*, so likelihoods from it are biased *high*.
        """
        vae, opts = self._proposal(num_steps)
        return correction.log_partition(self._generator(rng, 2), self.energy, vae,
                                        as_count("num_samples", num_samples), *opts, 0,
                                        self.config.wide_proposal(), batch_size, anneal=self.config.path_anneal)

    def log_prob(self, x: Any, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None
                 ) -> Tuple[np.ndarray, float]:
        """``log p(x) = −E(x) − log Ẑ`` per row of ``x`` (numpy), and the standard error of
        ``log Ẑ`` (see `log_partition()` for the bias)."""
        x = self._as_batch(x, "x")
        log_z, se = self.log_partition(num_samples, rng, num_steps)
        return -self.energy.numpy_energy(x.detach().cpu().numpy()) - log_z, se

    def _sample(self, n: int, num_steps: Optional[int], rng: RNG, ctx: Optional[Tensor] = None) -> Tensor:
        gen = as_rng(rng, self.device)
        if gen is None:
            seed = (self.generator.initial_seed() * 1_000_003 + self.iteration) % 2 ** 63
            gen = torch.Generator(device=self.device).manual_seed(seed)
        x0 = start_chains(self.config, self.energy, self.vae, self.buffer, n, gen, False, ctx).position
        if num_steps == 0:
            return x0
        state, _, diag = revise(self._sampler(ctx), x0, gen, num_steps)
        raise_if_diverged(torch.stack([d.to(x0.dtype) for d in diag]).tolist(), n, self.config.step_size)
        return state.position
