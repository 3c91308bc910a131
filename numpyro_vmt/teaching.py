r"""Variational MCMC teaching (JAX / NumPyro): the joint training of an EBM and a VAE.

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

The conditional teacher ([`numpyro_vmt.conditional`][numpyro_vmt.conditional]) runs this same code with a
conditioning input ``ctx``: a validated batch is then a pair ``(ctx, data)``, and
[`vmt.core.batch.with_context()`][vmt.core.batch.with_context] passes ``ctx`` as the second argument of the energy, the decoder and
the VAE losses.

The whole iteration is one jitted pure function over a [`TeachingState`][numpyro_vmt.teaching.TeachingState]
pytree, in the shape of NumPyro's ``SVI.update``. The new state is committed only
after the host has checked the run and the losses, so an iteration that diverges
raises [`vmt.core.errors.DivergenceError`][vmt.core.errors.DivergenceError] and changes nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from numpyro_vmt import distributed
from numpyro_vmt.energy import EnergyModel
from numpyro_vmt.langevin import Langevin
from numpyro_vmt.persistence import PersistenceMixin
from numpyro_vmt.rng import RNG, as_rng
from numpyro_vmt.sampling import SamplingMixin, raise_if_diverged
from numpyro_vmt.update import (Diagnosis, Spec, TeachingState, fit_core, no_chains, optimizers, uniform_points,
                                 update_core)
from numpyro_vmt.vae import VAE
from vmt.core.api import TeachingInfo
from vmt.core.batch import batch_stream, check_batch_size, context_and_data
from vmt.core.checks import as_count, check_batch_shape, host_numbers, overflow_message
from vmt.core.config import TeachingConfig, resolve_teacher_parts
from vmt.core.errors import DivergenceError, nonfinite_message, parameters_message

__all__ = ["VariationalMCMCTeaching", "TeachingInfo", "TeachingState"]

Array = jax.Array


class VariationalMCMCTeaching(SamplingMixin, PersistenceMixin):
    """Train an [`EnergyModel`][numpyro_vmt.energy.EnergyModel] with a [`VAE`][numpyro_vmt.vae.VAE] as amortised Langevin sampler.

    Parameters
    ----------
    energy : EnergyModel
    vae : VAE or None
        Needed for ``init="vae"`` and ``"generator"``; ignored otherwise.
    config : TeachingConfig, optional
        All options (see [`vmt.TeachingConfig`][vmt.core.config.TeachingConfig]); keyword ``options`` override it.
    rng : int or jax.random key
        Seed (or key) of every random draw of training: minibatches, latents,
        Langevin noise, buffer resets and the VAE's reparameterised samples.
    mesh : None, int, list of jax devices or jax.sharding.Mesh
        Data-parallel teaching on several devices: the batch and the chains are split
        along the mesh axis ``"data"``, the parameters replicated, one jitted iteration
        ([`numpyro_vmt.distributed`][numpyro_vmt.distributed], ``docs/scaling.md``). ``None``: one device.
    **options
        Fields of [`TeachingConfig`][vmt.core.config.TeachingConfig], e.g. ``step_size=0.05``.

    Notes
    -----
    The public API is the torch backend's. Two JAX-only extras, the idiom of
    NumPyro's ``SVI.update``:

    - ``state``: the whole training state, a [`TeachingState`][numpyro_vmt.teaching.TeachingState] pytree
      (``numpyro_vmt.teaching.TeachingState``). ``energy``, ``vae``, ``buffer`` and
      ``iteration`` are read from it.
    - ``update(state, batch) -> (state, info)``: the pure, jitted iteration, usable
      inside the caller's own ``jit``/``scan``. It does no host-side check;
      `step()` calls the same compiled function and commits the new state only
      after checking that no chain diverged and the losses and gradients are finite.

    Iterations with equal configurations and network structures share one
    compilation, across instances.

    Examples
    --------
    >>> from vmt.data import load_dataset
    >>> from numpyro_vmt import EnergyModel, VAE, VariationalMCMCTeaching
    >>> from numpyro_vmt.nets import default_networks
    >>> e_net, enc, dec = default_networks((2,), latent_dim=2)
    >>> teacher = VariationalMCMCTeaching(EnergyModel(e_net, (2,)), VAE(enc, dec, 2, (2,)),
    ...                                   rng=0, step_size=0.05, num_steps=10)
    >>> history = teacher.fit(load_dataset("grid25").train, num_iters=2, progress=False)
    >>> teacher.sample(5).shape
    (5, 2)
    """

    _energy_cls, _vae_cls = EnergyModel, VAE  # the conditional teacher swaps these

    def __init__(self, energy: EnergyModel, vae: Optional[VAE] = None,
                 config: Optional[TeachingConfig] = None, *, rng: RNG = 0, mesh: Any = None, **options: Any):
        self.mesh = distributed.as_mesh(mesh)
        config, vae = resolve_teacher_parts(energy, vae, config, options, "numpyro_vmt", self._energy_cls, self._vae_cls)
        self.config = config
        e_params, self._energy_static = eqx.partition(energy, eqx.is_inexact_array)
        leaves = jax.tree.leaves(e_params)
        if not leaves:
            raise ValueError("the energy model has no parameters to train")
        self.dtype = leaves[0].dtype
        key = as_rng(rng)
        if key is None:
            raise ValueError("rng is required: pass a jax.random key or an int seed")
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)  # raw uint32 keys: plain arrays in the state and the file
        self.energy_optim, self.vae_optim = optimizers(config, vae is not None)
        if vae is not None:
            v_params, self._vae_static = eqx.partition(vae, eqx.is_inexact_array)
            v_opt = self.vae_optim.init(v_params)
        else:
            v_params = self._vae_static = v_opt = None
        # Everything static the jitted iteration depends on; equal specs share one
        # compilation (equinox's static parts compare and hash by value).
        self._spec = Spec(config, self._energy_static, self._vae_static, self.mesh)
        try:
            hash(self._spec)
        except TypeError as e:
            raise TypeError("the energy and VAE modules may hold only floating-point arrays (their "
                            f"parameters) and hashable static values: {e}") from e
        seed = key
        key, k_buffer = jax.random.split(key)
        buffer = (uniform_points(self._spec, k_buffer, config.buffer_size, self.dtype)
                  if config.init == "persistent" else None)
        chains = no_chains(self._spec, self.dtype) if config.correction else None
        self.state = distributed.replicate(TeachingState(e_params, v_params, self.energy_optim.init(e_params), v_opt,
                                                         key, seed, buffer, jnp.asarray(0, jnp.int32), chains),
                                           self.mesh)

    # ------------------------------------------------------------------ views of the state
    @property
    def energy(self) -> EnergyModel:
        """The energy model with its current parameters."""
        return eqx.combine(self.state.energy, self._energy_static)

    @property
    def vae(self) -> Optional[VAE]:
        """The VAE with its current parameters (``None`` for ``init="noise"``/``"persistent"``)."""
        return None if self._vae_static is None else eqx.combine(self.state.vae, self._vae_static)

    @property
    def buffer(self) -> Optional[Array]:
        """The replay buffer (``init="persistent"``), else ``None``."""
        return self.state.buffer

    @property
    def iteration(self) -> int:
        """Number of iterations done."""
        return int(self.state.iteration)

    @property
    def sampler(self) -> Langevin:
        """The Langevin sampler of the current energy, with the configured options."""
        cfg = self.config
        return Langevin(self.energy, cfg.step_size, cfg.num_steps, cfg.noise_scale, cfg.adjust)

    # ------------------------------------------------------------------ training (host)
    def update(self, state: TeachingState, batch: Array) -> Tuple[TeachingState, TeachingInfo]:
        """The pure iteration: ``(state, batch) -> (new_state, info)``, jitted, no host check.

        ``state`` is not modified (JAX arrays are immutable); nothing on ``self``
        changes. A concrete ``batch`` is validated as in `step()`; inside a
        user's ``jit``/``scan`` it is used as given.
        """
        if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(batch)):
            batch = self._as_batch(batch)
        new, info, _ = update_core(self._spec, state, batch)
        return new, info

    def _as_batch(self, batch: Any, name: str = "batch") -> Array:
        return self._as_array(batch, name, self._energy_static.event_shape)

    def _as_array(self, batch: Any, name: str, event: tuple) -> Array:
        arr = host_numbers(batch, name)
        check_batch_shape(name, arr.shape, event)
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(1)
        if bad.any():
            raise ValueError(f"{name} has non-finite values in {int(bad.sum())} rows "
                             f"(first: row {int(np.flatnonzero(bad)[0])})")
        if arr.dtype != self.dtype:
            with np.errstate(over="ignore"):
                if not np.isfinite(arr.astype(self.dtype)).all():
                    raise ValueError(overflow_message(name, self.dtype))
        return jnp.asarray(batch, dtype=self.dtype)

    def _commit(self, new: TeachingState, info: TeachingInfo, diag: Diagnosis, n: int) -> TeachingInfo:
        info_h, diag_h = distributed.to_host((info, diag))
        raise_if_diverged(diag_h, n, self.config.step_size)
        _check_finite("energy loss", info_h.loss)
        if self.vae_optim is not None:
            _check_finite("VAE loss", info_h.vae_loss)
        _check_finite("energy parameter gradient", info_h.energy_grad_norm)
        if self.vae_optim is not None:
            _check_finite("VAE parameter gradient", diag_h.vae_grad_norm)
        if not diag_h.energy_params_finite:
            raise DivergenceError(parameters_message("energy", self.config.energy_lr))
        if not diag_h.vae_params_finite:
            raise DivergenceError(parameters_message("VAE", self.config.vae_lr))
        self.state = new
        return info_h

    def step(self, batch: Any) -> TeachingInfo:
        """One iteration on a data batch of shape ``(m, *event_shape)``; returns its diagnostics."""
        batch = self._as_batch(batch)
        n = self.config.num_samples or context_and_data(batch)[1].shape[0]
        if self.mesh is not None:
            distributed.check_divisible("the batch size", context_and_data(batch)[1].shape[0], self.mesh)
            distributed.check_divisible("the number of chains (num_samples)", n, self.mesh)
            batch = distributed.shard(batch, self.mesh)
        new, info, diag = update_core(self._spec, self.state, batch)
        self._commit(new, info, diag, n)
        return info

    def fit(self, data: Any, num_iters: int = 1000, batch_size: int = 100, progress: bool = True,
            callback: Optional[Callable[["VariationalMCMCTeaching", TeachingInfo], None]] = None
            ) -> Dict[str, np.ndarray]:
        """Run ``num_iters`` iterations on minibatches drawn (with replacement) from ``data``.

        ``data`` is an array (a pair ``(x, y)`` for the conditional teacher), or any
        other iterable of batches — a generator of NumPy/JAX arrays, a
        ``torch.utils.data.DataLoader`` — of which each batch is one iteration
        (``batch_size`` is then unused; see [`vmt.core.batch.batch_stream()`][vmt.core.batch.batch_stream]).
        The minibatch indices are drawn from the training key inside the jitted
        iteration, so a saved and restored run continues exactly. Returns the
        history: one array per [`TeachingInfo`][vmt.core.api.TeachingInfo] field.
        ``callback(teacher, info)`` is called after every iteration.
        """
        stream = batch_stream(data)
        num_iters, batch_size = as_count("num_iters", num_iters, minimum=0), as_count("batch_size", batch_size)
        if stream is None:
            data = self._as_batch(data, "data")
            check_batch_size(batch_size, context_and_data(data)[1].shape[0])
        n = self.config.num_samples or batch_size
        if self.mesh is not None:
            distributed.check_divisible("batch_size", batch_size, self.mesh)
            distributed.check_divisible("the number of chains (num_samples)", n, self.mesh)
            if stream is None:
                data = distributed.replicate(data, self.mesh)
        rows = []
        bar = tqdm(range(num_iters), disable=not progress, desc="vmt", leave=True)
        for _ in bar:
            if stream is not None:
                batch = next(stream, None)
                if batch is None:
                    break
                info = self.step(batch)
                info_h = jax.device_get(info)
            else:
                new, info, diag = fit_core(self._spec, self.state, data, batch_size)
                info_h = self._commit(new, info, diag, n)
            rows.append(np.array([float(v) for v in info_h], dtype=np.float64))
            if callback is not None:
                callback(self, info)
            if progress:
                extra = ({} if not self.config.correction else
                         dict(acc=f"{float(info_h.path_acceptance):.2f}", ess=f"{float(info_h.weight_ess):.2f}",
                              cross=f"{float(info_h.crossing_rate):.2f}"))
                bar.set_postfix(loss=f"{float(info_h.loss):.3g}", e_data=f"{float(info_h.energy_data):.3g}",
                                e_samples=f"{float(info_h.energy_samples):.3g}", **extra, refresh=False)
        table = np.stack(rows) if rows else np.zeros((0, len(TeachingInfo._fields)))
        return {name: table[:, i] for i, name in enumerate(TeachingInfo._fields)}


def _check_finite(what: str, value: Any) -> None:
    if not np.isfinite(value).all():
        raise DivergenceError(nonfinite_message(what, float(value)))
