"""Small data sets of the teacher tests (numpy only, float32 like user data)."""

import numpy as np


def gaussian_data(n=64, seed=0):
    """``n`` draws of N((1, −1), 0.5² I)."""
    g = np.random.default_rng(seed)
    return (g.standard_normal((n, 2)) * 0.5 + [1.0, -1.0]).astype(np.float32)


def pairs(n=64, seed=0):
    """``(x, y)``: x ~ N(0, I₃), y = x[:2] + 0.1 ε — a conditional task with an easy answer."""
    g = np.random.default_rng(seed)
    x = g.standard_normal((n, 3)).astype(np.float32)
    return x, (x[:, :2] + 0.1 * g.standard_normal((n, 2))).astype(np.float32)
