r"""The K-step Langevin loop under ``torch.compile`` (CUDA graphs on a GPU), with an eager fallback.

On a GPU an eager Torch iteration is bound by kernel launches: every step of the
revision $x^{(k+1)} = x^{(k)} - \tfrac{\delta^2}{2}\nabla_x E_\theta(x^{(k)}) + \delta\sigma\xi_k$
is a forward and a backward pass of the energy network, tens of small kernels, each
launched from Python. [`CompiledRun`][pyro_vmt.capture.CompiledRun] hands the whole unrolled loop (the same
`pyro_vmt.langevin._step()` the eager sampler runs, with ``∇ₓE`` by
``torch.autograd.grad``) to ``torch.compile``: with ``mode="reduce-overhead"`` on CUDA
the loop becomes one CUDA graph, replayed once per iteration; on the CPU Inductor
fuses it into a few C++ kernels.

The noise $\xi_{0..K-1}$ (and MALA's uniforms) is drawn from the training
generator before the loop, in one draw, so the captured graph holds no RNG and the
stream is the same whether the loop ran compiled or, after a fallback, eagerly.
A network that ``torch.compile`` cannot capture falls back to the eager loop with a
one-line warning; the time of the first (compiling) call is kept in ``seconds``.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Optional, Tuple

import torch

from pyro_vmt.langevin import Langevin, LangevinInfo, LangevinState, _step
from vmt.core.checkpoint import one_line

__all__ = ["CompiledRun", "resolve_compile"]

Tensor = torch.Tensor
log = logging.getLogger("pyro_vmt")


def resolve_compile(compile, device: torch.device) -> bool:
    """Whether to compile: ``True``/``False`` as given, ``"auto"`` on CUDA only (see docs/benchmarks.md)."""
    if compile == "auto":
        return device.type == "cuda"
    if isinstance(compile, bool):
        return compile
    raise ValueError(f"compile must be 'auto', True or False, got {compile!r}")


class CompiledRun:
    """``run(gen, start, num_steps) -> (LangevinState, LangevinInfo)`` of ``sampler``, compiled.

    Parameters
    ----------
    sampler : Langevin
    device : torch.device
        ``mode="reduce-overhead"`` (CUDA graphs) on CUDA, Inductor's default elsewhere.

    Attributes
    ----------
    seconds : float or None
        Wall time of the first call (compilation and one run); ``None`` before it.
    failed : str or None
        Why compilation was given up (the loop then runs eagerly), else ``None``.
    """

    def __init__(self, sampler: Langevin, device: torch.device):
        self.sampler = sampler
        self.cuda = device.type == "cuda"
        self.seconds: Optional[float] = None
        self.failed: Optional[str] = None
        # fullgraph: one graph or none (a graph break would leave launches and syncs between pieces)
        self._fn = torch.compile(self._loop, mode="reduce-overhead" if self.cuda else None, dynamic=False,
                                 fullgraph=True)

    def _loop(self, x: Tensor, e: Tensor, g: Tensor, noise: Optional[Tensor], uniform: Optional[Tensor]):
        s = self.sampler
        h, scale = 0.5 * s.step_size * s.step_size, s.step_size * s.noise_scale
        state, infos = LangevinState(x, e, g), []
        for k in range(noise.shape[0] if noise is not None else uniform.shape[0]):
            state, info = _step(None, state, s.potential_fn, h, scale, s.adjust,
                                None if noise is None else noise[k], None if uniform is None else uniform[k])
            infos.append(info)
        return tuple(state) + tuple(torch.stack(f) for f in zip(*infos))

    def __call__(self, gen: torch.Generator, start: LangevinState, num_steps: Optional[int] = None
                 ) -> Tuple[LangevinState, LangevinInfo]:
        s = self.sampler
        k = s.num_steps if num_steps is None else num_steps
        x = start.position
        noise = (torch.randn((k,) + tuple(x.shape), generator=gen, device=x.device, dtype=x.dtype)
                 if s.noise_scale > 0 else None)
        uniform = torch.rand((k, x.shape[0]), generator=gen, device=x.device, dtype=x.dtype) if s.adjust else None
        if noise is None and uniform is None:  # noise-free ULA: nothing drawn, the loop needs its length
            noise = torch.zeros((k,) + tuple(x.shape), device=x.device, dtype=x.dtype)
        if self.failed is None:
            first = self.seconds is None
            t0 = time.perf_counter()
            try:
                if self.cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                with torch._dynamo.config.patch(trace_autograd_ops=True):  # ∇ₓE inside the graph
                    out = self._fn(x, start.energy, start.grad, noise, uniform)
            except Exception as e:  # a network torch.compile cannot capture: run it eagerly
                self.failed = f"{type(e).__name__}: {one_line(e)}"
                warnings.warn(f"torch.compile could not capture the Langevin loop of this energy ({self.failed}); "
                              "it runs eagerly", RuntimeWarning, stacklevel=3)
            else:
                if first:
                    self.seconds = time.perf_counter() - t0
                    log.info("pyro_vmt: Langevin loop compiled in %.1f s", self.seconds)
                # copies: a CUDA graph's outputs are overwritten by its next replay
                out = [o.clone() for o in out] if self.cuda else out
                return LangevinState(*out[:3]), LangevinInfo(*out[3:])
        return s._run_from(None, start, k, noise, uniform)
