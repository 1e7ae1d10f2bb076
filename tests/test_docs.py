"""The docs say what the code is: docs/architecture.md names every module, README says nothing twice."""

from __future__ import annotations

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _read(*path: str) -> str:
    with open(os.path.join(ROOT, *path)) as fh:
        return fh.read()


def _module_table() -> set[str]:
    """The modules named in the first column of "Modules, one job each": `frontdoor/pam.py`, `pamhelper.py`
    in one cell is frontdoor/pam.py and frontdoor/pamhelper.py."""
    text = _read("docs", "architecture.md")
    section = text.split("## Modules, one job each", 1)[1].split("\n## ", 1)[0]
    named = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        folder = ""
        for name in re.findall(r"`([^`]+\.py)`", line.split(" | ", 1)[0]):
            if "/" in name:
                folder = os.path.dirname(name) + "/"
                named.add(name)
            else:
                named.add(folder + name)
    return named


def test_the_architecture_lists_every_module_and_no_other():
    package = os.path.join(ROOT, "notebookd")
    modules = {os.path.relpath(os.path.join(d, f), package) for d, _, files in os.walk(package)
               for f in files if f.endswith(".py")}
    listed = _module_table()
    assert modules - listed == set(), "modules docs/architecture.md does not list"
    assert listed - modules == set(), "modules docs/architecture.md lists that do not exist"


def test_the_readme_says_no_paragraph_twice():
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", _read("README.md"))]
    prose = [p for p in paragraphs if len(p) > 80 and not p.startswith(("```", "|"))]
    repeated = {p[:80] for p in prose if prose.count(p) > 1}
    assert not repeated
