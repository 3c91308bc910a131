r"""Finite-step Langevin dynamics over a batch of chains (JAX).

Pure functions [`init()`][numpyro_vmt.langevin.init] and [`step()`][numpyro_vmt.langevin.step] over a [`LangevinState`][numpyro_vmt.langevin.LangevinState], in the
shape of BlackJAX's samplers, and [`Langevin`][numpyro_vmt.langevin.Langevin], a thin wrapper that closes over
the parameters and runs ``K`` steps as a ``lax.scan``. The chain state never lives
on an object.

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
summed energy). [`Langevin.run()`][numpyro_vmt.langevin.Langevin.run] is compiled (``jax.jit`` over the potential's
array leaves, its static part hashed once per potential, as ``equinox.filter_jit``
would but without re-partitioning the module at every call) and everything works
under the caller's ``jax.jit`` and ``jax.vmap`` too; the checks of the inputs
(non-finite initial positions, ...) are counted inside the compiled run and raised
after it when the values are concrete, and are skipped on tracers.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from numpyro_vmt.rng import RNG, as_rng
from vmt.core.checks import check_noise_scale, check_num_steps, check_step_size

__all__ = ["LangevinState", "LangevinInfo", "Langevin", "init", "step", "energy_and_grad"]

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


_BARS: list = []  # the progress bar of the run in progress, ticked from inside the scan


def _tick() -> None:
    if _BARS:
        _BARS[-1].update(1)


def scan_steps(rng: RNG, state: LangevinState, potential_fn: PotentialFn, step_size: float,
               noise_scale: float, adjust: bool, num_steps: int, noise: Optional[Array] = None,
               uniform: Optional[Array] = None, progress: bool = False) -> Tuple[LangevinState, LangevinInfo]:
    """``num_steps`` calls of [`step()`][numpyro_vmt.langevin.step] from ``state``, as one ``lax.scan``.

    Step ``k`` uses the ``k``-th key of ``jax.random.split(rng, num_steps)``. The
    constant diagnostics of unadjusted steps (acceptance 1) are formed once, after
    the scan, rather than carried through it. ``progress`` ticks the bar of
    [`Langevin.run()`][numpyro_vmt.langevin.Langevin.run] from inside the scan (``jax.debug.callback``, once a step).
    """
    key = as_rng(rng)
    keys = None if key is None else jax.random.split(key, num_steps)

    def body(s, xs):
        k, nz, u = xs
        new, info = step(k, s, potential_fn, step_size, noise_scale, adjust, nz, u)
        if progress:
            jax.debug.callback(_tick)
        return new, (info if adjust else (info.grad_norm, info.is_divergent))

    final, out = jax.lax.scan(body, state, (keys, noise, uniform), length=num_steps)
    if adjust:
        return final, out
    grad_norm, divergent = out
    return final, LangevinInfo(jnp.ones_like(grad_norm), jnp.ones_like(divergent), grad_norm, divergent)


class Langevin:
    """K-step Langevin sampler: [`init()`][numpyro_vmt.langevin.init] and [`step()`][numpyro_vmt.langevin.step] closed over their options.

    Parameters
    ----------
    potential_fn : callable
        ``E``: ``(n, *event_shape) -> (n,)``, the negative log unnormalised density.
    step_size : float
        ``δ > 0``; drift ``δ²/2 ∇E``, noise ``δ σ ξ``.
    num_steps : int
        ``K``, the default length of `run()`.
    noise_scale : float
        ``σ``: 1.0 Langevin dynamics, 0.0 noise-free revision.
    adjust : bool
        Metropolis-adjusted (MALA) when ``True``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> sampler = Langevin(lambda x: 0.5 * (x ** 2).sum(-1), step_size=0.5, num_steps=100)
    >>> state, info = sampler.run(0, jnp.zeros((1000, 2)))
    >>> state.position.shape, info.is_divergent.shape
    ((1000, 2), (100, 1000))
    """

    def __init__(self, potential_fn: PotentialFn, step_size: float, num_steps: int = 1,
                 noise_scale: float = 1.0, adjust: bool = False):
        if not callable(potential_fn):
            raise TypeError("potential_fn must be callable: (n, *event_shape) -> (n,)")
        self.potential_fn = potential_fn
        # a traced value (a sweep vmapped through Langevin) is taken as it is: its checks
        # need a concrete number, and step() works on arrays
        self.step_size = check_step_size(step_size) if is_concrete(step_size) else step_size
        self.num_steps = check_num_steps(num_steps)
        self.noise_scale = (check_noise_scale(noise_scale, adjust) if is_concrete(noise_scale)
                            else noise_scale)
        self.adjust = bool(adjust)

    def init(self, position: Array) -> LangevinState:
        """See [`init()`][numpyro_vmt.langevin.init]."""
        return init(position, self.potential_fn)

    def step(self, rng: RNG, state: LangevinState, noise: Optional[Array] = None,
             uniform: Optional[Array] = None) -> Tuple[LangevinState, LangevinInfo]:
        """See [`step()`][numpyro_vmt.langevin.step]."""
        return step(rng, state, self.potential_fn, self.step_size, self.noise_scale,
                    self.adjust, noise, uniform)

    def run(self, rng: RNG, position: Array, num_steps: Optional[int] = None,
            noise: Optional[Array] = None, uniform: Optional[Array] = None, progress: bool = False
            ) -> Tuple[LangevinState, LangevinInfo]:
        """Run ``num_steps`` steps from ``position`` (a jitted ``lax.scan``).

        ``progress`` shows a tqdm bar over the steps, ticked from inside the compiled
        scan (off by default: runs inside training loops are short and many).

        The compiled run is cached per potential function (by identity; an equinox
        module by its static structure) and options, so repeated calls do not
        recompile.

        Returns the final state and the per-step diagnostics stacked along a new
        leading axis (shape ``(num_steps, n)`` each). ``noise`` / ``uniform``, if
        given, carry a leading ``num_steps`` axis.
        """
        num_steps = self.num_steps if num_steps is None else check_num_steps(num_steps)
        key = as_rng(rng)
        traced = not all(is_concrete(a) for a in (key, noise, uniform) if a is not None)
        # Concrete inputs: the finiteness of the start is counted inside the compiled
        # run and checked after it (one transfer); under a transformation, as before.
        position = _check_position(position, check_values=traced)
        progress = bool(progress)
        concrete = is_concrete(self.step_size) and is_concrete(self.noise_scale)
        compiled = self._compiled(num_steps, progress) if concrete else None
        bar = tqdm(total=num_steps, desc="langevin", leave=True) if progress else None
        if bar is not None:
            _BARS.append(bar)
        try:
            if compiled is None:
                state, info, bad = _run(key, position, self.potential_fn, self.step_size,
                                        self.noise_scale, self.adjust, num_steps, noise, uniform, progress)
            else:
                run, leaves = compiled
                state, info, bad = run(leaves, key, position, noise, uniform)
            if bar is not None:
                jax.block_until_ready(state)
                jax.effects_barrier()
        finally:
            if bar is not None:
                _BARS.remove(bar)
                bar.close()
        if is_concrete(bad):
            bad_position, bad_energy = (int(v) for v in np.asarray(bad))
            _raise_if_bad_start(bad_position, bad_energy, position.shape[0])
        return state, info

    def _compiled(self, num_steps: int, progress: bool = False):
        """``(jitted run, the potential's array leaves)``, or ``None`` for an unhashable potential.

        The potential is split once per potential object into its array leaves
        (arguments of the compiled run) and the rest (static, hashed by value for an
        equinox module, by identity for a plain function), like ``equinox.filter_jit``
        but without re-partitioning the module at every call.
        """
        fn = self.potential_fn
        cached = self.__dict__.get("_partition")
        if cached is None or cached[0] is not fn:
            dynamic, static = eqx.partition(fn, eqx.is_array)
            leaves, treedef = jax.tree.flatten(dynamic)
            try:
                static = _Static(static, treedef)
            except TypeError:
                static = None
            cached = self._partition = (fn, leaves, static)
        _, leaves, static = cached
        if static is None:
            return None
        return _compiled_run(static, self.step_size, self.noise_scale, self.adjust, num_steps, progress), leaves


class _Static:
    """The non-array part of a potential and the tree structure of its arrays, hashed once."""

    __slots__ = ("static", "treedef", "_hash")

    def __init__(self, static: Any, treedef: Any):
        self.static, self.treedef = static, treedef
        self._hash = hash((static, treedef))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, _Static):
            return NotImplemented
        if self.static is other.static and self.treedef == other.treedef:
            return True
        return self._hash == other._hash and self.treedef == other.treedef and bool(self.static == other.static)


@functools.lru_cache(maxsize=64)
def _compiled_run(static: _Static, step_size: float, noise_scale: float, adjust: bool, num_steps: int,
                  progress: bool = False):
    """`_start_and_scan()` jitted over ``(leaves, key, position, noise, uniform)``."""
    def run(leaves, key, position, noise, uniform):
        potential_fn = eqx.combine(jax.tree.unflatten(static.treedef, leaves), static.static)
        return _start_and_scan(key, position, potential_fn, step_size, noise_scale, adjust, num_steps,
                               noise, uniform, progress)

    return jax.jit(run)


def _start_and_scan(key, position, potential_fn, step_size, noise_scale, adjust, num_steps, noise, uniform,
                    progress=False):
    """[`init()`][numpyro_vmt.langevin.init] then `scan_steps()`.

    Also returns, for the caller to check on the host, the number of chains whose
    initial position is non-finite and the number whose initial energy or gradient is.
    """
    state = init(position, potential_fn)
    bad = jnp.stack([(~jnp.isfinite(_flat_sum(position))).sum(),
                     (~(jnp.isfinite(state.energy) & jnp.isfinite(_flat_sum(state.grad)))).sum()])
    final, info = scan_steps(key, state, potential_fn, step_size, noise_scale, adjust, num_steps, noise, uniform,
                             progress)
    return final, info, bad


@eqx.filter_jit
def _run(key, position, potential_fn, step_size, noise_scale, adjust, num_steps, noise, uniform, progress=False):
    """`_start_and_scan()` for a potential whose static part cannot be hashed, or a traced step size."""
    return _start_and_scan(key, position, potential_fn, step_size, noise_scale, adjust, num_steps, noise, uniform,
                           progress)
