"""pyro-vmt: variational MCMC teaching for Pyro and NumPyro.

The backend-neutral part: configuration, data, metrics, ArviZ export, plots and the
``vmt`` command line. Importing :mod:`vmt` imports neither torch nor jax; use
:func:`vmt.load_backend` (or import :mod:`pyro_vmt` / :mod:`numpyro_vmt`) for the
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
