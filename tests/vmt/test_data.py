"""Tests of vmt.data: samplers agree with their exact log densities, splits, validation."""

import dataclasses
import math

import numpy as np
import pytest
from scipy.stats import chi2

from vmt.data import (
    DENSITIES,
    Dataset,
    EightGaussians,
    Grid25,
    Ring8,
    Rings,
    TwoSpirals,
    get_density,
    load_dataset,
    load_digits,
    validate_data,
)

NAMES = sorted(DENSITIES)

# Grid points per dimension for midpoint quadrature on each density's box: the cell
# is at most the smallest noise sd, where the rule's error on a Gaussian of sd s is
# about exp(-2π² s²/h²) ≤ 3e-9.
GRID = {"grid25": 200, "8gaussians": 100, "ring8": 300, "rings": 100, "2spirals": 80}


def quadrature(density):
    """Midpoints, probabilities p·h² and log densities on the density's box."""
    low, high = density.bounds
    n = GRID[density.name]
    h = (high - low) / n
    c = low + h * (np.arange(n) + 0.5)
    points = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    log_p = density.log_prob(points)
    return points, np.exp(log_p) * h * h, log_p


@pytest.fixture(scope="module", params=NAMES)
def density_quad(request):
    density = get_density(request.param)
    return density, quadrature(density)


# ------------------------------------------------------------------ densities


@pytest.mark.parametrize("name", NAMES)
def test_sample_and_log_prob_shapes(name):
    density = get_density(name)
    x = density.sample(100, seed=0)
    assert x.shape == (100, 2) and x.dtype == np.float32 and np.isfinite(x).all()
    log_p = density.log_prob(x)
    assert log_p.shape == (100,) and log_p.dtype == np.float64 and np.isfinite(log_p).all()
    assert density.name == name and isinstance(density, DENSITIES[name])
    low, high = density.bounds
    assert low < high and ((x > low) & (x < high)).all()


@pytest.mark.parametrize("name", NAMES)
def test_sampling_is_deterministic_from_the_seed(name):
    density = get_density(name)
    np.testing.assert_array_equal(density.sample(50, 3), density.sample(50, 3))
    assert not np.array_equal(density.sample(50, 3), density.sample(50, 4))
    rng = np.random.default_rng(3)
    first, second = density.sample(50, rng), density.sample(50, rng)
    assert not np.array_equal(first, second)  # a Generator is advanced in place
    np.testing.assert_array_equal(first, density.sample(50, np.random.default_rng(3)))


def test_sample_rejects_bad_arguments():
    density = Grid25()
    for bad_n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            density.sample(bad_n, 0)
    with pytest.raises(ValueError, match="seed"):
        density.sample(10, None)
    with pytest.raises(ValueError, match="seed"):
        density.sample(10, -1)
    with pytest.raises(ValueError, match="event shape"):
        density.log_prob(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        density.log_prob(np.array([[0.0, np.nan]]))


def test_log_prob_integrates_to_one(density_quad):
    _, (_, prob, _) = density_quad
    assert abs(prob.sum() - 1.0) < 1e-5


def test_sample_moments_match_log_prob(density_quad):
    """Sample mean and covariance agree with the moments of exp(log_prob) (z < 4)."""
    density, (points, prob, _) = density_quad
    mean = prob @ points
    centred = points - mean
    cov = (prob[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
    x = density.sample(20_000, seed=11).astype(np.float64)
    z_mean = (x.mean(0) - mean) / (x.std(0, ddof=1) / math.sqrt(len(x)))
    products = (x - mean)[:, :, None] * (x - mean)[:, None, :]
    z_cov = (products.mean(0) - cov) / (products.std(0, ddof=1) / math.sqrt(len(x)))
    assert np.abs(z_mean).max() < 4.0, z_mean
    assert np.abs(z_cov).max() < 4.0, z_cov


def test_samples_fit_log_prob_histogram(density_quad):
    """Pearson χ² test of sample counts in 20×20 boxes against quadrature of exp(log_prob).

    The box edges are edges of quadrature cells (20 divides every GRID size), so each
    box's probability is a plain sum of cells.
    """
    density, (points, prob, _) = density_quad
    low, high = density.bounds
    edges = np.linspace(low, high, 21)
    expected_p = np.histogram2d(points[:, 0], points[:, 1], bins=[edges, edges], weights=prob)[0].ravel()
    n = 20_000
    x = density.sample(n, seed=12)
    counts = np.histogram2d(x[:, 0], x[:, 1], bins=[edges, edges])[0].ravel()
    big = expected_p * n >= 5  # pool the sparse boxes into one cell
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected_p[big], expected_p[~big].sum()) * n
    stat = ((observed - expected) ** 2 / expected).sum()
    assert stat < chi2.ppf(0.999, df=len(observed) - 1), (stat, len(observed))


def test_entropy_by_quadrature(density_quad):
    density, (_, prob, log_p) = density_quad
    assert abs(-(prob * log_p).sum() - density.entropy) < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_entropy_by_monte_carlo(name):
    """−mean log p(x) over 50k samples within 3.5 standard errors (+ rounding to 3 decimals)."""
    density = get_density(name)
    log_p = density.log_prob(density.sample(50_000, seed=21))
    se = log_p.std(ddof=1) / math.sqrt(len(log_p))
    assert abs(-log_p.mean() - density.entropy) < 3.5 * se + 5e-4


def test_entropies_against_references():
    # REFERENCES.md: grid25 0.064 ± 0.002 nats; 8 Gaussians 2.833 (we compute 2.8316).
    assert abs(Grid25().entropy - 0.064) < 0.002
    assert abs(EightGaussians().entropy - 2.833) < 0.002
    assert Ring8().entropy == pytest.approx(math.log(8) + math.log(2 * math.pi * math.e * 1e-4))
    # Overlapping modes: no closed form, no stored value for other settings.
    assert Grid25(sd=0.5).entropy is None and Rings(sd=0.2).entropy is None and TwoSpirals(sd=0.2).entropy is None


def test_mixture_geometry():
    grid = Grid25()
    assert grid.modes.shape == (25, 2) and grid.mode_sd == 0.05
    assert sorted(set(grid.modes.ravel())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    eight = EightGaussians()
    # FFJORD: centres (±1, 0), (0, ±1), (±1/√2, ±1/√2) times 4, plus 0.5·N(0, I), all divided by √2.
    s = 1 / math.sqrt(2)
    ffjord = 4 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]) / math.sqrt(2)
    key = lambda a: sorted(map(tuple, np.round(a, 9)))  # noqa: E731
    assert key(eight.modes) == key(ffjord)
    assert eight.mode_sd == pytest.approx(0.5 / math.sqrt(2))
    ring = Ring8()
    np.testing.assert_allclose(np.linalg.norm(ring.modes, axis=1), 1.0)
    assert ring.mode_sd == 0.01
    assert Rings().modes is None and TwoSpirals().modes is None and TwoSpirals().mode_sd is None


def test_rings_bessel_formula_against_angle_quadrature():
    """p_R(x) = (1/2π) ∫ N(x; R(cos θ, sin θ), s²I) dθ by the periodic trapezoid rule."""
    rings = Rings()
    x = np.array([[0.0, 0.0], [0.7, 0.1], [1.5, -0.2], [-2.0, 1.0], [3.1, 0.0], [0.3, 0.4]])
    theta = np.linspace(0, 2 * np.pi, 4096, endpoint=False)
    p = 0.0
    for radius in rings.radii:
        centres = radius * np.stack([np.cos(theta), np.sin(theta)], -1)
        d2 = ((x[:, None, :] - centres[None]) ** 2).sum(-1)
        p = p + np.exp(-0.5 * d2 / rings.sd**2).mean(1) / (2 * np.pi * rings.sd**2) / len(rings.radii)
    np.testing.assert_allclose(rings.log_prob(x), np.log(p), rtol=0, atol=1e-9)


def test_two_spirals_quadrature_is_converged():
    coarse, fine = TwoSpirals(), TwoSpirals(num_panels=256)
    x = coarse.sample(500, seed=5)
    assert np.abs(coarse.log_prob(x) - fine.log_prob(x)).max() < 1e-4


def test_get_density_unknown_name_lists_valid_ones():
    assert set(DENSITIES) == {"grid25", "8gaussians", "ring8", "rings", "2spirals"}
    with pytest.raises(ValueError, match="valid names.*2spirals.*8gaussians.*grid25"):
        get_density("moons")


# ------------------------------------------------------------------ data sets


def test_load_dataset_2d():
    ds = load_dataset("grid25", n_train=500, n_test=200, seed=1)
    assert ds.train.shape == (500, 2) and ds.test.shape == (200, 2)
    assert ds.train.dtype == ds.test.dtype == np.float32
    assert ds.event_shape == (2,) and ds.bounds == Grid25.bounds and isinstance(ds.density, Grid25)
    assert ds.image_shape is None and ds.train_labels is None
    again = load_dataset("grid25", n_train=500, n_test=200, seed=1)
    np.testing.assert_array_equal(ds.train, again.train)
    np.testing.assert_array_equal(ds.test, again.test)
    other = load_dataset("grid25", n_train=500, n_test=200, seed=2)
    assert not np.array_equal(ds.train, other.train)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.name = "x"


def test_train_and_test_come_from_independent_streams():
    a = load_dataset("8gaussians", n_train=300, n_test=300, seed=0)
    # Independent streams: the test split does not depend on the train size ...
    b = load_dataset("8gaussians", n_train=1000, n_test=300, seed=0)
    np.testing.assert_array_equal(a.test, b.test)
    # ... and shares no point with the train split.
    assert not (a.train[:, None, :] == a.test[None, :, :]).all(-1).any()
    # Sample correlation between paired coordinates is what independence predicts.
    r = np.corrcoef(a.train[:, 0], a.test[:, 0])[0, 1]
    assert abs(r) < 4 / math.sqrt(300)


def test_load_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="valid names.*digits"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="n_train"):
        load_dataset("grid25", n_train=0)
    with pytest.raises(ValueError, match="seed"):
        load_dataset("grid25", seed=-3)


def test_load_digits():
    ds = load_digits(seed=0)
    assert ds.name == "digits" and ds.event_shape == (64,) and ds.image_shape == (8, 8)
    assert ds.bounds == (-1.0, 1.0) and ds.density is None
    assert ds.train.shape == (1437, 64) and ds.test.shape == (360, 64)
    assert ds.train.dtype == np.float32
    both = np.concatenate([ds.train, ds.test])
    assert both.min() == -1.0 and both.max() == 1.0
    np.testing.assert_array_equal((both + 1) * 8, np.round((both + 1) * 8))  # pixels k/8 − 1, k = 0..16
    assert ds.train_labels.shape == (1437,) and ds.test_labels.shape == (360,)
    # Stratified: each class's share of the test split is within one image of 20 %.
    totals = np.bincount(np.concatenate([ds.train_labels, ds.test_labels]))
    assert np.abs(np.bincount(ds.test_labels) - 0.2 * totals).max() <= 1
    np.testing.assert_array_equal(load_digits(seed=0).test, ds.test)
    assert not np.array_equal(load_digits(seed=1).test, ds.test)
    assert load_dataset("digits", seed=0).train.shape == (1437, 64)
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


# ------------------------------------------------------------------ validate_data


def test_validate_data_accepts_and_keeps_values():
    x32 = np.ones((3, 2), dtype=np.float32)
    assert validate_data(x32) is x32
    x64 = np.ones((3, 2))
    out = validate_data(x64)
    assert out.dtype == np.float64 and out is x64
    out = validate_data([[1, 2], [3, 4]], event_shape=(2,))
    assert out.dtype == np.float32 and out.shape == (2, 2)
    assert validate_data(np.arange(6).reshape(3, 2)).dtype == np.float32
    assert validate_data([[0.5, 1.5]]).dtype == np.float32  # untyped Python floats


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([["a", "b"]]), "must be real numbers, got dtype <U1"),
        (np.ones((2, 2), dtype=bool), "must be real numbers, got dtype bool"),
        (np.ones((2, 2), dtype=complex), "must be real numbers, got dtype complex128"),
        ([[1.0, 2.0], [3.0]], "cannot be converted to a numeric array"),
        (np.ones(2), r"must have a leading batch dimension: got shape \(2,\)"),
        (np.float32(1.0), r"must have a leading batch dimension: got shape \(\)"),
        (np.zeros((0, 2)), r"data is an empty batch \(shape \(0, 2\)\)"),
        (np.zeros((4, 3)), r"data has event shape \(3,\), expected \(2,\)"),
        (np.zeros((4, 2, 1)), r"data has event shape \(2, 1\), expected \(2,\)"),
    ],
)
def test_validate_data_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_data(bad, event_shape=(2,))


def test_validate_data_reports_non_finite_entries():
    x = np.zeros((6, 2))
    x[3, 1] = np.nan
    x[5] = np.inf
    with pytest.raises(ValueError, match="samples contains 3 non-finite entries .*first bad row is 3"):
        validate_data(x, name="samples")
    before = x.copy()
    with pytest.raises(ValueError):
        validate_data(x)
    np.testing.assert_array_equal(x, before)  # never cleaned in place


def test_dataset_compares_by_identity():
    ds = load_dataset("ring8", n_train=10, n_test=10)
    assert isinstance(ds, Dataset) and ds == ds and ds != load_dataset("ring8", n_train=10, n_test=10)
    assert hash(ds) == hash(ds)
