"""Rewrite the Sphinx markup of the packages' docstrings as the Markdown that mkdocstrings renders.

The API pages are built by mkdocstrings, which renders Markdown (with
``pymdownx.arithmatex`` for math), not reStructuredText. This script rewrites, in
place, in every ``.py`` file of ``vmt``, ``pyro_vmt`` and ``numpyro_vmt``:

- ``.. math::`` blocks (the indented lines after the directive) into ``$$ ... $$``;
- ``:math:`x``` into ``$x$``;
- ``:func:``, ``:class:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:``, ``:obj:`` roles into
  mkdocstrings cross-references ``[`name`][full.path]`` when the target is an object of
  our packages shown on an API page (a module listed with ``:::`` in ``docs/api/*.md``,
  public names), else into plain code ``` `name` ```;
- the RST escape ``\\ `` (backslash, space) after a literal, and ``:math:`` leftovers.

It is idempotent: run it again after merging branches that add RST markup::

    python tools/docstrings_to_markdown.py          # rewrite
    python tools/docstrings_to_markdown.py --check  # exit 1 if anything is left to rewrite

``tests/core/test_docs.py`` checks that the built pages show no raw Sphinx markup.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vmt", "pyro_vmt", "numpyro_vmt")
ROLE = re.compile(r":(func|class|meth|mod|attr|data|obj):`(~?)([^`<]+?)(?:\s*<([^>`]+)>)?`")
MATH_ROLE = re.compile(r":math:`([^`]+)`")
DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<rest>.*)$")


def documented_modules() -> set:
    """Modules rendered on an API page (``::: module`` lines of ``docs/api/*.md``)."""
    mods = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        mods.update(re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M))
    return mods


def resolve(target: str, module: str, documented: set) -> str | None:
    """The full dotted path of ``target`` (absolute, or relative to ``module``) when it is
    rendered on an API page, else ``None``."""
    target = target.strip().lstrip(".")
    candidates = [target, f"{module}.{target}"]
    for cand in candidates:
        parts = cand.split(".")
        if parts[0] not in PACKAGES or any(p.startswith("_") for p in parts):
            continue
        for cut in range(len(parts), 0, -1):
            mod_name = ".".join(parts[:cut])
            try:
                obj = importlib.import_module(mod_name)
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            if not _rendered_kind(obj):
                return None  # module-level data has no entry of its own on the page
            if mod_name in documented and (cut == len(parts) or _exported(mod_name, parts[cut])):
                return cand
            real = getattr(obj, "__module__", None)  # a re-export: point at the defining module
            if cut < len(parts) and real in documented and _exported(real, parts[cut]):
                return ".".join([real] + parts[cut:])
            break
    return None


def _rendered_kind(obj) -> bool:
    """Modules, classes, functions, methods and properties get an entry of their own."""
    return inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj) or isinstance(obj, property)


def _exported(module: str, name: str) -> bool:
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    return name in names if names is not None else not name.startswith("_")


def convert_roles(text: str, module: str, documented: set) -> str:
    def role(m: re.Match) -> str:
        kind, tilde, title, explicit = m.groups()
        target = (explicit or title).strip()
        shown = title.strip() if explicit else (target.split(".")[-1] if tilde else target)
        if kind in ("func", "meth") and not shown.endswith(")"):
            shown += "()"
        path = resolve(target, module, documented)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    text = MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    text = ROLE.sub(role, text)
    return text.replace("``\\ ", "``")


def convert_math_blocks(lines: list) -> list:
    out, i = [], 0
    while i < len(lines):
        m = DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, body = m.group("indent"), []
        if m.group("rest").strip():
            body.append(m.group("rest").strip())
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        content = [b.strip() for b in body if b.strip()]
        out.append(f"{indent}$$")
        out.extend(f"{indent}{c}" for c in content)
        out.append(f"{indent}$$")
        out.append("")
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def convert_file(path: Path, documented: set) -> str:
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    text = path.read_text()
    lines = convert_math_blocks(text.split("\n"))
    text = "\n".join(lines)
    text = re.sub(r"\$\$\n\n\n+", "$$\n\n", text)
    return convert_roles(text, module, documented)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="report files that still need rewriting")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    documented = documented_modules()
    changed = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            new = convert_file(path, documented)
            if new != path.read_text():
                changed.append(path)
                if not args.check:
                    path.write_text(new)
    for path in changed:
        print(("needs rewriting: " if args.check else "rewrote: ") + str(path.relative_to(ROOT)))
    return 1 if (args.check and changed) else 0


if __name__ == "__main__":
    raise SystemExit(main())
