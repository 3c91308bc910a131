"""VAE, torch idioms (the shared behaviour is in ``tests/backends``): a user's plain
Pyro SVI script trains it; the library's ELBO path leaves the global param store
alone; the linear-Gaussian case trained with ``torch.optim``."""

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_vmt import VAE
from pyro_vmt.nets import MLP
from ppca import assert_ppca_solution


def test_plain_pyro_svi_step_moves_encoder_and_decoder_weights():
    torch.manual_seed(0)
    vae = VAE(MLP(2, 4), MLP(2, 2), 2, (2,))
    before = {k: v.detach().clone() for k, v in vae.named_parameters()}
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    svi.step(torch.randn(16, 2))
    moved = {k for k, v in vae.named_parameters() if not torch.equal(v, before[k])}
    assert moved == set(before), f"not trained by SVI: {set(before) - moved}"


def test_library_elbo_does_not_touch_the_param_store():
    vae = VAE(MLP(2, 4), MLP(2, 2), 2, (2,))
    loss = vae.elbo_loss(torch.randn(8, 2), 0)
    loss.backward()
    assert len(pyro.get_param_store()) == 0
    assert all(p.grad is not None for p in vae.parameters())


def test_linear_gaussian_vae_recovers_ppca_solution():
    """1-D probabilistic PCA (see ``tests/ppca.py``)."""
    gen = torch.Generator().manual_seed(0)
    x = 3.0 + 2.0 * torch.randn(1000, 1, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    vae = VAE(nn.Linear(1, 2), nn.Linear(1, 1), 1, (1,)).double()
    optim = torch.optim.Adam(vae.parameters(), lr=0.03)
    for _ in range(600):
        optim.zero_grad()
        vae.elbo_loss(x, gen).backward()
        optim.step()
    w, b = vae.decoder.weight.item(), vae.decoder.bias.item()
    loc, scale = vae.encode(torch.tensor([[x.mean().item()], [x.mean().item() + 2.0]], dtype=torch.float64))
    assert_ppca_solution(w, b, vae.scale().item() ** 2, x.mean().item(), x.var().item(),
                         (loc[1] - loc[0]).item() / 2.0, scale[0].item())
