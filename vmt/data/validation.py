"""Validation of user data (NumPy only): one place for the messages that name the problem."""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from vmt.core.checks import as_seed

__all__ = ["validate_data", "numpy_rng"]

SeedLike = Union[int, np.random.Generator, np.random.SeedSequence]


def validate_data(x, event_shape: Optional[tuple] = None, name: str = "data") -> np.ndarray:
    """Return ``x`` as a floating NumPy array of shape ``(batch, *event_shape)``.

    Nothing is ever cleaned or reshaped: every problem raises a ``ValueError`` that
    names it.

    Parameters
    ----------
    x : array_like
        A batch of points; the leading dimension is the batch.
    event_shape : tuple of int, optional
        The expected shape of one point, e.g. ``(2,)`` or ``(64,)``.
    name : str
        What ``x`` is called in error messages.

    Returns
    -------
    numpy.ndarray
        ``float64`` when ``x`` already has a ``float64`` dtype, otherwise ``float32``
        (integers, ``float16`` and untyped Python lists included).

    Raises
    ------
    ValueError
        For a non-numeric dtype (strings, objects, booleans, complex), ragged input,
        fewer than 2 dimensions, an empty batch, a trailing shape other than
        ``event_shape``, or any NaN/inf entry (with the count and the first bad row).
    """
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{name} cannot be converted to a numeric array: {err}") from None
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    dtype = np.float64 if (arr.dtype == np.float64 and hasattr(x, "dtype")) else np.float32
    arr = arr.astype(dtype, copy=False)
    if arr.ndim < 2:
        raise ValueError(
            f"{name} must have a leading batch dimension: got shape {arr.shape}, expected (batch, *event_shape)"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {arr.shape})")
    if event_shape is not None and arr.shape[1:] != tuple(event_shape):
        raise ValueError(f"{name} has event shape {arr.shape[1:]}, expected {tuple(event_shape)}")
    bad_rows = ~np.isfinite(arr.reshape(arr.shape[0], -1)).all(axis=1)
    if bad_rows.any():
        count, first = int((~np.isfinite(arr)).sum()), int(np.argmax(bad_rows))
        raise ValueError(f"{name} contains {count} non-finite entries (NaN or inf); first bad row is {first}")
    return arr


def numpy_rng(seed: SeedLike) -> np.random.Generator:
    """A NumPy generator from an explicit seed; ``None`` is refused (no hidden entropy)."""
    if isinstance(seed, (np.random.Generator, np.random.SeedSequence)):
        return np.random.default_rng(seed)
    if seed is None:
        raise ValueError("seed must be an int, a np.random.Generator or a SeedSequence, got None")
    return np.random.default_rng(as_seed(seed))
