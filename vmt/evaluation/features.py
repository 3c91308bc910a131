"""Sample quality in a classifier's feature space (NumPy/SciPy/scikit-learn only).

The Fréchet distance between Gaussian fits of two feature sets (as FID), improved
precision/recall (Kynkäänniemi et al. 2019), and the small digit classifier whose
hidden layer gives the features for the 8×8 digits ([`digit_scores()`][vmt.evaluation.features.digit_scores]).
"""

from __future__ import annotations

import warnings
from typing import Optional, Tuple

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist

from vmt.core.checks import as_count, as_seed
from vmt.data import Dataset
from vmt.data.validation import validate_data

__all__ = ["frechet_distance", "precision_recall", "DigitClassifier", "digit_scores"]


def _features(x, name: str) -> np.ndarray:
    arr = validate_data(x, name=name).astype(np.float64)
    return arr.reshape(len(arr), -1)


def frechet_distance(feat_a, feat_b) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets.

    $$
    d^2 = |\mu_a - \mu_b|^2 + \operatorname{tr}\big(\Sigma_a + \Sigma_b
    - 2 (\Sigma_a \Sigma_b)^{1/2}\big),
    $$

    with sample means and covariances (``ddof=1``); the matrix square root is
    ``scipy.linalg.sqrtm``. Round-off can give it a small imaginary part, which is
    dropped; a ``ValueError`` is raised instead of returning a number when that part
    exceeds 1e-3 relative to the largest real diagonal entry, when the root is not
    finite, or when $\|R^2 - \Sigma_a\Sigma_b\| > 10^{-6}\|\Sigma_a\Sigma_b\|$
    (typically: fewer samples than feature dimensions). A singular product, e.g.
    from features that are constant, is fine as long as that residual is small.

    Heusel, Ramsauer, Unterthiner, Nessler & Hochreiter, "GANs trained by a two
    time-scale update rule converge to a local Nash equilibrium", NeurIPS 2017.
    """
    a, b = _features(feat_a, "feat_a"), _features(feat_b, "feat_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance needs at least 2 rows per feature set, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    product = cov_a @ cov_b
    with warnings.catch_warnings():
        # A singular product (e.g. dead ReLU features) makes sqrtm warn; the residual
        # check below decides instead whether the root can be trusted.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(product)
    if not np.isfinite(root).all():
        raise ValueError("sqrtm(cov_a @ cov_b) is not finite; use more samples than feature dimensions")
    if np.iscomplexobj(root):
        imag, scale = np.abs(np.diagonal(root).imag).max(), max(1.0, np.abs(np.diagonal(root).real).max())
        if imag > 1e-3 * scale:
            raise ValueError(f"sqrtm(cov_a @ cov_b) has an imaginary part of {imag:.3g}; "
                             "the covariances are too ill-conditioned (too few samples?)")
        root = root.real
    residual = np.linalg.norm(root @ root - product) / max(np.linalg.norm(product), 1e-300)
    if residual > 1e-6:
        raise ValueError(f"sqrtm(cov_a @ cov_b) is inaccurate (relative residual {residual:.2g})")
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(root))


def _kth_neighbour_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    return np.partition(cdist(x, x), k, axis=1)[:, k]


def _fraction_in_manifold(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Fraction of ``points`` within ``radii[i]`` of some ``centres[i]``."""
    inside = np.zeros(len(points), dtype=bool)
    for start in range(0, len(points), 1024):
        d = cdist(points[start : start + 1024], centres)
        inside[start : start + 1024] = (d <= radii[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(real_feats, fake_feats, k: int = 3) -> Tuple[float, float]:
    r"""Improved precision and recall (k-nearest-neighbour manifolds).

    The real manifold is the union of balls around each real feature vector with
    radius the distance to its k-th nearest real neighbour; likewise for the fake
    one. Precision is the fraction of fake samples inside the real manifold, recall
    the fraction of real samples inside the fake manifold.

    Kynkäänniemi, Karras, Laine, Lehtinen & Aila, "Improved precision and recall
    metric for assessing generative models", NeurIPS 2019, arXiv:1904.06991.
    """
    real, fake = _features(real_feats, "real_feats"), _features(fake_feats, "fake_feats")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} and {fake.shape[1]}")
    k = as_count("k", k)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision_recall needs more than k={k} rows per set, got {len(real)} and {len(fake)}")
    precision = _fraction_in_manifold(fake, real, _kth_neighbour_radii(real, k))
    recall = _fraction_in_manifold(real, fake, _kth_neighbour_radii(fake, k))
    return precision, recall


# ------------------------------------------------------------------------- digits


class DigitClassifier:
    r"""A one-hidden-layer MLP on 8×8 digits whose hidden layer is the feature space.

    A thin wrapper of ``sklearn.neural_network.MLPClassifier(hidden_layer_sizes=
    (hidden_size,), max_iter=max_iter, random_state=seed)`` (ReLU, Adam; about 240
    epochs to converge on the default digits split, > 97 % test accuracy).
    `features()` recomputes the hidden activations $\mathrm{relu}(x W_1 +
    b_1)$ from ``coefs_`` and ``intercepts_``. Training runs with a single BLAS
    thread: the matrices are tiny, and several BLAS threads on a busy machine made it
    ten times slower.
    """

    def __init__(self, seed: int = 0, hidden_size: int = 64, max_iter: int = 500):
        from sklearn.neural_network import MLPClassifier

        self.seed = as_seed(seed)
        self.hidden_size = as_count("hidden_size", hidden_size)
        self._mlp = MLPClassifier(hidden_layer_sizes=(self.hidden_size,), max_iter=as_count(
            "max_iter", max_iter), random_state=self.seed)

    def fit(self, x, labels) -> "DigitClassifier":
        """Train on images ``x`` (shape (n, 64) or (n, 8, 8)) with integer ``labels``."""
        x = _features(x, "x")
        labels = np.asarray(labels)
        if labels.shape != (len(x),):
            raise ValueError(f"labels must have shape ({len(x)},), got {labels.shape}")
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            self._mlp.fit(x, labels)
        return self

    def _checked(self, x) -> np.ndarray:
        if not hasattr(self._mlp, "coefs_"):
            raise ValueError("DigitClassifier is not fitted: call fit(x, labels) first")
        x = _features(x, "x")
        if x.shape[1] != self._mlp.coefs_[0].shape[0]:
            expected = self._mlp.coefs_[0].shape[0]
            raise ValueError(f"x has {x.shape[1]} features per row, the classifier expects {expected}")
        return x

    def features(self, x) -> np.ndarray:
        """Hidden-layer activations, shape ``(n, hidden_size)``."""
        x = self._checked(x)
        return np.maximum(x @ self._mlp.coefs_[0] + self._mlp.intercepts_[0], 0.0)

    def predict(self, x) -> np.ndarray:
        """Predicted labels, shape ``(n,)``."""
        return self._mlp.predict(self._checked(x))

    def accuracy(self, x, labels) -> float:
        """Fraction of ``x`` classified as ``labels``."""
        return float((self.predict(x) == np.asarray(labels)).mean())


def digit_scores(samples, dataset: Dataset, classifier: Optional[DigitClassifier] = None, k: int = 3) -> dict:
    """Fréchet distance and precision/recall of generated digits, with their floor.

    Everything is measured in the hidden-layer features of ``classifier`` (by
    default a [`DigitClassifier`][vmt.evaluation.features.DigitClassifier] with seed 0 fitted on ``dataset.train``).
    The generated ``samples`` are compared with ``dataset.test`` (the reference,
    "real" set). The *floor* is the same comparison with the training images in
    place of the samples: what real held-out digits score. The Fréchet distance is
    biased upwards at small sample sizes, so pass as many samples as there are
    training images (1437 at the default split) for a like-for-like floor.

    Returns
    -------
    dict
        ``frechet``, ``precision``, ``recall``, ``frechet_floor``,
        ``precision_floor``, ``recall_floor``.
    """
    if dataset.image_shape is None or dataset.train_labels is None:
        raise ValueError(f"digit_scores needs an image data set with labels, got {dataset.name!r}")
    samples = validate_data(samples, name="samples")
    samples = samples.reshape(len(samples), -1)
    if samples.shape[1:] != tuple(dataset.event_shape):
        raise ValueError(f"samples have {samples.shape[1]} values per image, expected {dataset.event_shape}")
    if classifier is None:
        classifier = DigitClassifier(seed=0).fit(dataset.train, dataset.train_labels)
    real, train, fake = (classifier.features(a) for a in (dataset.test, dataset.train, samples))
    precision, recall = precision_recall(real, fake, k)
    precision_floor, recall_floor = precision_recall(real, train, k)
    return {"frechet": frechet_distance(fake, real), "precision": precision, "recall": recall,
            "frechet_floor": frechet_distance(train, real), "precision_floor": precision_floor,
            "recall_floor": recall_floor}
