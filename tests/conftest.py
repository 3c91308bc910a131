"""Shared fixtures: a clean Pyro param store around every test (a safety net: the
library itself never writes to it)."""

import importlib.util

import pytest


@pytest.fixture(autouse=True)
def _clean_pyro_param_store():
    if importlib.util.find_spec("pyro") is None:
        yield
        return
    import pyro

    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def pytest_configure(config):
    # One intra-op thread per test process: the suite runs one process per core
    # (pytest -n 2), and a multi-threaded torch on a busy machine slows down by
    # orders of magnitude.
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)
