r"""Variational auto-encoder as a Pyro model + guide (the amortised sampler of VMT).

Generative model and inference network:

$$
z \sim \mathcal N(0, I_d), \qquad x \mid z \sim \mathcal N\big(g_\alpha(z), \operatorname{diag}(\sigma^2)\big),
\qquad q_\phi(z \mid x) = \mathcal N\big(\mu_\phi(x), \operatorname{diag}(s_\phi(x)^2)\big),
$$

trained by maximising the ELBO
$\mathbb E_q[\log p_\alpha(x \mid z)] - \beta\,\mathrm{KL}(q_\phi(z \mid x)\,\|\,p(z))$
(``β = kl_weight``). In variational MCMC teaching (Xie, Zheng & Li, AAAI 2021,
https://arxiv.org/abs/2012.14936) the observed ``x`` are the Langevin-revised
samples and the sampler's starting points are decoder means ``g_α(z)``.

[`VAE.model()`][pyro_vmt.vae.VAE.model] and [`VAE.guide()`][pyro_vmt.vae.VAE.guide] are ``pyro_method``s of a ``PyroModule``:
in a user's plain ``pyro.infer.SVI(vae.model, vae.guide, optim, Trace_ELBO())``
script the encoder and decoder weights are registered as Pyro parameters and
trained; inside the library ([`VAE.elbo_loss()`][pyro_vmt.vae.VAE.elbo_loss]) the module's own parameters
are used, trained with ``torch.optim``, and the global parameter store is never
touched.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, Sequence, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyro_vmt.rng import RNG, as_rng

__all__ = ["VAE", "reparameterised_elbo"]


class VAE(PyroModule):
    """Gaussian VAE with ``model``/``guide`` for Pyro's SVI.

    Parameters
    ----------
    encoder : torch.nn.Module
        ``(n, *event_shape) -> (n, 2·latent_dim)``: location and pre-softplus scale of q(z | x).
    decoder : torch.nn.Module
        ``(n, latent_dim) -> (n, prod(event_shape))``: the mean ``g(z)``.
    latent_dim : int
    event_shape : sequence of int
    obs_scale : float or None
        Fixed observation standard deviation ``σ``, or ``None`` to learn one per data
        dimension, ``σ = exp(log_obs_scale)``, initialised at 1.
    kl_weight : float
        ``β``, the weight of the KL term (scales the ``"z"`` site in model and guide).
    name : str
        Prefix of the Pyro parameter names (two VAEs in one param store need two names).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int,
                 event_shape: Sequence[int], obs_scale: Optional[float] = None,
                 kl_weight: float = 1.0, name: str = ""):
        super().__init__(name)
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = int(latent_dim)
        self.event_shape = tuple(int(d) for d in event_shape)
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive integer, got {latent_dim!r}")
        if not (isinstance(kl_weight, (int, float)) and math.isfinite(kl_weight) and kl_weight > 0):
            raise ValueError(f"kl_weight must be a positive finite number, got {kl_weight!r}")
        self.kl_weight = float(kl_weight)
        # A plain nn.Parameter, not a PyroParam: PyroParams write to the global param
        # store directly, which the library must not do.
        if obs_scale is None:
            self.log_obs_scale = nn.Parameter(torch.zeros(self.event_shape))
        elif isinstance(obs_scale, (int, float)) and math.isfinite(obs_scale) and obs_scale > 0:
            self.register_buffer("log_obs_scale", torch.tensor(math.log(obs_scale)))
        else:
            raise ValueError(f"obs_scale must be a positive finite number or None, got {obs_scale!r}")

    # ------------------------------------------------------------------ networks
    def scale(self) -> torch.Tensor:
        """The observation standard deviation ``σ`` (fixed or learned)."""
        return self.log_obs_scale.exp()

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Location and scale of ``q(z | x)``, each ``(n, latent_dim)``."""
        out = self.encoder(x)
        if out.shape != (x.shape[0], 2 * self.latent_dim):
            raise ValueError(f"the encoder must return shape (n, {2 * self.latent_dim}), got {tuple(out.shape)}")
        loc, raw = out.split(self.latent_dim, dim=-1)
        return loc, nn.functional.softplus(raw) + 1e-4

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder mean ``g(z)``, shape ``(n, *event_shape)``."""
        out = self.decoder(z)
        n = z.shape[0]
        if out.numel() != n * math.prod(self.event_shape):
            raise ValueError(
                f"the decoder must return {math.prod(self.event_shape)} values per sample "
                f"(event shape {self.event_shape}), got shape {tuple(out.shape)}")
        return out.reshape((n,) + self.event_shape)

    # ------------------------------------------------------------------ Pyro
    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.shape[1:] != self.event_shape or x.ndim < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"VAE expects data of shape (n, {', '.join(map(str, self.event_shape))}), got {shape}")

    @pyro_method
    def model(self, x: Optional[torch.Tensor] = None, num_samples: Optional[int] = None) -> torch.Tensor:
        """``z ~ N(0, I)``, ``x ~ N(g(z), σ²)``; observe ``x`` if given, else draw ``num_samples``."""
        if x is None and num_samples is None:
            raise ValueError("VAE.model needs data x or num_samples")
        if x is not None:
            self._check(x)
        n = x.shape[0] if x is not None else int(num_samples)
        return self._generate(n, "x", x, self.decode)

    def _generate(self, n: int, site: str, obs: Optional[torch.Tensor],
                  decode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """The generative model of `model()` (and of the conditional VAE's, with its own
        ``decode`` and site): ``n`` latents ``z ~ N(0, I)`` (KL-weighted), ``site ~ N(decode(z), σ²)``."""
        like = self._like()
        with pyro.plate("data", n):
            with poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", dist.Normal(torch.zeros(n, self.latent_dim, **like), 1.0).to_event(1))
            loc = decode(z)
            scale = self.scale().expand(loc.shape[1:])
            return pyro.sample(site, dist.Normal(loc, scale).to_event(len(self.event_shape)), obs=obs)

    @pyro_method
    def guide(self, x: Optional[torch.Tensor] = None, num_samples: Optional[int] = None) -> torch.Tensor:
        """``z ~ q(z | x)``, the amortised posterior."""
        if x is None:
            raise ValueError("VAE.guide needs data x")
        self._check(x)
        return self._posterior(*self.encode(x))

    def _posterior(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The guide's site: ``z ~ N(loc, scale²)`` per row (KL-weighted), shared with the conditional VAE."""
        with pyro.plate("data", loc.shape[0]):
            with poutine.scale(scale=self.kl_weight):
                return pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _like(self) -> dict:
        p = next(self.decoder.parameters())
        return dict(dtype=p.dtype, device=p.device)

    # ------------------------------------------------------------------ sampling
    def sample_latent(self, n: int, rng: RNG) -> torch.Tensor:
        """``z ~ N(0, I)``, shape ``(n, latent_dim)``, drawn from ``rng``."""
        like = self._like()
        gen = as_rng(rng, like["device"])
        if gen is None:
            raise ValueError("rng is required: pass a torch.Generator or an int seed")
        return torch.randn(int(n), self.latent_dim, generator=gen, **like)

    @torch.no_grad()
    def sample(self, n: int, rng: RNG) -> torch.Tensor:
        """Decoder means ``g(z)`` of ``n`` prior draws (the starting points of VMT's Langevin runs)."""
        return self.decode(self.sample_latent(n, rng))

    def elbo_loss(self, x: torch.Tensor, rng: RNG) -> torch.Tensor:
        """Negative ELBO per sample, averaged over the batch (differentiable).

        Pyro draws the reparameterised ``z`` from torch's global RNG; it runs here on
        ``rng``'s own state (`rng_for_pyro()`), so the loss is reproducible, ``rng``
        advances by what was drawn and the caller's global RNG is left as it was.
        Module-local parameters are used: the global Pyro parameter store is neither
        read nor written. The value is [`reparameterised_elbo()`][pyro_vmt.vae.reparameterised_elbo]'s (Pyro's
        ``Trace_ELBO`` for this guide, without its host syncs).
        """
        gen = as_rng(rng, x.device)
        if gen is None:
            raise ValueError("rng is required: pass a torch.Generator or an int seed")
        with rng_for_pyro(gen, x.device), _LocalParams():
            return -reparameterised_elbo(self.model, self.guide, x) / x.shape[0]

    def joint_loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``−log p(x, z)`` per sample, averaged, for a known ``z`` (CoopNets' generator regression)."""
        with _LocalParams(), pyro.validation_enabled(False):
            conditioned = poutine.condition(self.model, data={"z": z})
            trace = poutine.trace(conditioned).get_trace(x)
            return -trace.log_prob_sum() / x.shape[0]


def reparameterised_elbo(model, guide, *args) -> torch.Tensor:
    r"""The ELBO $\log p(x, z) - \log q(z \mid x)$ at one reparameterised draw ``z ~ q``, differentiable.

    For a guide whose sample sites all have ``rsample`` this is the value and the
    gradient of Pyro's ``Trace_ELBO().differentiable_loss`` (with the sign flipped):
    its surrogate has no score-function term then. It is computed from the two
    traces directly, with Pyro's validation off, because ``Trace_ELBO`` fetches values
    to the host (``torch_item``, NaN/inf warnings, argument checks: about 20 host syncs
    per call); a non-finite ELBO is caught by the teacher's one check instead. A
    guide with a non-reparameterised site runs ``Trace_ELBO`` itself.
    """
    with pyro.validation_enabled(False):
        guide_trace = poutine.trace(guide).get_trace(*args)
        if not all(site["fn"].has_rsample for site in guide_trace.nodes.values()
                   if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)):
            return -pyro.infer.Trace_ELBO().differentiable_loss(model, guide, *args)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)

        def keep(name, site):
            return not site_is_subsample(site)

        return model_trace.log_prob_sum(keep) - guide_trace.log_prob_sum(keep)



@contextmanager
def rng_for_pyro(gen: torch.Generator, device: torch.device) -> Iterator[None]:
    """Lend ``gen``'s state to torch's global RNG of ``device`` for the block: Pyro's draws
    come from ``gen``, which takes the advanced state back; the global RNG is restored.

    Generator states live on the host (a CUDA one is a seed and an offset), so this
    costs no device sync. A generator of another device type cannot lend its state:
    the global RNG is then forked and seeded from one draw of ``gen`` (one sync).
    """
    if gen.device.type != torch.device(device).type:
        seed = int(torch.randint(2 ** 62, (1,), generator=gen, device=gen.device))
        with forked_rng(torch.device(device), seed):
            yield
        return
    cuda = gen.device.type == "cuda"
    index = (gen.device.index if gen.device.index is not None else torch.cuda.current_device()) if cuda else None
    glob = torch.cuda.default_generators[index] if cuda else torch.default_generator
    saved = glob.get_state()
    glob.set_state(gen.get_state())
    try:
        yield
    finally:
        gen.set_state(glob.get_state())
        glob.set_state(saved)


@contextmanager
def forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Torch's global RNG of ``device`` forked (restored on exit) and seeded with ``seed``.

    Only that device's generator is seeded (``torch.manual_seed`` would seed every
    device's, a cost paid at every iteration).
    """
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        (torch.cuda.default_generators[index] if cuda else torch.default_generator).manual_seed(seed)
        yield


class _LocalParams(Messenger):
    """Answer every ``pyro.param`` site with the module's own tensor.

    ``PyroModule`` issues ``pyro.param(name, tensor)`` for each parameter it reads;
    marking the message done keeps that tensor and skips the global param store.
    """

    def _pyro_param(self, msg) -> None:
        args = msg["args"]
        if len(args) > 1 and isinstance(args[1], torch.Tensor):
            msg["value"] = args[1]
            msg["done"] = True
