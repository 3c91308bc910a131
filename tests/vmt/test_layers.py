"""The neutral package is a set of layers: core at the bottom, data and evaluation
beside each other, the application on top; no torch or JAX code path anywhere in it;
and importing a backend loads the core alone (no data set, no SciPy)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p for p in (REPO / "vmt").rglob("*.py"))
# layer -> the layers it may import from
ALLOWED = {"core": {"core"}, "data": {"core", "data"}, "evaluation": {"core", "data", "evaluation"},
           "app": {"core", "data", "evaluation", "app"}}


def imports_of(path: Path) -> set:
    """Every module an import statement in the file names (also inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_backend_code_in_the_neutral_package(path):
    roots = {name.split(".")[0] for name in imports_of(path)}
    assert not roots & {"torch", "jax", "jaxlib", "pyro", "numpyro", "flax", "equinox", "pyro_vmt", "numpyro_vmt"}
    assert not any(name.startswith("matplotlib.pyplot") for name in imports_of(path))


@pytest.mark.parametrize("path", [p for p in MODULES if p.parent.name in ALLOWED],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_imports_only_run_down_the_layers(path):
    layer = path.parent.name
    used = {name.split(".")[1] for name in imports_of(path) if name.startswith("vmt.")}
    assert used <= ALLOWED[layer], f"vmt.{layer} imports vmt.{sorted(used - ALLOWED[layer])}"


@pytest.mark.parametrize("backend, ppl", [("pyro_vmt", "torch, pyro"), ("numpyro_vmt", "jax, numpyro, optax, equinox")])
def test_importing_a_backend_loads_no_data_set_and_no_scipy(backend, ppl):
    """What a backend loads beyond its PPL (JAX itself imports SciPy): no SciPy, no
    scikit-learn, no matplotlib, nothing above the core of vmt."""
    pytest.importorskip(ppl.split(", ")[1])
    script = (f"import sys; import {ppl}; before = set(sys.modules); import {backend}\n"
              "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('scipy', 'sklearn', "
              "'matplotlib') or m.startswith(('vmt.data', 'vmt.evaluation', 'vmt.app'))))")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_using_data_and_evaluation_loads_no_torch_jax_or_pyplot(tmp_path):
    script = f"""
import sys
from vmt.data import get_density
from vmt.evaluation import metrics, plots
grid = get_density("grid25")
x = grid.sample(200, 0)
metrics.mode_coverage(x, grid.modes, grid.mode_sd)
metrics.mmd(x, grid.sample(200, 1))
plots.plot_samples_2d(x, x, {str(tmp_path / "s.png")!r})
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "jax", "jaxlib") or m == "matplotlib.pyplot")
print(bad)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
