"""PyTorch + Pyro backend of pyro-vmt.

The same public names, with the same signatures, as `numpyro_vmt`.

Every public name is imported from its module on first use (PEP 562), so a program
loads only the modules it uses (and a benchmark's result depends only on those:
``benchmarks/common.py``'s ``loaded_code``); submodules (``pyro_vmt.nets``, ...) are
attributes too.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers and editors; at run time `__getattr__` imports
    from pyro_vmt.conditional import ConditionalVariationalMCMCTeaching
    from pyro_vmt.conditional_energy import ConditionalEnergyModel
    from pyro_vmt.conditional_vae import ConditionalVAE
    from pyro_vmt.distribution import EnergyDistribution
    from pyro_vmt.energy import EnergyModel
    from pyro_vmt.guide_teaching import MCMCTeaching, MCMCTeachingInfo
    from pyro_vmt.kernel import LangevinKernel
    from pyro_vmt.langevin import Langevin, LangevinInfo, LangevinState, init, step
    from pyro_vmt.teaching import TeachingInfo, VariationalMCMCTeaching
    from pyro_vmt.vae import VAE
    from pyro_vmt.warmstart import initial_params_from_guide
    from pyro_vmt.device import device_name, numpy_call, place, select_device, to_numpy
    from pyro_vmt.rng import RNG, as_rng

#: public name -> the module that defines it
_WHERE = {
    "EnergyModel": "energy",
    "VAE": "vae",
    "VariationalMCMCTeaching": "teaching",
    "TeachingInfo": "teaching",
    "ConditionalEnergyModel": "conditional_energy",
    "ConditionalVAE": "conditional_vae",
    "ConditionalVariationalMCMCTeaching": "conditional",
    "EnergyDistribution": "distribution",
    "Langevin": "langevin",
    "LangevinState": "langevin",
    "LangevinInfo": "langevin",
    "init": "langevin",
    "step": "langevin",
    "LangevinKernel": "kernel",
    "initial_params_from_guide": "warmstart",
    "RNG": "rng",
    "as_rng": "rng",
    "select_device": "device",
    "device_name": "device",
    "place": "device",
    "to_numpy": "device",
    "numpy_call": "device",
    "MCMCTeaching": "guide_teaching",
    "MCMCTeachingInfo": "guide_teaching",
}

#: the one interface: these names, with the same signatures, in both backends
__all__ = [
    "EnergyModel", "VAE", "VariationalMCMCTeaching", "TeachingInfo", "ConditionalEnergyModel",
    "ConditionalVAE", "ConditionalVariationalMCMCTeaching", "EnergyDistribution", "Langevin",
    "LangevinState", "LangevinInfo", "init", "step", "LangevinKernel", "initial_params_from_guide",
    "RNG", "as_rng", "select_device", "device_name", "place", "to_numpy", "numpy_call",
    "MCMCTeaching", "MCMCTeachingInfo",
]


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__))
