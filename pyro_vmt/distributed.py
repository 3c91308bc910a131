r"""Data-parallel teaching on many processes (Torch): ``torch.distributed``, one rank per device.

With ``mesh=`` (a ``torch.distributed.device_mesh.DeviceMesh`` with a ``"data"``
dimension, or a ``ProcessGroup``) the teacher
([`pyro_vmt.VariationalMCMCTeaching`][pyro_vmt.teaching.VariationalMCMCTeaching]) runs one copy of the iteration per rank:

- every rank receives the same **global** batch of $m$ rows and keeps its block
  $B_r$ of $m/W$ rows ([`split_batch()`][pyro_vmt.distributed.split_batch]); it starts and revises its own
  $n/W$ chains $C_r$ with its own generator ([`rank_seed()`][pyro_vmt.distributed.rank_seed]: rank 0 uses
  the seed itself, so one rank repeats a plain run);
- the gradients of the energy and of the VAE are **averaged** over the $W$ ranks
  with one ``all_reduce`` ([`average()`][pyro_vmt.distributed.average]), which is the gradient of the global loss

  $$
  \mathcal L(\theta) = \frac1W\sum_{r=1}^W\Big(\frac{W}{m}\sum_{j\in B_r} E_\theta(x_j)
  - \frac{W}{n}\sum_{i\in C_r} E_\theta(\tilde x_i)\Big),
  $$

  so every rank takes the same optimiser step and the parameters stay **replicated**
  (rank 0's initial parameters are broadcast once, [`broadcast_parameters()`][pyro_vmt.distributed.broadcast_parameters]);
- the persistent chains of ``correction="mh"`` are **sharded** like the batch: each rank
  keeps, moves and accept-tests its own ``num_samples/W`` chains;
- a replay buffer (``init="persistent"``) is **sharded**: each rank owns ``buffer_size/W``
  rows;
- a chain that diverges on one rank is reported on every rank ([`agree()`][pyro_vmt.distributed.agree], a one-number
  ``all_reduce`` before the gradients'), so no rank waits forever and no parameter moves.

An explicit ``all_reduce`` rather than ``DistributedDataParallel``: the energy is called
inside the Langevin revision for gradients with respect to ``x``, which DDP's
per-``forward`` gradient hooks are not made for (Li et al. 2020, "PyTorch Distributed",
https://arxiv.org/abs/2006.15704, describe the same bucketed all-reduce).

Checkpoints ([`gather()`][pyro_vmt.distributed.gather]): ``save`` is collective; rank 0 writes the parameters, the
optimisers, the whole replay buffer and every rank's generator state. The file loads
into a run with any number of ranks (each takes its block of the buffer); the
generators resume exactly only with the same number of ranks.

Launch: ``torchrun --nproc-per-node N script.py`` (gloo on CPU, nccl on GPU) or
``python -m vmt train --nproc N``; see ``docs/scaling.md``.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from vmt.core.errors import DivergenceError

__all__ = ["DATA_AXIS", "as_group", "num_shards", "rank", "check_divisible", "rank_seed", "rank_generator",
           "split_batch", "agree", "average", "all_checks", "broadcast_parameters", "gather", "gather_rows",
           "rank_rng_state", "is_writer", "launch"]

#: The mesh dimension the batch and the chains are split along.
DATA_AXIS = "data"

Tensor = torch.Tensor


def as_group(mesh: Any) -> Optional[Any]:
    """The process group of a run: ``None`` (one process), a ``DeviceMesh`` with a ``"data"`` dimension or a group."""
    if mesh is None:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("mesh= needs torch.distributed: launch with torchrun (or python -m vmt train --nproc N) "
                         "and call torch.distributed.init_process_group first")
    from torch.distributed.device_mesh import DeviceMesh

    if isinstance(mesh, DeviceMesh):
        names = tuple(mesh.mesh_dim_names or ())
        if DATA_AXIS not in names:
            raise ValueError(f"mesh has dimensions {names} but no {DATA_AXIS!r} dimension: the batch and the chains "
                             f"are split along a dimension named {DATA_AXIS!r}")
        return mesh.get_group(DATA_AXIS)
    if isinstance(mesh, dist.ProcessGroup):
        return mesh
    raise TypeError("mesh must be None, a torch.distributed DeviceMesh with a 'data' dimension or a ProcessGroup, "
                    f"got {type(mesh).__name__}")


def num_shards(group: Optional[Any]) -> int:
    """The number of ranks the batch and the chains are split over (1 without a group)."""
    return 1 if group is None else dist.get_world_size(group)


def rank(group: Optional[Any]) -> int:
    """This process's rank in ``group`` (0 without a group)."""
    return 0 if group is None else dist.get_rank(group)


def check_divisible(what: str, n: int, group: Optional[Any]) -> None:
    """``ValueError`` unless ``n`` rows split evenly over the ranks."""
    w = num_shards(group)
    if n % w:
        raise ValueError(f"{what} is {n}, which does not split evenly over the {w} ranks of the process group: "
                         f"use a multiple of {w}")


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s generator: ``seed`` itself on rank 0, else a hash of ``(seed, rank)``
    (NumPy's ``SeedSequence``), so a run is reproducible for a fixed number of ranks."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2 ** 64, int(rank)]).generate_state(1, np.uint64)[0] % 2 ** 63)


def rank_generator(rng: Any, group: Optional[Any], device: torch.device) -> Optional[torch.Generator]:
    """This rank's training generator, from an int seed (a given ``torch.Generator`` cannot be split)."""
    if isinstance(rng, torch.Generator) or rng is None or isinstance(rng, bool) or \
            not isinstance(rng, (int, np.integer)):
        raise TypeError(f"with mesh= pass rng as an int seed (each rank derives its own generator from the seed and "
                        f"its rank), got {type(rng).__name__}")
    return torch.Generator(device=device).manual_seed(rank_seed(int(rng), rank(group)))


def split_batch(group: Optional[Any], ctx: Optional[Tensor], batch: Tensor, num_samples: Optional[int]
                ) -> Tuple[Optional[Tensor], Tensor, int]:
    """``(ctx, batch, n)`` of this rank: its block of the rows of the global batch (and of its
    context) and its number of chains, ``num_samples / W`` (default: its rows)."""
    if group is None:
        return ctx, batch, num_samples or batch.shape[0]
    check_divisible("the batch size", batch.shape[0], group)
    if num_samples:
        check_divisible("the number of chains (num_samples)", num_samples, group)
    w, r = num_shards(group), rank(group)
    k = batch.shape[0] // w
    ctx = None if ctx is None else ctx[r * k:(r + 1) * k]
    return ctx, batch[r * k:(r + 1) * k], (num_samples // w if num_samples else k)


def agree(group: Optional[Any], failure: Optional[BaseException] = None) -> None:
    """Raise on every rank if any rank failed (``failure``: this rank's error, re-raised here).

    A tiny ``all_reduce`` of a flag, so that a chain that diverges on one rank stops every
    rank before the gradients are exchanged, instead of leaving the others waiting.
    """
    if group is None:
        if failure is not None:
            raise failure
        return
    flag = torch.tensor([float(failure is not None)], device=_device(group))
    dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=group)
    if failure is not None:
        raise failure
    if flag.item():
        raise DivergenceError(f"{int(flag.item())} of {num_shards(group)} ranks failed this iteration (a diverged "
                              "chain there); no parameter was updated")


def _device(group: Any) -> torch.device:
    backend = dist.get_backend(group)
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def average(group: Any, modules: Sequence[Optional[torch.nn.Module]], values: Sequence[Tensor]) -> List[Tensor]:
    """Average the parameter gradients of ``modules`` (in place) and the scalars ``values`` over the ranks.

    One ``all_reduce`` of one flat buffer; returns the averaged ``values``.
    """
    params = [p for m in modules if m is not None for p in m.parameters()]
    like = params[0]
    parts = [like.new_zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in params]
    parts += [torch.as_tensor(v, dtype=like.dtype, device=like.device).detach().reshape(1) for v in values]
    flat = torch.cat(parts)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat = flat / num_shards(group)
    offset = 0
    for p in params:
        block = flat[offset:offset + p.numel()].view_as(p)
        if p.grad is None:
            p.grad = block.to(p.dtype).clone()  # a rank whose iteration failed has no gradient
        else:
            p.grad.copy_(block)
        offset += p.numel()
    return list(flat[offset:])


def all_checks(group: Any, checks: Tensor) -> Tensor:
    """Every rank's vector of iteration checks, stacked ``(W, k)`` (one ``all_gather``, no host sync):
    fetched once, it lets every rank raise the same error for a failure on any rank."""
    device = _device(group)
    local = checks.to(device)
    rows = [torch.empty_like(local) for _ in range(num_shards(group))]
    dist.all_gather(rows, local.contiguous(), group=group)
    return torch.stack(rows)


def broadcast_parameters(group: Any, modules: Sequence[Optional[torch.nn.Module]]) -> None:
    """Copy rank 0's parameters and buffers to every rank (the start of a replicated run)."""
    for m in modules:
        if m is None:
            continue
        for t in list(m.parameters()) + list(m.buffers()):
            with torch.no_grad():
                dist.broadcast(t.data, group=group, group_src=0)


def gather(group: Any, rng_state: Tensor, buffer: Optional[Tensor]) -> Tuple[List[Tensor], Optional[Tensor]]:
    """Every rank's generator state and the whole replay buffer (a collective: call it on every rank)."""
    states: List[Any] = [None] * num_shards(group)
    dist.all_gather_object(states, rng_state.cpu(), group=group)
    return states, gather_rows(group, buffer)


def gather_rows(group: Any, block: Optional[Tensor]) -> Optional[Tensor]:
    """The whole of a tensor whose rows are split over the ranks in rank order (the replay
    buffer, the persistent chains of ``correction="mh"``); ``None`` stays ``None``. A collective."""
    if block is None:
        return None
    blocks = [torch.empty_like(block) for _ in range(num_shards(group))]
    dist.all_gather(blocks, block.contiguous(), group=group)
    return torch.cat(blocks)


def rank_rng_state(group: Optional[Any], state: dict) -> Optional[Tensor]:
    """This rank's generator state in a checkpoint's ``state``; ``None`` when the checkpoint
    was written by another number of ranks (its generators cannot continue here)."""
    saved = state.get("rank_rngs") or [state["rng"]]
    if len(saved) != num_shards(group):
        return None
    return saved[rank(group)]


def is_writer(group: Optional[Any]) -> bool:
    """Whether this process writes checkpoints and outputs: rank 0 of the process group."""
    return group is None or rank(group) == 0


def launch(nproc: int, device: torch.device) -> Tuple[Any, torch.device]:
    """``(mesh, device)`` of one rank of ``vmt train --nproc N`` (started by ``torchrun``).

    Joins the process group torchrun describes in the environment (nccl on GPUs, gloo on
    CPU), puts this rank on GPU ``LOCAL_RANK`` when ``device`` is a GPU, and returns a
    ``DeviceMesh`` with one ``"data"`` dimension over the ``N`` ranks.
    """
    import os

    from torch.distributed.device_mesh import init_device_mesh

    if "LOCAL_RANK" not in os.environ:
        raise ValueError(f"--nproc {nproc} with the pyro backend runs under torchrun: use "
                         f"python -m vmt train --nproc {nproc} ... (which starts it) or torchrun --nproc-per-node "
                         f"{nproc} -m vmt train --nproc {nproc} ...")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != nproc:
        raise ValueError(f"--nproc {nproc}, but torchrun started {dist.get_world_size()} processes")
    return init_device_mesh(device.type, (nproc,), mesh_dim_names=(DATA_AXIS,)), device
