"""PyTorch + Pyro backend of pyro-vmt.

The same public names, with the same signatures, as `numpyro_vmt`.
"""

from pyro_vmt import nets
from pyro_vmt.conditional import ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching
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

__all__ = [
    "EnergyModel",
    "VAE",
    "VariationalMCMCTeaching",
    "TeachingInfo",
    "ConditionalEnergyModel",
    "ConditionalVAE",
    "ConditionalVariationalMCMCTeaching",
    "EnergyDistribution",
    "Langevin",
    "LangevinState",
    "LangevinInfo",
    "init",
    "step",
    "LangevinKernel",
    "initial_params_from_guide",
    "RNG",
    "as_rng",
    "select_device",
    "device_name",
    "place",
    "to_numpy",
    "numpy_call",
    "MCMCTeaching",
    "MCMCTeachingInfo",
]
