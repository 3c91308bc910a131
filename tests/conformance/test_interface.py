"""One interface: the two backends export the same names with the same call
signatures (checked by introspection, so a drift fails CI), and reject the same bad
input with the same error type and message."""

import inspect

import numpy as np
import pytest

pyro_vmt = pytest.importorskip("pyro_vmt")
numpyro_vmt = pytest.importorskip("numpyro_vmt")

from vmt.core.api import PUBLIC_NAMES  # noqa: E402

BACKENDS = {"pyro": pyro_vmt, "numpyro": numpyro_vmt}

# Documented backend idioms (docs/design.md): JAX's functional core of the teacher,
# equinox's __call__ for torch's forward, and explicit init keys for JAX networks.
ONLY_NUMPYRO = {"VariationalMCMCTeaching": {"update", "state"}, "EnergyModel": {"__call__"},
                "ConditionalEnergyModel": {"__call__"}}
ONLY_PYRO = {"EnergyModel": {"forward"}, "ConditionalEnergyModel": {"forward"}}
# The kernels implement two different PPL protocols (pyro.infer.mcmc.MCMCKernel and
# numpyro.infer.mcmc.MCMCKernel); the Pyro one also batches chains in one process.
ONLY_PYRO["LangevinKernel"] = {"setup", "cleanup", "sample", "end_warmup", "logging", "diagnostics"}
ONLY_NUMPYRO["LangevinKernel"] = {"init", "sample", "postprocess_fn", "get_diagnostics_str"}
# The distributions follow their PPL's protocol too: sample(sample_shape) draws from torch's
# global RNG, sample(key, sample_shape) from a key; Pyro's expand is overridden.
ONLY_PYRO["EnergyDistribution"] = {"sample", "expand"}
ONLY_NUMPYRO["EnergyDistribution"] = {"sample"}
# MCMCTeaching follows each PPL's SVI: Pyro's stateful step, NumPyro's init/update/get_params
# (the averaged parameters: `get_params` in NumPyro, `averaged()` swaps them into Pyro's params).
ONLY_PYRO["MCMCTeaching"] = {"step", "evaluate_loss", "averaged"}
ONLY_NUMPYRO["MCMCTeaching"] = {"init", "update", "get_params", "evaluate_loss"}
ONLY_PYRO_INIT = {"LangevinKernel": {"transforms", "max_plate_nesting", "num_chains", "vectorize", "rng"},
                  # torch.compile of the Langevin loop (JAX always jits the whole iteration)
                  "VariationalMCMCTeaching": {"compile"}}
NETS_JAX_KEYWORD = {"rng"}


def _params(fn, drop=()):
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name not in drop]


MIXIN_MODULES = {f"{B.__name__}.{m}" for B in BACKENDS.values() for m in ("sampling", "persistence")}


def _members(cls):
    """Public methods defined by the class itself or its mixins (the teacher's sampling and
    persistence modules); attributes are compared on instances."""
    own = [cls] + [k for k in getattr(cls, "__mro__", ())[1:] if k.__module__ in MIXIN_MODULES]
    return {n for k in own for n, v in vars(k).items()
            if (not n.startswith("_") or n in ("__init__", "__call__")) and callable(v)}


# Modules that only one PPL needs: Pyro runs one chain per process, so the Pyro
# backend batches chains itself (numpyro.infer.MCMC has chain_method="vectorized").
ONLY_PYRO_MODULES = {"chains", "potential", "adaptation",
                     "capture", "syncs"}  # torch.compile of the Langevin loop; counting host syncs


def _modules(package):
    from pathlib import Path

    return {p.stem for p in Path(package.__file__).parent.glob("*.py") if p.stem != "__init__"}


def test_same_public_names():
    assert list(pyro_vmt.__all__) == list(numpyro_vmt.__all__) == list(PUBLIC_NAMES)
    for package in (pyro_vmt, numpyro_vmt):  # the literal list and the lazy imports' table agree
        assert set(package._WHERE) == set(package.__all__), package.__name__
    for name in PUBLIC_NAMES:
        assert hasattr(pyro_vmt, name) and hasattr(numpyro_vmt, name), name


def test_every_module_is_mirrored_with_the_same_names():
    import importlib

    assert _modules(pyro_vmt) - ONLY_PYRO_MODULES == _modules(numpyro_vmt)
    for module in sorted(_modules(numpyro_vmt)):
        a = importlib.import_module(f"pyro_vmt.{module}")
        b = importlib.import_module(f"numpyro_vmt.{module}")
        assert hasattr(a, "__all__") and hasattr(b, "__all__"), module
        # each shared public name lives in the same file in both (the rest of a
        # module's names may follow its framework: JAX's functional core, Pyro's protocol)
        assert set(a.__all__) & set(PUBLIC_NAMES) == set(b.__all__) & set(PUBLIC_NAMES), module


@pytest.mark.parametrize("name", sorted(set(pyro_vmt.__all__)))
def test_same_signatures(name):
    a, b = getattr(pyro_vmt, name), getattr(numpyro_vmt, name)
    if inspect.isclass(a) and issubclass(a, tuple):  # NamedTuples
        assert a._fields == b._fields
        return
    if inspect.isfunction(a):
        assert _params(a) == _params(b)
        return
    assert _params(a.__init__, drop=ONLY_PYRO_INIT.get(name, ())) == _params(b.__init__), f"{name}.__init__"
    ma = _members(a) - ONLY_PYRO.get(name, set())
    mb = _members(b) - ONLY_NUMPYRO.get(name, set())
    assert ma == mb, f"{name}: only torch {ma - mb}, only jax {mb - ma}"
    for m in sorted(ma - {"__init__"}):
        va, vb = inspect.getattr_static(a, m), inspect.getattr_static(b, m)
        if isinstance(va, property) or isinstance(vb, property):
            continue
        assert _params(getattr(a, m)) == _params(getattr(b, m)), f"{name}.{m}"


@pytest.mark.parametrize("name", ["MLP", "ConvEnergyNet", "default_networks"])
def test_same_network_constructors(name):
    from numpyro_vmt import nets as jn
    from pyro_vmt import nets as tn

    a, b = getattr(tn, name), getattr(jn, name)
    fa = a.__init__ if inspect.isclass(a) else a
    fb = b.__init__ if inspect.isclass(b) else b
    drop = NETS_JAX_KEYWORD if inspect.isclass(b) else ()
    assert _params(fa) == _params(fb, drop=drop)


def test_teachers_expose_the_same_attributes():
    common = {"config", "energy", "vae", "sampler", "buffer", "iteration"}
    for B in BACKENDS.values():
        t = _teacher(B)
        assert all(hasattr(t, a) for a in common), B.__name__
        assert t.iteration == 0 and t.buffer is None and t.config.step_size == 0.1


# ----------------------------------------------------------------- bad input
def _mlp(backend, i, o):
    nets = backend.nets
    return nets.MLP(i, o, (8,)) if backend is pyro_vmt else nets.MLP(i, o, (8,), rng=0)


def _error(fn):
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value).__mro__[1] if type(info.value).__name__.endswith("Error") and \
        type(info.value).__module__.startswith("vmt") else type(info.value), str(info.value)


def _teacher(backend, **options):
    energy = backend.EnergyModel(_mlp(backend, 2, 1), (2,))
    vae = backend.VAE(_mlp(backend, 2, 4), _mlp(backend, 2, 2), 2, (2,))
    return backend.VariationalMCMCTeaching(energy, vae, rng=0, step_size=0.1, num_steps=2, **options)


BAD_CASES = {
    "step_size": lambda B: B.Langevin(lambda x: x.sum(-1), step_size=-1.0),
    "num_steps": lambda B: B.Langevin(lambda x: x.sum(-1), step_size=0.1, num_steps=0),
    "mala_noise": lambda B: B.Langevin(lambda x: x.sum(-1), 0.1, adjust=True, noise_scale=0.0),
    "config": lambda B: _teacher(B, init="bogus"),
    "batch_shape": lambda B: _teacher(B).step(np.zeros((4, 3), np.float32)),
    "batch_nan": lambda B: _teacher(B).step(np.array([[0.0, 1.0], [np.nan, 0.0]], np.float32)),
    "batch_dtype": lambda B: _teacher(B).step(np.zeros((4, 2), np.int32)),
    "energy_output": lambda B: B.EnergyModel(_mlp(B, 2, 3), (2,))(np.zeros((4, 2), np.float32)
                                                                   if B is numpyro_vmt else
                                                                   __import__("torch").zeros(4, 2)),
    "event_shape": lambda B: B.VariationalMCMCTeaching(
        B.EnergyModel(_mlp(B, 2, 1), (2,)), B.VAE(_mlp(B, 3, 4), _mlp(B, 2, 3), 2, (3,))),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_same_errors_for_the_same_bad_input(case):
    ta, ma = _error(lambda: BAD_CASES[case](pyro_vmt))
    tb, mb = _error(lambda: BAD_CASES[case](numpyro_vmt))
    assert ta is tb and ma == mb


def test_same_checkpoint_errors(tmp_path):
    for B, suffix in [(pyro_vmt, "a"), (numpyro_vmt, "b")]:
        _teacher(B).save(tmp_path / f"{suffix}.ckpt")
    errors = []
    for B, suffix in [(pyro_vmt, "a"), (numpyro_vmt, "b")]:
        with pytest.raises(Exception) as info:
            _teacher(B, energy_lr=0.5).load(tmp_path / f"{suffix}.ckpt")
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1] and "energy_lr" in errors[0][1]
