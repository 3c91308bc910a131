r"""Langevin (ULA) and Metropolis-adjusted Langevin (MALA) as a Pyro ``MCMCKernel``.

[`LangevinKernel`][pyro_vmt.kernel.LangevinKernel] runs [`pyro_vmt.langevin.step()`][pyro_vmt.langevin.step] on the flattened,
concatenated unconstrained parameters of any Pyro model (constrained sites mapped to
$\mathbb R^d$ as Pyro's HMC does, via ``pyro.infer.mcmc.util.initialize_model``)
or of a user ``potential_fn``. One sample is one step, with one gradient evaluation:

$$
x' = x - \tfrac{\delta^2}{2}\nabla U(x) + \delta\sigma\xi, \qquad \xi\sim\mathcal N(0, I),
$$

accepted with the MALA probability when ``adjust=True`` (Roberts & Tweedie 1996,
"Exponential convergence of Langevin distributions and their discrete
approximations", Bernoulli 2(4)); the gradient of the accepted state is kept, so the
next step needs no extra evaluation. With an inverse mass matrix $M^{-1}$ the
proposal is preconditioned, $x' = x - \tfrac{\delta^2}{2}M^{-1}\nabla U(x) +
\delta\sigma M^{-1/2}\xi$, and the Metropolis ratio uses the same preconditioned
densities ([`pyro_vmt.preconditioned`][pyro_vmt.preconditioned]).

Warmup uses Pyro's own adaptation, `pyro.infer.mcmc.adaptation.WarmupAdapter`
(as ``HMC``/``NUTS`` do): the step size follows dual averaging
(``pyro.ops.dual_averaging``; Hoffman & Gelman 2014, JMLR 15, Algorithm 5) toward
``target_accept_prob`` (default 0.574, the optimal MALA acceptance of Roberts &
Rosenthal 1998), and with ``adapt_mass_matrix`` the (diagonal, or with ``dense_mass``
dense) inverse mass matrix is the regularised Welford covariance of the draws in
Stan's doubling windows. The step size is reset to its current value (not searched
for) when a window ends.

Many chains in one process: with ``num_chains=C`` the kernel carries ``C`` chains as a
batch dimension (one batched gradient per step), driven by
[`pyro_vmt.chains.run_chains()`][pyro_vmt.chains.run_chains]; see [`pyro_vmt.chains`][pyro_vmt.chains]. Each chain has its own
adapter, so its own step size and mass matrix, as NumPyro's vectorized chains do.
"""

from __future__ import annotations

import math
import multiprocessing
import warnings
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional

import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import init_to_uniform
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from pyro.infer.mcmc.util import initialize_model

from pyro_vmt.adaptation import ChainsAdapter, PerChain
from pyro_vmt.potential import ChainPlatePotential
from pyro_vmt.langevin import init
from pyro_vmt.preconditioned import preconditioned_step, scale_factor
from pyro_vmt.rng import RNG
from vmt.core.checks import as_real, check_noise_scale, check_step_size
from vmt.core.errors import DivergenceError, divergence_message

__all__ = ["LangevinKernel"]


class LangevinKernel(MCMCKernel):
    """ULA / MALA for ``pyro.infer.MCMC`` (one chain per kernel) or [`run_chains()`][pyro_vmt.chains.run_chains] (a batch).

    Parameters
    ----------
    model : callable, optional
        A Pyro model; its potential and transforms come from ``initialize_model``.
    potential_fn : callable, optional
        ``U(params) = −log p̃``: dict of unconstrained tensors -> scalar (or, with
        ``num_chains`` and ``vectorize=True``, dict of ``(C, ...)`` tensors -> ``(C,)``).
        Exactly one of ``model`` and ``potential_fn``; ``potential_fn`` needs ``initial_params``.
    step_size : float
        ``δ``: drift ``δ²/2 M⁻¹∇U``, noise ``δσM^{-1/2}ξ``. The starting value when adapted.
    adjust : bool
        ``True``: MALA (Metropolis-adjusted); ``False``: ULA (biased, see the docs).
    noise_scale : float
        ``σ``; 1 is Langevin dynamics.
    adapt_step_size : bool
        Dual averaging during warmup (MALA only; ULA has no acceptance to target).
    adapt_mass_matrix : bool
        Estimate the inverse mass matrix from the warmup draws (Stan's windows), as
        NumPyro's ``BarkerMH`` and Pyro's ``HMC`` do. MALA only: ULA has no acceptance
        with which to re-tune the step size to a new metric, and would diverge.
    dense_mass : bool
        A dense ``(D, D)`` inverse mass matrix instead of a diagonal one.
    inverse_mass_matrix : Tensor, optional
        The initial (or, without adaptation, fixed) inverse mass matrix of the flat
        unconstrained parameters (sites in sorted order): ``(D,)`` diagonal, or ``(D, D)``
        with ``dense_mass=True``. Default: the identity.
    target_accept_prob : float
        Target of the adaptation, 0.574 by default.
    init_strategy : callable, optional
        Pyro init strategy for ``model`` sites without ``initial_params``; ``None``: ``init_to_uniform``.
    transforms : dict, optional
        Site transforms to unconstrained space (default: ``biject_to(support).inv``).
    max_plate_nesting : int, optional
        As in Pyro's HMC; guessed when ``None``.
    num_chains : int, optional
        ``None`` (default): one chain, params without a chain axis (``pyro.infer.MCMC``).
        ``C``: ``C`` chains as a batch, params ``(C, ...)``; drive with
        [`run_chains()`][pyro_vmt.chains.run_chains] (``pyro.infer.MCMC`` refuses such a kernel).
        Each chain adapts its own step size and mass matrix.
    vectorize : bool
        With ``num_chains``: evaluate the potential of all chains in one call (model
        vectorised by a plate over chains, or a batched ``potential_fn``) or chain by chain.
    rng : int, torch.Generator or None
        Source of the noise and Metropolis uniforms. ``None``: a fresh seed is drawn
        from torch's global RNG at each ``setup`` — Pyro's convention, under which
        ``pyro.set_rng_seed`` reproduces a run and ``MCMC(num_chains>1)``'s worker
        processes (seeded ``torch.initial_seed() + chain``) get distinct streams.
        An explicit seed would give every worker process the same stream.

    Attributes
    ----------
    step_size : float or Tensor
        The current ``δ``: a float for one chain, ``(C,)`` with ``num_chains``.
    inverse_mass_matrix : Tensor
        The current ``M⁻¹``: ``(D,)``/``(D, D)``, with ``num_chains`` ``(C, D)``/``(C, D, D)``.
    """

    def __init__(self, model: Optional[Callable] = None, potential_fn: Optional[Callable] = None,
                 step_size: float = 0.1, adjust: bool = True, noise_scale: float = 1.0,
                 adapt_step_size: bool = True, adapt_mass_matrix: bool = True, dense_mass: bool = False,
                 inverse_mass_matrix: Optional[torch.Tensor] = None, target_accept_prob: float = 0.574,
                 init_strategy: Optional[Callable] = None, transforms: Optional[dict] = None,
                 max_plate_nesting: Optional[int] = None, num_chains: Optional[int] = None,
                 vectorize: bool = True, rng: RNG = None):
        if (model is None) == (potential_fn is None):
            raise ValueError("give exactly one of model= and potential_fn=")
        target_accept_prob = as_real("target_accept_prob", target_accept_prob, low=0, high=1,
                                     low_open=True, high_open=True)
        if num_chains is not None and (isinstance(num_chains, bool) or not isinstance(num_chains, int)
                                       or num_chains < 1):
            raise ValueError(f"num_chains must be None or a positive integer, got {num_chains!r}")
        if rng is not None and not isinstance(rng, (int, torch.Generator)):
            raise TypeError(f"rng must be None, an int seed or a torch.Generator, got {type(rng).__name__}")
        self.dense_mass = bool(dense_mass)
        if inverse_mass_matrix is not None:
            inverse_mass_matrix = torch.as_tensor(inverse_mass_matrix)
            if inverse_mass_matrix.ndim != (2 if self.dense_mass else 1):
                raise ValueError(f"inverse_mass_matrix of shape {tuple(inverse_mass_matrix.shape)} does not "
                                 f"match dense_mass={self.dense_mass}: give (D,) for a diagonal matrix, "
                                 "(D, D) with dense_mass=True")
        self.model, self.potential_fn, self.transforms = model, potential_fn, transforms
        self._init_step_size = self.step_size = check_step_size(step_size)
        self.adjust = bool(adjust)
        self.noise_scale = check_noise_scale(noise_scale, adjust)
        self.adapt_step_size = bool(adapt_step_size) and self.adjust
        self.adapt_mass_matrix = bool(adapt_mass_matrix) and self.adjust
        self._init_inverse_mass_matrix = self.inverse_mass_matrix = inverse_mass_matrix
        self.target_accept_prob = target_accept_prob
        self.num_chains, self.vectorize = num_chains, bool(vectorize)
        self._init_strategy = init_to_uniform if init_strategy is None else init_strategy
        self._max_plate_nesting = max_plate_nesting
        self._rng, self._gen = rng, rng if isinstance(rng, torch.Generator) else None
        self._initial_params, self._names, self._driver = None, None, None
        self._reset()

    # ------------------------------------------------------------------ bookkeeping
    def _reset(self) -> None:
        self._t, self._warmup_steps, self._state, self._last_params = 0, 0, None, None
        self.last_info, self._adapter, self._factor, self._roots = None, None, None, None
        self._divergences = [[] for _ in range(self.num_chains or 1)]
        self._accept_sum, self._num_kept, self._mean_accept_prob = 0.0, 0, 0.0

    @property
    def state(self):
        """The [`LangevinState`][pyro_vmt.langevin.LangevinState] of the chain(s) after the last step."""
        return self._state

    @property
    def initial_params(self) -> Optional[Dict[str, torch.Tensor]]:
        """Unconstrained starting values (a leading chain axis when ``num_chains`` is set)."""
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: Optional[Dict[str, torch.Tensor]]) -> None:
        self._initial_params = params

    def _generator(self, like: torch.Tensor) -> torch.Generator:
        if self._rng is None:
            seed = int(torch.randint(2 ** 62, (1,)))
            return torch.Generator(device=like.device).manual_seed(seed)
        if self._gen is None:
            self._gen = torch.Generator(device=like.device).manual_seed(self._rng)
        if multiprocessing.parent_process() is not None:
            warnings.warn("LangevinKernel(rng=<seed>) in a worker process: every worker of "
                          "MCMC(num_chains>1) gets the same stream; use rng=None", stacklevel=3)
        return self._gen

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        """Build the potential (from ``model`` and its arguments) and start the chain(s).

        Raises ``ValueError`` for a batched kernel (``num_chains`` set) outside
        [`run_chains()`][pyro_vmt.chains.run_chains]: ``pyro.infer.MCMC`` would run the batch as one
        chain whose sites carry a chain axis, and summarise it as one variable.
        """
        if self.num_chains and self._driver != "run_chains":
            c = self.num_chains
            raise ValueError(
                f"LangevinKernel(num_chains={c}) carries {c} chains as one batch and is driven by "
                f"pyro_vmt.chains.run_chains(kernel, num_samples, warmup_steps); pyro.infer.MCMC runs one "
                f"chain per kernel and would report the batch as one chain. For MCMC use "
                f"LangevinKernel(model) (num_chains=None) and MCMC(kernel, ..., num_chains={c}).")
        self._reset()
        self._warmup_steps, self.step_size = int(warmup_steps), self._init_step_size
        batch = self.num_chains
        if self.model is not None:
            params, pe, self.transforms, trace = initialize_model(
                self.model, args, kwargs, transforms=self.transforms,
                max_plate_nesting=self._max_plate_nesting, num_chains=batch or 1,
                init_strategy=self._init_strategy, initial_params=self._initial_params)
            if batch == 1 and self._initial_params is None:
                params = {k: v.unsqueeze(0) for k, v in params.items()}
            self._initial_params, self._pe = params, pe
            self._plated = ChainPlatePotential(self.model, args, kwargs, self.transforms, trace,
                                               self._max_plate_nesting) if batch and self.vectorize else None
        else:
            if not self._initial_params:
                raise ValueError("potential_fn= needs initial_params (unconstrained, a dict of tensors)")
            self._pe, self._plated = self.potential_fn, None
        params = self._initial_params
        self._names = sorted(params)
        lead = 1 if batch else 0
        for k in self._names:
            if batch and (params[k].ndim < 1 or params[k].shape[0] != batch):
                raise ValueError(f"initial_params[{k!r}] must have a leading num_chains={batch} "
                                 f"axis, got shape {tuple(params[k].shape)}")
        self._shapes = [tuple(params[k].shape[lead:]) for k in self._names]
        if self._names:
            x = self._flatten(params)
            self._gen_now = self._generator(x)
            self._state, self._last_params = init(x, self._energy), params
            self._adapter = self._make_adapter(x)
            self._read_adapter()

    def _make_adapter(self, x: torch.Tensor) -> "ChainsAdapter":
        """Pyro's warmup adapter for all chains: flat ``(C, D)`` parameters as one block."""
        c, d = x.shape
        if self.dense_mass and c > 1:
            raise NotImplementedError("dense_mass=True with num_chains > 1: use a diagonal mass matrix, "
                                      "or num_chains=None under pyro.infer.MCMC")
        adapter = ChainsAdapter(self._init_step_size, adapt_step_size=self.adapt_step_size,
                                 target_accept_prob=self.target_accept_prob,
                                 adapt_mass_matrix=self.adapt_mass_matrix, dense_mass=self.dense_mass)
        adapter.configure(self._warmup_steps, torch.full((c,), self._init_step_size, dtype=x.dtype, device=x.device),
                          mass_matrix_shape={("x",): (d, d) if self.dense_mass else (c * d,)},
                          options={"dtype": x.dtype, "device": x.device})
        if self._init_inverse_mass_matrix is not None:
            imm = self._init_inverse_mass_matrix.to(dtype=x.dtype, device=x.device)
            if imm.shape[0] != d:
                raise ValueError(f"inverse_mass_matrix has size {imm.shape[0]}, the unconstrained "
                                 f"parameters {d} (sites {self._names} flattened in this order)")
            adapter.mass_matrix_adapter.inverse_mass_matrix = {("x",): imm if self.dense_mass else imm.repeat(c)}
        if self.adapt_step_size:
            adapter.reset_step_size_adaptation(x)
        return adapter

    def _read_adapter(self) -> None:
        """Take the adapter's step sizes ``(C,)`` and inverse mass matrix (after it moved)."""
        x = self._state.position
        step = torch.as_tensor(self._adapter.step_size, dtype=x.dtype, device=x.device)
        imm = self._adapter.mass_matrix_adapter.inverse_mass_matrix[("x",)]
        if self._roots is None or self._roots[0] is not imm:
            root = torch.linalg.cholesky(imm) if self.dense_mass else imm.sqrt().reshape(x.shape)
            self._roots = (imm, root)
        self._factor = scale_factor(step, self._roots[1], x, self.dense_mass)
        imm = imm if self.dense_mass else imm.reshape(x.shape)
        if self.num_chains:
            self.step_size, self.inverse_mass_matrix = step, imm
        else:
            self.step_size, self.inverse_mass_matrix = float(step[0]), imm if self.dense_mass else imm[0]

    def cleanup(self) -> None:
        self._initial_params = None if self.model is not None else self._initial_params
        self._state = self._last_params = None

    # ------------------------------------------------------------------ flat <-> dict
    def _flatten(self, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        n = self.num_chains or 1
        return torch.cat([params[k].detach().reshape(n, -1) for k in self._names], 1)

    def _unflatten(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        out, i = {}, 0
        for k, shape in zip(self._names, self._shapes):
            size = math.prod(shape)
            v = x[:, i:i + size]
            out[k] = v.reshape((x.shape[0],) + shape) if self.num_chains else v.reshape(shape)
            i += size
        return out

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        """``U`` of a ``(n, D)`` batch of flat unconstrained positions, shape ``(n,)``."""
        params = self._unflatten(x)
        if not self.num_chains:
            return self._pe(params).reshape(1)
        if not self.vectorize:
            return torch.stack([self._pe({k: v[i] for k, v in params.items()}) for i in range(x.shape[0])])
        return self._plated(params) if self._plated is not None else self._pe(params).reshape(x.shape[0])

    # ------------------------------------------------------------------ sampling
    def sample(self, params: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One ULA/MALA step from ``params``; returns the new unconstrained params."""
        if self._names is None:
            raise RuntimeError("call setup(warmup_steps, *model_args) first (pyro.infer.MCMC does)")
        if not self._names:
            self._t += 1
            return params
        if self._state is None or params is not self._last_params:
            self._state = init(self._flatten(params), self._energy)
        with poutine.block():
            state, info = preconditioned_step(self._gen_now, self._state, self._energy, self._factor,
                                              self.noise_scale, self.adjust)
        if not self.adjust and bool(info.is_divergent.any()):
            raise DivergenceError(divergence_message(self._t, int(info.is_divergent.sum()),
                                                     info.is_divergent.numel(),
                                                     float(torch.as_tensor(self.step_size).max())))
        accept = float(info.acceptance_rate.mean())
        if self._t < self._warmup_steps:
            n = self._t + 1
            if self.adapt_step_size or self.adapt_mass_matrix:
                position = state.position if self.dense_mass else state.position.reshape(-1)
                self._adapter.step(self._t, {"x": position}, PerChain(info.acceptance_rate))
                self._read_adapter()
            if n == self._warmup_steps:
                self.end_warmup()
        else:
            n = self._t + 1 - self._warmup_steps
            self._num_kept += 1
            self._accept_sum = self._accept_sum + info.is_accepted.to(torch.float64)
            for c in torch.nonzero(info.is_divergent).flatten().tolist():
                self._divergences[c].append(n - 1)
        self._t += 1
        self._mean_accept_prob += (accept - self._mean_accept_prob) / n
        self._state, self.last_info = state, info
        self._last_params = self._unflatten(state.position)
        return self._last_params

    def end_warmup(self) -> None:
        """Called at the last warmup step: the adapters have fixed their final values."""
        self._mean_accept_prob = 0.0

    def logging(self) -> "OrderedDict[str, str]":
        step = self.step_size if not self.num_chains else float(torch.as_tensor(self.step_size).mean())
        return OrderedDict([("step size", f"{step:.2e}"),
                            ("acc. prob", f"{self._mean_accept_prob:.3f}")])

    def diagnostics(self) -> Dict[str, Any]:
        """``divergences`` (post-warmup draw indices) and ``acceptance rate``.

        One chain: a list and a float, as Pyro's HMC (``arviz.from_pyro`` reads them
        through ``MCMC.diagnostics()``). ``num_chains`` set: ``{"chain i": ...}`` each.
        """
        rate = self._accept_sum / max(self._num_kept, 1)
        rate = torch.as_tensor(rate, dtype=torch.float64).expand(len(self._divergences))
        if not self.num_chains:
            return {"divergences": self._divergences[0], "acceptance rate": float(rate[0])}
        return {"divergences": {f"chain {i}": d for i, d in enumerate(self._divergences)},
                "acceptance rate": {f"chain {i}": float(r) for i, r in enumerate(rate)}}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_gen", "_gen_now"):
            gen = state.get(key)
            if isinstance(gen, torch.Generator):
                state[key] = ("generator", gen.device.type, gen.get_state())
        return state

    def __setstate__(self, state: dict) -> None:
        for key in ("_gen", "_gen_now"):
            gen = state.get(key)
            if isinstance(gen, tuple) and gen and gen[0] == "generator":
                g = torch.Generator(device=gen[1])
                g.set_state(gen[2])
                state[key] = g
        self.__dict__.update(state)
