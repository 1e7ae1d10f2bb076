"""The quick start as a lab member runs it: `./install.sh --run` from an admin's checkout the user cannot
write (root-owned, 0755, like /opt/src/notebookd), in a login shell of an ordinary useradd user.

One test, one install: it downloads JupyterLab and the rest from PyPI into the user's home, which takes
minutes. It asserts what the user sees: no traceback, the checkout untouched, and the user's own server
answering with the token `notebookd url` prints; then it stops that daemon by its PID.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess

import pytest

from conftest import http, needs_root, wait_for

pytestmark = needs_root

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL_TIMEOUT = 1800  # seconds: a cold pip install of JupyterLab on a loaded machine


def tracked_files(checkout: str) -> list[str]:
    """The checkout's files as git knows them (what an admin's clone holds), else every file but build output."""
    out = subprocess.run(["git", "-C", checkout, "ls-files", "-z"], capture_output=True, text=True)
    if out.returncode == 0 and out.stdout:
        return [f for f in out.stdout.split("\0") if f and os.path.lexists(os.path.join(checkout, f))]
    skip = {".git", "__pycache__", "build", "dist", ".pytest_cache"}
    found = []
    for top, dirs, files in os.walk(checkout):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        found += [os.path.relpath(os.path.join(top, f), checkout) for f in files]
    return found


def admins_checkout(dest: str) -> None:
    """A root-owned copy of this checkout: directories 0755, files 0644 (0755 if executable)."""
    for rel in tracked_files(CHECKOUT):
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(CHECKOUT, rel), target, follow_symlinks=False)
    for top, dirs, files in os.walk(dest):
        os.chown(top, 0, 0)
        os.chmod(top, 0o755)
        for f in files:
            path = os.path.join(top, f)
            if not os.path.islink(path):
                os.chown(path, 0, 0)
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)


def listing(top: str) -> dict[str, tuple[int, float]]:
    """Every path under `top` with its size and mtime: what a build inside it would change."""
    seen = {}
    for here, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(here, name)
            st = os.lstat(path)
            seen[os.path.relpath(path, top)] = (st.st_size, st.st_mtime)
    return seen


def test_an_ordinary_user_installs_and_runs_their_server_from_a_checkout_they_cannot_write(users, workdir):
    user = users("inst")
    src = os.path.join(workdir, "opt-src", "notebookd")
    admins_checkout(src)
    os.chmod(os.path.dirname(src), 0o755)
    before = listing(src)
    assert subprocess.run(["runuser", "-u", user.pw_name, "--", "test", "-w", src]).returncode != 0, \
        "the user cannot write the checkout"

    log_path = os.path.join(workdir, "install.log")
    home_bin = os.path.join(user.pw_dir, ".local", "bin", "notebookd")

    def notebookd(*args: str) -> subprocess.CompletedProcess:
        """The installed command in another login shell of the user's (the README's next step)."""
        return subprocess.run(["runuser", "--login", user.pw_name, "-c", shlex.join([home_bin, *args])],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    def running() -> dict | None:
        if not os.path.exists(home_bin):
            return None
        out = notebookd("status", "--json")
        return json.loads(out.stdout) if out.returncode == 0 else None

    with open(log_path, "wb") as log:
        # a login shell of the user, in the admin's checkout, typing the README's quick start
        proc = subprocess.Popen(["runuser", "--login", user.pw_name, "-c", f"cd {src} && exec ./install.sh --run"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    status = None
    try:
        status = wait_for(lambda: proc.poll() is not None or running(), INSTALL_TIMEOUT, interval=2,
                          what="the install and the user's server")
        with open(log_path, errors="replace") as fh:
            output = fh.read()
        assert proc.poll() is None, f"install.sh exited {proc.returncode}:\n{output[-5000:]}"
        assert "Traceback" not in output and "Permission denied" not in output, output[-5000:]
        assert f"notebookd installed: {os.path.dirname(home_bin)}/notebookd" in output, output[-5000:]
        assert listing(src) == before, "nothing was written into the checkout"

        daemon = status["daemon"]
        assert daemon["mode"] == "user" and os.stat(f"/proc/{daemon['pid']}").st_uid == user.pw_uid
        row = status["servers"][0]
        assert row["name"] == user.pw_name and os.stat(f"/proc/{row['pid']}").st_uid == user.pw_uid

        out = notebookd("url")
        assert out.returncode == 0, out.stderr
        url = out.stdout.strip()
        base, token = url.split("?token=")[0].rsplit("/", 1)[0] + "/", url.split("?token=")[1]
        assert url.startswith(row["url"]) and url.startswith("http://127.0.0.1:")
        assert http(url)[0] == 200, "the link opens the UI (JupyterLab, installed with the server)"
        assert http(base + "api/status", token)[0] == 200
        assert http(base + "api/status")[0] == 403, "and only with the token"
        assert http(base + "api/status", "not-" + token)[0] == 403

        os.kill(daemon["pid"], signal.SIGTERM)  # what ^C in the user's terminal does
        assert proc.wait(120) == 0
        wait_for(lambda: not os.path.exists(f"/proc/{row['pid']}"), 60, what="the server to stop with its daemon")
    finally:
        if proc.poll() is None:
            if status:
                os.kill(status["daemon"]["pid"], signal.SIGKILL)
            proc.kill()
            proc.wait(30)
