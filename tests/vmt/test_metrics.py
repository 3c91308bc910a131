"""Tests of vmt.evaluation.metrics against exact values and Monte Carlo error."""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import norm

from vmt.data import EightGaussians, Grid25, Ring8, load_dataset, load_digits
from vmt.evaluation.metrics import (
    DigitClassifier,
    QuadratureError,
    digit_scores,
    evaluate_energy,
    frechet_distance,
    grid_midpoints,
    heldout_log_likelihood,
    high_quality_probability,
    mmd,
    mode_coverage,
    precision_recall,
)

# ------------------------------------------------------------------ mode coverage


def test_high_quality_probabilities():
    assert high_quality_probability() == pytest.approx((2 * norm.cdf(3) - 1) ** 2, abs=1e-12)
    assert high_quality_probability() == pytest.approx(0.99461, abs=5e-6)
    assert high_quality_probability(criterion="radial") == pytest.approx(1 - math.exp(-4.5), abs=1e-12)
    assert high_quality_probability(criterion="radial") == pytest.approx(0.98889, abs=5e-6)


@pytest.mark.parametrize("criterion", ["per_dimension", "radial"])
def test_perfect_sampler_covers_every_mode(criterion):
    grid = Grid25()
    n = 20_000
    result = mode_coverage(grid.sample(n, seed=0), grid.modes, grid.mode_sd, criterion=criterion)
    p = high_quality_probability(criterion=criterion)
    assert result["modes_covered"] == 25 and result["num_modes"] == 25 and result["num_nonfinite"] == 0
    assert abs(result["high_quality_fraction"] - p) < 3.5 * math.sqrt(p * (1 - p) / n)


def test_sampler_on_five_modes_covers_five():
    grid = Grid25()
    rng = np.random.default_rng(1)
    chosen = grid.modes[[0, 6, 12, 18, 24]]
    n = 5000
    x = chosen[rng.integers(5, size=n)] + grid.mode_sd * rng.standard_normal((n, 2))
    result = mode_coverage(x, grid.modes, grid.mode_sd)
    p = high_quality_probability()
    assert result["modes_covered"] == 5
    assert abs(result["high_quality_fraction"] - p) < 3.5 * math.sqrt(p * (1 - p) / n)


def test_definition_on_hand_made_points():
    modes = np.array([[0.0, 0.0], [10.0, 0.0]])
    x = np.array([[2.9, 2.9], [3.1, 0.0], [9.0, -1.0], [5.1, 0.0]])
    # (2.9, 2.9): within 3 sd in each dimension, but 4.1 sd away radially.
    per_dim = mode_coverage(x, modes, sd=1.0)
    assert per_dim == {"modes_covered": 2, "num_modes": 2, "high_quality_fraction": 0.5, "num_nonfinite": 0}
    radial = mode_coverage(x, modes, sd=1.0, criterion="radial")
    assert radial["modes_covered"] == 1 and radial["high_quality_fraction"] == 0.25
    off = mode_coverage(x + np.array([0.0, 5.0]), modes, sd=1.0)
    assert off["modes_covered"] == 0 and off["high_quality_fraction"] == 0.0


def test_non_finite_samples_are_counted_not_fatal():
    ring = Ring8()
    x = ring.sample(1000, seed=2).astype(np.float64)
    x[:10, 0] = np.nan
    x[10:20] = np.inf
    result = mode_coverage(x, ring.modes, ring.mode_sd)
    assert result["num_nonfinite"] == 20 and result["modes_covered"] == 8
    assert result["high_quality_fraction"] <= 0.98
    nothing = mode_coverage(np.full((3, 2), np.nan), ring.modes, ring.mode_sd)
    assert nothing == {"modes_covered": 0, "num_modes": 8, "high_quality_fraction": 0.0, "num_nonfinite": 3}


def test_mode_coverage_rejects_bad_arguments():
    modes = Grid25().modes
    with pytest.raises(ValueError, match="sd must be a positive"):
        mode_coverage(np.zeros((3, 2)), modes, sd=0.0)
    with pytest.raises(ValueError, match=r"samples must be .*shape \(n, 2\), got shape \(3, 3\)"):
        mode_coverage(np.zeros((3, 3)), modes, sd=1.0)
    with pytest.raises(ValueError, match="criterion"):
        mode_coverage(np.zeros((3, 2)), modes, sd=1.0, criterion="l1")


# ------------------------------------------------------------------ held-out log-likelihood


def test_heldout_log_likelihood_of_the_true_grid25_energy():
    grid = Grid25()
    test = grid.sample(1000, seed=3)
    result = heldout_log_likelihood(lambda x: -grid.log_prob(x), test, grid.bounds)
    assert abs(result["log_normalizer"]) < 1e-6
    assert result["grid_error"] < 1e-6 and result["num_points"] == 512 and result["boundary_mass"] < 1e-12
    log_p = grid.log_prob(test)
    assert result["log_likelihood"] == pytest.approx(log_p.mean(), abs=1e-6)
    assert result["standard_error"] == pytest.approx(log_p.std(ddof=1) / math.sqrt(1000))
    assert abs(result["log_likelihood"] + grid.entropy) < 3.5 * result["standard_error"]


def test_heldout_log_normalizer_of_an_unnormalised_gaussian():
    # E = |x|²/2 + 3: Z = 2π e^{-3}; the box (−8, 8)² misses ~1e-15 of the mass.
    energy = lambda x: 0.5 * (x**2).sum(1) + 3.0  # noqa: E731
    test = np.random.default_rng(4).standard_normal((500, 2))
    result = heldout_log_likelihood(energy, test, (-8, 8), num_points=128)
    assert result["log_normalizer"] == pytest.approx(math.log(2 * math.pi) - 3.0, abs=1e-9)
    expected = np.mean(-0.5 * (test**2).sum(1)) - math.log(2 * math.pi)
    assert result["log_likelihood"] == pytest.approx(expected, abs=1e-9)


def test_heldout_grid_is_refined_until_converged():
    ring = Ring8()  # sd 0.01: a 64² grid of (−1.5, 1.5)² has cells of 0.047
    result = heldout_log_likelihood(lambda x: -ring.log_prob(x), ring.sample(200, 5), ring.bounds,
                                    num_points=64, max_points=1024)
    assert result["num_points"] > 64 and result["grid_error"] <= 0.01
    assert abs(result["log_normalizer"]) < 0.01


def test_heldout_too_coarse_grid_raises():
    ring = Ring8()
    with pytest.raises(QuadratureError, match="between the 16² and 32² grids"):
        heldout_log_likelihood(lambda x: -ring.log_prob(x), ring.sample(10, 5), ring.bounds,
                               num_points=16, max_points=32)
    assert issubclass(QuadratureError, ValueError)


def test_heldout_warns_when_the_box_cuts_mass_off():
    energy = lambda x: 0.5 * (x**2).sum(1)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="outermost grid cells"):
        result = heldout_log_likelihood(energy, np.zeros((5, 2)), (-2, 2), num_points=64)
    assert result["boundary_mass"] > 1e-3
    inside = (norm.cdf(2) - norm.cdf(-2)) ** 2  # the box holds this fraction of N(0, I)
    assert result["log_normalizer"] == pytest.approx(math.log(2 * math.pi * inside), abs=1e-3)


def test_heldout_rejects_bad_input():
    energy = lambda x: 0.5 * (x**2).sum(1)  # noqa: E731
    with pytest.raises(ValueError, match=r"1 test points lie outside the box \[-2.0, 2.0\]².*row 1"):
        heldout_log_likelihood(energy, np.array([[0.0, 0.0], [2.5, 0.0]]), (-2, 2))
    nan_right = lambda x: np.where(x[:, 0] > 0, np.nan, 0.5 * (x**2).sum(1))  # noqa: E731
    with pytest.raises(ValueError, match="8 non-finite energies on the 4x4 quadrature grid"):
        heldout_log_likelihood(nan_right, np.zeros((1, 2)), (-2, 2), num_points=8)
    with pytest.raises(ValueError, match=r"energy_fn returned shape \(16, 1\)"):
        heldout_log_likelihood(lambda x: energy(x)[:, None], np.zeros((1, 2)), (-2, 2), num_points=8)
    with pytest.raises(ValueError, match="num_points must be even"):
        heldout_log_likelihood(energy, np.zeros((1, 2)), (-2, 2), num_points=7)
    with pytest.raises(ValueError, match="bounds"):
        heldout_log_likelihood(energy, np.zeros((1, 2)), (2, -2))
    with pytest.raises(ValueError, match="event shape"):
        heldout_log_likelihood(energy, np.zeros((3, 3)), (-2, 2))


def test_energy_is_evaluated_in_bounded_chunks():
    sizes = []

    def energy(x):
        sizes.append(len(x))
        return 0.5 * (x**2).sum(1)

    heldout_log_likelihood(energy, np.zeros((10, 2)), (-8, 8), num_points=64, chunk_size=1000)
    assert max(sizes) <= 1000 and sum(sizes) == 64**2 + 32**2 + 10
    points, area = grid_midpoints((-1, 1), 4)
    assert area == 0.25 and points.shape == (16, 2)
    np.testing.assert_allclose(points[:4], [[-0.75, -0.75], [-0.75, -0.25], [-0.75, 0.25], [-0.75, 0.75]])
    np.testing.assert_array_equal(evaluate_energy(lambda x: x[:, 0], points, chunk_size=3), points[:, 0])


# ------------------------------------------------------------------ MMD


def test_mmd_matches_hand_computation():
    x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [2.0]])
    e = math.exp
    expected = e(-0.5) + e(-2.0) - (1 + e(-2.0) + 2 * e(-0.5)) / 2
    assert mmd(x, y, bandwidths=[1.0]) == pytest.approx(expected, abs=1e-12)
    assert mmd(x, y, bandwidths=[1.0, 2.0]) == pytest.approx(
        mmd(x, y, bandwidths=[1.0]) + mmd(x, y, bandwidths=[2.0]), abs=1e-12)


def _permutation_null(x, y, bandwidths, num=200, seed=0):
    pooled, rng = np.concatenate([x, y]), np.random.default_rng(seed)
    values = []
    for _ in range(num):
        perm = rng.permutation(len(pooled))
        values.append(mmd(pooled[perm[: len(x)]], pooled[perm[len(x):]], bandwidths=bandwidths))
    return np.array(values)


def test_mmd_against_its_permutation_distribution():
    """Same distribution: inside the permutation null; different: far outside it."""
    eight, grid = EightGaussians(), Grid25()
    x, y, z = eight.sample(200, 6), eight.sample(200, 7), grid.sample(200, 8)
    bandwidths = [0.5, 1.0, 2.0]
    same = mmd(x, y, bandwidths=bandwidths)
    null = _permutation_null(x, y, bandwidths)
    assert null.min() < same < np.quantile(null, 0.995)
    different = mmd(x, z, bandwidths=bandwidths)
    assert different > 5 * np.quantile(np.abs(_permutation_null(x, z, bandwidths)), 0.995)


def test_mmd_defaults_and_subsampling():
    eight = EightGaussians()
    x, y = eight.sample(3000, 9), eight.sample(300, 10)
    value = mmd(x, y)
    assert value == mmd(x, y)  # fixed seed: deterministic
    assert mmd(x, y, max_points=100, seed=1) != mmd(x, y, max_points=100, seed=2)
    assert abs(value) < 0.05
    with pytest.raises(ValueError, match="at least 2 points"):
        mmd(x[:1], y)
    with pytest.raises(ValueError, match="event shape"):
        mmd(x, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(x, y, bandwidths=[0.0])


# ------------------------------------------------------------------ Fréchet distance


def _exact_moments(rng, n, mean, cov):
    """n points whose sample mean and covariance (ddof=1) are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mean


def _frechet_formula(mu_a, cov_a, mu_b, cov_b):
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(w)) @ v.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a)).sum()
    return ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root


def test_frechet_distance_exact_values():
    rng = np.random.default_rng(11)
    a = _exact_moments(rng, 400, np.zeros(3), np.eye(3))
    assert abs(frechet_distance(a, a)) < 1e-8
    shifted = _exact_moments(rng, 300, np.array([1.0, -2.0, 0.5]), np.eye(3))
    assert frechet_distance(a, shifted) == pytest.approx(1 + 4 + 0.25, abs=1e-8)
    # Diagonal covariances: d² = |Δμ|² + Σ (σ_a − σ_b)².
    diag = _exact_moments(rng, 300, np.array([0.0, 1.0, 0.0]), np.diag([4.0, 1.0, 0.25]))
    assert frechet_distance(a, diag) == pytest.approx(1 + (2 - 1) ** 2 + 0 + (0.5 - 1) ** 2, abs=1e-8)
    # Non-commuting covariances against the symmetric eigenvalue form of the trace.
    m = rng.standard_normal((3, 3))
    cov_a, cov_b = m @ m.T + 0.1 * np.eye(3), np.array([[2.0, 0.9, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 0.5]])
    mu_a, mu_b = rng.standard_normal(3), rng.standard_normal(3)
    fa, fb = _exact_moments(rng, 500, mu_a, cov_a), _exact_moments(rng, 500, mu_b, cov_b)
    assert frechet_distance(fa, fb) == pytest.approx(_frechet_formula(mu_a, cov_a, mu_b, cov_b), abs=1e-8)


def test_frechet_distance_checks_the_matrix_root(monkeypatch):
    import vmt.evaluation.features

    rng = np.random.default_rng(14)
    a, b = rng.standard_normal((50, 2)), rng.standard_normal((50, 2))
    sqrtm = vmt.evaluation.features.linalg.sqrtm
    monkeypatch.setattr(vmt.evaluation.features.linalg, "sqrtm", lambda m: sqrtm(m) + 1e-9j)
    assert frechet_distance(a, b) == pytest.approx(_frechet_formula(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)), abs=1e-8)
    monkeypatch.setattr(vmt.evaluation.features.linalg, "sqrtm", lambda m: sqrtm(m) + 0.5j * np.eye(2))
    with pytest.raises(ValueError, match="imaginary part"):
        frechet_distance(a, b)
    monkeypatch.setattr(vmt.evaluation.features.linalg, "sqrtm", lambda m: 2 * sqrtm(m))
    with pytest.raises(ValueError, match="inaccurate"):
        frechet_distance(a, b)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(ValueError, match="feature dimensions differ: 3 and 4"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 rows"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))


# ------------------------------------------------------------------ precision / recall


def test_precision_recall_hand_example():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # k = 1 radii: all 1
    fake = np.array([[0.5], [10.0]])  # radii 9.5: every real point is covered
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    assert precision_recall(real, real, k=2) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0, k=1) == (0.0, 0.0)


def test_precision_recall_detects_mode_dropping():
    rng = np.random.default_rng(12)
    real = np.concatenate([rng.standard_normal((300, 2)), rng.standard_normal((300, 2)) + 50.0])
    fake = rng.standard_normal((300, 2))  # only the first cluster
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.9
    assert 0.4 < recall <= 0.5  # the far cluster's real points can never be covered


def test_precision_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="more than k=3 rows"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        precision_recall(np.zeros((5, 2)), np.zeros((5, 2)), k=0)


# ------------------------------------------------------------------ digits


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


@pytest.fixture(scope="module")
def classifier(digits):
    return DigitClassifier(seed=0).fit(digits.train, digits.train_labels)


def test_digit_classifier_accuracy_and_features(digits, classifier):
    assert classifier.accuracy(digits.test, digits.test_labels) > 0.9
    feats = classifier.features(digits.test)
    assert feats.shape == (360, 64) and (feats >= 0).all()
    # The features are the hidden layer: the output layer on top reproduces predict().
    mlp = classifier._mlp
    logits = feats @ mlp.coefs_[1] + mlp.intercepts_[1]
    np.testing.assert_array_equal(mlp.classes_[logits.argmax(1)], classifier.predict(digits.test))
    np.testing.assert_array_equal(classifier.features(digits.test.reshape(-1, 8, 8)), feats)


def test_digit_classifier_errors(digits, classifier):
    with pytest.raises(ValueError, match="not fitted"):
        DigitClassifier().features(digits.test)
    with pytest.raises(ValueError, match="x has 63 features per row, the classifier expects 64"):
        classifier.features(digits.test[:, :63])
    with pytest.raises(ValueError, match=r"labels must have shape \(1437,\)"):
        DigitClassifier().fit(digits.train, digits.train_labels[:10])


def test_digit_scores(digits, classifier):
    real_like = digit_scores(digits.train, digits, classifier)
    assert real_like["frechet"] == real_like["frechet_floor"]
    assert real_like["precision"] == real_like["precision_floor"] and real_like["recall"] == real_like["recall_floor"]
    assert 0 < real_like["frechet_floor"] and real_like["precision_floor"] > 0.8 and real_like["recall_floor"] > 0.8
    perfect = digit_scores(digits.test, digits, classifier)
    assert abs(perfect["frechet"]) < 1e-6 and perfect["precision"] == perfect["recall"] == 1.0
    noise = np.random.default_rng(13).uniform(-1, 1, size=(1437, 64))
    with warnings.catch_warnings():
        # Dead ReLU units make the feature covariances singular; that must not warn.
        warnings.simplefilter("error")
        bad = digit_scores(noise, digits, classifier)
    assert bad["frechet"] > 20 * bad["frechet_floor"] and bad["precision"] < 0.05
    with pytest.raises(ValueError, match="image data set with labels"):
        digit_scores(noise, load_dataset("grid25", n_train=10, n_test=10))
    with pytest.raises(ValueError, match=r"samples have 63 values per image, expected \(64,\)"):
        digit_scores(noise[:, :63], digits, classifier)


def test_digit_scores_default_classifier(digits):
    scores = digit_scores(digits.train[:400], digits)
    assert set(scores) == {"frechet", "precision", "recall", "frechet_floor", "precision_floor", "recall_floor"}
    assert all(np.isfinite(v) for v in scores.values())


def test_mode_mass_kl_weighs_the_modes():
    from vmt.evaluation.metrics import mode_mass_kl

    means = np.array([[-2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    weights = np.array([0.7, 0.2, 0.1])

    def energy(x, w=weights, sd=0.2):
        d2 = ((x[:, None, :] - means) ** 2).sum(-1)
        return -np.log((w * np.exp(-d2 / (2 * sd * sd))).sum(1))

    right = mode_mass_kl(energy, means, (-4.0, 4.0), weights=weights, num_points=256)
    np.testing.assert_allclose(right["masses"], weights, atol=1e-6)
    assert abs(right["kl"]) < 1e-6
    # against equal true weights the same model is off by KL(u || w) in closed form
    wrong = mode_mass_kl(energy, means, (-4.0, 4.0), num_points=256)
    np.testing.assert_allclose(wrong["kl"], np.mean(np.log((1 / 3) / weights)), rtol=1e-6)
    with pytest.raises(ValueError, match="weights"):
        mode_mass_kl(energy, means, (-4.0, 4.0), weights=[0.5, 0.5, 0.5])
