"""The Pyro kernel's drivers: ``pyro.infer.MCMC`` refuses a batched kernel with a clear
message, and ``run_chains`` answers as ``MCMC`` does (``get_samples``, ``summary``,
``diagnostics``)."""

import pytest

torch = pytest.importorskip("torch")
pyro = pytest.importorskip("pyro")

import pyro.distributions as dist  # noqa: E402
from pyro.infer import MCMC  # noqa: E402

from pyro_vmt import LangevinKernel  # noqa: E402
from pyro_vmt.chains import run_chains  # noqa: E402


def normal_model():
    pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))


def test_mcmc_refuses_a_batched_kernel():
    mcmc = MCMC(LangevinKernel(normal_model, num_chains=4), num_samples=5, warmup_steps=5, disable_progbar=True)
    with pytest.raises(ValueError, match=r"num_chains=4.*run_chains.*MCMC\(kernel, \.\.\., num_chains=4\)"):
        mcmc.run()


def test_run_chains_result_reads_like_mcmc(capsys):
    kernel = LangevinKernel(normal_model, step_size=0.5, num_chains=3, rng=0)
    out = run_chains(kernel, 40, 200, progress=True)
    assert out.get_samples()["mu"].shape == (120, 2)
    assert out.get_samples(group_by_chain=True)["mu"].shape == (3, 40, 2)
    diag = out.diagnostics()
    assert set(diag["mu"]) == {"n_eff", "r_hat"} and diag["mu"]["r_hat"].shape == (2,)
    assert set(diag["divergences"]) == {"chain 0", "chain 1", "chain 2"}
    assert all(0 < r <= 1 for r in diag["acceptance rate"].values())
    out.summary()
    printed = capsys.readouterr()
    assert "r_hat" in printed.out and "Number of divergences: 0" in printed.out
    assert "sample: 100%" in printed.err  # the progress bar stays when done
    samples, stats = out  # still unpacks for vmt.evaluation.diagnostics.to_inference_data
    assert stats["step_size"].shape == (3, 40)
