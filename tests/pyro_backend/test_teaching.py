"""VariationalMCMCTeaching, torch idioms (the shared behaviour is in ``tests/backends``):
a checkpoint moved between devices, CUDA resume, and the global RNG left alone."""

import numpy as np
import pytest
import torch

from pyro_vmt import VAE, EnergyModel, VariationalMCMCTeaching
from pyro_vmt.nets import MLP
from toy import gaussian_data as data


def make(init="vae", seed=0, **options):
    torch.manual_seed(seed)
    energy = EnergyModel(MLP(2, 1, (16, 16)), (2,))
    vae = VAE(MLP(2, 4, (16,)), MLP(2, 2, (16,)), 2, (2,))
    opts = dict(step_size=0.1, num_steps=3, buffer_size=50, init_bounds=(-2.0, 2.0)) | options
    return VariationalMCMCTeaching(energy, vae, init=init, rng=seed, **opts)


def params(t):
    out = {f"e.{k}": v.clone() for k, v in t.energy.state_dict().items()}
    if t.vae is not None:
        out |= {f"v.{k}": v.clone() for k, v in t.vae.state_dict().items()}
    return out


def test_a_checkpoint_from_another_device_keeps_its_weights_and_warns_about_the_rng(tmp_path):
    first = make()
    first.fit(data(), num_iters=2, batch_size=16, progress=False)
    state = first.state_dict()
    # what a CUDA run writes: a CUDA generator's state (seed and offset) tagged "cuda"
    state.update(rng=torch.zeros(16, dtype=torch.uint8), rng_device="cuda")
    moved = make(seed=7)
    with pytest.warns(RuntimeWarning, match="RNG is reseeded"):
        moved.load_state_dict(state)
    a, b = params(first), params(moved)
    assert all(torch.equal(a[k], b[k]) for k in a) and moved.iteration == 2
    moved.fit(data(), num_iters=1, batch_size=16, progress=False)  # and it trains on


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_run_resumes_bit_for_bit_on_cuda(tmp_path):
    def on_cuda(seed):
        t = make(seed=seed)
        return VariationalMCMCTeaching(t.energy.cuda(), t.vae.cuda(), t.config, rng=seed)

    x = data()
    straight = on_cuda(0)
    h_straight = straight.fit(x, num_iters=4, batch_size=16, progress=False)
    first = on_cuda(0)
    first.fit(x, num_iters=2, batch_size=16, progress=False)
    first.save(tmp_path / "ck.pt")
    resumed = on_cuda(3)
    resumed.load(tmp_path / "ck.pt")
    h_resumed = resumed.fit(x, num_iters=2, batch_size=16, progress=False)
    np.testing.assert_array_equal(h_straight["loss"][2:], h_resumed["loss"])


def test_training_does_not_use_or_move_the_global_rng():
    x = data()
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    t = make("vae")
    torch.random.set_rng_state(before)
    t.fit(x, num_iters=2, batch_size=8, progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
