"""ESS per second of the Langevin kernels against NUTS, both backends: the logistic
regression examples (``examples/logistic_regression_{pyro,numpyro}.py``) run in this
process and their rows written as JSON, from which ``make_report.py`` writes the table
of ``docs/kernels.md``.

    python benchmarks/kernels_ess.py            # the examples' defaults (about a minute)
    python benchmarks/kernels_ess.py --quick    # tiny, for the tests
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

EXAMPLES = {"pyro": "logistic_regression_pyro.py", "numpyro": "logistic_regression_numpyro.py"}


def run_example(script: str, quick: bool):
    """The rows the example's ``main`` returns (it prints its own report too)."""
    path = common.ROOT / "examples" / script
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # so that common.loaded_code() records the example
    spec.loader.exec_module(module)
    return module.main(["--quick"] if quick else [])[1]


def main(argv=None) -> Path:
    p = common.parser(__doc__.split("\n\n")[0], "kernels_ess.json")
    p.add_argument("--backends", default="pyro,numpyro")
    args = p.parse_args(argv)
    common.setup(args)
    payload: Dict[str, Any] = {"meta": common.meta(args), "rows": []}
    for backend in args.backends.split(","):
        for row in run_example(EXAMPLES[backend], args.quick):
            payload["rows"].append({"backend": backend, **row})
    return common.finish(payload, args.out)


if __name__ == "__main__":
    main()
