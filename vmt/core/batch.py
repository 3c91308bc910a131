r"""Batches with and without a conditioning input, for both backends (pure Python).

The conditional teacher (``ConditionalVariationalMCMCTeaching``) runs the same code
as the unconditional one with a conditioning input ``ctx``: a batch is then a pair
``(ctx, data)`` and ``ctx`` is passed as the *second* argument of the energy
$E_\theta(y \mid x)$, the decoder $g_\alpha(z, x)$ and the VAE losses
(Xie, Zheng & Li, AAAI 2021, https://arxiv.org/abs/2012.14936, supervised setting).
The helpers here are that convention, written once.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

__all__ = [
    "CONDITIONAL_INITS",
    "with_context",
    "context_and_data",
    "is_conditional",
    "split_pair",
    "shape_text",
    "check_conditional_config",
    "batch_stream",
    "check_batch_size",
]

#: The initialisations the conditional teacher supports. A replay buffer of ``y``
#: (``"persistent"``) has no ``x`` to pair its chains with, so it is refused.
CONDITIONAL_INITS = ("vae", "noise", "generator")


def with_context(fn: Callable, ctx: Optional[Any]) -> Callable:
    """``fn`` itself, or ``fn`` with ``ctx`` passed as its second argument.

    ``E(y | x)``, ``g(z, x)``, ``elbo_loss(y, x, rng)`` and ``joint_loss(y, x, z)`` all
    take the conditioning input second, so one wrapper serves them all.
    """
    return fn if ctx is None else (lambda first, *rest: fn(first, ctx, *rest))


def context_and_data(batch: Any) -> Tuple[Optional[Any], Any]:
    """A validated batch as ``(ctx, data)``; ``ctx`` is ``None`` unless the batch is a pair."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (None, batch)


def is_conditional(model: Any) -> bool:
    """Whether an energy or VAE takes a conditioning input (it has a ``cond_shape``)."""
    return getattr(model, "cond_shape", None) is not None


def split_pair(batch: Any, name: str = "batch") -> Tuple[Any, Any]:
    """``(x, y)`` from a pair (tuple or list of two arrays); ``ValueError`` otherwise."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        what = f"{type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) \
            else type(batch).__name__
        raise ValueError(f"{name} must be a pair (x, y) of arrays with one row per example, got {what}")
    return batch[0], batch[1]


def shape_text(shape: Sequence[int]) -> str:
    """``(n, 3, 4)`` for an event shape ``(3, 4)``: the batched shape, as error messages write it."""
    return f"(n, {', '.join(map(str, shape))})"


def check_conditional_config(config: Any) -> None:
    """Raise ``ValueError`` for options the conditional teacher cannot honour."""
    if config.init not in CONDITIONAL_INITS:
        raise ValueError(f"the conditional teacher supports init in {CONDITIONAL_INITS}, got {config.init!r}: "
                         "a replay buffer of y has no x to pair its chains with")
    if config.num_samples is not None:
        raise ValueError("num_samples must be None for the conditional teacher: every pair (x, y) of a "
                         f"batch gets one Langevin chain, started at its own x; got {config.num_samples!r}")


def batch_stream(data: Any) -> Optional[Iterator[Any]]:
    """The batches of ``data`` when it is an iterable of batches, else ``None`` (an array).

    An array (anything with a ``shape``, NumPy/torch/JAX), a list or a tuple (array
    data, or a pair ``(x, y)``) is data to draw minibatches from; any other iterable
    (a ``torch.utils.data.DataLoader``, a generator of arrays, ``iter(list_of_batches)``)
    gives one batch per iteration. A re-iterable (a ``DataLoader``) is cycled epoch
    after epoch; a one-shot iterator ends when it is exhausted. A batch that is a list
    or tuple of one array (what a ``DataLoader`` over ``TensorDataset(x)`` yields) is
    that array.
    """
    if isinstance(data, (tuple, list, str, bytes)) or hasattr(data, "shape") or hasattr(data, "__array__"):
        return None
    try:
        first = iter(data)
    except TypeError:
        return None

    def batches() -> Iterator[Any]:
        it, empty = first, True
        while True:
            for batch in it:
                empty = False
                yield batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 1 else batch
            if it is data or empty:  # a one-shot iterator, or a re-iterable with no batches
                if empty:
                    raise ValueError("data yielded no batches")
                return
            it = iter(data)
    return batches()


def check_batch_size(batch_size: int, rows: int) -> None:
    """Refuse minibatches larger than the data (they would repeat rows, or run out of memory)."""
    if batch_size > rows:
        raise ValueError(f"batch_size {batch_size} is larger than the data ({rows} rows); minibatches are drawn "
                         f"from the data, so use batch_size <= {rows}")
