"""JAX + NumPyro backend of pyro-vmt.

The same public names, with the same signatures, as :mod:`pyro_vmt`.
"""

from numpyro_vmt import nets
from numpyro_vmt.conditional import ConditionalEnergyModel, ConditionalVAE, ConditionalVariationalMCMCTeaching
from numpyro_vmt.energy import EnergyModel
from numpyro_vmt.guide_teaching import MCMCTeaching, MCMCTeachingInfo
from numpyro_vmt.kernel import LangevinKernel
from numpyro_vmt.langevin import Langevin, LangevinInfo, LangevinState, init, step
from numpyro_vmt.teaching import TeachingInfo, VariationalMCMCTeaching
from numpyro_vmt.vae import VAE
from numpyro_vmt.warmstart import initial_params_from_guide

__all__ = [
    "EnergyModel",
    "VAE",
    "Langevin",
    "LangevinState",
    "LangevinInfo",
    "LangevinKernel",
    "VariationalMCMCTeaching",
    "TeachingInfo",
    "init",
    "step",
    "initial_params_from_guide",
    "ConditionalEnergyModel",
    "ConditionalVAE",
    "ConditionalVariationalMCMCTeaching",
    "MCMCTeaching",
    "MCMCTeachingInfo",
]
