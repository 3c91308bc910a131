"""Every example runs end to end on a tiny budget (so none can rot), in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytest.importorskip("torch")
pytest.importorskip("pyro")

CASES = {  # example -> tiny-budget arguments (besides --out)
    "toy2d.py": ["--iters", "5"],
    "digits.py": ["--iters", "3"],
    "regression1d.py": ["--iters", "5"],
    "conditional_digits.py": ["--iters", "3"],
    "restore_digits_pyro.py": ["--quick"],
    "guide_teaching_pyro.py": ["--quick", "--persistent"],
    "guide_teaching_numpyro.py": ["--quick", "--persistent", "--dense"],
}
NO_OUT = set()
# The two logistic-regression examples run (with --quick) inside benchmarks/kernels_ess.py,
# which tests/core/test_benchmarks.py runs: the same code, run once.


@pytest.mark.parametrize("script", sorted(CASES))
def test_example_runs(script, tmp_path):
    if "numpyro" in script:
        pytest.importorskip("numpyro")
    args = CASES[script] + ([] if script in NO_OUT else ["--out", str(tmp_path / "out")])
    # tiny budgets: XLA's compile time dominates, so compile without its expensive passes
    fast = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = dict(os.environ, PYTHONWARNINGS="ignore", MPLBACKEND="Agg",
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {fast}".strip())
    result = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=tmp_path,
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "an example reports what it did"
    if script not in NO_OUT:
        assert any((tmp_path / "out").iterdir()), "an example writes its pictures"
