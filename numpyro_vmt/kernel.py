r"""Langevin (ULA) and Metropolis-adjusted Langevin (MALA) as a NumPyro ``MCMCKernel``.

:class:`LangevinKernel` runs :func:`numpyro_vmt.langevin.step` on the flattened
(``ravel_pytree``) unconstrained parameters of any NumPyro model (potential, transforms
and ``postprocess_fn`` from ``numpyro.infer.util.initialize_model``) or of a user
``potential_fn``. One sample is one step, with one gradient evaluation:

.. math::

    x' = x - \tfrac{\delta^2}{2}\nabla U(x) + \delta\sigma\xi, \qquad \xi\sim\mathcal N(0, I),

accepted with the MALA probability when ``adjust=True`` (Roberts & Tweedie 1996,
"Exponential convergence of Langevin distributions and their discrete
approximations", Bernoulli 2(4)); the accepted state's gradient is carried in the
state. During warmup MALA's step size follows dual averaging (Hoffman & Gelman 2014,
JMLR 15, Algorithm 5; ``numpyro.infer.hmc_util.dual_averaging``) toward
``target_accept_prob`` (0.574, Roberts & Rosenthal 1998):

.. math::

    \bar H_t = (1 - \tfrac{1}{t + t_0})\bar H_{t-1} + \tfrac{\alpha^* - \alpha_t}{t + t_0},\quad
    \log\delta_t = \mu - \tfrac{\sqrt t}{\gamma}\bar H_t,\quad
    \log\bar\delta_t = t^{-\kappa}\log\delta_t + (1 - t^{-\kappa})\log\bar\delta_{t-1},

with :math:`\mu = \log(10\delta_0)`, :math:`t_0 = 10`, :math:`\gamma = 0.05`,
:math:`\kappa = 0.75`; :math:`\bar\delta` is used after warmup.

All of ``MCMC``'s ``chain_method``\ s work. With ``"vectorized"``, :meth:`init`
receives a batch of keys and vmaps itself, and :meth:`sample` vmaps the one-chain
step over the chains (each chain adapts its own step size, as NumPyro's HMC does).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import random
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc_util import dual_averaging
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import initialize_model
from numpyro.util import identity, is_prng_key

from numpyro_vmt.langevin import LangevinState, init, is_concrete, step
from vmt.core.checks import check_noise_scale, check_step_size

__all__ = ["LangevinKernel", "LangevinKernelState"]


class LangevinKernelState(NamedTuple):
    """State of one chain (a leading chain axis on every field when vectorized).

    Attributes
    ----------
    i : iteration (warmup included).
    z : unconstrained parameters (the ``sample_field``).
    potential_energy : ``U(z)``.
    z_grad : ``∇U(z)``, same structure as ``z``.
    accept_prob : MALA acceptance probability of the last step (1 for ULA).
    mean_accept_prob : running mean of ``accept_prob`` (reset after warmup).
    diverging : the last proposal was non-finite.
    grad_norm : ``‖∇U(z)‖``.
    step_size : current ``δ``.
    adapt_state : dual-averaging state ``(log δ_t, log δ̄_t, H̄_t, t, μ)``.
    rng_key : key of the next step.
    """

    i: Any
    z: Any
    potential_energy: Any
    z_grad: Any
    accept_prob: Any
    mean_accept_prob: Any
    diverging: Any
    grad_norm: Any
    step_size: Any
    adapt_state: Any
    rng_key: Any


class LangevinKernel(MCMCKernel):
    """ULA / MALA for ``numpyro.infer.MCMC``.

    Parameters
    ----------
    model : callable, optional
        A NumPyro model.
    potential_fn : callable, optional
        ``U(params) = −log p̃`` of unconstrained params (any pytree) -> scalar; needs
        ``init_params`` in ``MCMC.run``. Exactly one of ``model`` and ``potential_fn``.
    step_size : float
        ``δ``: drift ``δ²/2 ∇U``, noise ``δσξ``. The starting value when adapted.
    adjust : bool
        ``True``: MALA; ``False``: ULA (biased, see the docs).
    noise_scale : float
        ``σ``; 1 is Langevin dynamics.
    adapt_step_size : bool
        Dual averaging during warmup (MALA only).
    target_accept_prob : float
        Target of the adaptation, 0.574 by default.
    init_strategy : callable, optional
        NumPyro init strategy for ``model`` sites without ``init_params``; ``None``: ``init_to_uniform``.

    Examples
    --------
    >>> import jax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> def model():
    ...     numpyro.sample("x", dist.Normal(0.0, 1.0))
    >>> mcmc = MCMC(LangevinKernel(model, step_size=1.0), num_warmup=200, num_samples=200,
    ...             progress_bar=False)
    >>> mcmc.run(jax.random.key(0), extra_fields=("accept_prob",))
    >>> mcmc.get_samples()["x"].shape
    (200,)
    """

    sample_field = "z"
    default_fields = ("z", "diverging")

    def __init__(self, model: Optional[Callable] = None, potential_fn: Optional[Callable] = None,
                 step_size: float = 0.1, adjust: bool = True, noise_scale: float = 1.0,
                 adapt_step_size: bool = True, target_accept_prob: float = 0.574,
                 init_strategy: Optional[Callable] = None):
        if (model is None) == (potential_fn is None):
            raise ValueError("give exactly one of model= and potential_fn=")
        if not 0 < target_accept_prob < 1:
            raise ValueError(f"target_accept_prob must lie in (0, 1), got {target_accept_prob!r}")
        self._model, self._potential_fn = model, potential_fn
        self._step_size = check_step_size(step_size)
        self._adjust = bool(adjust)
        self._noise_scale = check_noise_scale(noise_scale, adjust)
        self._adapt = bool(adapt_step_size) and self._adjust
        self._target = float(target_accept_prob)
        self._init_strategy = init_to_uniform if init_strategy is None else init_strategy
        self._pe_gen = self._postprocess_fn = None
        self._num_warmup = 0

    @property
    def model(self) -> Optional[Callable]:
        return self._model

    @property
    def step_size(self) -> float:
        """The initial step size ``δ₀`` (the current one is ``state.step_size``)."""
        return self._step_size

    def _potential(self, model_args: tuple, model_kwargs: Optional[dict]) -> Callable:
        if self._model is None:
            return self._potential_fn
        return self._pe_gen(*model_args, **(model_kwargs or {}))

    def init(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        """Start one chain, or a batch of chains when ``rng_key`` is a batch of keys."""
        self._num_warmup = int(num_warmup)
        vectorized = not is_prng_key(rng_key)
        if vectorized:
            rng_key, key_init = jnp.swapaxes(jax.vmap(random.split)(rng_key), 0, 1)
        else:
            rng_key, key_init = random.split(rng_key)
        if self._model is not None:
            info, self._pe_gen, self._postprocess_fn, _ = initialize_model(
                key_init, self._model, init_strategy=self._init_strategy, dynamic_args=True,
                model_args=model_args, model_kwargs=model_kwargs)
            init_params = info[0] if init_params is None else init_params
        elif init_params is None:
            raise ValueError("potential_fn= needs init_params (unconstrained) in MCMC.run")
        one = partial(self._init_one, potential_fn=self._potential(model_args, model_kwargs))
        state = jax.jit(jax.vmap(one) if vectorized else one)(rng_key, init_params)
        if is_concrete(state.potential_energy):  # under pmap ("parallel") values are traced
            bad = ~(jnp.isfinite(state.potential_energy) & jnp.isfinite(state.grad_norm))
            if bool(bad.any()):
                raise ValueError(f"the potential or its gradient is non-finite at the initial params "
                                 f"of {int(bad.sum())} of {bad.size} chains")
        return state

    def _init_one(self, rng_key, z, potential_fn):
        x, unravel = ravel_pytree(z)
        s = init(x[None], _flat_potential(potential_fn, unravel))
        step_size = jnp.asarray(self._step_size, dtype=x.dtype)
        da_init, _ = dual_averaging()
        zero = jnp.zeros((), x.dtype)
        return LangevinKernelState(
            jnp.array(0), z, s.energy[0], unravel(s.grad[0]), zero, zero, jnp.array(False),
            jnp.linalg.norm(s.grad[0]), step_size, da_init(jnp.log(10.0 * step_size)), rng_key)

    def sample(self, state, model_args, model_kwargs):
        """One ULA/MALA step (vmapped over chains when ``state`` is a batch)."""
        one = partial(self._sample_one, potential_fn=self._potential(model_args, model_kwargs))
        return one(state) if is_prng_key(state.rng_key) else jax.vmap(one)(state)

    def _sample_one(self, state, potential_fn):
        i, z, pe, z_grad, _, mean_accept, _, _, step_size, da, rng_key = state
        x, unravel = ravel_pytree(z)
        g, _ = ravel_pytree(z_grad)
        rng_key, key = random.split(rng_key)
        new, info = step(key, LangevinState(x[None], pe[None], g[None]),
                         _flat_potential(potential_fn, unravel), step_size,
                         self._noise_scale, self._adjust)
        accept = info.acceptance_rate[0].astype(x.dtype)
        if self._adapt:
            _, da_update = dual_averaging()
            warm = i < self._num_warmup
            da_new = da_update(self._target - accept, da)
            da = jax.tree.map(lambda a, b: jnp.where(warm, a, b), da_new, da)
            tuned = jnp.where(i + 1 == self._num_warmup, jnp.exp(da_new[1]), jnp.exp(da_new[0]))
            step_size = jnp.where(warm, tuned, step_size).astype(step_size.dtype)
        n = jnp.where(i < self._num_warmup, i + 1, i + 1 - self._num_warmup)
        mean_accept = mean_accept + (accept - mean_accept) / n
        return LangevinKernelState(
            i + 1, unravel(new.position[0]), new.energy[0], unravel(new.grad[0]), accept,
            mean_accept, info.is_divergent[0], info.grad_norm[0], step_size, da, rng_key)

    def postprocess_fn(self, model_args, model_kwargs):
        """Unconstrained -> constrained sites (and deterministic sites) of ``model``."""
        if self._postprocess_fn is None:
            return identity
        return self._postprocess_fn(*model_args, **(model_kwargs or {}))

    def get_diagnostics_str(self, state):
        return "step size {:.2e}. acc. prob={:.2f}".format(state.step_size, state.mean_accept_prob)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pe_gen"] = state["_postprocess_fn"] = None  # rebuilt by init from the model
        return state


def _flat_potential(potential_fn: Callable, unravel: Callable) -> Callable:
    """``U`` of a ``(n, D)`` batch of flat positions, shape ``(n,)``."""
    return jax.vmap(lambda r: potential_fn(unravel(r)))
