"""vmt.evaluation.diagnostics: sampler runs and training histories to ArviZ data (the installed
arviz 0.x, and the arviz 1.x call shape through a fake module)."""

import subprocess
import sys
import types
from collections import namedtuple

import arviz as az
import numpy as np
import pytest

from vmt.evaluation import diagnostics
from vmt.evaluation.diagnostics import arviz_major_version, min_ess, to_inference_data

Info = namedtuple("Info", "acceptance_rate is_accepted grad_norm is_divergent")  # as LangevinInfo


def sampler_run(seed=0, chains=4, draws=200, shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(chains, draws, 2)) + shift * np.arange(chains)[:, None, None]
    info = Info(rng.uniform(size=(draws, chains)), rng.uniform(size=(draws, chains)) < 0.6,
                rng.uniform(size=(draws, chains)), np.zeros((draws, chains), bool))
    return x, info


def test_sampler_run_to_inference_data_with_ess_rhat_summary():
    x, info = sampler_run()
    data = to_inference_data(x, info)
    assert data.posterior["x"].shape == (4, 200, 2)
    stats = data.sample_stats
    assert set(stats.data_vars) == {"acceptance_rate", "is_accepted", "grad_norm", "diverging"}
    assert stats["diverging"].shape == (4, 200) and stats["diverging"].dtype == bool
    np.testing.assert_array_equal(stats["acceptance_rate"].values, info.acceptance_rate.T)
    ess = az.ess(data)["x"].values
    assert ((ess > 0.7 * 800) & (ess < 1.3 * 800)).all()  # iid draws: ESS ≈ chains × draws
    assert (az.rhat(data)["x"].values < 1.02).all()
    assert 0.7 * 800 < min_ess(data) < 1.3 * 800
    summary = az.summary(data)
    assert list(summary.index) == ["x[0]", "x[1]"] and {"ess_bulk", "r_hat"} <= set(summary.columns)


def test_rhat_flags_chains_that_disagree():
    x, info = sampler_run(shift=3.0)
    assert (az.rhat(to_inference_data({"theta": x}, info))["theta"].values > 1.5).all()


def test_energy_becomes_lp_and_dict_stats_are_chain_draw():
    rng = np.random.default_rng(1)
    energy = rng.normal(size=(3, 50))
    data = to_inference_data({"a": rng.normal(size=(3, 50))},
                             {"energy": energy, "accept_prob": np.ones((3, 50))})
    np.testing.assert_array_equal(data.sample_stats["lp"].values, -energy)
    assert "acceptance_rate" in data.sample_stats
    swapped = to_inference_data({"a": rng.normal(size=(50, 3))}, draws_first=True)
    assert swapped.posterior["a"].shape == (3, 50)


def test_training_history_is_one_chain():
    history = {"loss": np.linspace(1, 0, 100), "grad_norm": np.ones(100)}  # as fit() returns
    data = to_inference_data(history)
    assert data.posterior["loss"].shape == (1, 100)
    assert np.isfinite(az.ess(data)["loss"].values)


def test_torch_and_jax_arrays():
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    x = torch.randn(2, 30, 3)
    data = to_inference_data({"t": x, "j": jnp.zeros((2, 30))})
    np.testing.assert_allclose(data.posterior["t"].values, x.numpy())
    assert data.posterior["j"].shape == (2, 30)
    # vmt holds no torch code: a tensor NumPy cannot read is refused by name, never detached behind the user's back
    with pytest.raises(TypeError, match="cannot read Tensor as a NumPy array.*to_numpy"):
        to_inference_data({"t": x.requires_grad_()})


def test_bad_input():
    with pytest.raises(ValueError, match="share"):
        to_inference_data({"a": np.zeros((2, 10)), "b": np.zeros((3, 10))})
    with pytest.raises(ValueError, match="nothing"):
        to_inference_data()
    with pytest.raises(ValueError, match="scalar"):
        to_inference_data({"a": np.float64(1.0)})


def test_arviz_1x_call_shape(monkeypatch):
    calls = []

    def from_dict(*args, **kwargs):
        calls.append((args, kwargs))
        return "datatree"

    fake = types.SimpleNamespace(__version__="1.0.0", from_dict=from_dict)
    monkeypatch.setitem(sys.modules, "arviz", fake)
    assert arviz_major_version() == 1
    x, info = sampler_run(chains=2, draws=10)
    assert diagnostics.to_inference_data(x, info, coords={"d": [0, 1]}, dims={"x": ["d"]}) == "datatree"
    (args, kwargs), = calls
    assert len(args) == 1 and set(args[0]) == {"posterior", "sample_stats"}
    assert args[0]["posterior"]["x"].shape == (2, 10, 2)
    assert args[0]["sample_stats"]["diverging"].shape == (2, 10)
    assert kwargs == {"coords": {"d": [0, 1]}, "dims": {"x": ["d"]}}


def test_arviz_0x_call_shape(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(__version__="0.23.0", from_dict=lambda *a, **k: calls.append((a, k)))
    monkeypatch.setitem(sys.modules, "arviz", fake)
    to_inference_data(np.zeros((2, 5)))
    (args, kwargs), = calls
    assert args == () and set(kwargs) == {"posterior", "coords", "dims"}


def test_min_ess_reads_an_arviz_1x_tree(monkeypatch):
    import xarray as xr

    ds = xr.Dataset({"a": ("d", np.array([50.0, 20.0])), "b": ((), 30.0)})
    tree = type("Tree", (), {"children": {"posterior": None},
                             "__getitem__": lambda self, k: types.SimpleNamespace(ds=ds)})()
    monkeypatch.setitem(sys.modules, "arviz", types.SimpleNamespace(ess=lambda data, method: tree))
    assert min_ess("anything") == 20.0


def test_importing_vmt_diagnostics_imports_no_backend_nor_arviz():
    code = ("import sys, vmt.evaluation.diagnostics; "
            "assert not {'torch', 'jax', 'arviz'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
