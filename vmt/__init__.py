"""pyro-vmt: variational MCMC teaching for Pyro and NumPyro.

The backend-neutral part: configuration, data, metrics, ArviZ export, plots and the
``vmt`` command line. Importing `vmt` imports neither torch nor jax; use
[`vmt.load_backend()`][vmt.core.api.load_backend] (or import `pyro_vmt` / `numpyro_vmt`) for the
samplers and models.
"""

from vmt.core.api import BACKENDS, available_backends, default_backend, load_backend
from vmt.core.config import TeachingConfig

__all__ = [
    "BACKENDS",
    "TeachingConfig",
    "available_backends",
    "default_backend",
    "load_backend",
]

__version__ = "0.1.0"
