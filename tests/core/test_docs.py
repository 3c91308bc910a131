"""The documentation site builds with ``mkdocs build --strict`` (broken links,
missing pages and unresolvable API references fail), and README's two set-up
commands are the ones CI and users run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1",
                                                                            "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "pyro_vmt" / "index.html").exists()


def test_readme_commands_and_ci_agree():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"<!-- (main|test)-command -->\n```bash\n(.+)\n```", readme)
    assert dict(commands).keys() == {"main", "test"}
    assert "vmt train" in dict(commands)["main"] and "pytest" in dict(commands)["test"]
    assert "README.md" in (ROOT / ".ci" / "run").read_text()
