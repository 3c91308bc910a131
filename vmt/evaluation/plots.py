"""Figures for 2-D samples, 2-D energies, digit images and training histories (PNG).

Figures are built as :class:`matplotlib.figure.Figure` objects and saved through the
Agg canvas directly: nothing here imports ``matplotlib.pyplot`` or touches its
global state (no backend switch, no figure registry to leak), so the functions are
safe in scripts, tests and servers alike. NumPy and matplotlib only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.special import logsumexp

from vmt.core.checks import as_count
from vmt.data.validation import validate_data
from vmt.evaluation.metrics import _as_points, _check_bounds, evaluate_energy, grid_midpoints

__all__ = ["plot_samples_2d", "plot_energy_2d", "plot_digits", "plot_history"]

PathLike = Union[str, Path]


def _save(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` as PNG to ``path``, creating parent directories."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    fig.clear()
    return path


def _finite_rows(samples, name: str) -> Tuple[np.ndarray, int]:
    """2-D points of shape (n, 2) with non-finite rows removed, and how many were removed."""
    arr = _as_points(samples, 2, name)
    finite = np.isfinite(arr).all(axis=1)
    return arr[finite], int((~finite).sum())


def _default_bounds(*arrays: np.ndarray) -> Tuple[float, float]:
    pooled = np.concatenate([a for a in arrays if len(a)])
    low, high = float(pooled.min()), float(pooled.max())
    margin = 0.05 * (high - low) or 1.0
    return low - margin, high + margin


def _scatter(ax, points: np.ndarray, bounds: Tuple[float, float], label: str, color: str) -> None:
    ax.scatter(points[:, 0], points[:, 1], s=1.0, alpha=0.5, color=color, linewidths=0, rasterized=True)
    ax.set_xlim(*bounds)
    ax.set_ylim(*bounds)
    ax.set_aspect("equal")
    ax.set_title(label)


def plot_samples_2d(samples, data, path: PathLike, bounds: Optional[Sequence[float]] = None,
                    title: Optional[str] = None) -> Path:
    """Side-by-side scatter plots of ``data`` (left) and model ``samples`` (right).

    Parameters
    ----------
    samples : array_like, shape (n, 2)
        Model samples. Non-finite rows (a diverged chain) are left out, and the
        panel's title says how many.
    data : array_like, shape (m, 2)
        Reference points; must be finite.
    path : str or pathlib.Path
        PNG file to write (parent directories are created).
    bounds : (float, float), optional
        Square plotting box ``[low, high]²``; by default the extent of both sets
        with a 5 % margin.
    title : str, optional
        Figure title.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    data = validate_data(data, event_shape=(2,), name="data").astype(np.float64)
    points, dropped = _finite_rows(samples, "samples")
    box = _check_bounds(bounds) if bounds is not None else _default_bounds(data, points)
    fig = Figure(figsize=(8.0, 4.2))
    left, right = fig.subplots(1, 2)
    _scatter(left, data, box, f"data ({len(data)})", "tab:blue")
    label = f"samples ({len(points)})" + (f", {dropped} non-finite not shown" if dropped else "")
    _scatter(right, points, box, label, "tab:red")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_energy_2d(energy_fn: Callable[[np.ndarray], np.ndarray], bounds: Sequence[float], path: PathLike,
                   samples=None, num_points: int = 200, title: Optional[str] = None) -> Path:
    r"""The learned density and energy of a 2-D energy-based model on a grid.

    Left: :math:`p(x) = e^{-E(x)} / Z` with :math:`Z` the midpoint-rule sum over the
    ``num_points²`` grid on ``bounds`` (the density normalised on the box), with
    ``samples`` on top if given. Right: :math:`E(x) - \min E`, its colour scale
    capped at the 95th percentile over the grid so that structure near the minimum
    stays visible.

    Parameters
    ----------
    energy_fn : callable
        Maps an ``(m, 2)`` float64 array to ``(m,)`` finite energies.
    bounds : (float, float)
        Square box ``[low, high]²``.
    path : str or pathlib.Path
        PNG file to write.
    samples : array_like, shape (n, 2), optional
        Points drawn on the density panel (non-finite rows are left out, and
        counted in the title).
    num_points : int
        Grid points per dimension (at least 2).
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    box = _check_bounds(bounds)
    n = as_count("num_points", num_points)
    if n < 2:
        raise ValueError(f"num_points must be at least 2, got {n}")
    points, area = grid_midpoints(box, n)
    energy = evaluate_energy(energy_fn, points, name=f"{n}x{n} grid points").reshape(n, n)
    log_p = -energy - logsumexp(-energy) - math.log(area)
    fig = Figure(figsize=(9.0, 4.2))
    left, right = fig.subplots(1, 2)
    extent = (box[0], box[1], box[0], box[1])
    # energy[i, j] is at (c[i], c[j]): x varies along rows, so transpose for imshow.
    image = left.imshow(np.exp(log_p).T, origin="lower", extent=extent, cmap="viridis")
    fig.colorbar(image, ax=left, shrink=0.8)
    left.set_title("density exp(−E)/Z on the box")
    if samples is not None:
        shown, dropped = _finite_rows(samples, "samples")
        left.scatter(shown[:, 0], shown[:, 1], s=1.0, color="white", alpha=0.6, linewidths=0, rasterized=True)
        left.set_xlim(box)
        left.set_ylim(box)
        if dropped:
            left.set_title(f"density exp(−E)/Z ({dropped} non-finite samples not shown)")
    shifted = energy - energy.min()
    cap = float(np.percentile(shifted, 95)) or 1.0
    image = right.imshow(shifted.T, origin="lower", extent=extent, cmap="magma", vmin=0.0, vmax=cap)
    fig.colorbar(image, ax=right, shrink=0.8, extend="max")
    right.set_title("energy E − min E (colours capped at 95 %)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _mosaic(images: np.ndarray, nrow: int, pad: int = 1) -> np.ndarray:
    """Tile ``images`` (k, h, w) into a grid of ``nrow`` rows, separated by ``pad`` pixels of NaN."""
    k, h, w = images.shape
    ncol = math.ceil(k / nrow)
    out = np.full((nrow * (h + pad) - pad, ncol * (w + pad) - pad), np.nan)
    for idx, image in enumerate(images):
        r, c = divmod(idx, ncol)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = image
    return out


def plot_digits(images, path: PathLike, image_shape: Sequence[int] = (8, 8), nrow: Optional[int] = None,
                title: Optional[str] = None) -> Path:
    """A grid of grey-scale images with pixel values in [−1, 1].

    Parameters
    ----------
    images : array_like, shape (k, h·w) or (k, h, w)
        Finite pixel values; the colour scale is fixed to [−1, 1] (−1 black, 1
        white), so values outside it show as black or white.
    path : str or pathlib.Path
        PNG file to write.
    image_shape : (int, int)
        ``(h, w)`` of one image.
    nrow : int, optional
        Rows of the grid (default: ``ceil(sqrt(k))``).
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    try:
        h, w = (int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be a pair (height, width), got {image_shape!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"image_shape must be positive, got {image_shape!r}")
    arr = validate_data(images, name="images")
    if arr.shape[1:] not in ((h * w,), (h, w)):
        raise ValueError(f"images have shape {arr.shape[1:]} each, expected ({h * w},) or ({h}, {w})")
    arr = arr.reshape(len(arr), h, w).astype(np.float64)
    rows = as_count("nrow", nrow) if nrow is not None else math.ceil(math.sqrt(len(arr)))
    if rows > len(arr):
        raise ValueError(f"nrow={rows} is more than the {len(arr)} images")
    mosaic = _mosaic(arr, rows)
    fig = Figure(figsize=(max(2.0, 0.12 * mosaic.shape[1]), max(2.0, 0.12 * mosaic.shape[0]) + 0.4))
    ax = fig.subplots()
    cmap = colormaps["gray"].with_extremes(bad="tab:blue")  # the NaN padding between images
    ax.imshow(mosaic, cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` finite values (NaN where there are none)."""
    finite = np.isfinite(values)
    sums = np.cumsum(np.where(finite, values, 0.0))
    counts = np.cumsum(finite)
    sums[window:], counts[window:] = sums[window:] - sums[:-window], counts[window:] - counts[:-window]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / counts, np.nan)


def _history_series(history) -> dict:
    if not isinstance(history, Mapping) or not history:
        raise ValueError(f"history must be a non-empty mapping of name -> 1-D array, got {type(history).__name__}")
    series = {}
    for name, values in history.items():
        arr = np.asarray(values)
        if arr.dtype.kind not in "iuf" or arr.ndim != 1:
            raise ValueError(f"history[{name!r}] must be a 1-D real array, got shape {arr.shape}, dtype {arr.dtype}")
        series[str(name)] = arr.astype(np.float64)
    return series


def plot_history(history: Mapping[str, Sequence[float]], path: PathLike, title: Optional[str] = None,
                 ncols: int = 3) -> Path:
    """One panel per training diagnostic, against the iteration number.

    Parameters
    ----------
    history : mapping of str to 1-D array
        E.g. what ``VariationalMCMCTeaching.fit`` returns: one array per
        ``TeachingInfo`` field. Each panel shows the raw values and their trailing
        mean over ``max(1, n // 50)`` iterations. Non-finite values (e.g. the NaN
        ``vae_loss`` of noise-initialised runs) are gaps, and the panel's title
        counts them; empty series are drawn as empty panels.
    path : str or pathlib.Path
        PNG file to write.
    title : str, optional
    ncols : int
        Panels per row.

    Returns
    -------
    pathlib.Path
    """
    series = _history_series(history)
    ncols = min(as_count("ncols", ncols), len(series))
    nrows = math.ceil(len(series) / ncols)
    fig = Figure(figsize=(3.6 * ncols, 2.6 * nrows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (name, values) in zip(axes, series.items()):
        steps = np.arange(1, len(values) + 1)
        shown = np.where(np.isfinite(values), values, np.nan)
        ax.plot(steps, shown, color="tab:blue", alpha=0.35, linewidth=0.8)
        ax.plot(steps, _moving_average(values, max(1, len(values) // 50)), color="tab:blue", linewidth=1.5)
        bad = int((~np.isfinite(values)).sum())
        ax.set_title(name + (f" ({bad} non-finite)" if bad else ""), fontsize=10)
        ax.set_xlabel("iteration", fontsize=8)
    for ax in axes[len(series):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)
