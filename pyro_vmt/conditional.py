r"""Conditional variational MCMC teaching (PyTorch / Pyro): supervised learning of ``p(y | x)``.

The conditional form of variational MCMC teaching (Xie, Zheng & Li, "Learning
Energy-Based Model with Variational Auto-Encoder as Amortized Sampler", AAAI 2021,
https://arxiv.org/abs/2012.14936, whose experiments include supervised
image-to-image translation; the conditional cooperative scheme is Xie et al.,
"Cooperative training of fast thinking initializer and slow thinking solver for
conditional learning", arXiv:1902.02812). A conditional EBM

$$
p_\theta(y \mid x) = \frac{\exp(-E_\theta(y \mid x))}{Z_\theta(x)}, \qquad
E_\theta(y \mid x) = U_\theta(y, x) + \frac{\lVert y \rVert^2}{2 s^2},
$$

and a conditional VAE $z \sim \mathcal N(0, I)$,
$y \mid z, x \sim \mathcal N(g_\alpha(z, x), \sigma^2 I)$,
$q_\phi(z \mid y, x) = \mathcal N(\mu_\phi(y, x), \operatorname{diag} s_\phi(y, x)^2)$
are trained on pairs $(x_j, y_j)$ exactly as the unconditional algorithm:

1. $z_j \sim \mathcal N(0, I)$, $y^{(0)}_j = g_\alpha(z_j, x_j)$;
2. $K$ Langevin steps on $y$ with $x_j$ fixed,
   $y^{(k+1)} = y^{(k)} - \tfrac{\delta^2}{2}\nabla_y E_\theta(y^{(k)} \mid x_j) + \delta\sigma\xi_k$;
3. energy step on $\frac1m\sum_j E_\theta(y_j \mid x_j) - E_\theta(\tilde y_j \mid x_j)$, the
   gradient of the conditional log-likelihood
   $\nabla_\theta \log p_\theta(y \mid x) = -\nabla_\theta E_\theta(y \mid x)
   + \mathbb E_{p_\theta(y' \mid x)}[\nabla_\theta E_\theta(y' \mid x)]$ with one negative sample per pair;
4. one SVI step of the conditional VAE on the ELBO with $(x_j, \tilde y_j)$ observed.

[`ConditionalVariationalMCMCTeaching`][pyro_vmt.conditional.ConditionalVariationalMCMCTeaching] is [`VariationalMCMCTeaching`][pyro_vmt.teaching.VariationalMCMCTeaching]
with the conditioning input passed through its hooks (see [`vmt.core.batch.with_context()`][vmt.core.batch.with_context]).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.nn import pyro_method
from torch import nn

from pyro_vmt import correction, mh
from pyro_vmt.energy import _FlatSite
from pyro_vmt.given import given
from pyro_vmt.rng import RNG, as_rng
from pyro_vmt.nets import MLP
from pyro_vmt.teaching import TeachingInfo, VariationalMCMCTeaching
from pyro_vmt.update import keyed
from pyro_vmt.vae import VAE, _LocalParams, reparameterised_elbo, rng_for_pyro
from vmt.core.batch import batch_stream, check_conditional_config, shape_text, split_pair
from vmt.core.checks import as_count
from vmt.core.config import TeachingConfig

__all__ = ["ConditionalEnergyModel", "ConditionalVAE", "ConditionalVariationalMCMCTeaching",
           "conditional_networks"]

Tensor = torch.Tensor


def _shape(name: str, shape: Sequence[int]) -> Tuple[int, ...]:
    out = tuple(int(d) for d in shape)
    if not out or any(d < 1 for d in out):
        raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {shape!r}")
    return out


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _shape_of(t: Any):
    return tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__


class ConditionalEnergyModel(nn.Module):
    r"""Wrap ``net`` into ``E(y | x)``, one scalar per pair.

    $$
    E_\theta(y \mid x) = U_\theta(y, x) + \lVert y \rVert^2 / (2 s^2)
    $$

    Parameters
    ----------
    net : torch.nn.Module
        With ``concat=True``: maps the concatenation ``[flatten(y), flatten(x)]``,
        shape ``(n, prod(event_shape) + prod(cond_shape))``, to ``(n,)`` or ``(n, 1)``.
        With ``concat=False``: called as ``net(y, x)`` on the unflattened batches.
    event_shape : sequence of int
        Shape of one ``y`` (what Langevin dynamics moves).
    cond_shape : sequence of int
        Shape of one conditioning input ``x``.
    ref_scale : float, optional
        Scale ``s`` of the Gaussian reference term on ``y``; ``None`` for none.
    concat : bool
        How ``net`` is called (see ``net``).
    """

    def __init__(self, net: nn.Module, event_shape: Sequence[int], cond_shape: Sequence[int],
                 ref_scale: Optional[float] = None, concat: bool = True):
        super().__init__()
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        self.net = net
        self.event_shape = _shape("event_shape", event_shape)
        self.cond_shape = _shape("cond_shape", cond_shape)
        if ref_scale is not None and not (isinstance(ref_scale, (int, float)) and math.isfinite(ref_scale)
                                          and ref_scale > 0):
            raise ValueError(f"ref_scale must be a positive finite number or None, got {ref_scale!r}")
        self.ref_scale = None if ref_scale is None else float(ref_scale)
        self.concat = bool(concat)

    def forward(self, y: Tensor, x: Tensor) -> Tensor:
        """Energies ``E(y | x)``, shape ``(n,)``, for ``y`` ``(n, *event_shape)`` and ``x`` ``(n, *cond_shape)``."""
        if not isinstance(y, Tensor) or y.ndim < 1 or tuple(y.shape[1:]) != self.event_shape:
            raise ValueError(f"ConditionalEnergyModel expects y of shape {shape_text(self.event_shape)}, "
                             f"got {_shape_of(y)}")
        if not isinstance(x, Tensor) or x.ndim < 1 or tuple(x.shape[1:]) != self.cond_shape:
            raise ValueError(f"ConditionalEnergyModel expects x of shape {shape_text(self.cond_shape)}, "
                             f"got {_shape_of(x)}")
        n = y.shape[0]
        if x.shape[0] != n:
            raise ValueError(f"y has {n} rows but x has {x.shape[0]}")
        out = self.net(torch.cat([_flat(y), _flat(x).to(y.dtype)], 1)) if self.concat else self.net(y, x)
        if out.shape == (n, 1):
            out = out[:, 0]
        if out.shape != (n,):
            raise ValueError(f"the energy network must return one scalar per sample, shape ({n},) or ({n}, 1); "
                             f"got {tuple(out.shape)} for {n} pairs")
        if self.ref_scale is not None:
            out = out + _flat(y).pow(2).sum(1) / (2 * self.ref_scale ** 2)
        return out

    def potential(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """The potential ``y ↦ E(y | x)`` for a fixed batch ``x`` (for [`Langevin`][pyro_vmt.langevin.Langevin])."""
        return lambda y: self(y, x)

    @torch.no_grad()
    def numpy_energy(self, y, x, batch_size: int = 65536):
        """``E(y | x)`` of numpy arrays (one row each) as a float64 numpy array (metrics, plots)."""
        p = next(self.parameters(), None)
        like = dict(dtype=p.dtype, device=p.device) if p is not None else {}
        y, x = np.asarray(y), np.asarray(x)
        out = [self(torch.as_tensor(y[i:i + batch_size], **like), torch.as_tensor(x[i:i + batch_size], **like))
               .cpu().double().numpy() for i in range(0, len(y), batch_size)]
        return np.concatenate(out) if out else np.zeros(0)

    def model(self, x: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """Pyro model of ``p(y | x) ∝ exp(−E(y | x))``: an improper flat site ``"y"`` plus a factor.

        ``x`` is an ordinary argument: a batch ``(n, *cond_shape)`` gives ``n``
        independent ``y`` inside ``pyro.plate("data", n)``; a single ``x`` of shape
        ``cond_shape`` gives one ``y`` (or one per chain of a vectorised kernel). A given
        ``y`` is observed: the model's log density is then the unnormalised ``−E(y | x)``.
        Sampling ``y`` with ``pyro.infer.MCMC`` works as for `EnergyModel.model()`.
        """
        support = _FlatSite(self.event_shape, like=next(self.parameters(), None))  # see EnergyModel.model
        if isinstance(x, Tensor) and tuple(x.shape) == self.cond_shape:
            y = pyro.sample("y", support, obs=y)  # any batch dims of y (a kernel's chains) share x
            flat = y.reshape((-1,) + tuple(self.event_shape))
            energy = self(flat, x.expand((flat.shape[0],) + tuple(self.cond_shape)))
            pyro.factor("energy", -energy.reshape(y.shape[:y.dim() - len(self.event_shape)]))
            return y
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.cond_shape:
            raise ValueError(f"ConditionalEnergyModel expects x of shape {shape_text(self.cond_shape)}, "
                             f"got {_shape_of(x)}")
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", support, obs=y)
            pyro.factor("energy", -self(y, x))
        return y


class ConditionalVAE(VAE):
    r"""Conditional Gaussian VAE with ``model(y, x)``/``guide(y, x)`` for Pyro's SVI.

    $$
    z \sim \mathcal N(0, I), \quad y \mid z, x \sim \mathcal N(g_\alpha([z, x]), \sigma^2),
    \quad q_\phi(z \mid y, x) = \mathcal N(\mu_\phi([y, x]), \operatorname{diag} s_\phi([y, x])^2),
    $$

    the ELBO $\mathbb E_q[\log p_\alpha(y \mid z, x)] - \beta\,\mathrm{KL}(q_\phi(z \mid y, x)\,\|\,p(z))$.
    A [`VAE`][pyro_vmt.vae.VAE] whose encoder reads ``[flatten(y), flatten(x)]`` and
    whose decoder reads ``[z, flatten(x)]``; parameters are handled exactly as
    there (``pyro_method``: a user's plain ``SVI(cvae.model, cvae.guide, ...)`` trains
    the weights; the library's `elbo_loss()` uses module-local parameters).

    Parameters
    ----------
    encoder : torch.nn.Module
        ``(n, prod(event_shape) + prod(cond_shape)) -> (n, 2·latent_dim)``.
    decoder : torch.nn.Module
        ``(n, latent_dim + prod(cond_shape)) -> (n, prod(event_shape))``.
    latent_dim : int
    event_shape, cond_shape : sequence of int
        Shapes of one ``y`` and one ``x``.
    obs_scale, kl_weight, name
        As for [`VAE`][pyro_vmt.vae.VAE].
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, event_shape: Sequence[int],
                 cond_shape: Sequence[int], obs_scale: Optional[float] = None, kl_weight: float = 1.0,
                 name: str = ""):
        super().__init__(encoder, decoder, latent_dim, event_shape, obs_scale, kl_weight, name)
        self.cond_shape = _shape("cond_shape", cond_shape)

    def encode(self, y: Tensor, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Location and scale of ``q(z | y, x)``, each ``(n, latent_dim)``."""
        return super().encode(torch.cat([_flat(y), _flat(x).to(y.dtype)], 1))

    def decode(self, z: Tensor, x: Tensor) -> Tensor:
        """Decoder mean ``g(z, x)``, shape ``(n, *event_shape)``."""
        return super().decode(torch.cat([z, _flat(x).to(z.dtype)], 1))

    def _inputs(self, y, x, num_samples, who: str):
        """Check ``(y, x)``; a single ``x`` is repeated for every row. Returns ``(y, x, n)``."""
        if x is None:
            raise ValueError(f"ConditionalVAE.{who} needs the conditioning input x")
        single = isinstance(x, Tensor) and tuple(x.shape) == self.cond_shape
        if not isinstance(x, Tensor) or not (single or tuple(x.shape[1:]) == self.cond_shape):
            raise ValueError(f"ConditionalVAE expects x of shape {shape_text(self.cond_shape)} or "
                             f"{tuple(self.cond_shape)}, got {_shape_of(x)}")
        if y is not None and (not isinstance(y, Tensor) or y.ndim < 1 or tuple(y.shape[1:]) != self.event_shape):
            raise ValueError(f"ConditionalVAE expects y of shape {shape_text(self.event_shape)}, got {_shape_of(y)}")
        n = y.shape[0] if y is not None else (int(num_samples or 1) if single else x.shape[0])
        if single:
            x = x.unsqueeze(0).expand((n,) + self.cond_shape)
        if x.shape[0] != n:
            raise ValueError(f"y has {n} rows but x has {x.shape[0]}")
        if num_samples is not None and num_samples != n:
            raise ValueError(f"num_samples={num_samples!r} differs from the {n} rows of {'x' if y is None else 'y'}")
        return y, x, n

    @pyro_method
    def model(self, y: Optional[Tensor] = None, x: Optional[Tensor] = None,
              num_samples: Optional[int] = None) -> Tensor:
        """``z ~ N(0, I)``, ``y ~ N(g(z, x), σ²)``; observe ``y`` if given, else draw one per row of ``x``."""
        y, x, n = self._inputs(y, x, num_samples, "model")
        return self._generate(n, "y", y, lambda z: self.decode(z, x))

    @pyro_method
    def guide(self, y: Optional[Tensor] = None, x: Optional[Tensor] = None,
              num_samples: Optional[int] = None) -> Tensor:
        """``z ~ q(z | y, x)``, the amortised posterior."""
        if y is None:
            raise ValueError("ConditionalVAE.guide needs data y")
        y, x, n = self._inputs(y, x, num_samples, "guide")
        return self._posterior(*self.encode(y, x))

    @torch.no_grad()
    def sample(self, x: Tensor, rng: RNG) -> Tensor:
        """Decoder means ``g(z, x)``, one prior draw ``z`` per row of ``x`` (VMT's starting points)."""
        _, x, n = self._inputs(None, x, None, "sample")
        return self.decode(self.sample_latent(n, rng), x)

    def elbo_loss(self, y: Tensor, x: Tensor, rng: RNG) -> Tensor:
        """Negative ELBO per pair, averaged over the batch (differentiable).

        As [`pyro_vmt.VAE.elbo_loss()`][pyro_vmt.vae.VAE.elbo_loss]: the ELBO of Pyro's ``Trace_ELBO`` on `model()` /
        `guide()`, ``z`` drawn from ``rng``'s state lent to torch's RNG,
        module-local parameters (the global Pyro parameter store is not touched).
        """
        gen = as_rng(rng, y.device if isinstance(y, Tensor) else None)
        if gen is None:
            raise ValueError("rng is required: pass a torch.Generator or an int seed")
        y, x, n = self._inputs(y, x, None, "elbo_loss")
        with rng_for_pyro(gen, y.device), _LocalParams():
            return -reparameterised_elbo(self.model, self.guide, y, x) / n

    def joint_loss(self, y: Tensor, x: Tensor, z: Tensor) -> Tensor:
        """``−log p(y, z | x)`` per pair, averaged, for a known ``z`` (CoopNets' generator regression)."""
        y, x, n = self._inputs(y, x, None, "joint_loss")
        with _LocalParams(), pyro.validation_enabled(False):
            trace = poutine.trace(poutine.condition(self.model, data={"z": z})).get_trace(y, x)
            return -trace.log_prob_sum() / n


class ConditionalVariationalMCMCTeaching(VariationalMCMCTeaching):
    """Train a [`ConditionalEnergyModel`][pyro_vmt.conditional.ConditionalEnergyModel] with a [`ConditionalVAE`][pyro_vmt.conditional.ConditionalVAE] on pairs ``(x, y)``.

    The same algorithm, options, diagnostics and checkpoints as
    [`VariationalMCMCTeaching`][pyro_vmt.teaching.VariationalMCMCTeaching] (whose code runs it); batches are pairs
    ``(x, y)`` of arrays with one row per example, and every pair gets one Langevin
    chain on ``y`` with its own ``x`` fixed. ``init`` may be ``"vae"`` (variational
    MCMC teaching), ``"noise"`` or ``"generator"``; ``num_samples`` must be ``None``.

    With ``correction="mh"`` (exact teaching) the teacher keeps one persistent chain
    per training row, as in [`numpyro_vmt.conditional.ConditionalVariationalMCMCTeaching`][numpyro_vmt.conditional.ConditionalVariationalMCMCTeaching]:
    the minibatch's rows (drawn without replacement) propose paths from the
    conditional VAE at their own ``x_j`` and accept them by Metropolis–Hastings
    ([`pyro_vmt.given`][pyro_vmt.given]'s bound energy and VAE); training then needs
    `fit()` on arrays and ``path_refresh=True``.

    Examples
    --------
    >>> import numpy as np
    >>> from pyro_vmt import ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching
    >>> from pyro_vmt.conditional import conditional_networks
    >>> e_net, enc, dec = conditional_networks((1,), (1,), latent_dim=1, hidden=(16,))
    >>> teacher = ConditionalVariationalMCMCTeaching(
    ...     ConditionalEnergyModel(e_net, (1,), (1,)), ConditionalVAE(enc, dec, 1, (1,), (1,)),
    ...     rng=0, step_size=0.05, num_steps=5)
    >>> x = np.linspace(0, 1, 50, dtype=np.float32)[:, None]
    >>> history = teacher.fit((x, 2 * x), num_iters=2, batch_size=10, progress=False)
    >>> teacher.sample(x[:3]).shape
    torch.Size([3, 1])
    """

    _energy_cls, _vae_cls = ConditionalEnergyModel, ConditionalVAE

    def __init__(self, energy: ConditionalEnergyModel, vae: Optional[ConditionalVAE] = None,
                 config: Optional[TeachingConfig] = None, *, rng: RNG = 0, mesh: Any = None, **options: Any):
        super().__init__(energy, vae, config, rng=rng, mesh=mesh, **options)
        check_conditional_config(self.config)
        if self.vae is not None and self.vae.cond_shape != energy.cond_shape:
            raise ValueError(f"VAE conditioning shape {self.vae.cond_shape} differs from the energy's "
                             f"{energy.cond_shape}")
        if self.config.correction and mesh is not None:
            raise NotImplementedError("correction='mh' with the conditional teacher on a mesh is not implemented: "
                                      "its chains, one per training row, are not split over the devices")
        if self.config.correction and not self.config.path_refresh:
            raise ValueError("correction='mh' with the conditional teacher needs path_refresh=True: a row's chain "
                             "is revisited only every n/m iterations, so a stale path term would be many updates old")

    def _as_batch(self, batch: Any, name: str = "batch", finite: bool = True) -> Tuple[Tensor, Tensor]:
        x, y = split_pair(batch, name)
        x = self._as_array(x, f"{name} x", self.energy.cond_shape, finite)
        y = self._as_array(y, f"{name} y", self.energy.event_shape, finite)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{name}: x has {x.shape[0]} rows but y has {y.shape[0]}")
        return x, y

    def sample(self, x: Any, num_steps: Optional[int] = None, rng: RNG = None, mh_steps: int = 0) -> Tensor:
        """One ``y`` per row of ``x`` (repeat a row for several): the configured start, then Langevin.

        ``num_steps=0`` returns the starting points (the conditional VAE's own
        samples). Without ``rng`` the draw is seeded from the training RNG's seed and
        the iteration count, so it is reproducible and leaves training unaffected.
        ``mh_steps > 0``: exact draws of ``p(y | x)`` as far as the chains have mixed,
        one independence-sampler chain per row on whole proposal paths at that row's ``x``.
        """
        x = self._as_array(x, "x", self.energy.cond_shape)
        if mh_steps:
            vae, opts = self._proposal(num_steps)
            path, _ = mh.independent_mh(self._generator(rng, 1), *given(self.energy, vae, x), x.shape[0],
                                        as_count("mh_steps", mh_steps), *opts, 0, self.config.wide_proposal(),
                                        anneal=self.config.path_anneal, local_steps=self.config.local_steps)
            return path.position
        return self._sample(x.shape[0], num_steps, rng, ctx=x)

    def step(self, batch: Any) -> TeachingInfo:
        """One iteration on a pair ``(x, y)`` of batches with ``m`` rows each; returns its diagnostics."""
        return super().step(batch)

    def fit(self, data: Any, num_iters: int = 1000, batch_size: int = 100, progress: bool = True,
            callback: Optional[Callable[["ConditionalVariationalMCMCTeaching", TeachingInfo], None]] = None
            ) -> Dict[str, np.ndarray]:
        """Run ``num_iters`` iterations on minibatches of pairs drawn (with replacement) from ``data = (x, y)``.

        Returns the history: one array per [`TeachingInfo`][vmt.core.api.TeachingInfo] field.
        With ``correction="mh"`` the first call starts one chain per row of ``data``.
        """
        if batch_stream(data) is None and keyed(self.config, data):
            self._start_row_chains(self._as_batch(data, "data"))
        return super().fit(data, num_iters, batch_size, progress, callback)

    def _start_row_chains(self, data: Tuple[Tensor, Tensor]) -> None:
        """One proposal path per training row, the chains' first states (once per data set)."""
        x = data[0]
        have, n = (0 if self.chains is None else self.chains.position.shape[0]), x.shape[0]
        if have == n:
            return
        if have:
            raise ValueError(f"this teacher keeps one chain per row of the {have} training pairs it was first "
                             f"fitted on (correction='mh'); fit() got {n} pairs")
        cfg = self.config
        vae, opts = self._proposal(None)
        m = n if vae is None else cfg.num_noise_chains(n)
        self.chains = correction.propose(self._generator(None, 3), *given(self.energy, vae, x), n, *opts, m,
                                         cfg.wide_proposal(), cfg.path_anneal)


def conditional_networks(event_shape: Sequence[int], cond_shape: Sequence[int], latent_dim: int,
                         hidden: Sequence[int] = (128, 128), rng: int = 0) -> Tuple[nn.Module, nn.Module, nn.Module]:
    """``(energy_net, encoder, decoder)`` MLPs for ``y`` of ``event_shape`` given ``x`` of ``cond_shape``.

    Energy ``[y, x] -> 1``, encoder ``[y, x] -> 2·latent_dim``, decoder ``[z, x] -> y``,
    initialised from seed ``rng`` on a fork of torch's global RNG (left as it was).
    The JAX backend builds the same layers (``numpyro_vmt.conditional``).
    """
    dy, dx = math.prod(int(d) for d in event_shape), math.prod(int(d) for d in cond_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(rng)
        return MLP(dy + dx, 1, hidden), MLP(dy + dx, 2 * latent_dim, hidden), MLP(latent_dim + dx, dy, hidden)
