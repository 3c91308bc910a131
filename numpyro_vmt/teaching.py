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

import os
from typing import Any, Callable, Dict, Optional, Tuple, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from numpyro_vmt import correction, distributed
from numpyro_vmt.checkpoint import read_state, restore_leaves, write_checkpoint
from numpyro_vmt.energy import EnergyModel
from numpyro_vmt.langevin import Langevin
from numpyro_vmt.rng import RNG, as_rng
from numpyro_vmt.update import (Diagnosis, Spec, TeachingState, all_finite, fit_core, no_chains, optimizers,
                                 sample_core, uniform_points, update_core)
from numpyro_vmt.vae import VAE
from vmt.core.api import TeachingInfo
from vmt.core.batch import batch_stream, check_batch_size, context_and_data
from vmt.core.checkpoint import config_mismatch, one_line
from vmt.core.checks import as_count, check_batch_shape, check_num_steps, host_numbers, overflow_message
from vmt.core.config import TeachingConfig, resolve_teacher_parts
from vmt.core.errors import CheckpointError, DivergenceError, divergence_message, nonfinite_message, parameters_message

__all__ = ["VariationalMCMCTeaching", "TeachingInfo", "TeachingState"]

Array = jax.Array


class VariationalMCMCTeaching:
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

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, num_steps: Optional[int] = None, rng: RNG = None, mh_steps: int = 0) -> Array:
        """``n`` samples of the EBM: the configured initialisation, then ``num_steps`` Langevin steps.

        ``num_steps=0`` returns the starting points (e.g. the VAE's own samples).
        Without ``rng`` the draw is seeded from the training seed and the iteration
        count, so it is reproducible and leaves training unaffected.
        ``mh_steps > 0`` makes the samples exact: ``n`` independence-sampler chains on
        whole proposal paths (the decoder with its observation noise, or the wide
        Gaussian without a VAE, then the Langevin run), ``mh_steps`` accept tests each
        (see [`numpyro_vmt.correction.independent_mh()`][numpyro_vmt.correction.independent_mh]); they are samples of
        ``exp(−E)/Z`` as far as the chains have mixed.
        """
        if mh_steps:
            vae, opts = self._proposal(num_steps)
            path, _ = correction.independent_mh(self._key(rng, 1), self.energy, vae, as_count("n", n),
                                                as_count("mh_steps", mh_steps), *opts, 0,
                                                self.config.wide_proposal(), anneal=self.config.path_anneal)
            return path.position
        return self._sample(as_count("n", n), num_steps, rng)

    def _proposal(self, num_steps: Optional[int]):
        cfg = self.config
        vae = self.vae if cfg.init == "vae" else None
        num_steps = cfg.num_steps if num_steps is None else check_num_steps(num_steps)
        noise_scale = cfg.noise_scale if cfg.noise_scale > 0 else 1.0
        return vae, (cfg.step_size, num_steps, noise_scale, cfg.adjust)

    def _key(self, rng: RNG, salt: int) -> Array:
        key = as_rng(rng)
        return jax.random.fold_in(jax.random.fold_in(self.state.seed, self.state.iteration), salt) if key is None else key

    def log_partition(self, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None,
                      batch_size: int = 2000) -> Tuple[float, float]:
        r"""Estimate $\log Z = \log\int e^{-E(x)}dx$ and its standard error from proposal paths.

        The paths are this teacher's own proposals: the VAE's decoder with its
        observation noise (``init="vae"``), else the Gaussian over ``init_bounds``
        (every other ``init``), followed by ``num_steps`` Langevin steps (default: the
        configured ``K``; ``noise_scale=0`` is replaced by 1, a noise-free run has no
        density), annealed when ``path_anneal`` is set. See
        [`numpyro_vmt.correction.log_partition()`][numpyro_vmt.correction.log_partition]: the log-mean-exp is biased *low*,
        so likelihoods from it are biased *high*, by an amount the standard error does
        not capture when the weights' ESS is small.
        """
        vae, opts = self._proposal(num_steps)
        return correction.log_partition(self._key(rng, 2), self.energy, vae, as_count("num_samples", num_samples),
                                        *opts, 0, self.config.wide_proposal(), batch_size,
                                        anneal=self.config.path_anneal)

    def log_prob(self, x: Any, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None
                 ) -> Tuple[np.ndarray, float]:
        """``log p(x) = −E(x) − log Ẑ`` per row of ``x`` (numpy), and the standard error of
        ``log Ẑ`` (shared by every row; see `log_partition()` for the bias)."""
        x = self._as_batch(x, "x")
        log_z, se = self.log_partition(num_samples, rng, num_steps)
        return -self.energy.numpy_energy(np.asarray(x)) - log_z, se

    def _sample(self, n: int, num_steps: Optional[int], rng: RNG, ctx: Optional[Array] = None) -> Array:
        key = as_rng(rng)
        if key is None:
            key = jax.random.fold_in(self.state.seed, self.state.iteration)
        if num_steps is None:
            num_steps = self.config.num_steps
        elif num_steps != 0:
            num_steps = check_num_steps(num_steps)
        x, diag = sample_core(self._spec, self.state, key, n, int(num_steps), ctx)
        if diag is not None:
            _raise_if_diverged(jax.device_get(diag), n, self.config.step_size)
        return x

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
        _raise_if_diverged(diag_h, n, self.config.step_size)
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

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Everything training depends on: networks, optimisers, RNG, buffer, iteration."""
        out = {"config": self.config.to_dict()}
        out.update(self.state._asdict())
        out["iteration"] = int(self.state.iteration)
        return out

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore `state_dict()`; raises [`CheckpointError`][vmt.core.errors.CheckpointError] on any mismatch.

        Each entry may be the pytree `state_dict()` returns or the list of its
        leaves in flattening order; shapes and dtypes must match this object's.
        """
        diff = config_mismatch(state.get("config", {}), self.config.to_dict(), TeachingConfig().to_dict())
        if diff:
            raise CheckpointError(f"checkpoint was written with another configuration: {diff}")
        cur = self.state
        try:
            restored = {f: restore_leaves(f, state[f], getattr(cur, f))
                        for f in ("energy", "vae", "energy_optim", "vae_optim", "rng", "seed")}
        except KeyError as e:
            raise CheckpointError(f"checkpoint does not match these networks: missing entry {e}") from e
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint does not match these networks: {one_line(e)}") from e
        buffer = None
        if cur.buffer is not None:
            given = state.get("buffer")
            given = given[0] if isinstance(given, (list, tuple)) and len(given) == 1 else given
            if given is None or tuple(np.shape(given)) != cur.buffer.shape:
                raise CheckpointError("checkpoint's replay buffer does not match this configuration")
            buffer = jnp.asarray(given, dtype=cur.buffer.dtype)
        iteration = state.get("iteration")
        iteration = iteration[0] if isinstance(iteration, (list, tuple)) and iteration else iteration
        if (iteration is None or isinstance(iteration, bool) or np.shape(iteration) != ()
                or not np.issubdtype(np.asarray(iteration).dtype, np.integer) or int(iteration) < 0
                or int(iteration) > np.iinfo(np.int32).max):
            raise CheckpointError(f"checkpoint has no valid iteration count: {iteration!r}")
        bad = [f for f in ("energy", "vae", "energy_optim", "vae_optim") if not bool(all_finite(restored[f]))]
        bad += ["buffer"] if buffer is not None and not bool(all_finite(buffer)) else []
        if bad:
            raise CheckpointError(f"checkpoint holds non-finite values in {', '.join(bad)}")
        chains = None
        if cur.chains is not None:
            given = jax.tree.leaves(state.get("chains"))
            event = cur.chains.position.shape[1:]
            if (len(given) != 4 or tuple(np.shape(given[0])[1:]) != event
                    or any(np.shape(a) != (np.shape(given[0])[0],) for a in given[1:])):
                raise CheckpointError("checkpoint's persistent chains (correction='mh') do not match this configuration")
            chains = correction.Path(*(jnp.asarray(a, dtype=self.dtype) for a in given))
            if not bool(all_finite(chains)):
                raise CheckpointError("checkpoint holds non-finite values in chains")
        self.state = distributed.replicate(
            TeachingState(**restored, buffer=buffer, iteration=jnp.asarray(int(iteration), jnp.int32), chains=chains),
            self.mesh)

    def save(self, path: Union[str, os.PathLike], **metadata: Any) -> None:
        """Write a checkpoint atomically (an interrupted save leaves the old file intact).

        The file is an ``.npz`` archive (no pickle): a JSON header (format, version,
        backend, configuration, ``metadata``, leaf shapes and dtypes) and the leaves
        of [`TeachingState`][numpyro_vmt.teaching.TeachingState]. ``metadata`` must be JSON-serialisable. A state
        holding non-finite values is refused with
        [`CheckpointError`][vmt.core.errors.CheckpointError] and nothing is written. On a mesh the
        file holds the one replicated state, so it loads on any number of devices; in a
        multi-host run only process 0 writes.
        """
        bad = [f for f in ("energy", "vae", "energy_optim", "vae_optim", "buffer")
               if not bool(all_finite(getattr(self.state, f)))]
        if bad:
            raise CheckpointError(f"refusing to save: non-finite values in {', '.join(bad)}; nothing was written")
        if distributed.is_writer():
            write_checkpoint(path, distributed.to_host(self.state), self.config.to_dict(), metadata)

    def load(self, path: Union[str, os.PathLike]) -> Dict[str, Any]:
        """Restore a checkpoint written by `save()` into this object; returns its metadata.

        The object must have been built with the same configuration and networks.
        """
        state, metadata = read_state(path)
        self.load_state_dict(state)
        return metadata


def _raise_if_diverged(diag: Diagnosis, n: int, step_size: float) -> None:
    if diag.bad_start:
        raise ValueError(f"initial position is non-finite in {int(diag.bad_start)} of {n} chains")
    if diag.bad_start_energy:
        raise ValueError(f"energy or its gradient is non-finite at the initial position of "
                         f"{int(diag.bad_start_energy)} of {n} chains")
    if diag.num_divergent:
        raise DivergenceError(divergence_message(int(diag.first_divergent), int(diag.num_divergent), n, step_size))


def _check_finite(what: str, value: Any) -> None:
    if not np.isfinite(value).all():
        raise DivergenceError(nonfinite_message(what, float(value)))
