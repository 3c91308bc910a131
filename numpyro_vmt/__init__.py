"""JAX + NumPyro backend of pyro-vmt.

The same public names, with the same signatures, as `pyro_vmt`.
"""

from numpyro_vmt import nets
from numpyro_vmt.conditional import ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching
from numpyro_vmt.distribution import EnergyDistribution
from numpyro_vmt.energy import EnergyModel
from numpyro_vmt.guide_teaching import MCMCTeaching, MCMCTeachingInfo
from numpyro_vmt.kernel import LangevinKernel
from numpyro_vmt.langevin import Langevin, LangevinInfo, LangevinState, init, step
from numpyro_vmt.teaching import TeachingInfo, VariationalMCMCTeaching
from numpyro_vmt.vae import VAE
from numpyro_vmt.warmstart import initial_params_from_guide
from numpyro_vmt.device import device_name, numpy_call, place, select_device, to_numpy
from numpyro_vmt.rng import RNG, as_rng

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
