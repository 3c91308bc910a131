"""TeachingConfig: validation, serialisation, and the learning-rate schedule both
backends follow (torch sets it by hand, JAX uses optax's schedule)."""

import math

import pytest

from vmt.core.config import TeachingConfig


def test_round_trip_and_replace():
    c = TeachingConfig(step_size=0.2, betas=[0.9, 0.99], init_bounds=[-3, 3])
    assert TeachingConfig.from_dict(c.to_dict()) == c
    assert c.replace(num_steps=5).num_steps == 5 and c.betas == (0.9, 0.99)
    with pytest.raises(ValueError, match="unknown TeachingConfig options"):
        TeachingConfig.from_dict({"stepsize": 1})


def test_cosine_lr_factor_matches_optax():
    optax = pytest.importorskip("optax")
    c = TeachingConfig(lr_decay_steps=10, lr_final_ratio=0.1)
    schedule = optax.cosine_decay_schedule(1.0, 10, alpha=0.1)
    for t in [0, 1, 5, 9, 10, 25]:
        assert c.lr_factor(t) == pytest.approx(float(schedule(t)), rel=1e-6)
    assert c.lr_factor(0) == 1.0 and c.lr_factor(10) == pytest.approx(0.1)
    assert TeachingConfig().lr_factor(10 ** 6) == 1.0


def test_noise_chains():
    assert TeachingConfig(noise_fraction=0.25).num_noise_chains(200) == 50
    assert TeachingConfig(noise_fraction=0.25, init="noise").num_noise_chains(200) == 0
    assert TeachingConfig().num_noise_chains(7) == 0


@pytest.mark.parametrize("options, match", [
    (dict(noise_fraction=1.0), "noise_fraction must lie in"),
    (dict(noise_fraction=-0.1), "noise_fraction must lie in"),
    (dict(lr_decay_steps=0), "lr_decay_steps must be a positive"),
    (dict(lr_final_ratio=2.0), "lr_final_ratio must lie in"),
    (dict(betas=(1.0, 0.9)), "betas must lie in"),
    (dict(grad_clip=0.0), "grad_clip must be a positive"),
    (dict(num_samples=0), "num_samples must be a positive"),
    (dict(step_size=math.inf), "step_size must be a positive finite"),
])
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        TeachingConfig(**options)


def test_a_checkpoint_from_before_an_option_existed_reads_it_as_its_default():
    from vmt.core.checkpoint import config_mismatch

    current, defaults = TeachingConfig().to_dict(), TeachingConfig().to_dict()
    older = {k: v for k, v in current.items() if k not in ("correction", "path_refresh", "path_anneal")}
    assert config_mismatch(older, current, defaults) == ""
    assert "correction: checkpoint None vs this object 'mh'" in config_mismatch(
        older, TeachingConfig(correction="mh").to_dict(), defaults)
    assert "path_refresh" in config_mismatch(older, current)  # without defaults a missing option differs
