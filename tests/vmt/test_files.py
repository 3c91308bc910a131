"""A user's own data: the file loaders on real files, their errors, the data's recipe, and fit on iterables."""

import numpy as np
import pytest

from vmt.app.recipes import RECIPES, recipe_for_data
from vmt.data import load_dataset
from vmt.data.files import load_file


def points(n=300, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 2)).astype(np.float32)


def test_npy_npz_and_csv_give_the_same_split(tmp_path):
    x = points()
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", points=x)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="a,b", comments="", fmt="%.9g")
    a, b, c = (load_file(tmp_path / f"x.{s}", test_fraction=0.25, seed=1) for s in ("npy", "npz", "csv"))
    assert a.train.shape == (225, 2) and a.test.shape == (75, 2) and a.event_shape == (2,)
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_allclose(a.train, c.train, rtol=1e-6)
    assert a.bounds == (float(a.train.min()), float(a.train.max())) and a.density is None
    np.savez(tmp_path / "split.npz", train=x[:200], test=x[200:])
    d = load_file(tmp_path / "split.npz")
    np.testing.assert_array_equal(d.test, x[200:])


def test_images_by_shape(tmp_path):
    imgs = np.random.default_rng(0).uniform(-1, 1, size=(20, 8, 8)).astype(np.float32)
    np.save(tmp_path / "imgs.npy", imgs)
    d = load_file(tmp_path / "imgs.npy", image_shape=(8, 8))
    assert d.event_shape == (64,) and d.image_shape == (8, 8)
    with pytest.raises(ValueError, match=r"rows of 64 values .* but --image-shape 4,4 needs 16"):
        load_file(tmp_path / "imgs.npy", image_shape=(4, 4))
    with pytest.raises(ValueError, match=r"for images give image_shape"):
        load_file(tmp_path / "imgs.npy")


@pytest.mark.parametrize("name, content, message", [
    ("ragged.csv", "a,b\n1,2\n3,4,5\n", r"ragged: line 3 has 3 values, line 2 has 2"),
    ("nan.csv", "1,2\n3,\nnan,4\n5,6\n", r"NaN, inf or empty values in 2 rows: line 2, line 3"),
    ("word.csv", "1,2\n3,abc\n", r"line 2: 'abc' is not a number"),
    ("empty.csv", "a,b\n", r"holds no data rows"),
    ("huge.csv", "1,2\n1e39,3\n", r"beyond float32's range .* first line 2"),
    ("one.csv", "1,2\n", r"1 row; a train/test split needs at least 2"),
    ("flat.csv", "1,1\n1,1\n", r"every value of the data is 1"),
])
def test_csv_errors_name_the_problem_and_the_rows(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        load_file(tmp_path / name)


def test_other_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"data file .*missing.npy does not exist"):
        load_file(tmp_path / "missing.npy")
    np.save(tmp_path / "vec.npy", np.zeros(5))
    with pytest.raises(ValueError, match=r"shape \(5,\); rows are points"):
        load_file(tmp_path / "vec.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=r"without unpickling"):
        load_file(tmp_path / "obj.npy")
    np.savez(tmp_path / "two.npz", a=np.zeros((3, 2)), b=np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"holds the arrays \['a', 'b'\]"):
        load_file(tmp_path / "two.npz")
    with pytest.raises(ValueError, match=r"test_fraction must lie in \(0, 1\)"):
        load_file(tmp_path / "vec.npy", test_fraction=1.5)


def test_the_data_recipe_rule_is_within_a_factor_4_of_the_tuned_steps():
    for name in ["grid25", "8gaussians", "ring8", "rings", "2spirals", "digits"]:
        recipe, why = recipe_for_data(load_dataset(name))
        ratio = recipe.config.step_size / RECIPES[name].config.step_size
        assert 1 / 4.5 < ratio < 4.5, (name, ratio)
        assert "median 10th-neighbour distance" in why


@pytest.fixture(params=["pyro", "numpyro"])
def teacher(request):
    from vmt.core.api import load_backend

    pytest.importorskip("torch" if request.param == "pyro" else "jax")
    b = load_backend(request.param)
    e_net, enc, dec = b.nets.default_networks((2,), 2, hidden=(8,), rng=0)
    return b.VariationalMCMCTeaching(b.EnergyModel(e_net, (2,)), b.VAE(enc, dec, 2, (2,)), rng=0, step_size=0.05,
                                     num_steps=2)


def test_fit_takes_any_iterable_of_batches(teacher):
    x = points(64)
    h = teacher.fit((x[i:i + 16] for i in range(0, 64, 16)), num_iters=10, progress=False)  # a generator: 4
    assert len(h["loss"]) == 4 and teacher.iteration == 4
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.as_tensor(x)), batch_size=16, shuffle=False)  # cycled: 4 per epoch
    h = teacher.fit(loader, num_iters=6, progress=False)
    assert len(h["loss"]) == 6 and teacher.iteration == 10 and np.isfinite(h["loss"]).all()
    for empty in (iter(()), DataLoader(TensorDataset(torch.zeros(0, 2)), batch_size=4)):
        with pytest.raises(ValueError, match="data yielded no batches"):
            teacher.fit(empty, num_iters=1, progress=False)
