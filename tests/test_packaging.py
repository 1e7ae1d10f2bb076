"""What the units point a reader to exists in the package: `systemctl help notebookd` must not lead nowhere."""

from __future__ import annotations

import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")


def _read(*path: str) -> str:
    return open(os.path.join(ROOT, *path)).read()


@pytest.mark.parametrize("unit", ["notebookd.service", "notebookd-user@.service", "notebookd-user@.socket"])
def test_units_document_the_man_page_and_the_installed_readme(unit):
    links = re.search(r"^Documentation=(.*)$", _read("units", unit), re.M).group(1).split()
    assert links == ["file:///usr/share/doc/notebookd/README.md"]
    assert "packaging/notebookd.8" in _read("packaging", "debian", "notebookd.manpages").split()
    assert "README.md" in _read("packaging", "debian", "notebookd.docs").split()
    assert "dh_compress -X.md" in _read("packaging", "debian", "rules")  # README.md, not README.md.gz
