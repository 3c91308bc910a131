"""The Torch training iteration: one host sync, and the compiled Langevin loop (issue 12).

Host syncs are counted on the CPU by patching the methods that bring a tensor's value
to the host (:func:`pyro_vmt.syncs.count_host_syncs`): on a GPU each would wait for
the queued kernels. ``torch.compile`` runs on the CPU too, so the capture path (and its
fallback) is exercised here; the networks are tiny because compilation time counts.
"""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pyro_vmt = pytest.importorskip("pyro_vmt")

from pyro_vmt.nets import MLP  # noqa: E402
from pyro_vmt.syncs import count_host_syncs  # noqa: E402


def teacher(init="vae", adjust=False, compile=False, net=None):
    energy = pyro_vmt.EnergyModel(net or MLP(2, 1, (8,)), (2,))
    vae = pyro_vmt.VAE(MLP(2, 4, (8,)), MLP(2, 2, (8,)), 2, (2,))
    return pyro_vmt.VariationalMCMCTeaching(energy, vae, rng=0, step_size=0.1, num_steps=3, adjust=adjust,
                                            init=init, buffer_size=32, compile=compile)


def data(n=16):
    return np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)


@pytest.mark.parametrize("init, adjust", [("vae", False), ("vae", True), ("generator", False),
                                          ("persistent", False), ("noise", True)])
def test_one_host_sync_per_iteration(init, adjust):
    t = teacher(init, adjust)
    batch = torch.as_tensor(data())
    t.step(batch)
    with count_host_syncs() as syncs:
        for _ in range(3):
            t.step(batch)
    assert sum(syncs.values()) == 3, dict(syncs)  # the one check per iteration
    with count_host_syncs() as syncs:
        t.fit(data(), num_iters=4, batch_size=8, progress=False)
    # 4 checks, plus once per fit: the data's validation and the history's transfer
    assert sum(syncs.values()) <= 4 + 2, dict(syncs)


def test_the_sync_counter_counts():
    with count_host_syncs() as syncs:
        x = torch.ones(3)
        _ = float(x.sum()), bool(x.any()), x.sum().item(), x.tolist(), int(x[0])
    assert sum(syncs.values()) == 5


def test_compiled_teacher_resumes_bit_for_bit(tmp_path):
    a = teacher(compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback: the loop really compiled
        a.fit(data(), num_iters=2, batch_size=8, progress=False)
    assert a.compile_seconds is not None and a.compile_seconds > 0 and a._compiled.failed is None
    a.save(tmp_path / "ck")
    rest = a.fit(data(), num_iters=2, batch_size=8, progress=False)
    b = teacher(compile=True)
    b.load(tmp_path / "ck")
    again = b.fit(data(), num_iters=2, batch_size=8, progress=False)
    for name in rest:
        np.testing.assert_array_equal(again[name], rest[name], err_msg=name)
    for p, q in zip(a.energy.parameters(), b.energy.parameters()):
        assert torch.equal(p, q)
    # the compiled loop is the eager loop with the same noise
    x0 = torch.as_tensor(data(8))
    start = a.sampler.init(x0)
    compiled = a._compiled(torch.Generator().manual_seed(5), start)
    noise = torch.randn((3, 8, 2), generator=torch.Generator().manual_seed(5))
    eager = a.sampler._run_from(None, start, 3, noise)
    torch.testing.assert_close(compiled[0].position, eager[0].position, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1].grad_norm, eager[1].grad_norm, rtol=1e-5, atol=1e-6)


class Uncapturable(torch.nn.Module):
    """An energy network with Python control flow on a tensor's value: no single graph holds it."""

    def __init__(self):
        super().__init__()
        self.net = MLP(2, 1, (8,))

    def forward(self, x):
        if float(x.detach().abs().max()) > 1e6:  # a host sync and a branch: a graph break
            x = x.clamp(-1e6, 1e6)
        return self.net(x)


def test_an_uncapturable_network_falls_back_with_one_warning():
    t = teacher(compile=True, net=Uncapturable())
    with pytest.warns(RuntimeWarning, match=r"torch.compile could not capture .* it runs eagerly") as record:
        t.fit(data(), num_iters=3, batch_size=8, progress=False)
    ours = [str(w.message) for w in record if "torch.compile" in str(w.message)]
    assert len(ours) == 1 and "\n" not in ours[0]
    assert t.iteration == 3 and t._compiled.failed


def test_compile_option_is_checked():
    with pytest.raises(ValueError, match="compile must be 'auto', True or False"):
        teacher(compile="yes")
    assert teacher(compile="auto")._compiled is None  # the CPU: off by default (docs/benchmarks.md)
