"""Built-in data: 2-D densities with exact log-densities, scikit-learn's 8×8 digits,
the supervised tasks ([`vmt.data.tasks`][vmt.data.tasks]), and the validation of user data
(NumPy and SciPy only)."""

from vmt.data.datasets import Dataset, load_dataset, load_digits
from vmt.data.densities import DENSITIES, Density2D, EightGaussians, Grid25, Ring8, Rings, TwoSpirals, get_density
from vmt.data.validation import validate_data

__all__ = [
    "DENSITIES", "Dataset", "Density2D", "EightGaussians", "Grid25", "Ring8", "Rings", "TwoSpirals",
    "get_density", "load_dataset", "load_digits", "validate_data",
]
