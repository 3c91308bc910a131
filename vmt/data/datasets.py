"""Built-in data sets: the 2-D toy densities of [`vmt.data.densities`][vmt.data.densities] and 8×8 digits.

Everything here is NumPy only (no torch, no jax) and needs no network: the 2-D
data are drawn from [`vmt.data.densities`][vmt.data.densities] with a seed, the digits are scikit-learn's
bundled copy of the UCI handwritten digits (1797 images of 8×8 pixels).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from vmt.core.checks import as_count, as_seed
from vmt.data.densities import DENSITIES, Density2D, get_density
from vmt.data.validation import validate_data

__all__ = ["Dataset", "load_dataset", "load_digits"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split with what plots and metrics need to know about it.

    Compared and hashed by identity (``eq=False``), since the fields are arrays.

    Attributes
    ----------
    name : str
        ``"digits"`` or a key of `DENSITIES`.
    train, test : numpy.ndarray
        ``float32`` arrays of shape ``(n, *event_shape)``.
    event_shape : tuple of int
        Shape of one point: ``(2,)`` or ``(64,)``.
    bounds : tuple of float
        ``(low, high)`` box of the data (``(−1, 1)`` for digits).
    density : Density2D or None
        The true density of 2-D data sets.
    image_shape : tuple of int or None
        ``(8, 8)`` for digits.
    train_labels, test_labels : numpy.ndarray or None
        Class labels (digits only).
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    event_shape: tuple
    bounds: Tuple[float, float]
    density: Optional[Density2D] = None
    image_shape: Optional[tuple] = None
    train_labels: Optional[np.ndarray] = None
    test_labels: Optional[np.ndarray] = None


def load_dataset(name: str, n_train: int = 10_000, n_test: int = 2_000, seed: int = 0) -> Dataset:
    """Load a built-in data set by name.

    Parameters
    ----------
    name : str
        ``"digits"`` or one of `DENSITIES` (``"grid25"``, ``"8gaussians"``,
        ``"ring8"``, ``"rings"``, ``"2spirals"``).
    n_train, n_test : int
        Split sizes for the 2-D densities. Checked but not used for ``"digits"``,
        whose split is fixed by [`load_digits()`][vmt.data.datasets.load_digits] (1437 train, 360 test).
    seed : int
        For 2-D data, train and test are drawn from the independent streams
        ``np.random.SeedSequence(seed).spawn(2)``; for digits, the split's seed.

    Returns
    -------
    Dataset
    """
    n_train, n_test = as_count("n_train", n_train), as_count("n_test", n_test)
    if name == "digits":
        return load_digits(seed=seed)
    if name not in DENSITIES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(DENSITIES) + ['digits']}")
    seed_train, seed_test = np.random.SeedSequence(as_seed(seed)).spawn(2)
    density = get_density(name)
    train, test = density.sample(n_train, seed_train), density.sample(n_test, seed_test)
    return Dataset(name, train, test, event_shape=(2,), bounds=density.bounds, density=density)


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's bundled 8×8 digits, scaled to [−1, 1], split by class.

    The 1797 images (pixel values 0..16) are flattened to 64 values and scaled by
    $x/8 - 1$; ``sklearn.model_selection.train_test_split`` with
    ``stratify=labels`` and ``random_state=seed`` makes the split (at the default
    ``test_fraction=0.2``: 1437 train, 360 test). No network access.

    Parameters
    ----------
    seed : int
        Seed of the split.
    test_fraction : float
        Fraction of the images in the test split, in (0, 1).

    Returns
    -------
    Dataset
        ``event_shape=(64,)``, ``image_shape=(8, 8)``, ``bounds=(−1, 1)``, with labels.
    """
    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    bunch = _sk_load_digits()
    x = bunch.data.astype(np.float32) / np.float32(8.0) - np.float32(1.0)
    x_train, x_test, y_train, y_test = train_test_split(
        x, bunch.target, test_size=test_fraction, random_state=as_seed(seed), stratify=bunch.target
    )
    return Dataset("digits", x_train, x_test, event_shape=(64,), bounds=(-1.0, 1.0), image_shape=(8, 8),
                   train_labels=y_train, test_labels=y_test)
