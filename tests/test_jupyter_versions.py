"""Debian's own jupyter_server 1.23 (python3-jupyter-server) as well as 2.x from PyPI.

1.23 keeps auth settings on ServerApp where 2.x has IdentityProvider classes; notebookd writes the
right keys for the version the server's interpreter has. This module runs a server with Debian's
/usr/bin/python3 and its apt-installed jupyter_server, as a real user.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import Daemon, free_ports, http, needs_root

DEBIAN_PYTHON = "/usr/bin/python3"


def debian_jupyter_version() -> str | None:
    out = subprocess.run([DEBIAN_PYTHON, "-c", "import jupyter_server; print(jupyter_server.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip() or None


pytestmark = [
    needs_root,
    pytest.mark.skipif(not (debian_jupyter_version() or "").startswith("1."),
                       reason="needs Debian's python3-jupyter-server 1.x (apt); tests/run installs it"),
]


@pytest.fixture(scope="module")
def lab(users, workdir):
    old, new = users("alice").pw_name, users("bob").pw_name
    p1, p2 = free_ports(2, 22000)
    daemon = Daemon(workdir, f"""\
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
server: {{frame_ancestors: ["'self'", "https://lms.example.org"]}}
users:
  {old}: {{port: {p1}, command: [{DEBIAN_PYTHON}, -m, jupyter_server]}}
  {new}: {{port: {p2}}}
""").start()
    daemon.names = (old, new)
    yield daemon
    daemon.stop()


def test_both_versions_serve_with_token_and_refuse_without(lab):
    rows = lab.rows()
    for name, version in zip(lab.names, ("1.", "2.")):
        row = rows[name]
        status, body, headers = http(row["url"] + "api", lab.token(name))
        assert status == 200 and json.loads(body)["version"].startswith(version)
        assert http(row["url"] + "api/kernels", lab.token(name))[0] == 200
        assert http(row["url"] + "api/kernels")[0] == 403
        assert http(row["url"] + "api/kernels", "not-the-token")[0] == 403


def test_csp_frame_ancestors_served_by_both(lab):
    for name in lab.names:
        row = lab.rows()[name]
        status, _, headers = http(row["url"] + "api/kernels", lab.token(name))
        assert status == 200
        assert "frame-ancestors 'self' https://lms.example.org" in headers["Content-Security-Policy"]


def test_debian_server_runs_a_kernel(lab):
    name = lab.names[0]
    row = lab.rows()[name]
    status, body, _ = http(row["url"] + "api/kernels", lab.token(name), method="POST", body=b"{}")
    assert status == 201, body
    kernel = json.loads(body)["id"]
    assert http(row["url"] + f"api/kernels/{kernel}", lab.token(name), method="DELETE")[0] == 204


def test_debian_server_serves_the_classic_notebook_ui(lab):
    """A Debian-only install (python3-nbclassic) gives users a notebook UI, not a bare REST server."""
    name = lab.names[0]
    url = lab.url(name)
    assert url.startswith(lab.rows()[name]["url"] + "tree?token="), url
    status, body, _ = http(url.split("?")[0], lab.token(name))
    assert status == 200 and b"<html" in body.lower() and b"notebook" in body.lower()
