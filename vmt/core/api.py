"""The interface both backends implement, and how to pick one.

``pyro_vmt`` (PyTorch + Pyro) and ``numpyro_vmt`` (JAX + NumPyro) export the same
public names with the same call signatures; the conformance suite checks it. The
Protocols below describe the parts a user composes with: a potential function, the
Langevin sampler's pure ``init``/``step`` functions and its state and diagnostics.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Any, NamedTuple, Protocol, Tuple

__all__ = [
    "BACKENDS",
    "PotentialFn",
    "SamplerInit",
    "SamplerStep",
    "PUBLIC_NAMES",
    "TeachingInfo",
    "available_backends",
    "backend_of",
    "default_backend",
    "load_backend",
]

#: backend name -> (import package, packages it needs)
BACKENDS = {
    "pyro": ("pyro_vmt", ("torch", "pyro")),
    "numpyro": ("numpyro_vmt", ("jax", "numpyro", "optax", "equinox")),
}

#: The public names every backend exports: its ``__all__`` is this list, and the
#: conformance suite checks that each name exists, with the same signature, in both.
PUBLIC_NAMES = (
    # the EBM, the VAE and the joint algorithm
    "EnergyModel",
    "VAE",
    "VariationalMCMCTeaching",
    "TeachingInfo",
    # the supervised (conditional) variant
    "ConditionalEnergyModel",
    "ConditionalVAE",
    "ConditionalVariationalMCMCTeaching",
    # the EBM as a distribution of the backend's PPL (log_prob = −E, sample = VAE + Langevin)
    "EnergyDistribution",
    # the Langevin sampler: pure functions, their state and diagnostics, a wrapper
    "Langevin",
    "LangevinState",
    "LangevinInfo",
    "init",
    "step",
    # the MCMC kernel of the backend's PPL and its warm start from a guide
    "LangevinKernel",
    "initial_params_from_guide",
    # randomness, devices and arrays
    "RNG",
    "as_rng",
    "select_device",
    "device_name",
    "place",
    "to_numpy",
    "numpy_call",
    # teach any guide of a PPL model with MCMC (SVI-shaped)
    "MCMCTeaching",
    "MCMCTeachingInfo",
)

Array = Any  # a torch.Tensor or a jax.Array


class PotentialFn(Protocol):
    """``E(x)``: a batch ``(n, *event_shape)`` to one energy (−log density) per row."""

    def __call__(self, x: Array) -> Array: ...


class SamplerInit(Protocol):
    def __call__(self, position: Array, potential_fn: PotentialFn) -> NamedTuple: ...


class SamplerStep(Protocol):
    def __call__(self, rng: Any, state: NamedTuple, potential_fn: PotentialFn,
                 step_size: float, **kwargs: Any) -> Tuple[NamedTuple, NamedTuple]: ...


class TeachingInfo(NamedTuple):
    """Diagnostics of one training iteration (0-d arrays of the backend).

    Attributes
    ----------
    loss : energy loss ``mean E(data) − mean E(x̃)`` plus the energy penalty.
    energy_data : ``mean E(data)``.
    energy_samples : ``mean E(x̃)`` of the revised samples.
    vae_loss : negative ELBO per sample (``init="vae"``), the generator's
        ``−log p(x̃, z)`` per sample (``"generator"``), NaN otherwise.
    acceptance_rate : mean Metropolis acceptance over steps and chains (1 if unadjusted);
        under ``correction="mh"`` that of the ``local_steps`` MALA moves (NaN without them).
    grad_norm : mean ``‖∇ₓE‖`` over chains at the end of the revision.
    energy_grad_norm : global norm of the energy's parameter gradient (before clipping).
    path_acceptance : ``correction="mh"``: mean ``min(1, w'/w)`` of the path proposals
        (NaN without a correction).
    weight_ess : ``correction="mh"``: effective sample size of the proposals' weights
        over their number, in ``[1/n, 1]`` (NaN without).
    crossing_rate : ``correction="mh"``: fraction of chains whose accepted path ends
        farther than ``3δσ√(Kd)`` from the old state, a move no local revision makes
        (NaN without).
    """

    loss: Any
    energy_data: Any
    energy_samples: Any
    vae_loss: Any
    acceptance_rate: Any
    grad_norm: Any
    energy_grad_norm: Any
    path_acceptance: Any = float("nan")
    weight_ess: Any = float("nan")
    crossing_rate: Any = float("nan")


def available_backends() -> list:
    """Backends whose packages are importable here, in preference order."""
    return [name for name, (_, needs) in BACKENDS.items()
            if all(importlib.util.find_spec(m) is not None for m in needs)]


def default_backend() -> str:
    """The first available backend (``"pyro"`` before ``"numpyro"``)."""
    found = available_backends()
    if not found:
        raise ImportError(
            "no backend is installed: pip install 'pyro-vmt[pyro]' or 'pyro-vmt[numpyro]'")
    return found[0]


def backend_of(obj: Any) -> ModuleType:
    """The backend package an object (a teacher, a model, a network) comes from."""
    package = type(obj).__module__.split(".")[0]
    for name, (pkg, _) in BACKENDS.items():
        if pkg == package:
            return load_backend(name)
    raise TypeError(f"{type(obj).__name__} does not come from a backend ({sorted(p for p, _ in BACKENDS.values())})")


def load_backend(name: str | None = None) -> ModuleType:
    """Import and return a backend package (``pyro_vmt`` or ``numpyro_vmt``).

    Parameters
    ----------
    name : {"pyro", "numpyro"} or None
        ``None`` picks [`default_backend()`][vmt.core.api.default_backend].
    """
    name = default_backend() if name is None else name
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    package, needs = BACKENDS[name]
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"backend {name!r} needs {missing}: pip install 'pyro-vmt[{name}]'")
    return importlib.import_module(package)

