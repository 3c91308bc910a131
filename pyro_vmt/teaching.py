r"""Variational MCMC teaching (PyTorch / Pyro): the joint training of an EBM and a VAE.

One iteration (Xie, Zheng & Li, "Learning Energy-Based Model with Variational
Auto-Encoder as Amortized Sampler", AAAI 2021, https://arxiv.org/abs/2012.14936):

1. $z_i \sim \mathcal N(0, I)$, $x^{(0)}_i = g_\alpha(z_i)$.
2. $K$ Langevin steps
   $x^{(k+1)} = x^{(k)} - \tfrac{\delta^2}{2}\nabla_x E_\theta(x^{(k)}) + \delta\sigma\xi_k$,
   $\tilde x = x^{(K)}$ (no gradient flows through the chain).
3. Energy step on $\mathcal L(\theta) = \frac1m\sum_j E_\theta(x_j) - \frac1n\sum_i E_\theta(\tilde x_i)
   + \lambda\big(\overline{E(x)^2} + \overline{E(\tilde x)^2}\big)$, the maximum-likelihood gradient.
4. One SVI step of the VAE on the ELBO with $\tilde x$ observed.

The option ``init`` swaps step 1 (and 4) for the baselines that share this code path:
uniform noise (short-run EBM), a replay buffer (persistent chains), or the decoder
regressed on $\tilde x$ with its own $z$ (CoopNets).

The conditional teacher ([`pyro_vmt.conditional`][pyro_vmt.conditional]) runs this same code with a
conditioning input ``ctx``: a validated batch is then a pair ``(ctx, data)``, and
[`vmt.core.batch.with_context()`][vmt.core.batch.with_context] passes ``ctx`` as the second argument of the energy, the decoder and
the VAE losses.

Every iteration is checked once, after both optimisers stepped: the run's divergence
flags, the losses, the gradient norms and the *updated* parameters, fetched from the
device in one host sync. If any is non-finite the update is undone bitwise (parameters,
buffers, optimiser states, learning rates) and the training RNG is put back, so an
iteration that diverges raises [`vmt.core.errors.DivergenceError`][vmt.core.errors.DivergenceError] and changes
nothing. A failed [`load()`][pyro_vmt.teaching.VariationalMCMCTeaching.load] changes nothing either, and
[`save()`][pyro_vmt.teaching.VariationalMCMCTeaching.save] refuses non-finite state.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_vmt import correction, distributed, mh
from pyro_vmt.capture import CompiledRun, resolve_compile
from pyro_vmt.energy import EnergyModel
from pyro_vmt.given import given
from pyro_vmt.langevin import Langevin
from pyro_vmt.persistence import PersistenceMixin
from pyro_vmt.update import (KEYED, ChainStarts, Undo, adam, energy_loss, keyed, max_abs, raise_if_diverged, revise,
                             start_chains, uniform_points, vae_loss)
from pyro_vmt.rng import RNG, as_rng
from pyro_vmt.sampling import SamplingMixin
from pyro_vmt.vae import VAE
from vmt.core.api import TeachingInfo
from vmt.core.batch import batch_stream, check_batch_size, context_and_data, with_context
from vmt.core.checks import as_count, check_batch_shape, host_numbers, overflow_message
from vmt.core.config import TeachingConfig, resolve_teacher_parts
from vmt.core.errors import DivergenceError, nonfinite_message, parameters_message

__all__ = ["VariationalMCMCTeaching", "TeachingInfo"]

Tensor = torch.Tensor


class VariationalMCMCTeaching(SamplingMixin, PersistenceMixin):
    """Train an [`EnergyModel`][pyro_vmt.energy.EnergyModel] with a [`VAE`][pyro_vmt.vae.VAE] as amortised Langevin sampler.

    Parameters
    ----------
    energy : EnergyModel
    vae : VAE or None
        Needed for ``init="vae"`` and ``"generator"``; ignored otherwise.
    config : TeachingConfig, optional
        All options (see [`vmt.TeachingConfig`][vmt.core.config.TeachingConfig]); keyword ``options`` override it.
    rng : int or torch.Generator
        Seed (or generator) of every random draw of training: minibatches, latents,
        Langevin noise, buffer resets and the VAE's reparameterised samples.
    compile : {"auto", True, False}
        The K-step Langevin loop of training under ``torch.compile`` ([`pyro_vmt.capture`][pyro_vmt.capture];
        CUDA graphs on a GPU); ``"auto"``: on CUDA only. An uncapturable network falls back to
        eager with a one-line warning; `compile_seconds` is the compilation time. The
        noise is drawn differently (all K steps at once), so compiled and eager runs differ.
    mesh : None, torch.distributed DeviceMesh or ProcessGroup
        Data-parallel teaching over the ranks of a process group (a ``DeviceMesh``'s
        ``"data"`` dimension): every rank revises its block of the chains, gradients are
        averaged ([`pyro_vmt.distributed`][pyro_vmt.distributed], ``docs/scaling.md``). ``rng`` must then be
        an int seed. ``None``: one process.
    **options
        Fields of [`TeachingConfig`][vmt.core.config.TeachingConfig], e.g. ``step_size=0.05``.

    Examples
    --------
    >>> from vmt.data import load_dataset
    >>> from pyro_vmt import EnergyModel, VAE, VariationalMCMCTeaching
    >>> from pyro_vmt.nets import default_networks
    >>> e_net, enc, dec = default_networks((2,), latent_dim=2)
    >>> teacher = VariationalMCMCTeaching(EnergyModel(e_net, (2,)), VAE(enc, dec, 2, (2,)),
    ...                                   rng=0, step_size=0.05, num_steps=10)
    >>> history = teacher.fit(load_dataset("grid25").train, num_iters=2, progress=False)
    >>> teacher.sample(5).shape
    torch.Size([5, 2])
    """

    _energy_cls, _vae_cls = EnergyModel, VAE  # the conditional teacher swaps these

    def __init__(self, energy: EnergyModel, vae: Optional[VAE] = None,
                 config: Optional[TeachingConfig] = None, *, rng: RNG = 0,
                 compile: Union[str, bool] = "auto", mesh: Any = None, **options: Any):
        self.mesh, self._group = mesh, distributed.as_group(mesh)
        config, vae = resolve_teacher_parts(energy, vae, config, options, "pyro_vmt", self._energy_cls, self._vae_cls)
        self.config = config
        self.energy = energy
        self.vae = vae
        param = next(energy.parameters(), None)
        if param is None:
            raise ValueError("the energy model has no parameters to train")
        self.device, self.dtype = param.device, param.dtype
        gen = as_rng(rng, self.device) if self._group is None else distributed.rank_generator(rng, self._group,
                                                                                               self.device)
        if gen is None:
            raise ValueError("rng is required: pass a torch.Generator or an int seed")
        self.generator = gen
        self.sampler = Langevin(energy, config.step_size, config.num_steps, config.noise_scale, config.adjust)
        self.energy_optim = adam(energy, config.energy_lr, config.betas)
        self.vae_optim = adam(vae, config.vae_lr, config.betas) if vae is not None else None
        if self._group is not None:  # one set of starting parameters; each rank owns a block of the buffer
            distributed.broadcast_parameters(self._group, [energy, vae])
            if config.init == "persistent":
                distributed.check_divisible("buffer_size", config.buffer_size, self._group)
        self.buffer = (uniform_points(config, param, energy.event_shape,
                                      config.buffer_size // distributed.num_shards(self._group), gen)
                       if config.init == "persistent" else None)
        self.chains: Optional[correction.Path] = None  # correction="mh": set by the first iteration
        self.iteration = 0
        self._undo = Undo([energy, vae], [self.energy_optim, self.vae_optim])
        self._compiled = (CompiledRun(self.sampler, self.device)
                          if resolve_compile(compile, self.device) and self._energy_cls is EnergyModel else None)

    @property
    def compile_seconds(self) -> Optional[float]:
        """Seconds the first compiled Langevin loop took (compiling it); ``None`` if not compiled (yet)."""
        return None if self._compiled is None else self._compiled.seconds

    # ------------------------------------------------------------------ training
    def _as_batch(self, batch: Any, name: str = "batch", finite: bool = True) -> Tensor:
        return self._as_array(batch, name, self.energy.event_shape, finite)

    def _as_array(self, batch: Any, name: str, event: tuple, finite: bool = True) -> Tensor:
        """``batch`` checked (dtype, shape; with ``finite``, values: one host sync) and placed."""
        if not isinstance(batch, Tensor):
            batch = torch.as_tensor(host_numbers(batch, name))
        if not (batch.is_floating_point()):
            raise ValueError(f"{name} must hold floating-point numbers, got dtype {str(batch.dtype).replace('torch.', '')}")
        check_batch_shape(name, batch.shape, event)
        if finite:
            bad = ~torch.isfinite(batch.reshape(batch.shape[0], -1)).all(1)
            if bad.any():
                raise ValueError(f"{name} has non-finite values in {int(bad.sum())} rows (first: row {int(bad.nonzero()[0, 0])})")
        out = batch.to(device=self.device, dtype=self.dtype)
        if finite and out.dtype != batch.dtype and not bool(torch.isfinite(out).all()):
            raise ValueError(overflow_message(name, self.dtype))
        return out

    def step(self, batch: Any) -> TeachingInfo:
        """One iteration on a data batch of shape ``(m, *event_shape)``; returns its diagnostics.

        The batch's values are checked with the rest of the iteration, in its one host
        sync: a non-finite batch raises ``ValueError`` and changes nothing.
        """
        tensors = self._as_batch(batch, finite=False)
        return self._iterate(tensors, lambda: self._as_batch(batch))

    def _iterate(self, tensors: Any, recheck: Optional[Callable[[], Any]] = None,
                 rng_state: Optional[Tensor] = None, rows: Optional[Tensor] = None) -> TeachingInfo:
        """The iteration, checked once; undone exactly (RNG included: ``rng_state``) if anything fails.
        ``recheck`` raises the batch's error if its values are not finite (``None``: checked in `fit()`);
        ``rows``: the training rows of a conditional batch, whose chains ``correction="mh"`` moves."""
        gen = self.generator
        rng_state = gen.get_state() if rng_state is None else rng_state
        stepped = False
        try:
            ctx, batch = context_and_data(tensors)
            cfg = self.config
            if rows is None:
                ctx, batch, n = distributed.split_batch(self._group, ctx, batch, cfg.num_samples)  # this rank's share
            else:  # a keyed conditional batch is this rank's rows already (see fit)
                n = batch.shape[0]
            chains, minfo, diag = self.chains, None, None
            failed: Optional[BaseException] = None  # on a mesh: this rank failed (told to every rank below)
            try:
                if cfg.correction:  # exact MH teaching: the persistent chains are the negative samples
                    vae = self.vae if cfg.init == "vae" else None
                    if ctx is None:
                        chains, minfo = mh.update_chains(gen, self.chains, self.energy, vae, n, cfg)
                        moved = chains
                    else:  # chain j targets p(y | x_j) and proposes from the conditional VAE at x_j
                        if rows is None:
                            raise ValueError(KEYED)
                        moved, minfo = mh.update_chains(gen, correction.Path(*(a[rows] for a in self.chains)),
                                                        *given(self.energy, vae, ctx), n, cfg)
                        chains = correction.Path(*(a.index_copy(0, rows, b) for a, b in zip(self.chains, moved)))
                    x_tilde, starts = moved.position, ChainStarts(moved.position, None, None)
                    zero = torch.zeros((), dtype=self.dtype, device=self.device)
                    diag = (zero, zero, zero, zero - 1)
                    langevin = (minfo.local_acceptance, torch.full((), math.nan, dtype=self.dtype, device=self.device))
                else:
                    starts = start_chains(cfg, self.energy, self.vae, self.buffer, n, gen, True, ctx)
                    state, sinfo, diag = revise(self._sampler(ctx), starts.position, gen, None,
                                                self._compiled if ctx is None else None)
                    x_tilde = state.position
                    langevin = (sinfo.acceptance_rate.mean(), sinfo.grad_norm[-1].mean())
                loss, e_data, e_samp = energy_loss(cfg, with_context(self.energy, ctx), batch, x_tilde)
                v_loss = vae_loss(cfg, self.vae, x_tilde, starts, gen, ctx)
            except Exception as e:  # e.g. Pyro's validation of a NaN sample: name the cause if the run diverged
                if self._group is None:
                    if diag is not None:
                        raise_if_diverged(torch.stack([d.to(self.dtype) for d in diag]).tolist(), n,
                                          cfg.step_size, e)
                    raise
                failed = e  # the other ranks are on their way to the collectives: join them, raise after
                nan = torch.full((), math.nan, dtype=self.dtype, device=self.device)
                loss = e_data = e_samp = v_loss = nan
                langevin = (nan, nan)
                if diag is None:
                    zero = torch.zeros((), dtype=self.dtype, device=self.device)
                    diag = (zero, zero, zero, zero - 1)
            self.energy_optim.zero_grad(set_to_none=True)
            if self.vae_optim is not None:
                self.vae_optim.zero_grad(set_to_none=True)
            if failed is None:  # both backward passes, then the gradients are averaged, then clipped
                loss.backward()
                if self.vae_optim is not None:
                    v_loss.backward()
            nan = torch.full((), math.nan, dtype=loss.dtype, device=loss.device)
            mh_info = ((nan, nan, nan) if minfo is None or failed is not None
                       else (minfo.acceptance_rate, minfo.weight_ess, minfo.crossing_rate))
            stats = [loss.detach(), e_data.detach().mean(), e_samp.detach().mean(), v_loss.detach(), *langevin,
                     *(m.detach().to(loss.dtype) for m in mh_info)]
            if self._group is not None:  # gradients and reported means, averaged over the ranks (one all_reduce)
                stats = distributed.average(self._group, [self.energy, self.vae], stats)
            loss = stats[0]
            gnorm = torch.nn.utils.clip_grad_norm_(self.energy.parameters(), cfg.grad_clip or math.inf)
            v_gnorm = torch.zeros((), device=self.device, dtype=self.dtype)
            if self.vae_optim is not None:
                v_loss = stats[3]
                v_gnorm = torch.nn.utils.get_total_norm([p.grad for p in self.vae.parameters() if p.grad is not None])
            self._undo.save()
            stepped = True
            factor = cfg.lr_factor(self.iteration)
            for optim, lr in [(self.energy_optim, cfg.energy_lr), (self.vae_optim, cfg.vae_lr)]:
                if optim is not None:
                    for group in optim.param_groups:
                        group["lr"] = lr * factor
                    try:
                        optim.step()
                    except RuntimeError as e:  # torch refuses a step scalar beyond the dtype's range
                        if "overflow" not in str(e):
                            raise
                        raise DivergenceError(parameters_message("energy" if optim is self.energy_optim
                                                                 else "VAE", lr)) from e
            arrays = tensors if isinstance(tensors, tuple) else (tensors,)
            bad_rows = (torch.stack([(~torch.isfinite(t.reshape(t.shape[0], -1))).any(1).sum() for t in arrays]).sum()
                        if recheck is not None else torch.zeros((), device=self.device))
            checks = list(diag) + [bad_rows, loss, gnorm, v_loss, v_gnorm,
                                   max_abs(list(self.energy.parameters()) + list(self.energy.buffers()), loss),
                                   max_abs([] if self.vae is None else list(self.vae.parameters()), loss)]
            wide = torch.float32 if self.device.type == "mps" else torch.float64
            stacked = torch.stack([c.detach().reshape(()).to(wide) for c in checks])
            if self._group is None:
                values = stacked.tolist()  # the one host sync
                self._raise_unless_finite(values, n, recheck)
            else:  # every rank sees every rank's checks, so all raise together (still one host sync)
                flag = torch.full((1,), float(failed is not None), dtype=wide, device=stacked.device)
                rows = distributed.all_checks(self._group, torch.cat([stacked, flag])).tolist()  # the one host sync
                if failed is not None:
                    raise_if_diverged(rows[distributed.rank(self._group)][:4], n, cfg.step_size, failed)
                    raise failed
                failures = sum(1 for row in rows if row[-1])
                if failures:
                    raise DivergenceError(f"{failures} of {len(rows)} ranks failed this iteration (a diverged chain "
                                          "there); no parameter was updated")
                for row in rows:
                    self._raise_unless_finite(row[:-1], n, recheck)
        except BaseException:
            if stepped:
                self._undo.restore()
            gen.set_state(rng_state)
            raise
        if cfg.init == "persistent":
            self.buffer[starts.slots] = x_tilde
        self.chains = chains
        self.iteration += 1
        return TeachingInfo(*stats[:6], gnorm.detach(), *stats[6:])

    def _raise_unless_finite(self, values: list, n: int, recheck: Optional[Callable[[], Any]]) -> None:
        """The host side of the iteration's one check (``values`` as `_iterate()` stacks them)."""
        cfg = self.config
        diag, (bad_rows, loss, gnorm, v_loss, v_gnorm, e_max, v_max) = values[:4], values[4:]
        if bad_rows and recheck is not None:
            recheck()  # raises the batch's own error
        raise_if_diverged(diag, n, cfg.step_size)
        with_vae = self.vae_optim is not None
        for what, value, check in [("energy loss", loss, True), ("VAE loss", v_loss, with_vae),
                                   ("energy parameter gradient", gnorm, True),
                                   ("VAE parameter gradient", v_gnorm, with_vae)]:
            if check and not math.isfinite(value):
                raise DivergenceError(nonfinite_message(what, value))
        if not math.isfinite(e_max):
            raise DivergenceError(parameters_message("energy", cfg.energy_lr))
        if with_vae and not math.isfinite(v_max):
            raise DivergenceError(parameters_message("VAE", cfg.vae_lr))

    def fit(self, data: Any, num_iters: int = 1000, batch_size: int = 100, progress: bool = True,
            callback: Optional[Callable[["VariationalMCMCTeaching", TeachingInfo], None]] = None
            ) -> Dict[str, np.ndarray]:
        """Run ``num_iters`` iterations on minibatches drawn (with replacement) from ``data``.

        ``data`` is an array (a pair ``(x, y)`` for the conditional teacher, whose rows
        are drawn without replacement under ``correction="mh"``), or any
        other iterable of batches — a ``torch.utils.data.DataLoader``, a generator of
        arrays — of which each batch is one iteration (``batch_size`` is then unused;
        see [`vmt.core.batch.batch_stream()`][vmt.core.batch.batch_stream]). Returns the history: one array per
        [`TeachingInfo`][vmt.core.api.TeachingInfo] field. ``callback(teacher, info)`` is called
        after every iteration.
        """
        stream = batch_stream(data)
        num_iters, batch_size = as_count("num_iters", num_iters, minimum=0), as_count("batch_size", batch_size)
        distributed.check_divisible("batch_size", batch_size, self._group)
        if stream is None:
            data = self._as_batch(data, "data")
            rows_in_data = context_and_data(data)[1].shape[0]
            check_batch_size(batch_size, rows_in_data)
        rows = []
        bar = tqdm(range(num_iters), disable=not progress, desc="vmt", leave=True)
        for _ in bar:
            if stream is not None:
                batch = next(stream, None)
                if batch is None:
                    break
                info = self.step(batch)
            else:  # the minibatch draw is part of the iteration: undone with it on failure
                rng_state = self.generator.get_state()
                if keyed(self.config, data):  # distinct rows: each row's chain moves at most once an iteration
                    # on a mesh, from this rank's block of rows, whose chains it keeps
                    w = distributed.num_shards(self._group)
                    block = rows_in_data // w
                    idx = torch.randperm(block, generator=self.generator, device=self.device)[:batch_size // w]
                    info = self._iterate(_take(data, idx + distributed.rank(self._group) * block), None, rng_state,
                                         rows=idx)
                else:
                    idx = torch.randint(rows_in_data, (batch_size,), generator=self.generator, device=self.device)
                    info = self._iterate(_take(data, idx), None, rng_state)
            rows.append(torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in info]))
            if callback is not None:
                callback(self, info)
            if progress:  # one fetch for the numbers shown
                loss, e_data, e_samp, acc, ess, cross = torch.stack(
                    [info.loss, info.energy_data, info.energy_samples, info.path_acceptance, info.weight_ess,
                     info.crossing_rate]).tolist()
                extra = dict(acc=f"{acc:.2f}", ess=f"{ess:.2f}", cross=f"{cross:.2f}") if self.config.correction else {}
                bar.set_postfix(loss=f"{loss:.3g}", e_data=f"{e_data:.3g}", e_samples=f"{e_samp:.3g}", **extra,
                                refresh=False)
        table = torch.stack(rows).cpu().numpy() if rows else np.zeros((0, len(TeachingInfo._fields)))
        return {name: table[:, i] for i, name in enumerate(TeachingInfo._fields)}


def _take(data: Any, idx: Tensor) -> Any:
    return tuple(a[idx] for a in data) if isinstance(data, tuple) else data[idx]


