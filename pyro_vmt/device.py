"""Where a Torch run lives, and the way back to NumPy for metrics and plots.

The application layer (`vmt.app`) reaches devices and arrays only through these
functions, which [`numpyro_vmt.device`][numpyro_vmt.device] mirrors for JAX.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

__all__ = ["select_device", "device_name", "place", "to_numpy", "numpy_call"]


def select_device(device: Optional[str] = None, threads: int = 1) -> torch.device:
    """The ``torch.device`` a run should use, and torch's intra-op thread count.

    Parameters
    ----------
    device : str, optional
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"gpu"`` (an alias of ``"cuda"``); ``None``
        picks a GPU when torch sees one, else the CPU.
    threads : int
        Intra-op threads (``0`` keeps torch's default). The small default networks run
        fastest on one thread, and a multi-threaded torch slows down by orders of
        magnitude on a busy machine.
    """
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        dev = torch.device(device.replace("gpu", "cuda") if device else
                           "cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as e:
        raise ValueError(f"--device {device}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch sees no CUDA device")
    return dev


def device_name(device: Optional[torch.device] = None) -> str:
    """A readable name of ``device`` (the CPU when ``None``)."""
    return str(device or torch.device("cpu"))


def place(module: Any, device: Optional[torch.device]) -> Any:
    """``module`` moved to ``device`` (unchanged when ``device`` is ``None``)."""
    return module if device is None or module is None else module.to(device)


def to_numpy(x: Any) -> np.ndarray:
    """A tensor on any device (or anything array-like) as a NumPy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    return np.asarray(x)


def numpy_call(module: torch.nn.Module, fn: Callable, *arrays: Any) -> Any:
    """``fn`` (a method of ``module``) on NumPy arrays, without gradients; NumPy arrays out."""
    p = next(module.parameters())
    with torch.no_grad():
        out = fn(*(torch.as_tensor(np.asarray(a), dtype=p.dtype, device=p.device) for a in arrays))
    return tuple(to_numpy(o) for o in out) if isinstance(out, tuple) else to_numpy(out)
