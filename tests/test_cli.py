"""The CLI as users and monitoring scripts meet it: fast, one-line errors, honest exit codes."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("yaml", "psutil", "asyncio", "jupyter_server", "tornado", "notebookd.config", "notebookd.daemon")


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "notebookd", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", **(env or {})}, cwd="/")


def test_status_path_imports_nothing_heavy(tmp_path):
    code = (
        "import sys, notebookd.cli as c\n"
        "rc = c.main(['status'])\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                         env={"PATH": "/usr/bin:/bin", "NOTEBOOKD_RUN_DIR": str(tmp_path)})
    assert out.stdout.strip() == "[] 4", out.stdout + out.stderr


def test_no_daemon_is_exit_4_with_one_line(tmp_path):
    out = run("status", env={"NOTEBOOKD_RUN_DIR": str(tmp_path)})
    assert out.returncode == 4
    assert out.stderr.count("\n") == 1 and "not running" in out.stderr and not out.stdout


def test_bad_flag_is_one_line_exit_2():
    out = run("status", "--bogus")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "--bogus" in out.stderr


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("notebookd ")


@pytest.mark.root  # system mode: as any other user a config describes only the caller's own server
def test_check_config_names_a_missing_user_with_its_line(tmp_path):
    cfg = tmp_path / "n.yaml"
    cfg.write_text("listen: {ports: 8800-8810}\nusers:\n  nosuchuser-nbt: {port: 8801}\n")
    out = run("--config", str(cfg), "check-config")
    assert out.returncode == 1
    assert out.stderr.strip() == f"notebookd: {cfg}:3: users.nosuchuser-nbt: no such user 'nosuchuser-nbt'"


def test_check_config_names_what_the_backend_needs(tmp_path):
    """supervisor: a socket and a conf.d that exist; one line each."""
    import subprocess
    import sys

    cfg = tmp_path / "n.yaml"
    cfg.write_text(f"backend: supervisor\nsupervisor: {{socket: {tmp_path}/none.sock, conf_d: {tmp_path}/nodir}}\n"
                   "users: {}\n")
    out = subprocess.run([sys.executable, "-m", "notebookd", "--config", str(cfg), "check-config"],
                         capture_output=True, text=True)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert any("none.sock does not exist (is supervisord running?)" in line for line in lines), out.stderr
    assert any("nodir is not a directory" in line for line in lines), out.stderr


def test_status_shows_a_servers_escape_sequences_as_text():
    from notebookd.cli import _one_line

    shown = _one_line("boom \x1b]0;owned\x07 \x1b[2J\x9b31m \u202eevil\x00")
    assert not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c == "\u202e" for c in shown)
    assert "\\x1b]0;owned\\x07" in shown and "\\u202e" in shown
