"""Langevin sampler, torch idioms (the shared behaviour is in ``tests/backends``): no
autograd graph is kept across steps, and runs work under ``no_grad`` on image-shaped
events."""

import torch

from pyro_vmt import Langevin, LangevinInfo, LangevinState


def test_no_graph_is_kept_across_steps():
    net = torch.nn.Linear(2, 1)
    energy = lambda x: net(x)[:, 0] ** 2  # noqa: E731
    state, _ = Langevin(energy, 0.1, num_steps=5).run(0, torch.zeros(3, 2))
    for t in state:
        assert t.grad_fn is None and not t.requires_grad
    assert net.weight.grad is None  # sampling never accumulates parameter gradients


def test_runs_under_no_grad_and_on_image_shaped_events():
    energy = lambda x: 0.5 * (x ** 2).flatten(1).sum(1)  # noqa: E731
    with torch.no_grad():
        state, info = Langevin(energy, 0.1, num_steps=2).run(0, torch.ones(4, 1, 3, 3))
    assert state.position.shape == (4, 1, 3, 3) and state.grad.shape == (4, 1, 3, 3)
    assert isinstance(state, LangevinState) and isinstance(info, LangevinInfo)
