r"""Langevin (ULA) and Metropolis-adjusted Langevin (MALA) as a NumPyro ``MCMCKernel``.

[`LangevinKernel`][numpyro_vmt.kernel.LangevinKernel] runs [`numpyro_vmt.langevin.step()`][numpyro_vmt.langevin.step] on the flattened
(``ravel_pytree``) unconstrained parameters of any NumPyro model (potential, transforms
and ``postprocess_fn`` from ``numpyro.infer.util.initialize_model``) or of a user
``potential_fn``. One sample is one step, with one gradient evaluation:

$$
x' = x - \tfrac{\delta^2}{2}\nabla U(x) + \delta\sigma\xi, \qquad \xi\sim\mathcal N(0, I),
$$

accepted with the MALA probability when ``adjust=True`` (Roberts & Tweedie 1996,
"Exponential convergence of Langevin distributions and their discrete
approximations", Bernoulli 2(4)); the accepted state's gradient is carried in the
state. With an inverse mass matrix $M^{-1}$ the proposal is preconditioned,
$x' = x - \tfrac{\delta^2}{2}M^{-1}\nabla U(x) + \delta\sigma M^{-1/2}\xi$, and the
Metropolis ratio uses the same preconditioned densities ([`numpyro_vmt.preconditioned`][numpyro_vmt.preconditioned]).

Warmup uses NumPyro's own adaptation, ``numpyro.infer.hmc_util.warmup_adapter`` (as
``HMC`` and ``BarkerMH`` do): Stan's windows, the regularised Welford estimate of the
(diagonal, or with ``dense_mass`` dense) inverse mass matrix, and MALA's step size by
dual averaging (Hoffman & Gelman 2014, JMLR 15, Algorithm 5) toward
``target_accept_prob`` (0.574, Roberts & Rosenthal 1998):

$$
\bar H_t = (1 - \tfrac{1}{t + t_0})\bar H_{t-1} + \tfrac{\alpha^* - \alpha_t}{t + t_0},\quad
\log\delta_t = \mu - \tfrac{\sqrt t}{\gamma}\bar H_t,\quad
\log\bar\delta_t = t^{-\kappa}\log\delta_t + (1 - t^{-\kappa})\log\bar\delta_{t-1},
$$

with $\mu = \log(10\delta_0)$, $t_0 = 10$, $\gamma = 0.05$,
$\kappa = 0.75$; $\bar\delta$ is used after warmup.

All of ``MCMC``'s ``chain_method``s work. With ``"vectorized"``, [`init()`][numpyro_vmt.langevin.init]
receives a batch of keys and vmaps itself, and `sample()` vmaps the one-chain
step over the chains (each chain adapts its own step size, as NumPyro's HMC does).
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax import random
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc_util import warmup_adapter
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import initialize_model
from numpyro.util import identity, is_prng_key

from numpyro_vmt.langevin import LangevinState, init, is_concrete
from numpyro_vmt.preconditioned import preconditioned_step, scale_factor
from vmt.core.checks import as_real, check_noise_scale, check_step_size

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
    adapt_state : NumPyro's ``HMCAdaptState`` (step size, inverse mass matrix and its
        square roots, dual-averaging and Welford states, window index).
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
    adapt_mass_matrix : bool
        Estimate the inverse mass matrix during warmup (MALA only, as in the Pyro kernel).
    dense_mass : bool
        A dense ``(D, D)`` inverse mass matrix instead of a diagonal one.
    inverse_mass_matrix : Array, optional
        Initial (or fixed) inverse mass matrix of the flat (``ravel_pytree``)
        unconstrained parameters: ``(D,)``, or ``(D, D)`` with ``dense_mass``. Default identity.
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
                 adapt_step_size: bool = True, adapt_mass_matrix: bool = True, dense_mass: bool = False,
                 inverse_mass_matrix: Optional[Any] = None, target_accept_prob: float = 0.574,
                 init_strategy: Optional[Callable] = None):
        if (model is None) == (potential_fn is None):
            raise ValueError("give exactly one of model= and potential_fn=")
        self._target = as_real("target_accept_prob", target_accept_prob, low=0, high=1,
                               low_open=True, high_open=True)
        self._dense = bool(dense_mass)
        if inverse_mass_matrix is not None:
            inverse_mass_matrix = jnp.asarray(inverse_mass_matrix)
            if inverse_mass_matrix.ndim != (2 if self._dense else 1):
                raise ValueError(f"inverse_mass_matrix of shape {tuple(inverse_mass_matrix.shape)} does not "
                                 f"match dense_mass={self._dense}: give (D,) for a diagonal matrix, "
                                 "(D, D) with dense_mass=True")
        self._inverse_mass_matrix = inverse_mass_matrix
        self._model, self._potential_fn = model, potential_fn
        self._step_size = check_step_size(step_size)
        self._adjust = bool(adjust)
        self._noise_scale = check_noise_scale(noise_scale, adjust)
        self._adapt = bool(adapt_step_size) and self._adjust
        self._adapt_mass = bool(adapt_mass_matrix) and self._adjust
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

    def _adapter(self):
        return warmup_adapter(self._num_warmup, adapt_step_size=self._adapt,
                              adapt_mass_matrix=self._adapt_mass, dense_mass=self._dense,
                              target_accept_prob=self._target)

    def _init_one(self, rng_key, z, potential_fn):
        x, unravel = ravel_pytree(z)
        s = init(x[None], _flat_potential(potential_fn, unravel))
        step_size = jnp.asarray(self._step_size, dtype=x.dtype)
        imm = self._inverse_mass_matrix
        if imm is not None and imm.shape[0] != x.shape[0]:
            raise ValueError(f"inverse_mass_matrix has size {imm.shape[0]}, the unconstrained parameters "
                             f"{x.shape[0]} (flattened with ravel_pytree)")
        wa_init, _ = self._adapter()
        adapt = wa_init((z,), rng_key, step_size, inverse_mass_matrix=None if imm is None else imm.astype(x.dtype),
                        mass_matrix_size=x.shape[0])._replace(rng_key=None)
        zero = jnp.zeros((), x.dtype)
        return LangevinKernelState(
            jnp.array(0), z, s.energy[0], unravel(s.grad[0]), zero, zero, jnp.array(False),
            jnp.linalg.norm(s.grad[0]), step_size, adapt, rng_key)

    def sample(self, state, model_args, model_kwargs):
        """One ULA/MALA step (vmapped over chains when ``state`` is a batch)."""
        one = partial(self._sample_one, potential_fn=self._potential(model_args, model_kwargs))
        return one(state) if is_prng_key(state.rng_key) else jax.vmap(one)(state)

    def _sample_one(self, state, potential_fn):
        i, z, pe, z_grad, _, mean_accept, _, _, step_size, adapt, rng_key = state
        x, unravel = ravel_pytree(z)
        g, _ = ravel_pytree(z_grad)
        rng_key, key = random.split(rng_key)
        root = adapt.mass_matrix_sqrt_inv.T if self._dense else adapt.mass_matrix_sqrt_inv
        new, info = preconditioned_step(key, LangevinState(x[None], pe[None], g[None]),
                                        _flat_potential(potential_fn, unravel),
                                        scale_factor(step_size, root, self._dense),
                                        self._noise_scale, self._adjust)
        accept = info.acceptance_rate[0].astype(x.dtype)
        new_z = unravel(new.position[0])
        if self._adapt or self._adapt_mass:
            _, wa_update = self._adapter()
            adapt = jax.lax.cond(i < self._num_warmup,
                                 lambda a: wa_update(i, accept, (new_z,), a), lambda a: a, adapt)
            step_size = adapt.step_size.astype(step_size.dtype)
        n = jnp.where(i < self._num_warmup, i + 1, i + 1 - self._num_warmup)
        mean_accept = mean_accept + (accept - mean_accept) / n
        return LangevinKernelState(
            i + 1, new_z, new.energy[0], unravel(new.grad[0]), accept,
            mean_accept, info.is_divergent[0], info.grad_norm[0], step_size, adapt, rng_key)

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
