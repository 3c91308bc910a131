r"""The functional core of Langevin dynamics over a batch of chains (JAX).

Pure functions [`init()`][numpyro_vmt.langevin_core.init] and [`step()`][numpyro_vmt.langevin_core.step] over a
[`LangevinState`][numpyro_vmt.langevin_core.LangevinState], in the shape of BlackJAX's samplers; the chain
state never lives on an object. [`Langevin`][numpyro_vmt.langevin.Langevin] ([`numpyro_vmt.langevin`][numpyro_vmt.langevin],
which re-exports these names) closes over the options and runs ``K`` steps as a ``lax.scan``.

One step with energy $E$ (the potential, $-\log$ of the unnormalised
density), step size $\delta$ and noise scale $\sigma$:

$$
x' = x - \frac{\delta^2}{2} \nabla_x E(x) + \delta \sigma \xi,
\qquad \xi \sim \mathcal N(0, I).
$$

``noise_scale = 1`` is the Euler–Maruyama discretisation of overdamped Langevin
dynamics (ULA); ``noise_scale = 0`` is the deterministic revision of the reference
implementation of Xie, Zheng & Li, "Learning Energy-Based Model with Variational
Auto-Encoder as Amortized Sampler", AAAI 2021 (https://arxiv.org/abs/2012.14936).
With ``adjust=True`` the move is a proposal accepted with probability

$$
\alpha = \min\Big(1, \exp\big(E(x) - E(x') + \log q(x \mid x') - \log q(x' \mid x)\big)\Big),
\quad q(x' \mid x) = \mathcal N\big(x';\, x - \tfrac{\delta^2}{2}\nabla E(x),\, \delta^2\sigma^2 I\big),
$$

the Metropolis-adjusted Langevin algorithm (MALA; Roberts & Tweedie 1996).
In BlackJAX's notation (``x + ε∇log p + √(2ε)ξ``), ``ε = δ²/2``.

Every step evaluates the energy and its gradient once (``jax.value_and_grad`` of the
summed energy); everything works under the caller's ``jax.jit`` and ``jax.vmap``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_vmt.rng import RNG, as_rng
from vmt.core.checks import check_noise_scale, check_step_size

__all__ = ["LangevinState", "LangevinInfo", "init", "step", "energy_and_grad"]

Array = jax.Array
PotentialFn = Callable[[Array], Array]


class LangevinState(NamedTuple):
    """State of a batch of chains.

    Attributes
    ----------
    position : Array, shape ``(n, *event_shape)``
    energy : Array, shape ``(n,)``
        ``E(position)``.
    grad : Array, shape ``(n, *event_shape)``
        ``∇E(position)``.
    """

    position: Array
    energy: Array
    grad: Array


class LangevinInfo(NamedTuple):
    """Diagnostics of one step, per chain (stacked over steps by [`Langevin.run()`][numpyro_vmt.langevin.Langevin.run]).

    Attributes
    ----------
    acceptance_rate : Array, shape ``(n,)``
        Metropolis acceptance probability ``α`` (1 for unadjusted steps, 0 for a
        non-finite proposal).
    is_accepted : Array of bool, shape ``(n,)``
    grad_norm : Array, shape ``(n,)``
        ``‖∇E‖`` at the state returned by the step.
    is_divergent : Array of bool, shape ``(n,)``
        The move produced a non-finite energy, gradient or position. MALA rejects
        such a proposal; an unadjusted chain keeps it, so the flag is the report.
    """

    acceptance_rate: Array
    is_accepted: Array
    grad_norm: Array
    is_divergent: Array


def _flat_sum(t: Array) -> Array:
    return t.reshape(t.shape[0], -1).sum(1)


def is_concrete(x: Any) -> bool:
    """``True`` unless ``x`` is a tracer (inside ``jit``/``vmap``/``grad``)."""
    return not isinstance(x, jax.core.Tracer)


def energy_and_grad(potential_fn: PotentialFn, position: Array) -> Tuple[Array, Array]:
    """``E(x)`` and ``∇ₓE(x)`` for a batch, from one ``jax.value_and_grad`` of ``Σᵢ E(xᵢ)``.

    Raises ``ValueError`` if ``potential_fn`` does not return one energy per chain.
    """
    def total(x):
        energy = potential_fn(x)
        if not isinstance(energy, jax.Array) or energy.shape != x.shape[:1]:
            shape = tuple(energy.shape) if isinstance(energy, jax.Array) else type(energy).__name__
            raise ValueError(
                f"potential_fn must return one energy per chain, shape ({x.shape[0]},); "
                f"got {shape} for positions of shape {tuple(x.shape)}"
            )
        return energy.sum(), energy

    (_, energy), grad = jax.value_and_grad(total, has_aux=True)(position)
    return jax.lax.stop_gradient(energy), jax.lax.stop_gradient(grad)


def _check_position(position: Any, check_values: bool = True) -> Array:
    if isinstance(position, np.ndarray):
        position = jnp.asarray(position)
    if not isinstance(position, jax.Array):
        raise TypeError(f"position must be a jax.Array, got {type(position).__name__}")
    if not jnp.issubdtype(position.dtype, jnp.floating):
        raise ValueError(f"position must be a floating-point array, got dtype {position.dtype}")
    if position.ndim < 2 or position.shape[0] == 0:
        raise ValueError(
            "position must have a leading batch (chain) dimension and an event shape, "
            f"e.g. (num_chains, dim); got shape {tuple(position.shape)}"
        )
    if check_values and is_concrete(position):
        _raise_if_bad_start(int((~np.isfinite(np.asarray(_flat_sum(position)))).sum()), 0, position.shape[0])
    return position


def _raise_if_bad_start(bad_position: int, bad_energy: int, n: int) -> None:
    """The errors of a non-finite start: first the position, then its energy or gradient."""
    if bad_position:
        raise ValueError(f"initial position is non-finite in {bad_position} of {n} chains")
    if bad_energy:
        raise ValueError(
            f"energy or its gradient is non-finite at the initial position of {bad_energy} of {n} chains"
        )


def init(position: Array, potential_fn: PotentialFn) -> LangevinState:
    """Start chains at ``position`` (shape ``(n, *event_shape)``)."""
    position = _check_position(position)
    energy, grad = energy_and_grad(potential_fn, position)
    if is_concrete(energy) and is_concrete(grad):
        bad = ~(np.isfinite(np.asarray(energy)) & np.isfinite(np.asarray(_flat_sum(grad))))
        _raise_if_bad_start(0, int(bad.sum()), position.shape[0])
    return LangevinState(jax.lax.stop_gradient(position), energy, grad)


def _positive(value: Any) -> bool:
    """``value > 0`` for a concrete number; a traced value is taken as positive."""
    return bool(value > 0) if is_concrete(value) else True


def step(
    rng: RNG,
    state: LangevinState,
    potential_fn: PotentialFn,
    step_size: float,
    noise_scale: float = 1.0,
    adjust: bool = False,
    noise: Optional[Array] = None,
    uniform: Optional[Array] = None,
) -> Tuple[LangevinState, LangevinInfo]:
    """One (optionally Metropolis-adjusted) Langevin step for every chain.

    Parameters
    ----------
    rng : jax.random key, int or None
        Source of ``ξ`` (and of the Metropolis uniforms). May be ``None`` only when
        no randomness is needed (``noise`` given, or ``noise_scale = 0``).
    state : LangevinState
    potential_fn : callable
        ``E``: ``(n, *event_shape) -> (n,)``.
    step_size : float
        ``δ > 0``.
    noise_scale : float
        ``σ ≥ 0``.
    adjust : bool
        Metropolis-adjust (MALA).
    noise, uniform : Array, optional
        Injected ``ξ`` (shape of the position) and Metropolis uniforms (shape
        ``(n,)``), for deterministic tests.

    Returns
    -------
    (LangevinState, LangevinInfo)
    """
    x, e, g = state
    # concrete numbers of any array library as Python floats; traced values as they are
    step_size = check_step_size(step_size) if is_concrete(step_size) else step_size
    noise_scale = check_noise_scale(noise_scale, adjust) if is_concrete(noise_scale) else noise_scale
    h = 0.5 * step_size * step_size
    scale = step_size * noise_scale
    noisy = _positive(scale)
    needs_rng = (noise is None and _positive(noise_scale)) or (adjust and uniform is None)
    key = as_rng(rng)
    if needs_rng and key is None:
        raise ValueError("rng is required: pass a jax.random key or an int seed")
    key_noise, key_uniform = jax.random.split(key) if key is not None else (None, None)
    drift = x - h * g
    if noisy:
        if noise is None:
            noise = jax.random.normal(key_noise, x.shape, dtype=x.dtype)
        elif noise.shape != x.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x.shape)}")
        new_x = drift + scale * noise
    else:
        new_x = drift
    new_e, new_g = energy_and_grad(potential_fn, new_x)
    finite = jnp.isfinite(new_e) & jnp.isfinite(_flat_sum(new_g)) & jnp.isfinite(_flat_sum(new_x))
    if not adjust:
        ones = jnp.ones_like(new_e)
        info = LangevinInfo(ones, jnp.ones_like(finite), jnp.sqrt(_flat_sum(new_g * new_g)), ~finite)
        return LangevinState(new_x, new_e, new_g), info

    # log q(x' | x) - log q(x | x'), both with variance (δσ)²
    fwd = _flat_sum((new_x - drift) ** 2)
    bwd = _flat_sum((x - (new_x - h * new_g)) ** 2)
    log_alpha = e - new_e + (fwd - bwd) / (2 * scale * scale)
    log_alpha = jnp.where(finite, log_alpha, -jnp.inf)
    if uniform is None:
        uniform = jax.random.uniform(key_uniform, e.shape, dtype=x.dtype)
    accept = jnp.log(uniform) < log_alpha
    mask = accept.reshape((-1,) + (1,) * (x.ndim - 1))
    pos = jnp.where(mask, new_x, x)
    grad = jnp.where(mask, new_g, g)
    info = LangevinInfo(
        jnp.exp(jnp.minimum(log_alpha, 0.0)),
        accept,
        jnp.sqrt(_flat_sum(grad * grad)),
        ~finite,
    )
    return LangevinState(pos, jnp.where(accept, new_e, e), grad), info
