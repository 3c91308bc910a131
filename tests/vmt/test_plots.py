"""Tests of vmt.evaluation.plots (files are valid PNGs, inputs are validated) and of the
backend-neutral modules' import hygiene."""

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from vmt.data import Grid25, load_digits
from vmt.evaluation.plots import _moving_average, plot_digits, plot_energy_2d, plot_history, plot_samples_2d

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_size=(100, 100)):
    path = Path(path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] >= min_size[0] and pixels.shape[1] >= min_size[1]
    assert pixels.std() > 0  # something was drawn


def gaussian_energy(x):
    return 0.5 * (x**2).sum(1)


def test_plot_samples_2d_writes_png(tmp_path):
    grid = Grid25()
    samples = grid.sample(500, 1).astype(np.float64)
    samples[:3] = np.nan  # diverged chains are left out, not an error
    out = plot_samples_2d(samples, grid.sample(500, 0), tmp_path / "new" / "dir" / "s.png", title="t")
    assert isinstance(out, Figure)
    assert_png(tmp_path / "new" / "dir" / "s.png")
    plot_samples_2d(grid.sample(10, 2), grid.sample(10, 3), str(tmp_path / "b.png"), bounds=(-5, 5))
    assert_png(tmp_path / "b.png")


def test_plot_energy_2d_writes_png(tmp_path):
    plot_energy_2d(gaussian_energy, (-3, 3), tmp_path / "e.png", samples=np.zeros((5, 2)), num_points=50)
    assert_png(tmp_path / "e.png")


def test_plot_digits_writes_png(tmp_path):
    images = load_digits().test[:10]
    plot_digits(images, tmp_path / "d.png", title="digits")
    assert_png(tmp_path / "d.png")
    plot_digits(images.reshape(10, 8, 8), tmp_path / "d2.png", nrow=2)
    assert_png(tmp_path / "d2.png", min_size=(50, 50))


def test_plot_samples_2d_rejects_bad_input(tmp_path):
    good = np.zeros((10, 2))
    with pytest.raises(ValueError, match=r"samples must be .*shape \(n, 2\), got shape \(10, 3\)"):
        plot_samples_2d(np.zeros((10, 3)), good, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"data has event shape \(3,\), expected \(2,\)"):
        plot_samples_2d(good, np.zeros((10, 3)), tmp_path / "x.png")
    with pytest.raises(ValueError, match="data contains 1 non-finite"):
        plot_samples_2d(good, np.array([[0.0, np.nan]]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="bounds"):
        plot_samples_2d(good, good, tmp_path / "x.png", bounds=(1, -1))
    assert not (tmp_path / "x.png").exists()


def test_plot_energy_2d_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"energy_fn returned shape \(100, 1\)"):
        plot_energy_2d(lambda x: gaussian_energy(x)[:, None], (-3, 3), tmp_path / "e.png", num_points=10)
    with pytest.raises(ValueError, match="100 non-finite energies"):
        plot_energy_2d(lambda x: np.full(len(x), np.inf), (-3, 3), tmp_path / "e.png", num_points=10)
    with pytest.raises(ValueError, match="num_points must be at least 2"):
        plot_energy_2d(gaussian_energy, (-3, 3), tmp_path / "e.png", num_points=1)
    with pytest.raises(ValueError, match=r"samples must be .*\(n, 2\)"):
        plot_energy_2d(gaussian_energy, (-3, 3), tmp_path / "e.png", samples=np.zeros(4), num_points=10)


def test_plot_digits_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"images have shape \(63,\) each, expected \(64,\) or \(8, 8\)"):
        plot_digits(np.zeros((4, 63)), tmp_path / "d.png")
    with pytest.raises(ValueError, match="images contains 1 non-finite"):
        plot_digits(np.array([[np.nan] + [0.0] * 63]), tmp_path / "d.png")
    with pytest.raises(ValueError, match="nrow=5 is more than the 4 images"):
        plot_digits(np.zeros((4, 64)), tmp_path / "d.png", nrow=5)
    with pytest.raises(ValueError, match="image_shape"):
        plot_digits(np.zeros((4, 64)), tmp_path / "d.png", image_shape=8)


def test_plot_history_writes_png(tmp_path):
    rng = np.random.default_rng(0)
    history = {"loss": rng.standard_normal(300), "vae_loss": np.full(300, np.nan), "grad_norm": np.arange(300)}
    plot_history(history, tmp_path / "h" / "history.png", title="run")
    assert_png(tmp_path / "h" / "history.png")
    plot_history({"loss": np.zeros(0)}, tmp_path / "empty.png")  # fit(num_iters=0)
    assert_png(tmp_path / "empty.png")


def test_plot_history_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="non-empty mapping"):
        plot_history([1.0, 2.0], tmp_path / "h.png")
    with pytest.raises(ValueError, match=r"history\['loss'\] must be a 1-D real array, got shape \(3, 2\)"):
        plot_history({"loss": np.zeros((3, 2))}, tmp_path / "h.png")


def test_moving_average_skips_non_finite_values():
    values = np.array([1.0, np.nan, 3.0, 5.0, np.inf, np.nan, np.nan])
    np.testing.assert_allclose(_moving_average(values, 2), [1.0, 1.0, 3.0, 4.0, 5.0, np.nan, np.nan])
    np.testing.assert_allclose(_moving_average(np.arange(5.0), 1), np.arange(5.0))


def test_plots_return_their_figure_and_draw_into_given_axes(tmp_path):
    """As matplotlib and ArviZ users expect: a Figure back, ``ax=`` honoured, no file without ``path``."""
    grid = Grid25()
    fig = Figure()
    axes = fig.subplots(2, 3).ravel()
    assert plot_samples_2d(grid.sample(50, 1), grid.sample(50, 0), ax=axes[:2]) is fig
    assert len(axes[1].collections) == 1 and axes[1].get_title().startswith("samples (50)")
    assert plot_energy_2d(gaussian_energy, (-3, 3), num_points=10, ax=axes[2:4]) is fig
    assert len(axes[2].images) == 1 and len(axes[3].images) == 1
    assert plot_digits(load_digits().test[:4], ax=axes[4]) is fig and len(axes[4].images) == 1
    history_axes = Figure().subplots(1, 2)
    assert plot_history({"a": np.arange(5.0), "b": np.ones(5)}, ax=history_axes) is history_axes[0].figure
    assert len(history_axes[1].lines) == 2
    new = plot_digits(load_digits().test[:4])
    assert isinstance(new, Figure) and new is not fig
    with pytest.raises(ValueError, match="ax must hold 2 matplotlib Axes"):
        plot_samples_2d(grid.sample(5, 1), grid.sample(5, 0), ax=axes[0])
    assert not list(tmp_path.iterdir())
