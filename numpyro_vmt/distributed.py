r"""Data-parallel teaching on many devices (JAX): ``jax.sharding`` along a ``"data"`` axis.

With ``mesh=`` the teacher ([`numpyro_vmt.VariationalMCMCTeaching`][numpyro_vmt.teaching.VariationalMCMCTeaching]) places

- the data batch and the chains **sharded** along the mesh axis ``"data"``
  (``NamedSharding(mesh, P("data"))``: device $d$ of $D$ holds rows
  $[d\,m/D, (d+1)\,m/D)$ of the batch and the same block of the $n$ chains);
- the energy and VAE parameters, their optimiser states, the key and the replay buffer
  **replicated** (``NamedSharding(mesh, P())``).

The iteration stays the one jitted function of [`numpyro_vmt.update`][numpyro_vmt.update]: XLA's SPMD
partitioner (GSPMD; Xu et al. 2021, https://arxiv.org/abs/2105.04663) compiles it
into one program per device. The Langevin revision of a chain touches only that chain,
so it runs on each device without communication; the means of the losses

$$
\mathcal L(\theta) = \frac1m\sum_{j=1}^m E_\theta(x_j) - \frac1n\sum_{i=1}^n E_\theta(\tilde x_i)
= \frac1D\sum_{d=1}^D \Big(\frac{D}{m}\sum_{j\in B_d} E_\theta(x_j) - \frac{D}{n}\sum_{i\in C_d} E_\theta(\tilde x_i)\Big)
$$

(and of the ELBO) are partial sums on each device followed by an all-reduce, which is
exactly the average of the per-device gradients. The random draws do not depend on the
sharding (``jax_threefry_partitionable``, the default since JAX 0.5), so a run on
$D$ devices computes the same numbers as a run on one, up to the order of
floating-point sums. The state is replicated, so a checkpoint does not know how many
devices wrote it: it loads into a run on any mesh.

Multi-host: call ``jax.distributed.initialize()`` in every process before building the
teacher, and pass a mesh over ``jax.devices()`` (all hosts' devices). Every process runs
the same program on the same global batch; [`shard()`][numpyro_vmt.distributed.shard] hands each process its own
rows, and only process 0 writes checkpoints ([`is_writer()`][numpyro_vmt.distributed.is_writer]).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "as_mesh", "num_shards", "check_divisible", "shard", "replicate", "constrain", "to_host",
           "is_writer", "launch"]

#: The mesh axis the batch and the chains are split along.
DATA_AXIS = "data"


def as_mesh(mesh: Union[None, int, Sequence[Any], Mesh]) -> Optional[Mesh]:
    """The device mesh of a run: ``None`` (one device), a device count, a list of devices or a ``Mesh``.

    An int ``D`` takes the first ``D`` of ``jax.devices()``; a list of devices becomes a
    one-axis mesh named ``"data"``; a ``jax.sharding.Mesh`` must have a ``"data"`` axis
    (any other axis is replicated over).
    """
    if mesh is None or isinstance(mesh, Mesh):
        if mesh is not None and DATA_AXIS not in mesh.axis_names:
            raise ValueError(f"mesh has axes {tuple(mesh.axis_names)} but no {DATA_AXIS!r} axis: the batch and the "
                             f"chains are split along an axis named {DATA_AXIS!r}")
        return mesh
    if isinstance(mesh, (int, np.integer)) and not isinstance(mesh, bool):
        available = jax.devices()
        if not 1 <= mesh <= len(available):
            raise ValueError(f"mesh={int(mesh)} devices, but JAX sees {len(available)} "
                             f"({available[0].platform}); on CPU, XLA_FLAGS="
                             f"--xla_force_host_platform_device_count={int(mesh)} makes that many")
        return Mesh(np.array(available[:mesh]), (DATA_AXIS,))
    if isinstance(mesh, (list, tuple)) and mesh and all(isinstance(d, jax.Device) for d in mesh):
        return Mesh(np.array(list(mesh)), (DATA_AXIS,))
    raise TypeError("mesh must be None, a device count, a list of jax devices or a jax.sharding.Mesh with a "
                    f"{DATA_AXIS!r} axis, got {type(mesh).__name__}")


def num_shards(mesh: Optional[Mesh]) -> int:
    """How many blocks the batch and the chains are split into (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[DATA_AXIS])


def check_divisible(what: str, n: int, mesh: Optional[Mesh]) -> None:
    """``ValueError`` unless ``n`` rows split evenly over the mesh's ``"data"`` axis."""
    d = num_shards(mesh)
    if n % d:
        raise ValueError(f"{what} is {n}, which does not split evenly over the {d} devices of the mesh's "
                         f"{DATA_AXIS!r} axis: use a multiple of {d}")


def _put(tree: Any, mesh: Optional[Mesh], spec: PartitionSpec) -> Any:
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, spec)

    def put(leaf):
        host = np.asarray(leaf) if jax.process_count() > 1 else leaf
        if jax.process_count() == 1:
            return jax.device_put(host, sharding)
        # multi-host: every process holds the same global value and contributes its own rows
        return jax.make_array_from_callback(np.shape(host), sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def shard(tree: Any, mesh: Optional[Mesh]) -> Any:
    """``tree``'s arrays split along their first axis over the mesh's ``"data"`` axis."""
    return _put(tree, mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Optional[Mesh]) -> Any:
    """``tree``'s arrays copied to every device of the mesh."""
    return _put(tree, mesh, PartitionSpec())


def constrain(tree: Any, mesh: Optional[Mesh], sharded: bool) -> Any:
    """Inside ``jit``: ``tree`` split along its first axis (``sharded``) or replicated over the mesh."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, PartitionSpec(DATA_AXIS) if sharded
                                                                 else PartitionSpec()))


def to_host(tree: Any) -> Any:
    """``tree`` as NumPy arrays; a replicated array spanning other hosts is read from a local copy."""
    def get(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            if not leaf.sharding.is_fully_replicated:
                raise ValueError("cannot read a sharded array that spans several hosts on one host")
            leaf = leaf.addressable_data(0)
        return np.asarray(leaf)

    return jax.tree.map(get, tree)


def is_writer() -> bool:
    """Whether this process writes checkpoints and outputs (process 0 of a multi-host run)."""
    return jax.process_index() == 0


def launch(nproc: int, device: Any = None) -> Tuple[Optional[Mesh], Any]:
    """``(mesh, device)`` of a ``vmt train --nproc N`` run: a mesh of ``N`` devices of this process."""
    return as_mesh(int(nproc)), device
