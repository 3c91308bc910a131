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
