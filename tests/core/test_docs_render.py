"""The API pages render their docstrings: no raw Sphinx markup (``.. math::``, ``:math:``,
``:func:`` and the other roles) in the built HTML, equations go to MathJax (arithmatex)
and cross-references are links; the sources hold nothing left for
``tools/docstrings_to_markdown.py`` to rewrite."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RAW = re.compile(r"\.\. math::|:(?:math|func|class|meth|mod|attr|data|obj):(?:`|<code)")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                            cwd=ROOT, capture_output=True, text=True,
                            env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("page", ["vmt", "pyro_vmt", "numpyro_vmt"])
def test_api_pages_render_math_and_references(site, page):
    html = (site / "api" / page / "index.html").read_text()
    raw = sorted(set(RAW.findall(html)))
    assert not raw, f"raw Sphinx markup on the {page} page: {raw}"
    assert html.count('class="arithmatex"') > 5, "no rendered equations"
    assert re.search(r'<a class="autorefs[^"]*" href="[^"]*#' + page, html), "no cross-references"


def test_pages_in_the_navigation(site):
    for page in ("examples", "networks"):
        assert (site / page / "index.html").exists()


def test_sources_have_nothing_left_to_convert():
    result = subprocess.run([sys.executable, "tools/docstrings_to_markdown.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
