"""Where a JAX run lives, and the way back to NumPy for metrics and plots.

The application layer (`vmt.app`) reaches devices and arrays only through these
functions, which [`pyro_vmt.device`][pyro_vmt.device] mirrors for Torch.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["select_device", "device_name", "place", "to_numpy", "numpy_call"]


def select_device(device: Optional[str] = None, threads: int = 1) -> Optional[jax.Device]:
    """Make ``device`` JAX's default device; returns ``None`` (arrays then land there uncommitted).

    Returning ``None`` rather than the device keeps the networks' arrays uncommitted,
    so [`place()`][numpyro_vmt.device.place] leaves them alone and the jitted iteration compiles once.

    Parameters
    ----------
    device : str, optional
        ``"cpu"``, ``"gpu"``, ``"cuda:1"``, ... (``cuda`` is an alias of ``gpu``);
        ``None`` keeps JAX's default, a GPU when the installed jaxlib has one.
    threads : int
        Accepted for the same signature as [`pyro_vmt.device.select_device()`][pyro_vmt.device.select_device];
        XLA sizes its own thread pool.
    """
    if not device:
        return None
    platform_name = device.split(":")[0].replace("cuda", "gpu")
    try:
        index = int(device.split(":")[1]) if ":" in device else 0
        dev = jax.devices(platform_name)[index]
    except (RuntimeError, IndexError, ValueError) as e:
        raise ValueError(f"--device {device}: JAX has no such device ({e})") from e
    jax.config.update("jax_default_device", dev)
    return None


def device_name(device: Optional[jax.Device] = None) -> str:
    """A readable name of ``device`` (JAX's default device when ``None``)."""
    return str(device or jax.config.jax_default_device or jax.devices()[0])


def place(module: Any, device: Optional[jax.Device]) -> Any:
    """``module``'s arrays committed to ``device`` (unchanged when ``device`` is ``None``)."""
    if device is None or module is None:
        return module
    arrays, static = eqx.partition(module, eqx.is_array)
    return eqx.combine(jax.device_put(arrays, device), static)


def to_numpy(x: Any) -> np.ndarray:
    """A JAX array (or anything array-like) as a NumPy array."""
    return np.asarray(x)


def numpy_call(module: eqx.Module, fn: Callable, *arrays: Any) -> Any:
    """``fn`` (a method of ``module``) on NumPy arrays, in the module's dtype; NumPy arrays out."""
    dtype = next(a for a in jax.tree.leaves(module) if eqx.is_inexact_array(a)).dtype
    out = fn(*(jnp.asarray(a, dtype=dtype) for a in arrays))
    return tuple(to_numpy(o) for o in out) if isinstance(out, tuple) else to_numpy(out)
