"""The single-user mode: an ordinary user runs `notebookd run` with no config and no root.

This is the README quick start, the replacement for `nohup jupyter notebook --no-browser &`.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from conftest import as_user, http, needs_root, uid_processes, wait_for

pytestmark = needs_root


@pytest.fixture(scope="module")
def dave(users):
    pw = users("dave")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": pw.pw_dir, "USER": pw.pw_name,
           "LOGNAME": pw.pw_name, "LANG": "C.UTF-8"}

    def cli(*args, timeout=60):
        return subprocess.run([sys.executable, "-m", "notebookd", *args], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd="/", **as_user(pw.pw_name))

    daemon = subprocess.Popen([sys.executable, "-m", "notebookd", "run"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, cwd="/", **as_user(pw.pw_name))
    try:
        wait_for(lambda: daemon.poll() is not None or cli("status").returncode == 0, 90, 0.5,
                 what="dave's server running")
        assert daemon.poll() is None, daemon.stdout.read().decode()
        yield pw, cli, daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=60)


def test_a_user_runs_their_own_server_without_root(dave):
    pw, cli, daemon = dave
    url = cli("url")
    assert url.returncode == 0, url.stderr
    token = url.stdout.strip().split("?token=")[1]
    base = json.loads(cli("status", "--json").stdout)["servers"][0]["url"]
    assert url.stdout.startswith(base)
    assert http(base + "api/kernels", token)[0] == 200
    assert http(base + "api/kernels")[0] == 403
    status = cli("status")
    assert status.returncode == 0 and pw.pw_name in status.stdout
    procs = uid_processes(pw.pw_uid)
    assert procs, "the server runs as dave"
    # everything lives in dave's home, private to him
    state = os.path.join(pw.pw_dir, ".local", "state", "notebookd")
    tok = os.stat(os.path.join(state, "tokens", pw.pw_name))
    assert tok.st_uid == pw.pw_uid and stat.S_IMODE(tok.st_mode) == 0o600
    log = os.path.join(state, "logs", f"{pw.pw_name}.log")
    wait_for(lambda: os.path.getsize(log) > 0, 10, what="dave's log")
    with open(log) as fh:
        assert token not in fh.read()


def test_stopping_the_user_daemon_stops_the_server(dave):
    pw, cli, daemon = dave
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(60) == 0
    assert uid_processes(pw.pw_uid) == []
    assert cli("status").returncode == 4
