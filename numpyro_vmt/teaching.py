r"""Variational MCMC teaching (JAX / NumPyro): the joint training of an EBM and a VAE.

One iteration (Xie, Zheng & Li, "Learning Energy-Based Model with Variational
Auto-Encoder as Amortized Sampler", AAAI 2021, https://arxiv.org/abs/2012.14936):

1. :math:`z_i \sim \mathcal N(0, I)`, :math:`x^{(0)}_i = g_\alpha(z_i)`.
2. :math:`K` Langevin steps
   :math:`x^{(k+1)} = x^{(k)} - \tfrac{\delta^2}{2}\nabla_x E_\theta(x^{(k)}) + \delta\sigma\xi_k`,
   :math:`\tilde x = x^{(K)}` (no gradient flows through the chain).
3. Energy step on :math:`\mathcal L(\theta) = \frac1m\sum_j E_\theta(x_j) - \frac1n\sum_i E_\theta(\tilde x_i)
   + \lambda\big(\overline{E(x)^2} + \overline{E(\tilde x)^2}\big)`, the maximum-likelihood gradient.
4. One SVI step of the VAE on the ELBO with :math:`\tilde x` observed.

The option ``init`` swaps step 1 (and 4) for the baselines that share this code path:
uniform noise (short-run EBM), a replay buffer (persistent chains), or the decoder
regressed on :math:`\tilde x` with its own :math:`z` (CoopNets).

The conditional teacher (:mod:`numpyro_vmt.conditional`) runs this same code with a
conditioning input ``ctx``: a validated batch is then a pair ``(ctx, data)``, and
:func:`_bind` passes ``ctx`` as the second argument of the energy, the decoder and
the VAE losses.

The whole iteration is one jitted pure function over a :class:`TeachingState`
pytree, in the shape of NumPyro's ``SVI.update``. The new state is committed only
after the host has checked the run and the losses, so an iteration that diverges
raises :class:`vmt.errors.DivergenceError` and changes nothing.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from numpyro_vmt import correction
from numpyro_vmt.energy import EnergyModel
from numpyro_vmt.checkpoint import read_state, restore_leaves, write_checkpoint
from numpyro_vmt.langevin import RNG, Langevin, _flat_sum, as_key, init, scan_steps
from numpyro_vmt.vae import VAE
from vmt.api import TeachingInfo
from vmt.checkpoint import config_mismatch
from vmt.config import TeachingConfig, check_num_steps
from vmt.errors import CheckpointError, DivergenceError, divergence_message

__all__ = ["VariationalMCMCTeaching", "TeachingInfo"]

Array = jax.Array


class TeachingState(NamedTuple):
    """Everything training depends on, as one pytree (saved and restored exactly).

    Attributes
    ----------
    energy, vae : pytrees
        The floating-point array leaves of the :class:`EnergyModel` and the
        :class:`VAE` (``eqx.partition(module, eqx.is_inexact_array)[0]``; ``vae`` is
        ``None`` without a VAE).
    energy_optim, vae_optim : optax states
    rng : jax.random key
        Training key, split every iteration (minibatches, latents, Langevin noise,
        buffer resets, the VAE's reparameterised samples).
    seed : jax.random key
        The key training started from: :meth:`VariationalMCMCTeaching.sample`
        without ``rng`` folds the iteration into it.
    buffer : Array or None
        Replay buffer of ``init="persistent"``.
    iteration : Array (int32)
    chains : correction.Path or None
        The persistent chains of ``correction="mh"`` (zero rows until the first
        iteration sets their number), else ``None``.
    """

    energy: Any
    vae: Any
    energy_optim: Any
    vae_optim: Any
    rng: Array
    seed: Array
    buffer: Optional[Array]
    iteration: Array
    chains: Any = None


class _Diagnosis(NamedTuple):
    """What the host checks before committing an iteration (0-d arrays)."""

    bad_start: Array         # chains with a non-finite starting point
    bad_start_energy: Array  # chains with a non-finite energy or gradient there
    num_divergent: Array     # chains flagged divergent at any step
    first_divergent: Array   # first step with a divergent chain (-1: none)
    vae_grad_norm: Array


class VariationalMCMCTeaching:
    """Train an :class:`EnergyModel` with a :class:`VAE` as amortised Langevin sampler.

    Parameters
    ----------
    energy : EnergyModel
    vae : VAE or None
        Needed for ``init="vae"`` and ``"generator"``; ignored otherwise.
    config : TeachingConfig, optional
        All options (see :class:`vmt.TeachingConfig`); keyword ``options`` override it.
    rng : int or jax.random key
        Seed (or key) of every random draw of training: minibatches, latents,
        Langevin noise, buffer resets and the VAE's reparameterised samples.
    **options
        Fields of :class:`~vmt.TeachingConfig`, e.g. ``step_size=0.05``.

    Notes
    -----
    The public API is the torch backend's. Two JAX-only extras, the idiom of
    NumPyro's ``SVI.update``:

    - ``state``: the whole training state, a :class:`TeachingState` pytree
      (``numpyro_vmt.teaching.TeachingState``). ``energy``, ``vae``, ``buffer`` and
      ``iteration`` are read from it.
    - ``update(state, batch) -> (state, info)``: the pure, jitted iteration, usable
      inside the caller's own ``jit``/``scan``. It does no host-side check;
      :meth:`step` calls the same compiled function and commits the new state only
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
                 config: Optional[TeachingConfig] = None, *, rng: RNG = 0, **options: Any):
        if not isinstance(energy, self._energy_cls):
            raise TypeError(f"energy must be a numpyro_vmt.{self._energy_cls.__name__}, got {type(energy).__name__}")
        config = (config or TeachingConfig()).replace(**options) if options else (config or TeachingConfig())
        if config.init in ("vae", "generator"):
            if not isinstance(vae, self._vae_cls) or _conditional(vae) != _conditional(energy):
                raise ValueError(f"init={config.init!r} needs a numpyro_vmt.{self._vae_cls.__name__}, "
                                 f"got {type(vae).__name__}")
            if vae.event_shape != energy.event_shape:
                raise ValueError(f"VAE event shape {vae.event_shape} differs from the energy's {energy.event_shape}")
        else:
            vae = None
        self.config = config
        e_params, self._energy_static = eqx.partition(energy, eqx.is_inexact_array)
        leaves = jax.tree.leaves(e_params)
        if not leaves:
            raise ValueError("the energy model has no parameters to train")
        self.dtype = leaves[0].dtype
        key = as_key(rng)
        if key is None:
            raise ValueError("rng is required: pass a jax.random key or an int seed")
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)  # raw uint32 keys: plain arrays in the state and the file
        self.energy_optim, self.vae_optim = _optimizers(config, vae is not None)
        if vae is not None:
            v_params, self._vae_static = eqx.partition(vae, eqx.is_inexact_array)
            v_opt = self.vae_optim.init(v_params)
        else:
            v_params = self._vae_static = v_opt = None
        # Everything static the jitted iteration depends on; equal specs share one
        # compilation (equinox's static parts compare and hash by value).
        self._spec = _Spec(config, self._energy_static, self._vae_static)
        try:
            hash(self._spec)
        except TypeError as e:
            raise TypeError("the energy and VAE modules may hold only floating-point arrays (their "
                            f"parameters) and hashable static values: {e}") from e
        seed = key
        key, k_buffer = jax.random.split(key)
        buffer = (_uniform(self._spec, k_buffer, config.buffer_size, self.dtype)
                  if config.init == "persistent" else None)
        chains = _no_chains(self._spec, self.dtype) if config.correction else None
        self.state = TeachingState(e_params, v_params, self.energy_optim.init(e_params), v_opt,
                                   key, seed, buffer, jnp.asarray(0, jnp.int32), chains)

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
        (see :func:`numpyro_vmt.correction.independent_mh`); they are samples of
        ``exp(−E)/Z`` as far as the chains have mixed.
        """
        if mh_steps:
            return self._corrected(int(n), int(mh_steps), num_steps, rng)[0].position
        return self._sample(int(n), num_steps, rng)

    def _proposal(self, num_steps: Optional[int]):
        cfg = self.config
        vae = self.vae if cfg.init == "vae" else None
        num_steps = cfg.num_steps if num_steps is None else check_num_steps(num_steps)
        noise_scale = cfg.noise_scale if cfg.noise_scale > 0 else 1.0
        return vae, (cfg.step_size, num_steps, noise_scale, cfg.adjust)

    def _key(self, rng: RNG, salt: int) -> Array:
        key = as_key(rng)
        return jax.random.fold_in(jax.random.fold_in(self.state.seed, self.state.iteration), salt) if key is None else key

    def _corrected(self, n: int, mh_steps: int, num_steps: Optional[int], rng: RNG):
        vae, opts = self._proposal(num_steps)
        return correction.independent_mh(self._key(rng, 1), self.energy, vae, n, mh_steps, *opts,
                                         0, self.config.wide_proposal(), anneal=self.config.path_anneal)

    def log_partition(self, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None,
                      batch_size: int = 2000) -> Tuple[float, float]:
        r"""Estimate :math:`\log Z = \log\int e^{-E(x)}dx` and its standard error from proposal paths.

        The paths are this teacher's own proposals: the VAE's decoder with its
        observation noise (``init="vae"``), else the Gaussian over ``init_bounds``
        (every other ``init``), followed by ``num_steps`` Langevin steps (default: the
        configured ``K``; ``noise_scale=0`` is replaced by 1, a noise-free run has no
        density). See :func:`numpyro_vmt.correction.log_partition`: the log-mean-exp is
        biased *low*, so likelihoods from it are biased *high*, by an amount the
        standard error does not capture when the weights' ESS is small.
        """
        vae, opts = self._proposal(num_steps)
        return correction.log_partition(self._key(rng, 2), self.energy, vae, int(num_samples), *opts,
                                        0, self.config.wide_proposal(), batch_size,
                                        anneal=self.config.path_anneal)

    def log_prob(self, x: Any, num_samples: int = 10_000, rng: RNG = None, num_steps: Optional[int] = None
                 ) -> Tuple[np.ndarray, float]:
        """``log p(x) = −E(x) − log Ẑ`` per row of ``x`` (numpy), and the standard error of
        ``log Ẑ`` (shared by every row; see :meth:`log_partition` for the bias)."""
        x = self._as_batch(x, "x")
        log_z, se = self.log_partition(num_samples, rng, num_steps)
        return -self.energy.numpy_energy(np.asarray(x)) - log_z, se

    def _sample(self, n: int, num_steps: Optional[int], rng: RNG, ctx: Optional[Array] = None) -> Array:
        key = as_key(rng)
        if key is None:
            key = jax.random.fold_in(self.state.seed, self.state.iteration)
        if num_steps is None:
            num_steps = self.config.num_steps
        elif num_steps != 0:
            num_steps = check_num_steps(num_steps)
        x, diag = _sample_core(self._spec, self.state, key, n, int(num_steps), ctx)
        if diag is not None:
            _raise_if_diverged(jax.device_get(diag), n, self.config.step_size)
        return x

    # ------------------------------------------------------------------ training (host)
    def update(self, state: TeachingState, batch: Array) -> Tuple[TeachingState, TeachingInfo]:
        """The pure iteration: ``(state, batch) -> (new_state, info)``, jitted, no host check.

        ``state`` is not modified (JAX arrays are immutable); nothing on ``self``
        changes. A concrete ``batch`` is validated as in :meth:`step`; inside a
        user's ``jit``/``scan`` it is used as given.
        """
        if not any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(batch)):
            batch = self._as_batch(batch)
        new, info, _ = _update_core(self._spec, state, batch)
        return new, info

    def _as_batch(self, batch: Any, name: str = "batch") -> Array:
        return self._as_array(batch, name, self._energy_static.event_shape)

    def _as_array(self, batch: Any, name: str, event: tuple) -> Array:
        arr = np.asarray(batch)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"{name} must hold floating-point numbers, got dtype {arr.dtype}")
        if arr.ndim != len(event) + 1 or tuple(arr.shape[1:]) != event or arr.shape[0] == 0:
            raise ValueError(f"{name} must have shape (n, {', '.join(map(str, event))}), got {tuple(arr.shape)}")
        bad = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(1)
        if bad.any():
            raise ValueError(f"{name} has non-finite values in {int(bad.sum())} rows "
                             f"(first: row {int(np.flatnonzero(bad)[0])})")
        return jnp.asarray(batch, dtype=self.dtype)

    def _commit(self, new: TeachingState, info: TeachingInfo, diag: _Diagnosis, n: int) -> TeachingInfo:
        info_h, diag_h = jax.device_get((info, diag))
        _raise_if_diverged(diag_h, n, self.config.step_size)
        _check_finite("energy loss", info_h.loss)
        if self.vae_optim is not None:
            _check_finite("VAE loss", info_h.vae_loss)
        _check_finite("energy parameter gradient", info_h.energy_grad_norm)
        if self.vae_optim is not None:
            _check_finite("VAE parameter gradient", diag_h.vae_grad_norm)
        self.state = new
        return info_h

    def step(self, batch: Any) -> TeachingInfo:
        """One iteration on a data batch of shape ``(m, *event_shape)``; returns its diagnostics."""
        batch = self._as_batch(batch)
        new, info, diag = _update_core(self._spec, self.state, batch)
        self._commit(new, info, diag, self.config.num_samples or _split(batch)[1].shape[0])
        return info

    def fit(self, data: Any, num_iters: int = 1000, batch_size: int = 100, progress: bool = True,
            callback: Optional[Callable[["VariationalMCMCTeaching", TeachingInfo], None]] = None
            ) -> Dict[str, np.ndarray]:
        """Run ``num_iters`` iterations on minibatches drawn (with replacement) from ``data``.

        The minibatch indices are drawn from the training key inside the jitted
        iteration, so a saved and restored run continues exactly. Returns the
        history: one array per :class:`~vmt.api.TeachingInfo` field.
        ``callback(teacher, info)`` is called after every iteration.
        """
        data = self._as_batch(data, "data")
        if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 0:
            raise ValueError(f"num_iters must be a non-negative integer, got {num_iters!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = self.config.num_samples or batch_size
        rows = []
        bar = tqdm(range(num_iters), disable=not progress, desc="vmt", leave=False)
        for _ in bar:
            new, info, diag = _fit_core(self._spec, self.state, data, batch_size)
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
        """Restore :meth:`state_dict`; raises :class:`~vmt.errors.CheckpointError` on any mismatch.

        Each entry may be the pytree :meth:`state_dict` returns or the list of its
        leaves in flattening order; shapes and dtypes must match this object's.
        """
        diff = config_mismatch(state.get("config", {}), self.config.to_dict())
        if diff:
            raise CheckpointError(f"checkpoint was written with another configuration: {diff}")
        cur = self.state
        try:
            restored = {f: restore_leaves(f, state[f], getattr(cur, f))
                        for f in ("energy", "vae", "energy_optim", "vae_optim", "rng", "seed")}
        except KeyError as e:
            raise CheckpointError(f"checkpoint does not match these networks: missing entry {e}") from e
        except ValueError as e:
            raise CheckpointError(f"checkpoint does not match these networks: {e}") from e
        buffer = None
        if cur.buffer is not None:
            given = state.get("buffer")
            given = given[0] if isinstance(given, (list, tuple)) and len(given) == 1 else given
            if given is None or tuple(np.shape(given)) != cur.buffer.shape:
                raise CheckpointError("checkpoint's replay buffer does not match this configuration")
            buffer = jnp.asarray(given, dtype=cur.buffer.dtype)
        iteration = state.get("iteration")
        iteration = iteration[0] if isinstance(iteration, (list, tuple)) and iteration else iteration
        if iteration is None or np.shape(iteration) != ():
            raise CheckpointError(f"checkpoint has no valid iteration count: {iteration!r}")
        chains = None
        if cur.chains is not None:
            given = jax.tree.leaves(state.get("chains"))
            event = cur.chains.position.shape[1:]
            if (len(given) != 4 or tuple(np.shape(given[0])[1:]) != event
                    or any(np.shape(a) != (np.shape(given[0])[0],) for a in given[1:])):
                raise CheckpointError("checkpoint's persistent chains (correction='mh') do not match this configuration")
            chains = correction.Path(*(jnp.asarray(a, dtype=self.dtype) for a in given))
        self.state = TeachingState(**restored, buffer=buffer, iteration=jnp.asarray(int(iteration), jnp.int32),
                                   chains=chains)

    def save(self, path: Union[str, os.PathLike], **metadata: Any) -> None:
        """Write a checkpoint atomically (an interrupted save leaves the old file intact).

        The file is an ``.npz`` archive (no pickle): a JSON header (format, version,
        backend, configuration, ``metadata``, leaf shapes and dtypes) and the leaves
        of :class:`TeachingState`. ``metadata`` must be JSON-serialisable.
        """
        write_checkpoint(path, self.state, self.config.to_dict(), metadata)

    def load(self, path: Union[str, os.PathLike]) -> Dict[str, Any]:
        """Restore a checkpoint written by :meth:`save` into this object; returns its metadata.

        The object must have been built with the same configuration and networks.
        """
        state, metadata = read_state(path)
        self.load_state_dict(state)
        return metadata


# ---------------------------------------------------------------------- the jitted core
class _Spec(NamedTuple):
    """The static part of an iteration: options and the networks' non-array parts."""

    config: TeachingConfig
    energy: Any
    vae: Any


def _optimizers(config: TeachingConfig, with_vae: bool):
    b1, b2 = config.betas

    def lr(value):  # the same cosine decay as TeachingConfig.lr_factor
        if config.lr_decay_steps is None:
            return value
        return optax.cosine_decay_schedule(value, config.lr_decay_steps, alpha=config.lr_final_ratio)

    adam = optax.adam(lr(config.energy_lr), b1=b1, b2=b2)
    energy_optim = optax.chain(optax.clip_by_global_norm(config.grad_clip), adam) if config.grad_clip else adam
    return energy_optim, (optax.adam(lr(config.vae_lr), b1=b1, b2=b2) if with_vae else None)


def _uniform(spec: _Spec, key: Array, n: int, dtype) -> Array:
    low, high = spec.config.init_bounds
    u = jax.random.uniform(key, (n,) + spec.energy.event_shape, dtype=dtype)
    return low + (high - low) * u


def _initial(spec: _Spec, state: TeachingState, n: int, key: Array, training: bool, ctx: Optional[Array] = None):
    """Starting points ``x⁽⁰⁾`` of ``n`` chains, plus what the update needs (``z`` or buffer slots)."""
    cfg = spec.config
    dtype = jax.tree.leaves(state.energy)[0].dtype
    if cfg.init in ("vae", "generator"):
        vae = eqx.combine(state.vae, spec.vae)
        m = cfg.num_noise_chains(n) if training else 0
        k_z, k_u = jax.random.split(key) if m else (key, None)
        z = vae.sample_latent(n - m, k_z)
        x0 = jax.lax.stop_gradient(_bind(vae.decode, None if ctx is None else ctx[:n - m])(z))
        return (jnp.concatenate([x0, _uniform(spec, k_u, m, x0.dtype)]) if m else x0), z
    if cfg.init == "noise":
        return _uniform(spec, key, n, dtype), None
    k_idx, k_reset, k_noise = jax.random.split(key, 3)
    idx = jax.random.randint(k_idx, (n,), 0, state.buffer.shape[0])
    x0 = state.buffer[idx]
    if training:
        reset = jax.random.uniform(k_reset, (n,), dtype=dtype) < cfg.reinit_prob
        mask = reset.reshape((-1,) + (1,) * len(spec.energy.event_shape))
        x0 = jnp.where(mask, _uniform(spec, k_noise, n, dtype), x0)
    return x0, idx


def _revise(spec: _Spec, energy: EnergyModel, x0: Array, key: Array, num_steps: int):
    """The Langevin revision, and the counts the host checks before using it."""
    cfg = spec.config
    start = init(x0, energy)
    state, info = scan_steps(key, start, energy, cfg.step_size, cfg.noise_scale, cfg.adjust, num_steps)
    bad_any = info.is_divergent.any(1)
    diag = _Diagnosis(
        (~jnp.isfinite(_flat_sum(x0))).sum(),
        (~(jnp.isfinite(start.energy) & jnp.isfinite(_flat_sum(start.grad)))).sum(),
        info.is_divergent.any(0).sum(),
        jnp.where(bad_any.any(), jnp.argmax(bad_any), -1),
        jnp.zeros((), x0.dtype),
    )
    return state, info, diag


@partial(jax.jit, static_argnums=(0, 3, 4))
def _sample_core(spec: _Spec, state: TeachingState, key: Array, n: int, num_steps: int, ctx: Optional[Array]):
    k_init, k_run = jax.random.split(key)
    x0, _ = _initial(spec, state, n, k_init, training=False, ctx=ctx)
    if num_steps == 0:
        return x0, None
    energy = _bind(eqx.combine(state.energy, spec.energy), ctx)
    lstate, _, diag = _revise(spec, energy, x0, k_run, num_steps)
    return lstate.position, diag


@partial(jax.jit, static_argnums=0)
def _update_core(spec: _Spec, state: TeachingState, batch: Array):
    """One iteration: ``(state, batch) -> (new_state, info, diagnosis)``."""
    cfg = spec.config
    energy_optim, vae_optim = _optimizers(cfg, spec.vae is not None)
    rng, k_init, k_run, k_vae = jax.random.split(state.rng, 4)
    ctx, batch = _split(batch)
    n = cfg.num_samples or batch.shape[0]
    energy = _bind(eqx.combine(state.energy, spec.energy), ctx)
    chains, minfo = state.chains, None
    if cfg.correction:
        if ctx is not None:
            raise NotImplementedError("correction='mh' is not implemented for the conditional teacher")
        vae = None if spec.vae is None else eqx.combine(state.vae, spec.vae)
        chains, minfo = correction.update_chains(k_init, state.chains, energy, vae, n, cfg)
        x_tilde, aux = jax.lax.stop_gradient(chains.position), None
        zero = jnp.zeros((), jnp.int32)
        diag = _Diagnosis(zero, zero, zero, zero - 1, jnp.zeros((), x_tilde.dtype))
        nan = jnp.full((), jnp.nan, x_tilde.dtype)
        langevin_acc, langevin_gnorm = nan, nan
    else:
        x0, aux = _initial(spec, state, n, k_init, training=True, ctx=ctx)
        lstate, sinfo, diag = _revise(spec, energy, x0, k_run, cfg.num_steps)
        x_tilde = jax.lax.stop_gradient(lstate.position)
        langevin_acc, langevin_gnorm = sinfo.acceptance_rate.mean(), sinfo.grad_norm[-1].mean()

    def energy_loss(params):
        model = _bind(eqx.combine(params, spec.energy), ctx)
        e_data, e_samp = model(batch), model(x_tilde)
        loss = e_data.mean() - e_samp.mean()
        if cfg.energy_reg:
            loss = loss + cfg.energy_reg * ((e_data ** 2).mean() + (e_samp ** 2).mean())
        return loss, (e_data, e_samp)

    (loss, (e_data, e_samp)), e_grad = jax.value_and_grad(energy_loss, has_aux=True)(state.energy)
    gnorm = optax.tree.norm(e_grad)
    updates, e_opt = energy_optim.update(e_grad, state.energy_optim, state.energy)
    new_energy = optax.apply_updates(state.energy, updates)

    if vae_optim is not None:
        def vae_loss_fn(params):
            vae = eqx.combine(params, spec.vae)
            if cfg.init == "vae":
                return _bind(vae.elbo_loss, ctx)(x_tilde, k_vae)
            k = aux.shape[0]  # only the chains the generator started (see noise_fraction)
            return _bind(vae.joint_loss, None if ctx is None else ctx[:k])(x_tilde[:k], aux)

        vae_loss, v_grad = jax.value_and_grad(vae_loss_fn)(state.vae)
        diag = diag._replace(vae_grad_norm=optax.tree.norm(v_grad))
        updates, v_opt = vae_optim.update(v_grad, state.vae_optim, state.vae)
        new_vae = optax.apply_updates(state.vae, updates)
    else:
        vae_loss, new_vae, v_opt = jnp.asarray(jnp.nan, loss.dtype), None, None

    buffer = state.buffer.at[aux].set(x_tilde) if cfg.init == "persistent" else state.buffer
    new = TeachingState(new_energy, new_vae, e_opt, v_opt, rng, state.seed, buffer, state.iteration + 1, chains)
    nan = jnp.full((), jnp.nan, loss.dtype)
    mh = (nan, nan, nan) if minfo is None else (minfo.acceptance_rate, minfo.weight_ess, minfo.crossing_rate)
    info = TeachingInfo(loss, e_data.mean(), e_samp.mean(), vae_loss, langevin_acc, langevin_gnorm, gnorm, *mh)
    return new, info, diag


def _no_chains(spec: _Spec, dtype) -> correction.Path:
    """Zero persistent chains: the first iteration of ``correction="mh"`` sets their number."""
    empty = jnp.zeros((0,), dtype)
    return correction.Path(jnp.zeros((0,) + spec.energy.event_shape, dtype), empty, empty, empty)


@partial(jax.jit, static_argnums=(0, 3))
def _fit_core(spec: _Spec, state: TeachingState, data: Array, batch_size: int):
    """A minibatch drawn (with replacement) from the training key, then :func:`_update_core`."""
    rng, k_idx = jax.random.split(state.rng)
    idx = jax.random.randint(k_idx, (batch_size,), 0, _split(data)[1].shape[0])
    return _update_core(spec, state._replace(rng=rng), jax.tree.map(lambda a: a[idx], data))


def _bind(fn: Callable, ctx: Optional[Array]) -> Callable:
    """``fn``, or for the conditional teacher ``fn`` with ``ctx`` as its second argument.

    ``E(y | x)``, ``g(z, x)``, ``elbo_loss(y, x, rng)`` and ``joint_loss(y, x, z)`` all
    take the conditioning input second, so one hook serves them all.
    """
    return fn if ctx is None else (lambda first, *rest: fn(first, ctx, *rest))


def _split(batch: Any):
    """A validated batch as ``(ctx, data)``: ``ctx`` is ``None`` unless it is a conditional pair."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (None, batch)


def _conditional(model: Any) -> bool:
    return getattr(model, "cond_shape", None) is not None


def _raise_if_diverged(diag: _Diagnosis, n: int, step_size: float) -> None:
    if diag.bad_start:
        raise ValueError(f"initial position is non-finite in {int(diag.bad_start)} of {n} chains")
    if diag.bad_start_energy:
        raise ValueError(f"energy or its gradient is non-finite at the initial position of "
                         f"{int(diag.bad_start_energy)} of {n} chains")
    if diag.num_divergent:
        raise DivergenceError(divergence_message(int(diag.first_divergent), int(diag.num_divergent), n, step_size))


def _check_finite(what: str, value: Any) -> None:
    if not np.isfinite(value).all():
        raise DivergenceError(f"{what} is not finite ({float(value):g}); no parameter was updated")
