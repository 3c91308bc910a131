"""PyTorch + Pyro backend of pyro-vmt.

The same public names, with the same signatures, as :mod:`numpyro_vmt`.
"""

from pyro_vmt import nets
from pyro_vmt.energy import EnergyModel
from pyro_vmt.langevin import Langevin, LangevinInfo, LangevinState, init, step
from pyro_vmt.teaching import TeachingInfo, VariationalMCMCTeaching
from pyro_vmt.vae import VAE

__all__ = [
    "EnergyModel",
    "VAE",
    "Langevin",
    "LangevinState",
    "LangevinInfo",
    "VariationalMCMCTeaching",
    "TeachingInfo",
    "init",
    "step",
]
