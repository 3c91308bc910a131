"""Figures for 2-D samples, 2-D energies, digit images and training histories.

Each function returns its `matplotlib.figure.Figure`, draws into the user's own
axes when given ``ax=`` (as matplotlib and ArviZ plotting functions do), and writes a
PNG when given ``path=``. A new figure is built as a plain ``Figure`` and saved through
the Agg canvas directly: nothing here imports ``matplotlib.pyplot`` or touches its
global state (no backend switch, no figure registry to leak), so the functions are
safe in scripts, tests and servers alike; in a notebook, display the returned figure.
NumPy and matplotlib only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, Union

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


def _finish(fig: Figure, path: Optional[PathLike]) -> Figure:
    """Write ``fig`` as PNG to ``path`` when given (creating parent directories); return it."""
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if fig.canvas is None or type(fig.canvas).__name__ == "FigureCanvasBase":
            FigureCanvasAgg(fig)
        fig.savefig(path, format="png", dpi=100)
    return fig


def _axes(ax: Any, count: int, figsize: Tuple[float, float], **options: Any) -> Tuple[Figure, List[Any]]:
    """``count`` axes: a new figure's, or the user's ``ax`` (one Axes, or a sequence of ``count``)."""
    if ax is None:
        fig = Figure(figsize=figsize, **options)
        axes = np.atleast_1d(fig.subplots(1, count) if count > 1 else fig.subplots()).ravel().tolist()
        return fig, axes
    axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel().tolist()
    if len(axes) < count:
        raise ValueError(f"ax must hold {count} matplotlib Axes for this plot, got {len(axes)}")
    return axes[0].figure, axes[:count]


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


def plot_samples_2d(samples, data, path: Optional[PathLike] = None, bounds: Optional[Sequence[float]] = None,
                    title: Optional[str] = None, ax: Any = None) -> Figure:
    """Side-by-side scatter plots of ``data`` (left) and model ``samples`` (right).

    Parameters
    ----------
    samples : array_like, shape (n, 2)
        Model samples. Non-finite rows (a diverged chain) are left out, and the
        panel's title says how many.
    data : array_like, shape (m, 2)
        Reference points; must be finite.
    path : str or pathlib.Path, optional
        PNG file to write (parent directories are created).
    bounds : (float, float), optional
        Square plotting box ``[low, high]²``; by default the extent of both sets
        with a 5 % margin.
    title : str, optional
        Figure title.
    ax : pair of matplotlib Axes, optional
        Draw the data and the samples there instead of in a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    data = validate_data(data, event_shape=(2,), name="data").astype(np.float64)
    points, dropped = _finite_rows(samples, "samples")
    box = _check_bounds(bounds) if bounds is not None else _default_bounds(data, points)
    fig, (left, right) = _axes(ax, 2, (8.0, 4.2))
    _scatter(left, data, box, f"data ({len(data)})", "tab:blue")
    label = f"samples ({len(points)})" + (f", {dropped} non-finite not shown" if dropped else "")
    _scatter(right, points, box, label, "tab:red")
    if title:
        fig.suptitle(title)
    return _finish(fig, path)


def plot_energy_2d(energy_fn: Callable[[np.ndarray], np.ndarray], bounds: Sequence[float],
                   path: Optional[PathLike] = None, samples=None, num_points: int = 200,
                   title: Optional[str] = None, ax: Any = None) -> Figure:
    r"""The learned density and energy of a 2-D energy-based model on a grid.

    Left: $p(x) = e^{-E(x)} / Z$ with $Z$ the midpoint-rule sum over the
    ``num_points²`` grid on ``bounds`` (the density normalised on the box), with
    ``samples`` on top if given. Right: $E(x) - \min E$, its colour scale
    capped at the 95th percentile over the grid so that structure near the minimum
    stays visible.

    Parameters
    ----------
    energy_fn : callable
        Maps an ``(m, 2)`` float64 array to ``(m,)`` finite energies.
    bounds : (float, float)
        Square box ``[low, high]²``.
    path : str or pathlib.Path, optional
        PNG file to write.
    samples : array_like, shape (n, 2), optional
        Points drawn on the density panel (non-finite rows are left out, and
        counted in the title).
    num_points : int
        Grid points per dimension (at least 2).
    title : str, optional
    ax : pair of matplotlib Axes, optional
        Draw the density and the energy there instead of in a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    box = _check_bounds(bounds)
    n = as_count("num_points", num_points)
    if n < 2:
        raise ValueError(f"num_points must be at least 2, got {n}")
    points, area = grid_midpoints(box, n)
    energy = evaluate_energy(energy_fn, points, name=f"{n}x{n} grid points").reshape(n, n)
    log_p = -energy - logsumexp(-energy) - math.log(area)
    fig, (left, right) = _axes(ax, 2, (9.0, 4.2))
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
    return _finish(fig, path)


def _mosaic(images: np.ndarray, nrow: int, pad: int = 1) -> np.ndarray:
    """Tile ``images`` (k, h, w) into a grid of ``nrow`` rows, separated by ``pad`` pixels of NaN."""
    k, h, w = images.shape
    ncol = math.ceil(k / nrow)
    out = np.full((nrow * (h + pad) - pad, ncol * (w + pad) - pad), np.nan)
    for idx, image in enumerate(images):
        r, c = divmod(idx, ncol)
        out[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = image
    return out


def plot_digits(images, path: Optional[PathLike] = None, image_shape: Sequence[int] = (8, 8),
                nrow: Optional[int] = None, title: Optional[str] = None, ax: Any = None) -> Figure:
    """A grid of grey-scale images with pixel values in [−1, 1].

    Parameters
    ----------
    images : array_like, shape (k, h·w) or (k, h, w)
        Finite pixel values; the colour scale is fixed to [−1, 1] (−1 black, 1
        white), so values outside it show as black or white.
    path : str or pathlib.Path, optional
        PNG file to write.
    image_shape : (int, int)
        ``(h, w)`` of one image.
    nrow : int, optional
        Rows of the grid (default: ``ceil(sqrt(k))``).
    title : str, optional
    ax : matplotlib Axes, optional
        Draw the mosaic there instead of in a new figure.

    Returns
    -------
    matplotlib.figure.Figure
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
    fig, (ax,) = _axes(ax, 1, (max(2.0, 0.12 * mosaic.shape[1]), max(2.0, 0.12 * mosaic.shape[0]) + 0.4))
    cmap = colormaps["gray"].with_extremes(bad="tab:blue")  # the NaN padding between images
    ax.imshow(mosaic, cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return _finish(fig, path)


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


def plot_history(history: Mapping[str, Sequence[float]], path: Optional[PathLike] = None,
                 title: Optional[str] = None, ncols: int = 3, ax: Any = None) -> Figure:
    """One panel per training diagnostic, against the iteration number.

    Parameters
    ----------
    history : mapping of str to 1-D array
        E.g. what ``VariationalMCMCTeaching.fit`` returns: one array per
        ``TeachingInfo`` field. Each panel shows the raw values and their trailing
        mean over ``max(1, n // 50)`` iterations. Non-finite values (e.g. the NaN
        ``vae_loss`` of noise-initialised runs) are gaps, and the panel's title
        counts them; empty series are drawn as empty panels.
    path : str or pathlib.Path, optional
        PNG file to write.
    title : str, optional
    ncols : int
        Panels per row.
    ax : sequence of matplotlib Axes, optional
        One Axes per series, instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    series = _history_series(history)
    ncols = min(as_count("ncols", ncols), len(series))
    nrows = math.ceil(len(series) / ncols)
    if ax is None:
        fig = Figure(figsize=(3.6 * ncols, 2.6 * nrows + 0.4), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    else:
        fig, axes = _axes(ax, len(series), (0.0, 0.0))
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
    return _finish(fig, path)
