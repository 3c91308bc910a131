r"""Finite-step Langevin dynamics over a batch of chains (JAX): the ``K``-step runner.

[`Langevin`][numpyro_vmt.langevin.Langevin] closes the pure functions of
[`numpyro_vmt.langevin_core`][numpyro_vmt.langevin_core] ([`init()`][numpyro_vmt.langevin_core.init],
[`step()`][numpyro_vmt.langevin_core.step], their [`LangevinState`][numpyro_vmt.langevin_core.LangevinState] and
[`LangevinInfo`][numpyro_vmt.langevin_core.LangevinInfo], re-exported here) over their options and
runs ``K`` steps as a ``lax.scan`` ([`scan_steps()`][numpyro_vmt.langevin.scan_steps]). The chain state
never lives on the object.

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
from typing import Any, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from numpyro_vmt.langevin_core import (LangevinInfo, LangevinState, PotentialFn, _check_position, _flat_sum,
                                       _raise_if_bad_start, energy_and_grad, init, is_concrete, step)
from numpyro_vmt.rng import RNG, as_rng
from vmt.core.checks import check_noise_scale, check_num_steps, check_step_size

# the core's names stay importable from here, where users and the other modules import them
__all__ = ["LangevinState", "LangevinInfo", "Langevin", "init", "step", "energy_and_grad"]

Array = jax.Array

_BARS: list = []  # the progress bar of the run in progress, ticked from inside the scan


def _tick() -> None:
    if _BARS:
        _BARS[-1].update(1)


def scan_steps(rng: RNG, state: LangevinState, potential_fn: PotentialFn, step_size: float,
               noise_scale: float, adjust: bool, num_steps: int, noise: Optional[Array] = None,
               uniform: Optional[Array] = None, progress: bool = False) -> Tuple[LangevinState, LangevinInfo]:
    """``num_steps`` calls of [`step()`][numpyro_vmt.langevin_core.step] from ``state``, as one ``lax.scan``.

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
    """K-step Langevin sampler: [`init()`][numpyro_vmt.langevin_core.init] and [`step()`][numpyro_vmt.langevin_core.step] closed over their options.

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
        """See [`init()`][numpyro_vmt.langevin_core.init]."""
        return init(position, self.potential_fn)

    def step(self, rng: RNG, state: LangevinState, noise: Optional[Array] = None,
             uniform: Optional[Array] = None) -> Tuple[LangevinState, LangevinInfo]:
        """See [`step()`][numpyro_vmt.langevin_core.step]."""
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
    """[`init()`][numpyro_vmt.langevin_core.init] then `scan_steps()`.

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
