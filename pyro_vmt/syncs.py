"""Counting host syncs of Torch code on any device, the CPU included.

A host sync is any point where Python needs a tensor's value: ``.item()``,
``bool(t)``, ``float(t)``, ``int(t)``, ``.tolist()``, ``.numpy()``, ``.nonzero()``.
On a GPU each one waits for every queued kernel; on the CPU they cost little, so
they go unnoticed there. [`count_host_syncs()`][pyro_vmt.syncs.count_host_syncs] patches these entry points and
counts the calls made on tensors, wherever they come from (the library, Pyro,
torch's Python code), so a test on the CPU can bound what a GPU run would wait for.
``torch.profiler`` gives the same count on a GPU (``cudaStreamSynchronize`` /
``cudaMemcpyAsync`` device-to-host events; ``benchmarks/gpu_smoke.py``).

Calls on tensors that stay on the host when the model is on a GPU (the step
counter of a non-capturable ``torch.optim.Adam``, a CPU generator's state) are
counted too, so the CPU count is an upper bound.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["count_host_syncs", "SYNC_METHODS"]

#: The ``torch.Tensor`` methods that bring a value to the host.
SYNC_METHODS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "nonzero")


@contextmanager
def count_host_syncs() -> Iterator[Counter]:
    """Within the block, count calls of `SYNC_METHODS` on tensors (a ``Counter`` by method name).

    Examples
    --------
    >>> import torch
    >>> with count_host_syncs() as syncs:
    ...     _ = float(torch.ones(3).sum()) + (torch.ones(2) > 0).all().item()
    >>> sum(syncs.values())
    2
    """
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def counting(name, fn):
        def wrapper(self, *args, **kwargs):
            counts[name] += 1
            return fn(self, *args, **kwargs)
        return wrapper

    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, counting(name, fn))
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
