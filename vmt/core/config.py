"""Hyper-parameters shared by both backends, validated in one place.

Both ``pyro_vmt`` and ``numpyro_vmt`` read the same [`TeachingConfig`][vmt.core.config.TeachingConfig], so
an option means the same thing, has the same default and is rejected with the same
message whichever backend runs it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

from vmt.core.batch import is_conditional
from vmt.core.checks import as_count, as_pair, as_real, check_noise_scale, check_num_steps, check_step_size
from vmt.core.errors import ArgumentTypeError

__all__ = ["INITS", "CORRECTIONS", "TeachingConfig", "resolve_teacher_parts"]

#: The ways a Langevin revision can be initialised (see [`TeachingConfig`][vmt.core.config.TeachingConfig]).
INITS = ("vae", "noise", "persistent", "generator")

#: Corrections of the negative samples (see [`TeachingConfig`][vmt.core.config.TeachingConfig]): ``None`` is the paper's plain algorithm.
CORRECTIONS = (None, "mh")


@dataclass(frozen=True)
class TeachingConfig:
    """Options of `VariationalMCMCTeaching`, identical in both backends.

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
    local_steps : int
        With ``correction="mh"``: this many MALA steps (step size ``step_size``, noise
        scale ``noise_scale``) on the chain states every iteration, before the accept
        test. Each leaves $e^{-E}$ invariant, so the chains stay exact; they explore each
        mode's shape and tails between the (rarer) accepted jumps. Needs
        ``path_refresh=True`` (a stale path term does not lead to a moved state).
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
    local_steps: int = 0

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not isinstance(self.adjust, (bool, type(None))) and type(self.adjust).__name__ != "bool_":
            raise ValueError(f"adjust must be True or False, got {self.adjust!r}")
        clean = dict(
            adjust=bool(self.adjust),
            step_size=check_step_size(self.step_size),
            num_steps=check_num_steps(self.num_steps),
            noise_scale=check_noise_scale(self.noise_scale, bool(self.adjust)),
            num_samples=None if self.num_samples is None else as_count("num_samples", self.num_samples),
            energy_lr=as_real("energy_lr", self.energy_lr, low=0, low_open=True),
            vae_lr=as_real("vae_lr", self.vae_lr, low=0, low_open=True),
            energy_reg=as_real("energy_reg", self.energy_reg, low=0),
            grad_clip=None if self.grad_clip is None else as_real("grad_clip", self.grad_clip, low=0, low_open=True),
            betas=tuple(as_real("betas", b, low=0, high=1, high_open=True) for b in as_pair("betas", self.betas)),
            buffer_size=as_count("buffer_size", self.buffer_size),
            reinit_prob=as_real("reinit_prob", self.reinit_prob, low=0, high=1),
            init_bounds=as_pair("init_bounds", self.init_bounds),
            noise_fraction=as_real("noise_fraction", self.noise_fraction, low=0, high=1, high_open=True),
            lr_decay_steps=None if self.lr_decay_steps is None else as_count("lr_decay_steps", self.lr_decay_steps),
            lr_final_ratio=as_real("lr_final_ratio", self.lr_final_ratio, low=0, high=1),
            local_steps=as_count("local_steps", self.local_steps, minimum=0),
        )
        low, high = clean["init_bounds"]
        if not low < high:
            raise ValueError(f"init_bounds must satisfy low < high, got {self.init_bounds!r}")
        if self.correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.correction is not None:
            if self.init not in ("vae", "noise"):
                raise ValueError(f"correction={self.correction!r} needs init='vae' or 'noise', got {self.init!r}; "
                                 "use correction=None (--correction none) with this init")
            if clean["noise_scale"] <= 0:
                raise ValueError(f"correction={self.correction!r} needs noise_scale > 0: "
                                 "a noise-free revision has no density")
        for name in ("path_refresh", "path_anneal"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if clean["local_steps"] and (self.correction is None or not self.path_refresh):
            raise ValueError(f"local_steps={clean['local_steps']} needs correction='mh' with path_refresh=True "
                             "(the MALA moves act on the MH chains and need their paths redrawn)")
        # Plain Python numbers and tuples, so configs compare and serialise alike
        # whatever scalar types (NumPy, torch, JAX) they were given.
        for name, value in clean.items():
            object.__setattr__(self, name, value)

    def lr_factor(self, iteration: int) -> float:
        r"""Learning-rate multiplier at ``iteration`` (0-based count of updates applied).

        Cosine decay (the schedule of ``optax.cosine_decay_schedule``):
        $r + (1 - r)\,\tfrac12\big(1 + \cos(\pi \min(t, T)/T)\big)$ with
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
        """A copy with ``changes`` applied (and validated); an unknown name raises `ArgumentTypeError`."""
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise ArgumentTypeError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                                    f"the options are {', '.join(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain-Python form, for checkpoints and ``metrics.json``."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "TeachingConfig":
        """Inverse of `to_dict()`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TeachingConfig options: {sorted(unknown)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})



def resolve_teacher_parts(energy: Any, vae: Any, config: Optional[TeachingConfig], options: dict,
                          package: str, energy_cls: type, vae_cls: type) -> Tuple[TeachingConfig, Any]:
    """The checks every teacher constructor makes, in one place: ``(config, vae or None)``.

    ``config`` with ``options`` applied; the VAE is required (an instance of
    ``vae_cls`` with the energy's event shape, conditional exactly when the energy is)
    for ``init="vae"``/``"generator"`` and dropped otherwise.
    """
    if not isinstance(energy, energy_cls):
        raise ArgumentTypeError(f"energy must be a {package}.{energy_cls.__name__}, got {type(energy).__name__}")
    config = config or TeachingConfig()
    config = config.replace(**options) if options else config
    if config.init not in ("vae", "generator"):
        return config, None
    if not isinstance(vae, vae_cls) or is_conditional(vae) != is_conditional(energy):
        raise ValueError(f"init={config.init!r} needs a {package}.{vae_cls.__name__}, got {type(vae).__name__}")
    if vae.event_shape != energy.event_shape:
        raise ValueError(f"VAE event shape {vae.event_shape} differs from the energy's {energy.event_shape}")
    return config, vae
