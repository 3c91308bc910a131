"""Hyper-parameters shared by both backends, validated in one place.

Both ``pyro_vmt`` and ``numpyro_vmt`` read the same :class:`TeachingConfig`, so
an option means the same thing, has the same default and is rejected with the same
message whichever backend runs it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

__all__ = [
    "INITS",
    "CORRECTIONS",
    "TeachingConfig",
    "check_step_size",
    "check_num_steps",
    "check_noise_scale",
]

#: The ways a Langevin revision can be initialised (see :class:`TeachingConfig`).
INITS = ("vae", "noise", "persistent", "generator")

#: Corrections of the negative samples (see :class:`TeachingConfig`): ``None`` is the paper's plain algorithm.
CORRECTIONS = (None, "mh")


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_step_size(step_size: Any) -> float:
    """Return ``step_size`` as a float or raise ``ValueError`` naming the problem."""
    if not _is_real(step_size) or not math.isfinite(step_size) or step_size <= 0:
        raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
    return float(step_size)


def check_num_steps(num_steps: Any, allow_zero: bool = False) -> int:
    """Return ``num_steps`` as an int or raise ``ValueError`` naming the problem."""
    low = 0 if allow_zero else 1
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < low:
        what = "a non-negative" if allow_zero else "a positive"
        raise ValueError(f"num_steps must be {what} integer, got {num_steps!r}")
    return int(num_steps)


def check_noise_scale(noise_scale: Any, adjust: bool = False) -> float:
    """Return ``noise_scale`` as a float or raise ``ValueError`` naming the problem.

    A Metropolis-adjusted step needs a proposal with a density, so ``adjust=True``
    requires ``noise_scale > 0``.
    """
    if not _is_real(noise_scale) or not math.isfinite(noise_scale) or noise_scale < 0:
        raise ValueError(f"noise_scale must be a non-negative finite number, got {noise_scale!r}")
    if adjust and noise_scale == 0:
        raise ValueError("adjust=True (MALA) needs noise_scale > 0: a noise-free proposal has no density")
    return float(noise_scale)


@dataclass(frozen=True)
class TeachingConfig:
    """Options of :class:`VariationalMCMCTeaching`, identical in both backends.

    Parameters
    ----------
    init : {"vae", "noise", "persistent", "generator"}
        Where each Langevin revision starts. ``"vae"`` is variational MCMC teaching
        (Xie, Zheng & Li 2021): decoder means of ``z ~ N(0, I)``, the VAE then trained
        by SVI on the revised samples. ``"noise"`` is the short-run EBM of Nijkamp et
        al. (2019): uniform noise on ``init_bounds``. ``"persistent"`` is the replay
        buffer of Du & Mordatch (2019): chains continue from a buffer, a fraction
        ``reinit_prob`` restarted from noise. ``"generator"`` is CoopNets (Xie et al.
        2018): the decoder is regressed on the revised samples with its own ``z``, no
        encoder.
    step_size : float
        Langevin step size ``δ``; the drift is ``δ²/2 ∇E`` and the noise ``δ·noise_scale·ξ``.
    num_steps : int
        Langevin steps ``K`` per revision.
    noise_scale : float
        1.0 is Langevin dynamics, 0.0 the noise-free revision of the reference code.
    adjust : bool
        Metropolis-adjust each step (MALA).
    num_samples : int or None
        Chains revised per iteration; ``None`` uses the data batch size.
    energy_lr, vae_lr : float
        Adam learning rates of the energy and the VAE.
    betas : tuple of float
        Adam ``(β₁, β₂)`` for both optimisers; the reference code uses ``β₁ = 0.5``.
    energy_reg : float
        Weight ``λ`` of the energy-magnitude penalty ``λ·(mean E(data)² + mean E(x̃)²)``.
    grad_clip : float or None
        Clip the energy gradient to this global norm (``None``: no clipping).
    buffer_size : int
        Replay-buffer size for ``init="persistent"``.
    reinit_prob : float
        Fraction of persistent chains restarted from noise each iteration.
    init_bounds : tuple of float
        ``(low, high)`` of the uniform noise that starts ``"noise"`` chains and fills
        the replay buffer.
    noise_fraction : float
        With ``init="vae"`` or ``"generator"``: the fraction of each training batch's
        chains started from uniform noise on ``init_bounds`` instead of the decoder
        (noise-initialised chains reach regions the amortised sampler misses;
        Nijkamp et al. 2020). The VAE learns from all revised samples; the CoopNets
        generator only from the ones it started. Sampling after training uses the
        decoder alone.
    lr_decay_steps : int or None
        Cosine decay of both learning rates from their value to ``lr_final_ratio``
        times it over this many iterations, constant afterwards (``None``: constant).
    lr_final_ratio : float
        The final fraction of the learning rates under ``lr_decay_steps``.
    correction : {None, "mh"}
        ``None``: the paper's algorithm, the revised proposals are the negative
        samples. ``"mh"``: exact Metropolis–Hastings teaching — persistent chains (one
        per negative sample) accept a whole fresh proposal path (decoder draw with the
        VAE's observation noise, then the Langevin run) with probability
        ``min(1, w'/w)``, ``w`` the path's extended-space importance weight (see
        ``correction.py`` of either backend), and the chain states are the negative
        samples and the VAE's data. Needs ``init="vae"`` (the VAE proposes) or
        ``"noise"`` (every chain proposes from a Gaussian over ``init_bounds``) and
        ``noise_scale > 0``. The ``noise_fraction`` chains propose from that Gaussian
        (a uniform start would not have full support).
    path_refresh : bool
        With ``correction="mh"``: before each accept test, redraw the current state's
        auxiliary path (the Langevin backward run to ``x_0`` and ``z ~ r(z | x_0)``, a
        Gibbs step) and weigh it under the current parameters — exact while the
        parameters move, at ``K`` more gradient evaluations per iteration. ``False``
        keeps the stale path term and re-evaluates only ``E(x_K)``.
    path_anneal : bool
        With ``correction="mh"``: anneal each proposal path from its start Gaussian
        (``N(g(z), σ²)`` of the decoder, or the wide one) to ``E`` with inverse
        temperatures ``k/K`` (annealed importance sampling, Neal 2001) instead of
        running every step on ``E``; the encoder then reads the path's end point.
    """

    init: str = "vae"
    step_size: float = 0.1
    num_steps: int = 20
    noise_scale: float = 1.0
    adjust: bool = False
    num_samples: Optional[int] = None
    energy_lr: float = 1e-3
    vae_lr: float = 1e-3
    betas: Tuple[float, float] = (0.5, 0.999)
    energy_reg: float = 0.0
    grad_clip: Optional[float] = None
    buffer_size: int = 10_000
    reinit_prob: float = 0.05
    init_bounds: Tuple[float, float] = field(default=(-1.0, 1.0))
    noise_fraction: float = 0.0
    lr_decay_steps: Optional[int] = None
    lr_final_ratio: float = 0.1
    correction: Optional[str] = None
    path_refresh: bool = True
    path_anneal: bool = False

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        check_step_size(self.step_size)
        check_num_steps(self.num_steps)
        check_noise_scale(self.noise_scale, self.adjust)
        if self.num_samples is not None:
            _positive_int("num_samples", self.num_samples)
        for name in ("energy_lr", "vae_lr"):
            _positive_real(name, getattr(self, name))
        if not _is_real(self.energy_reg) or self.energy_reg < 0:
            raise ValueError(f"energy_reg must be a non-negative number, got {self.energy_reg!r}")
        if self.grad_clip is not None:
            _positive_real("grad_clip", self.grad_clip)
        b1, b2 = _pair("betas", self.betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas!r}")
        _positive_int("buffer_size", self.buffer_size)
        if not _is_real(self.reinit_prob) or not 0 <= self.reinit_prob <= 1:
            raise ValueError(f"reinit_prob must lie in [0, 1], got {self.reinit_prob!r}")
        if not _is_real(self.noise_fraction) or not 0 <= self.noise_fraction < 1:
            raise ValueError(f"noise_fraction must lie in [0, 1), got {self.noise_fraction!r}")
        if self.lr_decay_steps is not None:
            _positive_int("lr_decay_steps", self.lr_decay_steps)
        if not _is_real(self.lr_final_ratio) or not 0 <= self.lr_final_ratio <= 1:
            raise ValueError(f"lr_final_ratio must lie in [0, 1], got {self.lr_final_ratio!r}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.correction is not None:
            if self.init not in ("vae", "noise"):
                raise ValueError(f"correction={self.correction!r} needs init='vae' or 'noise', got {self.init!r}")
            if self.noise_scale <= 0:
                raise ValueError(f"correction={self.correction!r} needs noise_scale > 0: "
                                 "a noise-free revision has no density")
        for name in ("path_refresh", "path_anneal"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        low, high = _pair("init_bounds", self.init_bounds)
        if not low < high:
            raise ValueError(f"init_bounds must satisfy low < high, got {self.init_bounds!r}")
        # Normalise sequences to tuples so configs compare and serialise alike.
        object.__setattr__(self, "betas", (float(b1), float(b2)))
        object.__setattr__(self, "init_bounds", (float(low), float(high)))

    def lr_factor(self, iteration: int) -> float:
        r"""Learning-rate multiplier at ``iteration`` (0-based count of updates applied).

        Cosine decay (the schedule of ``optax.cosine_decay_schedule``):
        :math:`r + (1 - r)\,\tfrac12\big(1 + \cos(\pi \min(t, T)/T)\big)` with
        ``r = lr_final_ratio`` and ``T = lr_decay_steps``; 1 when ``lr_decay_steps`` is ``None``.
        """
        if self.lr_decay_steps is None:
            return 1.0
        t = min(iteration, self.lr_decay_steps) / self.lr_decay_steps
        return self.lr_final_ratio + (1 - self.lr_final_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    def num_noise_chains(self, n: int) -> int:
        """How many of ``n`` training chains start from noise under ``noise_fraction``."""
        return int(round(self.noise_fraction * n)) if self.init in ("vae", "generator") else 0

    def wide_proposal(self) -> Tuple[float, float]:
        """``(loc, scale)`` of the Gaussian that noise chains propose from under ``correction``:
        the centre and half-width of ``init_bounds``."""
        low, high = self.init_bounds
        return (0.5 * (low + high), 0.5 * (high - low))

    def replace(self, **changes: Any) -> "TeachingConfig":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-Python form, for checkpoints and ``metrics.json``."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TeachingConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TeachingConfig options: {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _positive_real(name: str, value: Any) -> None:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _pair(name: str, value: Any) -> Tuple[float, float]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of numbers, got {value!r}") from None
    if not (_is_real(a) and _is_real(b) and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{name} must be a pair of finite numbers, got {value!r}")
    return a, b
