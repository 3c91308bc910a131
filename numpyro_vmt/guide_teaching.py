r"""Teach a NumPyro guide with MCMC: the VMT loop for Bayesian posteriors, shaped like ``SVI``.

[`MCMCTeaching`][numpyro_vmt.guide_teaching.MCMCTeaching] fits any guide of a NumPyro model to the model's posterior the
way variational MCMC teaching (Xie, Zheng & Li, AAAI 2021,
https://arxiv.org/abs/2012.14936) trains its VAE, and as amortised MCMC (Li, Turner
& Liu, "Approximate inference with amortised MCMC", 2017,
https://arxiv.org/abs/1702.08343) proposed. One [`MCMCTeaching.update()`][numpyro_vmt.guide_teaching.MCMCTeaching.update]:

1. draws ``n`` particles $\theta_0^{(i)} \sim q_\phi$ from the guide (vmapped over keys);
2. revises them with ``K`` Langevin / MALA steps of [`numpyro_vmt.langevin`][numpyro_vmt.langevin] (one
   ``lax.scan``) on the model's potential in unconstrained space,
   $U(u) = -\log p(T^{-1}(u), \mathcal D) - \log|\det \partial T^{-1}/\partial u|$
   (``numpyro.infer.util.potential_energy``, as HMC and
   [`LangevinKernel`][numpyro_vmt.kernel.LangevinKernel] use), batched over particles:
   $\theta_K^{(i)}$, gradients stopped;
3. takes one optimiser step on

   $$
   L(\phi) = -\frac1n\sum_i \log q_\phi\big(\theta_K^{(i)}\big)
   \;+\; w\,\big(-\mathrm{ELBO}(\phi)\big),
   $$

   the paper's update plus an optional ELBO term of weight $w$ =
   ``elbo_weight`` (default 0, the pure teaching update).

A guide whose family contains the posterior has it as a fixed point; MALA
(``adjust=True``, the default) keeps that exact, ULA shifts it by its discretisation
bias. With ``precondition=True`` (the default) the revision uses a diagonal mass
matrix from the guide: it runs in coordinates divided by the per-coordinate standard
deviations of ``n`` further guide draws, independent of the revised ones (a constant
change of variables for the revision, so MALA stays exact). MALA's step size follows
dual averaging (``numpyro.infer.hmc_util.dual_averaging``, as in the kernel) toward
``target_accept_prob``: at every update by default (the guide, and with it the best
step size, keeps changing), or during the first ``adapt_iterations`` updates and
then fixed at the averaged value.

With ``average_from`` $= t_0$ the guide's parameters are also averaged over the
iterates (Polyak–Ruppert averaging; Polyak & Juditsky, SIAM J. Control Optim. 30, 1992):
after update $T > t_0$,

$$
\bar\phi_T = \frac{1}{T - t_0} \sum_{t = t_0 + 1}^{T} \phi_t
$$

in the optimiser's unconstrained coordinates, and
[`MCMCTeaching.get_params()`][numpyro_vmt.guide_teaching.MCMCTeaching.get_params] returns $\bar\phi_T$. Training
itself follows the live iterates $\phi_t$; the average removes the noise the revised
draws put into each step, which a decaying learning rate removes only slowly.

The state is one value, [`MCMCTeachingState`][numpyro_vmt.guide_teaching.MCMCTeachingState] (the ``SVIState`` of the guide's
parameters, the step size and its tuner, the diagnostics of the last update), and
[`MCMCTeaching.update()`][numpyro_vmt.guide_teaching.MCMCTeaching.update] is a pure function of it, so it can be jitted.
Subsampling plates and local latent variables work: each update draws the
subsample indices once (from the guide's plates, then the model's) and holds them
for the draws, the revision and the update. The guide's density at the revised
values is read by substituting them: an ``AutoContinuous`` guide
(``AutoMultivariateNormal``, ``AutoLowRankMultivariateNormal``, flows) at its packed
latent, any other guide (``AutoNormal``, hand-written) at the model's site names.
``AutoDelta`` has no density and is refused.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro import handlers
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta
from numpyro.infer.hmc_util import dual_averaging
from numpyro.infer.svi import SVIRunResult, SVIState
from numpyro.infer.util import potential_energy

from numpyro_vmt import guide_sites as sites
from numpyro_vmt import mass as dense_mass
from numpyro_vmt.langevin import init, scan_steps
from numpyro_vmt.rng import RNG, as_rng
from vmt.core.checks import as_count, as_real, check_noise_scale, check_num_steps, check_step_size
from vmt.core.errors import DivergenceError, divergence_message

__all__ = ["MCMCTeaching", "MCMCTeachingInfo", "MCMCTeachingState"]


class MCMCTeachingInfo(NamedTuple):
    """Diagnostics of one [`MCMCTeaching.update()`][numpyro_vmt.guide_teaching.MCMCTeaching.update] (0-d arrays).

    Attributes
    ----------
    loss : the minimised objective ``−mean log q(θ_K) + elbo_weight · (−ELBO)``.
    log_q : ``mean_i log q_φ(θ_K⁽ⁱ⁾)`` before the update.
    elbo_loss : ``−ELBO`` estimate (NaN when ``elbo_weight = 0``).
    acceptance_rate : mean MALA acceptance over steps and particles (1 for ULA).
    step_size : ``δ`` used by this revision.
    grad_norm : mean ``‖∇U‖`` over particles at the end of the revision.
    num_divergent : particles with a non-finite proposal during the revision.
    """

    loss: Any
    log_q: Any
    elbo_loss: Any
    acceptance_rate: Any
    step_size: Any
    grad_norm: Any
    num_divergent: Any


class MCMCTeachingState(NamedTuple):
    """Training state: ``svi_state`` (guide/model params, optimiser, key), the step size
    ``δ``, the dual-averaging state, the iteration count, the last [`MCMCTeachingInfo`][numpyro_vmt.guide_teaching.MCMCTeachingInfo]
    and, with ``persistent=True``, the chains' unconstrained values ``(n, D)`` (``None`` otherwise);
    with ``precondition="dense"``, the [`DenseMass`][numpyro_vmt.mass.DenseMass] (``None`` otherwise); with
    ``average_from``, the running mean of the optimiser's (unconstrained) parameters (``None`` otherwise)."""

    svi_state: SVIState
    step_size: Any
    adapt_state: Any
    iteration: Any
    info: MCMCTeachingInfo
    chains: Any = None
    mass: Any = None
    average: Any = None


def _check(num_particles, elbo_weight, adapt_iterations, target_accept_prob, precondition):
    if precondition not in (True, False, "diag", "dense"):
        raise ValueError(f"precondition must be True, False, 'diag' or 'dense', got {precondition!r}")
    return (as_count("num_particles", num_particles), as_real("elbo_weight", elbo_weight, low=0),
            None if adapt_iterations is None else as_count("adapt_iterations", adapt_iterations, minimum=0),
            as_real("target_accept_prob", target_accept_prob, low=0, high=1, low_open=True, high_open=True))


class MCMCTeaching:
    """SVI-shaped object that teaches ``guide`` with ``K``-step Langevin/MALA revisions.

    Drops into a NumPyro SVI script in place of ``SVI(model, guide, optim, Trace_ELBO())``:
    ``state = teaching.init(key, *args)``, ``state, loss = teaching.update(state, *args)``,
    or ``teaching.run(key, num_steps, *args)`` returning numpyro's ``SVIRunResult``;
    ``teaching.get_params(state)`` are the params ``Predictive(model, guide=guide, params=...)``
    and [`initial_params_from_guide()`][numpyro_vmt.warmstart.initial_params_from_guide] take.

    Parameters
    ----------
    model, guide : callable
        A NumPyro model and a guide over its continuous latent sites.
    optim : numpyro.optim optimiser or optax ``GradientTransformation``
        As for ``SVI``.
    num_steps : int
        ``K``, Langevin/MALA steps per revision.
    step_size : float
        ``δ`` (drift ``δ²/2 ∇U``, noise ``δσξ``); the starting value when adapted.
    adjust : bool
        ``True`` (default): MALA, whose revision leaves the posterior invariant.
    noise_scale : float
        ``σ``; 1 is Langevin dynamics.
    num_particles : int
        ``n``, guide draws revised per update.
    elbo_weight : float
        ``w ≥ 0``, weight of the mixed-in ``−ELBO`` (default 0, the paper's update).
    adapt_iterations : int or None
        Updates during which MALA's ``δ`` is tuned by dual averaging, then fixed at its
        average (0: never tuned). ``None`` (default): tuned at every iteration — the
        guide, and with it the best ``δ``, keeps changing while it learns; ``δ`` never
        depends on the draws it revises, so tuning costs the revision no exactness.
    target_accept_prob : float
        Target of the tuning, 0.574 (Roberts & Rosenthal 1998).
    precondition : bool or str
        ``True`` / ``"diag"`` (default): a diagonal mass matrix from the guide: each
        revision runs in coordinates divided by the standard deviations of ``n`` further
        guide draws (independent of the revised ones, so the revision stays exact), and
        ``δ`` is in units of the guide's scale. ``"dense"``: a dense mass matrix, the
        covariance of the revised particles of past updates in doubling windows
        ([`numpyro_vmt.mass`][numpyro_vmt.mass]; the diagonal one until the first window ends,
        after 25 updates; windows stop after ``adapt_iterations``) — for correlated
        posteriors, whose narrow directions a mean-field guide cannot supply; ``O(D²)``
        memory and ``O(D³)`` per window. ``False``: one ``δ`` for every coordinate.
    persistent : bool
        ``False`` (default): every update revises fresh guide draws (the paper's update).
        ``True``: the ``n`` revised particles persist as MALA chains of the posterior
        from update to update (``state.chains``, started from the guide by `init()`),
        and the guide learns from their states — the forward-KL fit, exact in the limit
        of many updates whatever ``K`` (see [`pyro_vmt.guide_teaching`][pyro_vmt.guide_teaching]).
        Needs every latent value to persist: no subsampling plates.
    average_from : int or None
        ``t₀``: from update ``t₀ + 1`` on, keep the running mean of the guide's
        parameters (Polyak–Ruppert iterate averaging), which `get_params()` and `run()`
        return once it has begun; e.g. half the number of updates. ``None`` (default):
        the last iterate, as ``SVI``.

    Examples
    --------
    >>> import jax, numpyro, numpyro.distributions as dist, optax
    >>> from numpyro.infer.autoguide import AutoNormal
    >>> def model():
    ...     numpyro.sample("x", dist.Normal(jax.numpy.zeros(2), 1.0).to_event(1))
    >>> teaching = MCMCTeaching(model, AutoNormal(model), optax.adam(0.05), num_steps=5)
    >>> result = teaching.run(0, 20)
    >>> result.losses.shape
    (20,)
    """

    def __init__(self, model: Callable, guide: Callable, optim: Any, num_steps: int = 20,
                 step_size: float = 0.1, adjust: bool = True, noise_scale: float = 1.0,
                 num_particles: int = 16, elbo_weight: float = 0.0, adapt_iterations: Optional[int] = None,
                 target_accept_prob: float = 0.574, precondition: bool | str = True, persistent: bool = False,
                 average_from: Optional[int] = None):
        if isinstance(guide, AutoDelta):
            raise ValueError("AutoDelta is a point mass: it has no density to raise at the revised draws")
        num_particles, elbo_weight, adapt_iterations, target_accept_prob = _check(
            num_particles, elbo_weight, adapt_iterations, target_accept_prob, precondition)
        self.model, self.guide = model, guide
        self.num_steps = check_num_steps(num_steps)
        self.step_size = check_step_size(step_size)
        self.adjust = bool(adjust)
        self.noise_scale = check_noise_scale(noise_scale, adjust)
        self.num_particles, self.elbo_weight = num_particles, float(elbo_weight)
        self.adapt_iterations = adapt_iterations if self.adjust else 0  # None: every iteration
        self.target_accept_prob = float(target_accept_prob)
        self.precondition = bool(precondition)
        self.dense = precondition == "dense"
        self.persistent = bool(persistent)
        self.average_from = None if average_from is None else as_count("average_from", average_from, minimum=0)
        self._svi = SVI(model, guide, optim, Trace_ELBO(num_particles=num_particles))
        self._latent, self._jitted = None, None

    # ------------------------------------------------------------------ SVI protocol
    def init(self, rng: RNG, *args: Any, **kwargs: Any) -> MCMCTeachingState:
        """The initial state (params of the guide and the model, as ``SVI.init``)."""
        key = as_rng(rng)
        if key is None:
            raise ValueError("rng is required: pass a jax.random key or an int seed")
        svi_state = self._svi.init(key, *args, **kwargs)
        params = self._svi.get_params(svi_state)
        self._latent = sites.latent_sites(self.model, self.guide, jax.random.PRNGKey(0), params, args, kwargs)
        chains, mass = None, None
        dtype = jnp.result_type(float)
        if self.persistent or self.dense:
            k_sub, k_draw = jax.random.split(jax.random.fold_in(key, 1))
            sub = sites.subsample(self.model, self.guide, k_sub, params, args, kwargs, self.persistent)
            guide = handlers.substitute(self.guide, data=sub)
            draws = jax.vmap(lambda k: ravel_pytree(sites.draw(guide, self._latent, params, k, args, kwargs))[0])(
                jax.random.split(k_draw, self.num_particles))
            chains = draws if self.persistent else None
            mass = dense_mass.init(draws.shape[1], dtype) if self.dense else None
        da_init, _ = dual_averaging()
        step = jnp.asarray(self.step_size, dtype)
        nan = jnp.full((), jnp.nan, dtype)
        info = MCMCTeachingInfo(nan, nan, nan, nan, step, nan, jnp.zeros((), jnp.int32))
        average = None if self.average_from is None else self._svi.optim.get_params(svi_state.optim_state)
        return MCMCTeachingState(svi_state, step, da_init(jnp.log(10.0 * step)), jnp.zeros((), jnp.int32), info,
                                 chains, mass, average)

    def get_params(self, state: MCMCTeachingState) -> dict:
        """Constrained values of the ``param`` sites of the guide and the model: their average over
        the updates after ``average_from`` once there is one, else the current ones. Jit-able."""
        live = self._svi.get_params(state.svi_state)
        if self.average_from is None or state.average is None:
            return live
        started = state.iteration > self.average_from
        return jax.tree.map(lambda a, b: jnp.where(started, a, b), self._svi.constrain_fn(state.average), live)

    def update(self, state: MCMCTeachingState, *args: Any, **kwargs: Any):
        """One draw–revise–update iteration: ``(new state, loss)``. Pure; jit-able."""
        return self._iterate(state, True, args, kwargs)

    def evaluate_loss(self, state: MCMCTeachingState, *args: Any, **kwargs: Any):
        """The loss of `update()` (a fresh draw and revision) without updating."""
        return self._iterate(state, False, args, kwargs)[1]

    def run(self, rng: RNG, num_steps: int, *args: Any, **kwargs: Any) -> SVIRunResult:
        """``init`` and ``num_steps`` jitted updates; ``SVIRunResult(params, state, losses)``.

        Raises [`DivergenceError`][vmt.core.errors.DivergenceError] if an update leaves particles at
        non-finite values (possible with ``adjust=False``); the state returned by the
        updates before it is intact.
        """
        num_steps = check_num_steps(num_steps)
        state = self.init(rng, *args, **kwargs)
        if self._jitted is None:  # one compilation per object, reused by later runs
            self._jitted = jax.jit(lambda s, a, k: self.update(s, *a, **k))
        update = self._jitted
        losses = []
        for t in range(num_steps):
            new, loss = update(state, args, kwargs)
            if not bool(jnp.isfinite(loss)):
                raise DivergenceError(divergence_message(t, int(new.info.num_divergent), self.num_particles,
                                                         float(state.step_size)))
            state = new
            losses.append(loss)
        return SVIRunResult(self.get_params(state), state, jnp.stack(losses))

    # ------------------------------------------------------------------ the loop
    def _iterate(self, state: MCMCTeachingState, update: bool, args: tuple, kwargs: dict):
        if self._latent is None:
            raise RuntimeError("call init(rng, *args) (or run) before update / evaluate_loss")
        n = self.num_particles
        svi_state = state.svi_state
        rng_key, k_sub, k_draw, k_rev, k_elbo = jax.random.split(svi_state.rng_key, 5)
        params = self._svi.get_params(svi_state)  # the live iterate (not the average) is trained
        sub = sites.subsample(self.model, self.guide, k_sub, params, args, kwargs)
        guide = handlers.substitute(self.guide, data=sub)
        model = handlers.substitute(handlers.substitute(self.model, data=params), data=sub)

        # with precondition, n more draws (independent of the revised ones) set the scale
        u0 = jax.vmap(lambda k: sites.draw(guide, self._latent, params, k, args, kwargs))(
            jax.random.split(k_draw, 2 * n if self.precondition else n))
        _, unravel = ravel_pytree(jax.tree.map(lambda v: v[0], u0))
        x_all = jax.vmap(lambda u: ravel_pytree(u)[0])(u0)
        x0 = state.chains if self.persistent else x_all[:n]
        scale = sites.guide_scale(x_all[n:]) if self.precondition else jnp.ones_like(x0[0])
        # u = A y: A the dense window's Cholesky factor, else (and before its first window) diag(scale)
        to_u, to_y, grad_u = dense_mass.coordinates(scale, state.mass if self.dense else None)
        one = partial(potential_energy, model, args, kwargs)
        # MALA in whitened coordinates y: a constant mass matrix, exact (constant Jacobian)
        potential = jax.vmap(lambda y: one(unravel(to_u(y))))
        final, rev = scan_steps(k_rev, init(to_y(x0), potential), potential, state.step_size,
                                self.noise_scale, self.adjust, self.num_steps)
        x_k = jax.lax.stop_gradient(to_u(final.position))
        finite = jnp.isfinite(final.energy) & jnp.isfinite(x_k).all(1)
        u_k = jax.vmap(unravel)(x_k)
        accept = rev.acceptance_rate.mean()

        def loss_fn(unconstrained):
            p = self._svi.constrain_fn(unconstrained)
            log_q = jax.vmap(lambda u: sites.log_q(self.guide, guide, self._latent, p, u, args, kwargs))(u_k).mean()
            elbo = jnp.full((), jnp.nan, log_q.dtype)
            loss = -log_q
            if self.elbo_weight > 0:
                elbo = Trace_ELBO(num_particles=n).loss(k_elbo, p, self.model, self.guide, *args, **kwargs)
                loss = loss + self.elbo_weight * elbo
            # a particle left non-finite (ULA) makes the loss NaN: reported, never dropped
            loss = jnp.where(finite.all(), loss, jnp.nan)
            return loss, (log_q, elbo)

        optim = self._svi.optim
        if update:
            (loss, (log_q, elbo)), optim_state = optim.eval_and_update(loss_fn, svi_state.optim_state)
            ok = jnp.isfinite(loss)
            optim_state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), optim_state, svi_state.optim_state)
        else:
            loss, (log_q, elbo) = loss_fn(optim.get_params(svi_state.optim_state))
            optim_state = svi_state.optim_state
        info = MCMCTeachingInfo(loss, log_q, elbo, accept, state.step_size,
                                jnp.linalg.norm(grad_u(final.grad), axis=1).mean(),
                                rev.is_divergent.any(0).sum().astype(jnp.int32))
        if not update:
            return state, loss
        step, da, i = state.step_size, state.adapt_state, state.iteration
        if self.adapt_iterations != 0:
            _, da_update = dual_averaging()
            da_new = da_update(self.target_accept_prob - accept, da)
            if self.adapt_iterations is None:  # tuned at every iteration, following the guide
                da, step = da_new, jnp.exp(da_new[0]).astype(step.dtype)
            else:
                warm = i < self.adapt_iterations
                da = jax.tree.map(lambda a, b: jnp.where(warm, a, b), da_new, da)
                tuned = jnp.where(i + 1 == self.adapt_iterations, jnp.exp(da_new[1]), jnp.exp(da_new[0]))
                step = jnp.where(warm, tuned, step).astype(step.dtype)
        ok = jnp.isfinite(loss)
        mass = state.mass
        if self.dense:  # this update's particles join the window; a new metric restarts the tuner
            adapting = True if self.adapt_iterations is None else i < self.adapt_iterations
            updated, installed = dense_mass.update(mass, x_k, i, adapting)
            mass = jax.tree.map(lambda a, b: jnp.where(ok, a, b), updated, mass)
            da_init, _ = dual_averaging()
            da = jax.tree.map(lambda a, b: jnp.where(ok & installed, a, b), da_init(jnp.log(10.0 * step)), da)
        # the chains move on only with the parameters (a failed update leaves both as they were)
        chains = jnp.where(ok, x_k, state.chains) if self.persistent else None
        average = state.average
        if self.average_from is not None:  # φ̄ ← φ̄ + (φ_t − φ̄) / (t − t₀), from t = t₀ + 1 on
            w = jnp.where(ok & (i >= self.average_from), 1.0 / jnp.maximum(i + 1 - self.average_from, 1), 0.0)
            average = jax.tree.map(lambda a, b: a + (w * (b - a)).astype(a.dtype), average,
                                   optim.get_params(optim_state))
        new = MCMCTeachingState(SVIState(optim_state, svi_state.mutable_state, rng_key), step, da, i + 1, info,
                                chains, mass, average)
        return new, loss
