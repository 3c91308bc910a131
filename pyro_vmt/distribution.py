r"""The EBM as a Pyro distribution: [`EnergyDistribution`][pyro_vmt.distribution.EnergyDistribution].

Its density is the EBM's, *unnormalised*:

$$
\log \tilde p_\theta(x) = -E_\theta(x), \qquad p_\theta(x) = \tilde p_\theta(x) / Z_\theta,
$$

so [`EnergyDistribution.log_prob()`][pyro_vmt.distribution.EnergyDistribution.log_prob] is $\log p_\theta(x) + \log Z_\theta$ with an
unknown constant $\log Z_\theta$ (the same for every $x$). That is what MCMC
over a model with ``pyro.sample("x", ebm)`` needs, and what a learned prior in a user's
model contributes to the potential; it is *not* a normalised likelihood (an ELBO or a
model comparison that needs $Z_\theta$ must estimate it).

[`EnergyDistribution.sample()`][pyro_vmt.distribution.EnergyDistribution.sample] is the sampler of variational MCMC teaching (Xie,
Zheng & Li, AAAI 2021, https://arxiv.org/abs/2012.14936): ``x₀`` from the VAE (or any
``init`` sampler), then ``num_steps`` Langevin steps on $E_\theta$
([`Langevin`][pyro_vmt.langevin.Langevin]). Draws come from torch's global RNG, as every
Pyro distribution's do (``pyro.set_rng_seed`` reproduces them), so ``pyro.sample`` and
``pyro.infer.Predictive`` work unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from pyro_vmt.langevin import Langevin
from vmt.core.checks import check_noise_scale, check_num_steps, check_step_size

__all__ = ["EnergyDistribution"]


class EnergyDistribution(TorchDistribution):
    """``p(x) ∝ exp(−E(x))`` with VAE + Langevin sampling.

    Parameters
    ----------
    energy : EnergyModel or callable
        ``E``: ``(n, *event_shape) -> (n,)``; with ``event_shape`` unset it must have an
        ``event_shape`` attribute (as [`EnergyModel`][pyro_vmt.energy.EnergyModel] has).
    init : VAE or callable
        Starting points of the Langevin runs: an object with ``sample(n, rng)`` (the
        [`VAE`][pyro_vmt.vae.VAE]) or a callable ``(n, torch.Generator) -> (n, *event_shape)``.
    step_size, num_steps, noise_scale, adjust
        The Langevin run of `sample()` (see [`Langevin`][pyro_vmt.langevin.Langevin]).
    event_shape : tuple of int, optional
        Default: ``energy.event_shape``.
    progress : bool
        A tqdm bar over the Langevin steps of each `sample()` call.

    Examples
    --------
    >>> import pyro, torch
    >>> from pyro_vmt import EnergyModel
    >>> energy = EnergyModel(torch.nn.Linear(2, 1), (2,))
    >>> ebm = EnergyDistribution(energy, init=lambda n, gen: torch.randn(n, 2, generator=gen),
    ...                          step_size=0.1, num_steps=10)
    >>> ebm.sample((5,)).shape, ebm.log_prob(torch.zeros(3, 2)).shape
    (torch.Size([5, 2]), torch.Size([3]))
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, energy: Callable, init: Any, step_size: float = 0.1, num_steps: int = 100,
                 noise_scale: float = 1.0, adjust: bool = False, event_shape: Optional[tuple] = None,
                 progress: bool = False, validate_args: Optional[bool] = None):
        if not callable(energy):
            raise TypeError("energy must be callable: (n, *event_shape) -> (n,)")
        if not (callable(init) or callable(getattr(init, "sample", None))):
            raise TypeError("init must be a VAE (with sample(n, rng)) or a callable (n, generator) -> x0")
        event_shape = getattr(energy, "event_shape", None) if event_shape is None else event_shape
        if event_shape is None:
            raise ValueError("event_shape is required when energy has no event_shape attribute")
        self.energy, self.init = energy, init
        self.step_size, self.num_steps = check_step_size(step_size), check_num_steps(num_steps, allow_zero=True)
        self.noise_scale, self.adjust = check_noise_scale(noise_scale, adjust), bool(adjust)
        self.progress = bool(progress)
        super().__init__(torch.Size(), torch.Size(tuple(event_shape)), validate_args=validate_args)

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
        return constraints.independent(constraints.real, len(self.event_shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``−E(value)``: the log density up to the unknown constant ``−log Z`` (see the module)."""
        if self._validate_args:
            self._validate_sample(value)
        event = tuple(self.event_shape)
        lead = value.shape[:value.ndim - len(event)]
        if tuple(value.shape[len(lead):]) != event:
            raise ValueError(f"value of shape {tuple(value.shape)} does not end in event_shape {event}")
        flat = value.reshape((-1,) + event)
        return -self.energy(flat).reshape(lead)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """``init`` draws revised by ``num_steps`` Langevin steps, shape ``sample_shape + event_shape``."""
        shape = torch.Size(sample_shape) + self.batch_shape
        n = math.prod(shape)
        param = next(iter(getattr(self.energy, "parameters", lambda: iter(()))()), None)
        device = param.device if param is not None else torch.device("cpu")
        gen = torch.Generator(device=device).manual_seed(int(torch.randint(2 ** 62, (1,))))
        x0 = self.init.sample(n, gen) if callable(getattr(self.init, "sample", None)) else self.init(n, gen)
        if self.num_steps > 0:
            sampler = Langevin(self.energy, self.step_size, self.num_steps, self.noise_scale, self.adjust)
            x0 = sampler.run(gen, x0.detach(), progress=self.progress)[0].position
        return x0.detach().reshape(shape + self.event_shape)

    def expand(self, batch_shape: Any, _instance: Any = None) -> "EnergyDistribution":
        new = self._get_checked_instance(EnergyDistribution, _instance)
        new.__dict__.update({k: v for k, v in self.__dict__.items()})
        super(EnergyDistribution, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        return new
