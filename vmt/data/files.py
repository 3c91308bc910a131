"""A user's own data from a file: ``.npy``, ``.npz`` or ``.csv``, one row per point (NumPy only).

Nothing is cleaned or guessed: a missing file, a ragged or non-numeric CSV, rows
with NaN or inf, values beyond ``float32`` (the models' dtype) and an image shape
that does not match the rows are each a ``ValueError`` naming the file, the problem
and the rows involved.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np

from vmt.core.checks import as_real, as_seed, as_shape
from vmt.data.datasets import Dataset

__all__ = ["DATA_SUFFIXES", "load_file", "is_data_file"]

DATA_SUFFIXES = (".npy", ".npz", ".csv")
_F32_MAX = float(np.finfo(np.float32).max)


def is_data_file(name: str) -> bool:
    """Whether ``name`` names a data file (by its suffix) rather than a built-in data set."""
    return Path(str(name)).suffix.lower() in DATA_SUFFIXES


def _read_csv(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """The numbers of a CSV file and the line number of each data row (a header line is skipped)."""
    with open(path, newline="") as f:
        rows = [(i + 1, r) for i, r in enumerate(csv.reader(f)) if r and any(c.strip() for c in r)]
    if rows and not _numeric(rows[0][1]):
        rows = rows[1:]  # a header line
    if not rows:
        raise ValueError(f"{path} holds no data rows")
    width = len(rows[0][1])
    values = []
    for line, row in rows:
        if len(row) != width:
            raise ValueError(f"{path} is ragged: line {line} has {len(row)} values, line {rows[0][0]} has {width}")
        try:
            values.append([float(c) if c.strip() else math.nan for c in row])
        except ValueError:
            bad = next(c for c in row if c.strip() and not _numeric([c]))
            raise ValueError(f"{path}, line {line}: {bad.strip()!r} is not a number") from None
    return np.asarray(values, dtype=np.float64), np.asarray([line for line, _ in rows])


def _numeric(row: Sequence[str]) -> bool:
    try:
        [float(c) for c in row if c.strip()]
        return True
    except ValueError:
        return False


def _read(path: Path) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]:
    """``(data, test or None, the file's line number of each data row or None)``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        x, lines = _read_csv(path)
        return x, None, lines
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path} cannot be read without unpickling objects (save plain numeric arrays): {e}") \
            from None
    except Exception as e:
        raise ValueError(f"{path} is not a readable {suffix} file: {e}") from None
    if suffix == ".npy":
        return loaded, None, None
    with loaded:
        keys = list(loaded.files)
        if {"train", "test"} <= set(keys):
            return loaded["train"], loaded["test"], None
        if len(keys) == 1:
            return loaded[keys[0]], None, None
        raise ValueError(f"{path} holds the arrays {keys}: save one array, or two named 'train' and 'test'")


def _check(x: np.ndarray, path: Path, what: str, lines: Optional[np.ndarray] = None) -> np.ndarray:
    def row_name(i: int) -> str:
        return f"line {lines[i]}" if lines is not None else f"row {i}"

    if x.dtype.kind not in "iuf":
        raise ValueError(f"{path}: {what} must be real numbers, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{path}: {what} has shape {x.shape}; rows are points, so save shape (n, d) "
                         "(for 1-D data, shape (n, 1))")
    if x.shape[0] == 0:
        raise ValueError(f"{path}: {what} has no rows")
    flat = x.reshape(x.shape[0], -1).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(flat).all(1))
    if bad.size:
        named = ", ".join(row_name(int(i)) for i in bad[:5])
        raise ValueError(f"{path}: {what} has NaN, inf or empty values in {bad.size} rows: {named}"
                         + (" ..." if bad.size > 5 else "") + "; remove or fill them first")
    big = np.flatnonzero((np.abs(flat) > _F32_MAX).any(1))
    if big.size:
        raise ValueError(f"{path}: {what} has values beyond float32's range (±3.4e38, the models' dtype) in "
                         f"{big.size} rows, first {row_name(int(big[0]))}; "
                         "rescale the data")
    return x.astype(np.float32)


def load_file(path, test_fraction: float = 0.2, image_shape: Optional[Sequence[int]] = None,
              seed: int = 0) -> Dataset:
    """A [`Dataset`][vmt.data.datasets.Dataset] from a file of points.

    Parameters
    ----------
    path : str or pathlib.Path
        ``.npy`` (one array, shape ``(n, d)`` or ``(n, H, W)``), ``.npz`` (one array, or
        two named ``train`` and ``test``: then the file's split is used) or ``.csv``
        (one point per line, comma-separated; a first line that is not numeric is a
        header; empty cells are missing values and are refused).
    test_fraction : float
        Fraction of the rows held out for evaluation, in (0, 1); the rows are
        shuffled with ``seed`` first.
    image_shape : (int, int), optional
        ``(H, W)``: the rows are images of ``H·W`` pixels (or the array has shape
        ``(n, H, W)``); the default networks then use a convolutional energy and the
        pictures show images.
    seed : int
        Seed of the shuffle before the split.

    Returns
    -------
    Dataset
        ``float32`` ``train``/``test``, ``event_shape=(d,)`` (``(H·W,)`` for images),
        ``bounds`` the data's range, ``density=None``.
    """
    path = Path(path)
    test_fraction = as_real("test_fraction", test_fraction, low=0, high=1, low_open=True, high_open=True)
    seed = as_seed(seed)
    image_shape = None if image_shape is None else as_shape("image_shape", image_shape)
    if image_shape is not None and len(image_shape) != 2:
        raise ValueError(f"image_shape must be (H, W), got {image_shape!r}")
    if not path.exists():
        raise ValueError(f"data file {path} does not exist")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise ValueError(f"{path}: data files must end in {', '.join(DATA_SUFFIXES)}")
    x, test, lines = _read(path)
    x = _check(np.asarray(x), path, "the data" if test is None else "'train'", lines)
    if test is not None:
        test = _check(np.asarray(test), path, "'test'")
    if image_shape is not None:
        h, w = image_shape
        for name, a in (("the data", x), ("'test'", test)):
            if a is not None and math.prod(a.shape[1:]) != h * w:
                raise ValueError(f"{path}: {name} has rows of {math.prod(a.shape[1:])} values "
                                 f"(shape {a.shape[1:]}), but --image-shape {h},{w} needs {h * w}")
        x = x.reshape(len(x), h * w)
        test = None if test is None else test.reshape(len(test), h * w)
    elif x.ndim > 2:
        raise ValueError(f"{path}: the data has shape {x.shape}; for images give image_shape (--image-shape H,W), "
                         "else save rows of shape (n, d)")
    if test is None:
        if len(x) < 2:
            raise ValueError(f"{path} has {len(x)} row; a train/test split needs at least 2")
        n_test = min(len(x) - 1, max(1, int(round(test_fraction * len(x)))))
        order = np.random.default_rng(seed).permutation(len(x))
        x, test = x[order[n_test:]], x[order[:n_test]]
    elif test.shape[1:] != x.shape[1:]:
        raise ValueError(f"{path}: 'train' rows have shape {x.shape[1:]}, 'test' rows {test.shape[1:]}")
    bounds = (float(x.min()), float(x.max()))
    if not bounds[0] < bounds[1]:
        raise ValueError(f"{path}: every value of the data is {bounds[0]:g}; there is nothing to learn")
    return Dataset(str(path), x, test, event_shape=x.shape[1:], bounds=bounds,
                   image_shape=None if image_shape is None else tuple(image_shape))
