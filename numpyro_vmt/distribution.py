r"""The EBM as a NumPyro distribution: [`EnergyDistribution`][numpyro_vmt.distribution.EnergyDistribution].

Its density is the EBM's, *unnormalised*:

$$
\log \tilde p_\theta(x) = -E_\theta(x), \qquad p_\theta(x) = \tilde p_\theta(x) / Z_\theta,
$$

so [`EnergyDistribution.log_prob()`][numpyro_vmt.distribution.EnergyDistribution.log_prob] is $\log p_\theta(x) + \log Z_\theta$ with an
unknown constant $\log Z_\theta$ (the same for every $x$). That is what MCMC
over a model with ``numpyro.sample("x", ebm)`` needs, and what a learned prior in a
user's model contributes to the potential; it is *not* a normalised likelihood.

[`EnergyDistribution.sample()`][numpyro_vmt.distribution.EnergyDistribution.sample] is the sampler of variational MCMC teaching (Xie,
Zheng & Li, AAAI 2021, https://arxiv.org/abs/2012.14936): ``x₀`` from the VAE (or any
``init`` sampler), then ``num_steps`` Langevin steps on $E_\theta$
([`Langevin`][numpyro_vmt.langevin.Langevin]), from the key NumPyro hands it, so
``numpyro.sample`` and ``numpyro.infer.Predictive`` work unchanged (under ``jit`` and
``vmap`` too).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from numpyro.distributions import Distribution, constraints

from numpyro_vmt.langevin import Langevin
from vmt.core.checks import check_noise_scale, check_num_steps, check_step_size

__all__ = ["EnergyDistribution"]


class EnergyDistribution(Distribution):
    """``p(x) ∝ exp(−E(x))`` with VAE + Langevin sampling.

    Parameters
    ----------
    energy : EnergyModel or callable
        ``E``: ``(n, *event_shape) -> (n,)``; with ``event_shape`` unset it must have an
        ``event_shape`` attribute (as [`EnergyModel`][numpyro_vmt.energy.EnergyModel] has).
    init : VAE or callable
        Starting points of the Langevin runs: an object with ``sample(n, rng)`` (the
        [`VAE`][numpyro_vmt.vae.VAE]) or a callable ``(n, key) -> (n, *event_shape)``.
    step_size, num_steps, noise_scale, adjust
        The Langevin run of `sample()` (see [`Langevin`][numpyro_vmt.langevin.Langevin]).
    event_shape : tuple of int, optional
        Default: ``energy.event_shape``.
    progress : bool
        A tqdm bar over the Langevin steps of each `sample()` call.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> ebm = EnergyDistribution(lambda x: 0.5 * (x ** 2).sum(-1), event_shape=(2,),
    ...                          init=lambda n, key: jax.random.normal(key, (n, 2)),
    ...                          step_size=0.1, num_steps=10)
    >>> ebm.sample(jax.random.key(0), (5,)).shape, ebm.log_prob(jnp.zeros((3, 2))).shape
    ((5, 2), (3,))
    """

    arg_constraints: dict = {}
    reparametrized_params: list = []

    def __init__(self, energy: Callable, init: Any, step_size: float = 0.1, num_steps: int = 100,
                 noise_scale: float = 1.0, adjust: bool = False, event_shape: Optional[tuple] = None,
                 progress: bool = False, validate_args: Optional[bool] = None):
        if not callable(energy):
            raise TypeError("energy must be callable: (n, *event_shape) -> (n,)")
        if not (callable(init) or callable(getattr(init, "sample", None))):
            raise TypeError("init must be a VAE (with sample(n, rng)) or a callable (n, key) -> x0")
        event_shape = getattr(energy, "event_shape", None) if event_shape is None else event_shape
        if event_shape is None:
            raise ValueError("event_shape is required when energy has no event_shape attribute")
        self.energy, self.init = energy, init
        self.step_size, self.num_steps = check_step_size(step_size), check_num_steps(num_steps, allow_zero=True)
        self.noise_scale, self.adjust = check_noise_scale(noise_scale, adjust), bool(adjust)
        self.progress = bool(progress)
        self._ebm_event_shape = tuple(int(d) for d in event_shape)
        super().__init__((), self._ebm_event_shape, validate_args=validate_args)

    @classmethod
    def from_teacher(cls, teacher: Any, num_steps: Optional[int] = None, progress: bool = False
                     ) -> "EnergyDistribution":
        """The distribution of a trained ``VariationalMCMCTeaching``: its energy, its VAE as
        ``init`` and its configured Langevin run (``num_steps`` overrides the length)."""
        if teacher.vae is None:
            raise ValueError(f"the teacher has no VAE (init={teacher.config.init!r}); build "
                             "EnergyDistribution(teacher.energy, init=<sampler>, ...) instead")
        cfg = teacher.config
        return cls(teacher.energy, teacher.vae, cfg.step_size, cfg.num_steps if num_steps is None else num_steps,
                   cfg.noise_scale, cfg.adjust, progress=progress)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self):
        return constraints.independent(constraints.real, len(self._ebm_event_shape))

    def log_prob(self, value: jax.Array) -> jax.Array:
        """``−E(value)``: the log density up to the unknown constant ``−log Z`` (see the module)."""
        event = self._ebm_event_shape
        value = jnp.asarray(value)
        lead = value.shape[:value.ndim - len(event)]
        if tuple(value.shape[len(lead):]) != event:
            raise ValueError(f"value of shape {tuple(value.shape)} does not end in event_shape {event}")
        return -self.energy(value.reshape((-1,) + event)).reshape(lead)

    def sample(self, key: jax.Array, sample_shape: tuple = ()) -> jax.Array:
        """``init`` draws revised by ``num_steps`` Langevin steps, shape ``sample_shape + event_shape``."""
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        n = math.prod(shape)
        key_init, key_run = jax.random.split(key)
        x0 = self.init.sample(n, key_init) if callable(getattr(self.init, "sample", None)) else self.init(n, key_init)
        if self.num_steps > 0:
            sampler = Langevin(self.energy, self.step_size, self.num_steps, self.noise_scale, self.adjust)
            x0 = sampler.run(key_run, x0, progress=self.progress)[0].position
        return jax.lax.stop_gradient(x0).reshape(shape + self._ebm_event_shape)
