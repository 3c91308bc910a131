"""The supervised tasks, their metrics and their NumPy baselines (no torch, no jax)."""

import math
import warnings

import numpy as np
import pytest

from vmt.data.tasks import TwoBranch, assemble_digits, load_task
from vmt.evaluation.baselines import MixtureDensityNetwork, nearest_completions
from vmt.evaluation.features import DigitClassifier
from vmt.evaluation.task_metrics import branch_scores, class_scores, completion_scores, conditional_log_likelihood


@pytest.fixture(scope="module")
def completion():
    return load_task("completion", seed=0)


@pytest.fixture(scope="module")
def classifier(completion):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short fit: ConvergenceWarning
        return DigitClassifier(seed=0, max_iter=60).fit(assemble_digits(completion.x_train, completion.y_train),
                                                         completion.train_labels)


def test_tasks_have_the_documented_shapes_and_halves_make_the_digits():
    from vmt.data import load_digits

    digits = load_digits(seed=0)
    c = load_task("completion")
    np.testing.assert_array_equal(assemble_digits(c.x_test, c.y_test), digits.test)
    assert c.cond_shape == c.event_shape == (32,) and c.x_train.dtype == np.float32
    k = load_task("class")
    np.testing.assert_array_equal(k.x_train.argmax(1), k.train_labels)
    assert k.x_train.sum(1).tolist() == [1.0] * len(k.x_train) and k.y_train.shape == (1437, 64)
    r = load_task("regression1d", seed=3, n_train=100, n_test=50)
    assert r.x_train.shape == r.y_train.shape == (100, 1) and r.x_test.shape == (50, 1)
    np.testing.assert_array_equal(r.y_train, load_task("regression1d", seed=3, n_train=100, n_test=50).y_train)
    with pytest.raises(ValueError, match="unknown task 'bogus'"):
        load_task("bogus")


def test_two_branch_density_is_normalised_and_matches_its_samples():
    d = TwoBranch()
    y = np.linspace(-4, 4, 8001)[:, None]
    for x in (0.0, 0.3, 2.0):
        p = np.exp(d.log_prob(y, np.full_like(y, x)))
        assert abs(p.sum() * (y[1, 0] - y[0, 0]) - 1) < 1e-9
    s = d.sample(np.full((20000, 1), 2.25), 0)[:, 0]
    # |y| ~ N(1.5, 0.1²) (the branches do not overlap at x = 2.25); sign fair: z-tests at 3.3 SE
    assert abs((s > 0).mean() - 0.5) < 3.3 * 0.5 / math.sqrt(len(s))
    assert abs(np.abs(s).mean() - 1.5) < 3.3 * 0.1 / math.sqrt(len(s))


def test_quadrature_log_likelihood_is_exact_for_known_densities():
    d = TwoBranch()
    r = load_task("regression1d", n_train=10, n_test=300)
    out = conditional_log_likelihood(lambda y, x: -d.log_prob(y, x), r.x_test, r.y_test, (-5, 5), split=0.0)
    truth = d.log_prob(r.y_test, r.x_test).mean()
    assert abs(out["log_likelihood"] - truth) < 1e-6 and out["grid_error"] < 1e-6
    # the truth puts mass 1/2 on each side of 0, so re-balancing changes nothing
    assert abs(out["log_likelihood_balanced"] - truth) < 1e-6
    np.testing.assert_allclose(out["mass_above"], 0.5, atol=1e-6)
    # an energy with the wrong branch weights: only the balanced likelihood forgives it
    tilted = lambda y, x: -d.log_prob(y, x) - 3.0 * (y[:, 0] > 0)  # noqa: E731
    out = conditional_log_likelihood(tilted, r.x_test, r.y_test, (-5, 5), split=0.0)
    assert out["log_likelihood"] < truth - 0.5 and abs(out["log_likelihood_balanced"] - truth) < 1e-6
    with pytest.raises(ValueError, match="outermost cells"):
        conditional_log_likelihood(lambda y, x: 2 * (y[:, 0] - 2.4) ** 2, r.x_test, r.y_test, (-2.5, 2.5))
    with pytest.raises(ValueError, match="use more num_points"):
        conditional_log_likelihood(lambda y, x: -d.log_prob(y, x), r.x_test, r.y_test, (-5, 5), num_points=16)


def test_mixture_density_network_has_the_exact_gradient_and_learns_both_branches():
    r = load_task("regression1d", n_train=500, n_test=500)
    mdn = MixtureDensityNetwork(num_components=2, hidden=16, seed=0)
    loss, grads = mdn.loss_and_grad(r.x_train, r.y_train)
    g = np.random.default_rng(0)
    for i, p in enumerate(mdn.params):
        for _ in range(3):
            idx = tuple(g.integers(0, s) for s in p.shape)
            p[idx] += 1e-6
            up = mdn.loss_and_grad(r.x_train, r.y_train)[0]
            p[idx] -= 2e-6
            down = mdn.loss_and_grad(r.x_train, r.y_train)[0]
            p[idx] += 1e-6
            assert abs((up - down) / 2e-6 - grads[i][idx]) < 1e-5 * max(1.0, abs(grads[i][idx])), (i, idx)
    mdn.fit(r.x_train, r.y_train, num_iters=400, lr=0.02)
    assert mdn.loss_and_grad(r.x_train, r.y_train)[0] < loss - 1.0
    s = mdn.sample(np.full((4000, 1), 3.0), 1)[:, 0]
    assert 0.35 < (s > 0).mean() < 0.65 and abs(np.median(np.abs(s)) - math.sqrt(3)) < 0.2


def test_completion_scores_of_the_truth_and_of_a_constant(completion, classifier):
    truth = completion_scores(completion.y_test[None], completion, classifier)
    assert truth["best_of_k_rmse"] == 0 and truth["diversity"] == 0
    assert truth["accuracy"] == truth["accuracy_real"] > 0.8
    flat = np.stack([completion.y_test, completion.y_test + 0.5])
    s = completion_scores(flat, completion, classifier)
    assert s["k"] == 2 and s["best_of_k_rmse"] == 0 and s["mean_rmse"] == pytest.approx(0.25)
    assert s["diversity"] == pytest.approx(0.5)
    knn = nearest_completions(completion, 3)
    assert knn.shape == (3, 360, 32)
    with pytest.raises(ValueError, match=r"completions must have shape \(k, 360, 32\)"):
        completion_scores(np.zeros((7, 32)), completion, classifier)


def test_class_scores_floor_and_wrong_labels(classifier):
    task = load_task("class")
    real = class_scores(task.y_train, task.train_labels, task, classifier)
    assert real["frechet"] == pytest.approx(real["frechet_floor"]) and real["accuracy"] > 0.9
    wrong = class_scores(task.y_train, (task.train_labels + 1) % 10, task, classifier)
    assert wrong["accuracy"] < 0.1 and wrong["frechet"] > 10 * real["frechet"]


def test_branch_scores_of_exact_samples():
    d = TwoBranch()
    xs = [1.0, 3.0]
    exact = np.stack([d.sample(np.full((3000, 1), x), 7)[:, 0] for x in xs])
    s = branch_scores(exact, xs, d)
    assert max(abs(f - 0.5) for f in s["positive_fraction"]) < 3.3 * 0.5 / math.sqrt(3000)
    assert s["mean_wasserstein"] < 3 * s["mean_wasserstein_floor"]
    collapsed = branch_scores(np.abs(exact), xs, d)  # one branch only
    assert collapsed["mean_branch_imbalance"] == 0.5 and collapsed["mean_wasserstein"] > 10 * s["mean_wasserstein"]


def test_cli_task_run_writes_a_resumable_run(tmp_path, monkeypatch, capsys):
    """``vmt train --task`` end to end with the evaluation stubbed (it is exercised by the
    examples and the benchmark); then ``vmt sample`` on the run."""
    pytest.importorskip("torch")
    import json

    import vmt.app.tasks
    from vmt.app.cli import main

    monkeypatch.setattr(vmt.app.tasks, "evaluate_task", lambda *a, **k: {"VMT": {"score": 1.0}})
    assert main(["train", "--task", "regression1d", "--backend", "pyro", "--iters", "2", "--batch-size", "8",
                 "--num-steps", "2", "--out", str(tmp_path), "--quiet"]) == 0
    meta = json.loads((tmp_path / "run.json").read_text())
    assert meta["task"] == "regression1d" and meta["recipe"]["num_iters"] == 2
    assert json.loads((tmp_path / "metrics.json").read_text())["rows"] == {"VMT": {"score": 1.0}}
    assert main(["sample", str(tmp_path), "-n", "7", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (7, 1)
    assert main(["train", "--task", "class", "--data", "digits", "--quiet"]) == 2
    assert "either --data" in capsys.readouterr().err
