r"""Teach a Pyro guide with MCMC: the VMT loop for Bayesian posteriors, shaped like ``SVI``.

`MCMCTeaching` fits any guide of a Pyro model to the model's posterior the
way variational MCMC teaching (Xie, Zheng & Li, AAAI 2021,
https://arxiv.org/abs/2012.14936) trains its VAE, and as amortised MCMC (Li, Turner
& Liu, "Approximate inference with amortised MCMC", 2017,
https://arxiv.org/abs/1702.08343) proposed. One call of `MCMCTeaching.step()`:

1. draws ``n`` particles $\theta_0^{(i)} \sim q_\phi$ from the guide, all in one
   vectorised trace (a plate over particles, as ``Trace_ELBO(vectorize_particles=True)``);
2. revises them with ``K`` Langevin / MALA steps of [`pyro_vmt.langevin`][pyro_vmt.langevin] on the
   model's potential in unconstrained space,
   $U(u) = -\log p(T^{-1}(u), \mathcal D) - \log|\det \partial T^{-1}/\partial u|$
   (the potential of Pyro's HMC and of [`LangevinKernel`][pyro_vmt.kernel.LangevinKernel]),
   batched over particles: $\theta_K^{(i)}$, gradients stopped;
3. takes one optimiser step on

   $$
   L(\phi) = -\frac1n\sum_i \log q_\phi\big(\theta_K^{(i)}\big)
   \;+\; w\,\big(-\mathrm{ELBO}(\phi)\big),
   $$

   the paper's update (the guide learns from the revision: the cross-entropy
   $\mathrm{KL}(q_\phi T^K \,\|\, q_\phi)$ in $\phi$ with the revised
   distribution held fixed) plus an optional ELBO term of weight
   $w$ = ``elbo_weight`` (default 0: the pure teaching update).

Where SVI's reverse KL is mode-seeking (a mean-field guide of a correlated posterior
gets the *conditional* variances), the revised particles carry the posterior's
marginal spread, and a guide whose family contains the posterior has it as a fixed
point ($q = p \Rightarrow qT^K = p$ for a $p$-invariant kernel). MALA
(``adjust=True``, the default) keeps that fixed point exact; ULA shifts it by its
discretisation bias.

With ``persistent=True`` the revised particles are kept from one step to the next
(persistent chains, started from the guide at the first step) instead of drawn
afresh: each revision then continues $n$ MALA chains of the posterior, whose states
are posterior draws once mixed whatever ``K``, and the update fits $q_\phi$ to them by
maximum likelihood — the fixed point is the forward-KL projection
$\arg\min_\phi \mathrm{KL}(p \,\|\, q_\phi)$ (for a mean-field Gaussian, the exact
marginal means and variances), not a point between the guide and the posterior as
with fresh draws and a revision too short to mix. The guide then still sets the
preconditioner and is what `Predictive` and the warm start use.

With ``precondition=True`` (the default) the revision uses a diagonal mass matrix
from the guide: it runs in coordinates divided by the per-coordinate standard
deviations of ``n`` further guide draws, independent of the revised ones (a constant
change of variables for the revision, so MALA stays exact). MALA's step size follows
dual averaging (``pyro.ops.dual_averaging.DualAveraging``, the tuner of the kernels
and of Pyro's HMC) toward ``target_accept_prob`` on the mean acceptance of each
revision: at every step by default (the guide, and with it the best step size,
keeps changing), or during the first ``adapt_iterations`` steps and then fixed.

With ``average_from`` $= t_0$ the guide's parameters are also averaged over the
iterates (Polyak–Ruppert averaging; Polyak & Juditsky, SIAM J. Control Optim. 30, 1992):
after step $T > t_0$, $\bar\phi_T = \frac{1}{T - t_0} \sum_{t = t_0 + 1}^{T} \phi_t$ in
the unconstrained coordinates the optimiser updates. Training follows the live
iterates $\phi_t$; `MCMCTeaching.averaged()` puts $\bar\phi_T$ in their place for
as long as its ``with`` block lasts, and `MCMCTeaching.run()` leaves it there. The
average removes the noise the revised draws put into each step, which a decaying
learning rate removes only slowly.

Local latent variables and subsampling plates (``pyro.plate(..., subsample_size=b)``)
work: the subsample indices are drawn once per step (from the guide's plates, then
the model's) and held fixed for the draws, the ``K`` revision steps and the update.
The guide's density at the revised values is read by conditioning it on them:
``AutoNormal`` on its ``*_unconstrained`` sites, an ``AutoContinuous`` guide
(``AutoMultivariateNormal``, ``AutoLowRankMultivariateNormal``, flows) on its packed
latent, any other guide on the model's site names (so a hand-written guide must
sample the model's latent sites from distributions with a density, without extra
auxiliary variables). ``AutoDelta`` has no density and is refused.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDelta
from pyro.infer.util import zero_grads
from torch.distributions import biject_to

from pyro.ops.dual_averaging import DualAveraging
from pyro_vmt import guide_sites as sites
from pyro_vmt.langevin import Langevin
from pyro_vmt.mass import DenseMass, coordinates
from pyro_vmt.potential import ChainPlatePotential
from pyro_vmt.rng import RNG, as_rng
from vmt.core.checks import as_count, as_real, check_noise_scale, check_num_steps, check_step_size
from vmt.core.errors import DivergenceError, divergence_message

__all__ = ["MCMCTeaching", "MCMCTeachingInfo"]

_PARTICLES = "_vmt_particles"


class MCMCTeachingInfo(NamedTuple):
    """Diagnostics of one `MCMCTeaching.step()` (Python floats / ints).

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


def _check(num_particles, elbo_weight, adapt_iterations, target_accept_prob, precondition):
    if precondition not in (True, False, "diag", "dense"):
        raise ValueError(f"precondition must be True, False, 'diag' or 'dense', got {precondition!r}")
    return (as_count("num_particles", num_particles), as_real("elbo_weight", elbo_weight, low=0),
            None if adapt_iterations is None else as_count("adapt_iterations", adapt_iterations, minimum=0),
            as_real("target_accept_prob", target_accept_prob, low=0, high=1, low_open=True, high_open=True))


class MCMCTeaching:
    """SVI-shaped object that teaches ``guide`` with ``K``-step Langevin/MALA revisions.

    Drops into a Pyro SVI script in place of ``SVI(model, guide, optim, Trace_ELBO())``:
    ``loss = teaching.step(*args, **kwargs)``. The guide's parameters live where the
    guide keeps them (Pyro's param store, or a ``PyroModule`` guide's own), so
    ``Predictive(model, guide=guide)``, `initial_params_from_guide()`
    and the guide's own methods work afterwards as after SVI.

    Parameters
    ----------
    model, guide : callable
        A Pyro model and a guide over its continuous latent sites.
    optim : pyro.optim.PyroOptim
        E.g. ``pyro.optim.Adam({"lr": 0.01})``, as for ``SVI``.
    num_steps : int
        ``K``, Langevin/MALA steps per revision (each one gradient of the model's
        potential for all particles).
    step_size : float
        ``δ`` (drift ``δ²/2 ∇U``, noise ``δσξ``); the starting value when adapted.
    adjust : bool
        ``True`` (default): MALA, whose revision leaves the posterior invariant.
    noise_scale : float
        ``σ``; 1 is Langevin dynamics.
    num_particles : int
        ``n``, guide draws revised per step.
    elbo_weight : float
        ``w ≥ 0``, weight of the mixed-in ``−ELBO`` (default 0, the paper's update).
    adapt_iterations : int or None
        Steps during which MALA's ``δ`` is tuned by dual averaging, then fixed at its
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
        covariance of the revised particles of past steps in doubling windows
        ([`pyro_vmt.mass`][pyro_vmt.mass], ``self.mass``; the diagonal one until the first
        window ends, after 25 steps; windows stop after ``adapt_iterations``) — for
        correlated posteriors, whose narrow directions a mean-field guide cannot supply;
        ``O(D²)`` memory and ``O(D³)`` per window. ``False``: one ``δ`` for every coordinate.
    persistent : bool
        ``False`` (default): every step revises fresh guide draws (the paper's update).
        ``True``: the ``n`` revised particles persist as MALA chains of the posterior
        from step to step (started from the guide), and the guide learns from their
        states — the forward-KL fit, exact in the limit of many steps whatever ``K``.
        Needs every latent value to persist: no subsampling plates.
    average_from : int or None
        ``t₀``: from step ``t₀ + 1`` on, keep the running mean of the guide's parameters
        (Polyak–Ruppert iterate averaging), which `averaged()` swaps in and `run()`
        leaves in place; e.g. half the number of steps. ``None`` (default): the last
        iterate, as ``SVI``.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, torch
    >>> from pyro.infer.autoguide import AutoNormal
    >>> def model():
    ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    >>> guide = AutoNormal(model)
    >>> teaching = MCMCTeaching(model, guide, pyro.optim.Adam({"lr": 0.05}), num_steps=5)
    >>> losses = teaching.run(0, 20)
    >>> len(losses)
    20
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
        self.model, self.guide, self.optim = model, guide, optim
        self.num_steps = check_num_steps(num_steps)
        self.step_size = check_step_size(step_size)
        self.adjust = bool(adjust)
        self.noise_scale = check_noise_scale(noise_scale, adjust)
        self.num_particles, self.elbo_weight = num_particles, float(elbo_weight)
        self.adapt_iterations = adapt_iterations if self.adjust else 0  # None: every iteration
        self.target_accept_prob = float(target_accept_prob)
        self.precondition = bool(precondition)
        self.mass: Optional[DenseMass] = DenseMass() if precondition == "dense" else None
        self.persistent = bool(persistent)
        self.chains: Optional[torch.Tensor] = None  # persistent=True: the particles' unconstrained values (n, D)
        self.iteration, self.last_info = 0, None
        self.average_from = None if average_from is None else as_count("average_from", average_from, minimum=0)
        self._average: Dict[torch.Tensor, list] = {}  # unconstrained param -> [running mean, count]
        self._stepped: set = set()  # the unconstrained params the last update changed
        self._revised: Optional[torch.Tensor] = None  # the last update's revised particles (n, D)
        self._da = DualAveraging(prox_center=math.log(10 * self.step_size)) if self.adapt_iterations != 0 else None

    # ------------------------------------------------------------------ the loop
    def step(self, *args: Any, **kwargs: Any) -> float:
        """One draw–revise–update iteration; returns the loss (a float), as ``SVI.step``.

        Raises [`DivergenceError`][vmt.core.errors.DivergenceError] (before any parameter changes) when
        an unadjusted revision leaves particles at non-finite values.
        """
        loss, info = self._iterate(True, args, kwargs)
        self.last_info = info
        if self.average_from is not None and self.iteration > self.average_from:
            with torch.no_grad():  # φ̄ ← φ̄ + (φ_t − φ̄) / (t − t₀), from t = t₀ + 1 on
                for p in self._stepped:
                    entry = self._average.setdefault(p, [p.detach().clone(), 0])
                    entry[1] += 1
                    entry[0].add_(p.detach() - entry[0], alpha=1.0 / entry[1])
        adapting = self.adapt_iterations is None or self.iteration <= self.adapt_iterations
        if self._da is not None and adapting:
            self._da.step(self.target_accept_prob - float(info.acceptance_rate))
            log_step, log_step_avg = self._da.get_state()
            if self.iteration == self.adapt_iterations:
                self.step_size, self._da = math.exp(log_step_avg), None
            else:
                self.step_size = math.exp(log_step)
        # this step's particles join the window; a new metric restarts the tuner (as Stan's windows)
        if self.mass is not None and self.mass.update(self._revised, self.iteration - 1, adapting) \
                and self._da is not None:
            self._da = DualAveraging(prox_center=math.log(10 * self.step_size))
        return loss

    @contextlib.contextmanager
    def averaged(self):
        """``with teaching.averaged(): ...``: the guide's parameters at their running mean (see
        ``average_from``) inside the block, e.g. for ``Predictive``; the live values after it.
        Without an average yet (``average_from`` unset or not reached), the live values."""
        live = self._swap_in_averages()
        try:
            yield self
        finally:
            with torch.no_grad():
                for p, value in live:
                    p.copy_(value)

    def _swap_in_averages(self) -> list:
        """Copy the averages into the parameters; returns ``[(param, its live value)]``."""
        with torch.no_grad():
            live = [(p, p.detach().clone()) for p in self._average]
            for p, (mean, _) in self._average.items():
                p.copy_(mean)
        return live

    def evaluate_loss(self, *args: Any, **kwargs: Any) -> float:
        """The loss of `step()` (a fresh draw and revision) without updating anything."""
        return self._iterate(False, args, kwargs)[0]

    def run(self, rng: RNG, num_steps: int, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``num_steps`` calls of `step()` under a fork of torch's RNG seeded from ``rng``.

        Returns the losses, shape ``(num_steps,)``. The caller's global RNG is left as it was.
        With ``average_from``, the guide's parameters are left at their average (see `averaged()`).
        """
        gen = as_rng(rng)
        if gen is None:
            raise ValueError("rng is required: pass a torch.Generator or an int seed")
        seed = int(torch.randint(2 ** 62, (1,), generator=gen))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            losses = torch.tensor([self.step(*args, **kwargs) for _ in range(check_num_steps(num_steps))])
        self._swap_in_averages()
        return losses

    def _iterate(self, update: bool, args: tuple, kwargs: dict) -> Tuple[float, MCMCTeachingInfo]:
        sub, latent, nest, model_trace = sites.prototype(self.model, self.guide, args, kwargs, self.persistent)
        n = self.num_particles
        transforms = {k: biject_to(s["fn"].support).inv for k, s in latent.items()}
        shapes = {k: tuple(s["value"].shape) for k, s in latent.items()}
        guide = poutine.condition(self.guide, data=sub)
        # with precondition, a second batch of n draws (independent of the revised ones) sets the scale
        draws = []
        for _ in range(2 if self.precondition else 1):
            with torch.no_grad(), poutine.block(), pyro.plate(_PARTICLES, n, dim=-nest - 1):
                draws.append(poutine.trace(guide).get_trace(*args, **kwargs))
        x_all = [torch.cat([transforms[k](tr.nodes[k]["value"].detach()).reshape(n, -1) for k in latent], 1)
                 for tr in draws]
        draw, x0 = draws[0], x_all[0]
        if self.persistent and self.chains is not None:
            if self.chains.shape != x0.shape:
                raise ValueError(f"the persistent chains have shape {tuple(self.chains.shape)}, this step's "
                                 f"latent values {tuple(x0.shape)}: did the model change?")
            x0 = self.chains
        scale = sites.guide_scale(x_all[1]) if self.precondition else torch.ones_like(x0[0])
        # u = A y: A the dense window's Cholesky factor, else (and before its first window) diag(scale)
        to_u, to_y, grad_u = coordinates(scale, self.mass)
        y0 = to_y(x0)
        flat = sites.flat_potential(ChainPlatePotential(poutine.condition(self.model, data=sub), args, kwargs,
                                         transforms, model_trace, nest), shapes)
        # MALA in whitened coordinates y: a constant mass matrix, exact (constant Jacobian)
        sampler = Langevin(lambda y: flat(to_u(y)), self.step_size, self.num_steps, self.noise_scale,
                           self.adjust)
        seed = int(torch.randint(2 ** 62, (1,)))
        state, rev = sampler.run(torch.Generator(device=x0.device).manual_seed(seed), y0)
        finite = torch.isfinite(state.energy) & torch.isfinite(state.position).all(1)
        if not bool(finite.all()):
            first = int(torch.nonzero(rev.is_divergent.any(1))[0]) if bool(rev.is_divergent.any()) else 0
            raise DivergenceError(divergence_message(first, int((~finite).sum()), n, self.step_size))
        x_k = to_u(state.position).detach()
        u_k = sites.unflatten(x_k, shapes)
        values = sites.condition_data(self.guide, u_k, transforms, draw, n)
        with poutine.trace(param_only=True) as capture:
            with pyro.plate(_PARTICLES, n, dim=-nest - 1):
                tr = poutine.trace(poutine.condition(guide, data=values)).get_trace(*args, **kwargs)
            log_q = sites.per_particle_log_prob(tr, n).mean()
            if not torch.isfinite(log_q):
                raise ValueError("the guide's log density at the revised draws is not finite; is it a guide "
                                 "with auxiliary variables or point masses (not supported)?")
            loss = -log_q
            elbo = torch.tensor(float("nan"))
            if self.elbo_weight > 0:
                elbo = Trace_ELBO(num_particles=n, vectorize_particles=True, max_plate_nesting=nest
                                  ).differentiable_loss(self.model, self.guide, *args, **kwargs)
                loss = loss + self.elbo_weight * elbo
        if update:
            if self.persistent:
                self.chains = x_k
            self._revised = x_k
            loss.backward()
            params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
            self.optim(params)
            zero_grads(params)
            self._stepped = params
            self.iteration += 1
        info = MCMCTeachingInfo(float(loss.detach()), float(log_q.detach()), float(elbo.detach()), float(rev.acceptance_rate.mean()),
                                self.step_size, float(grad_u(state.grad).norm(dim=1).mean()),
                                int(rev.is_divergent.any(0).sum()))
        return info.loss, info
