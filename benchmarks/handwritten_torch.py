r"""A minimal hand-written VMT iteration in raw PyTorch: the floor of ``pyro_vmt``'s ``step``.

The same algorithm as ``pyro_vmt.VariationalMCMCTeaching`` with ``init="vae"`` and
unadjusted Langevin, written the leanest way, with no checks and no diagnostics:

1. :math:`z \sim \mathcal N(0, I)`, :math:`x^{(0)} = g(z)` (the recipe's ``noise_fraction`` of
   the chains start from uniform noise on ``init_bounds`` instead);
2. K steps :math:`x \leftarrow x - \tfrac{\delta^2}{2}\nabla_x E(x) + \delta\sigma\xi`
   (K gradient evaluations);
3. one Adam step (learning rates under the recipe's cosine decay) of the energy on :math:`\overline{E(\text{data})} - \overline{E(\tilde x)}`
   (+ ``energy_reg``, gradient clipping if the recipe asks);
4. one Adam step of the VAE on the negative ELBO of :math:`\tilde x`: a single
   reparameterised :math:`z \sim q(z \mid \tilde x)` and
   :math:`-\log p(\tilde x \mid z) - \beta(\log p(z) - \log q(z \mid \tilde x))`, the
   estimator of Pyro's ``Trace_ELBO``. ``elbo="hand"`` writes it out with tensor
   operations; ``elbo="pyro"`` computes it with ``pyro.infer.Trace_ELBO`` on a
   minimal model and guide (plain modules, no parameter store).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class HandwrittenVMT:
    """VMT in raw torch on the given networks and a :class:`vmt.app.recipes.Recipe`'s options.

    Parameters
    ----------
    energy_net, encoder, decoder : torch.nn.Module
        As made by ``pyro_vmt.nets.default_networks`` (trained in place).
    recipe : vmt.app.recipes.Recipe
        Latent size, reference scale, observation scale, KL weight and the
        :class:`~vmt.TeachingConfig` (unadjusted Langevin only).
    event_shape : tuple of int
    seed : int
    elbo : {"hand", "pyro"}
    """

    def __init__(self, energy_net: nn.Module, encoder: nn.Module, decoder: nn.Module, recipe,
                 event_shape, seed: int = 0, elbo: str = "hand"):
        cfg = recipe.config
        if cfg.adjust or cfg.init != "vae":
            raise ValueError("the hand-written floor covers init='vae' with unadjusted Langevin only")
        self.energy_net, self.encoder, self.decoder = energy_net, encoder, decoder
        self.cfg, self.event_shape, self.latent_dim = cfg, tuple(event_shape), recipe.latent_dim
        self.ref_scale, self.kl_weight = recipe.ref_scale, recipe.kl_weight
        if recipe.obs_scale is None:
            self.log_sigma = nn.Parameter(torch.zeros(self.event_shape))
            extra = [self.log_sigma]
        else:
            self.log_sigma, extra = torch.tensor(math.log(recipe.obs_scale)), []
        self.gen, self.iteration = torch.Generator().manual_seed(seed), 0
        self.energy_optim = torch.optim.Adam(energy_net.parameters(), lr=cfg.energy_lr, betas=cfg.betas)
        vae_params = list(encoder.parameters()) + list(decoder.parameters()) + extra
        self.vae_optim = torch.optim.Adam(vae_params, lr=cfg.vae_lr, betas=cfg.betas)
        self.elbo = {"hand": self._elbo_hand, "pyro": self._elbo_pyro}[elbo]

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        out = self.energy_net(x)
        out = out[:, 0] if out.ndim == 2 else out
        if self.ref_scale is not None:
            out = out + x.reshape(x.shape[0], -1).pow(2).sum(1) / (2 * self.ref_scale ** 2)
        return out

    def revise(self, n: int) -> torch.Tensor:
        cfg, h = self.cfg, 0.5 * self.cfg.step_size ** 2
        scale = cfg.step_size * cfg.noise_scale
        m = cfg.num_noise_chains(n)
        with torch.no_grad():
            x = self.decoder(torch.randn(n - m, self.latent_dim, generator=self.gen)).reshape((n - m,) + self.event_shape)
        if m:
            low, high = cfg.init_bounds
            x = torch.cat([x, low + (high - low) * torch.rand((m,) + self.event_shape, generator=self.gen)])
        for _ in range(cfg.num_steps):
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.energy(x).sum(), x)
            x = x - h * grad + scale * torch.randn(x.shape, generator=self.gen)
        return x.detach()

    def _encode(self, x):
        loc, raw = self.encoder(x).split(self.latent_dim, dim=-1)
        return loc, nn.functional.softplus(raw) + 1e-4

    def _elbo_hand(self, x: torch.Tensor) -> torch.Tensor:
        loc, scale = self._encode(x)
        eps = torch.randn(loc.shape, generator=self.gen)
        z = loc + scale * eps
        log_q = (-0.5 * eps ** 2 - scale.log() - _HALF_LOG_2PI).sum(1)
        log_p = (-0.5 * z ** 2 - _HALF_LOG_2PI).sum(1)
        mean = self.decoder(z).reshape(x.shape)
        sigma = self.log_sigma.exp()
        log_lik = (-0.5 * ((x - mean) / sigma) ** 2 - self.log_sigma - _HALF_LOG_2PI).reshape(x.shape[0], -1).sum(1)
        return -(log_lik + self.kl_weight * (log_p - log_q)).mean()

    def _model(self, x):
        n = x.shape[0]
        with pyro.plate("data", n):
            with pyro.poutine.scale(scale=self.kl_weight):
                z = pyro.sample("z", dist.Normal(torch.zeros(n, self.latent_dim), 1.0).to_event(1))
            mean = self.decoder(z).reshape(x.shape)
            pyro.sample("x", dist.Normal(mean, self.log_sigma.exp()).to_event(len(self.event_shape)), obs=x)

    def _guide(self, x):
        loc, scale = self._encode(x)
        with pyro.plate("data", x.shape[0]), pyro.poutine.scale(scale=self.kl_weight):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def _elbo_pyro(self, x: torch.Tensor) -> torch.Tensor:
        return pyro.infer.Trace_ELBO().differentiable_loss(self._model, self._guide, x) / x.shape[0]

    def step(self, batch: torch.Tensor):
        """One iteration on ``batch``; returns the two losses."""
        cfg = self.cfg
        x = self.revise(cfg.num_samples or batch.shape[0])
        e_data, e_samp = self.energy(batch), self.energy(x)
        loss = e_data.mean() - e_samp.mean()
        if cfg.energy_reg:
            loss = loss + cfg.energy_reg * (e_data.pow(2).mean() + e_samp.pow(2).mean())
        vae_loss = self.elbo(x)
        self.energy_optim.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.energy_net.parameters(), cfg.grad_clip)
        self.vae_optim.zero_grad(set_to_none=True)
        vae_loss.backward()
        factor = cfg.lr_factor(self.iteration)
        for optim, lr in ((self.energy_optim, cfg.energy_lr), (self.vae_optim, cfg.vae_lr)):
            for group in optim.param_groups:
                group["lr"] = lr * factor
            optim.step()
        self.iteration += 1
        return loss.detach(), vae_loss.detach()
