"""Shared fixtures: real Unix users, a real daemon process, and small HTTP helpers.

Starting a jupyter_server costs CPU-seconds, so daemons (and their servers) are module-scoped:
each test module shares one set of running servers, and tests that change state put it back.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request

import pytest

IS_ROOT = os.geteuid() == 0
# The one tier marker: tests that need root, apt packages, real servers or daemons. `-m "not root"` (the
# fast tier, `tests/run --fast`) runs the rest anywhere; without root, marked tests are skipped, never errors.
needs_root = pytest.mark.root
# Fixtures that make real Unix users (and so run real servers): a test that uses one is in the root tier
# even if its module forgot to say so.
ROOT_FIXTURES = frozenset({"users"})
_SKIP_NOT_ROOT = pytest.mark.skip(reason="needs root: creates Unix users and runs servers as them")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marker must be on every item by then
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("root") is None and ROOT_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.root)
        if not IS_ROOT and item.get_closest_marker("root") is not None:
            item.add_marker(_SKIP_NOT_ROOT)

# Unique per test session: two sessions on one machine (CI retries, developers) must not delete or
# recreate each other's users under the same names.
USER_PREFIX = "nbt" + "".join("abcdefghijklmnopqrstuvwxyz"[os.getpid() // 26**i % 26] for i in range(3))


def free_ports(n: int, start: int = 20000) -> list[int]:
    """`n` consecutive-ish free ports on 127.0.0.1, from a range nothing else here uses."""
    ports = []
    port = start + (os.getpid() % 500) * 20
    while len(ports) < n:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                ports.append(port)
            except OSError:
                pass
        port += 1
    return ports


def kill_uid(uid: int) -> None:
    """SIGKILL every process of a test user (by pid): what an aborted earlier run may have left."""
    for pid in uid_processes(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def make_user(name: str) -> pwd.struct_passwd:
    """A real Unix user with a home, created for the test run (removed at the end of the session)."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        # other test sessions on this machine add users too: useradd fails while one holds the lock
        wait_for(lambda: subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name],
                                        capture_output=True).returncode == 0 or _exists(name), 120, interval=0.5,
                 what=f"useradd {name}")
        pw = pwd.getpwnam(name)
    # the uid may be one an aborted earlier run used (users are deleted, their uids given out again)
    kill_uid(pw.pw_uid)
    return pw


@pytest.fixture(scope="session")
def users():
    """Factory for test users; all of them are deleted when the session ends."""
    if not IS_ROOT:
        pytest.skip("needs root")
    made: list[str] = []

    def make(short: str) -> pwd.struct_passwd:
        name = f"{USER_PREFIX}{short}"
        pw = make_user(name)
        if name not in made:
            made.append(name)
        return pw

    yield make
    for name in made:
        try:
            kill_uid(pwd.getpwnam(name).pw_uid)
        except KeyError:
            continue
        subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)


def as_user(name: str | None) -> dict:
    """Popen arguments that run a child as `name` (with that user's groups), or as root for None."""
    if not name:
        return {}
    pw = pwd.getpwnam(name)
    groups = [g.gr_gid for g in grp.getgrall() if name in g.gr_mem]
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": groups}


def http(url: str, token: str | None = None, method: str = "GET", body: bytes | None = None,
         timeout: float = 10) -> tuple[int, bytes, dict]:
    req = urllib.request.Request(url, method=method, data=body)
    if token:
        req.add_header("Authorization", f"token {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc).encode(), {}


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class StatusClient:
    """What tests ask of any running notebookd through its CLI; subclasses provide `cli()`."""

    wait_timeout = 60.0  # seconds a server may take to reach a state

    def cli(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
        raise NotImplementedError

    def status(self) -> dict:
        out = self.cli("status", "--json")
        assert out.returncode in (0, 3), out.stderr
        return json.loads(out.stdout)

    def rows(self) -> dict[str, dict]:
        return {r["name"]: r for r in self.status()["servers"]}

    def wait_state(self, name: str, state: str | tuple[str, ...], timeout: float | None = None) -> dict:
        """`state` may be several: a failing start moves on from backoff to crashloop while a slow machine
        is busy with the other servers, so "not started, retried" is ("backoff", "crashloop")."""
        states = (state,) if isinstance(state, str) else state
        return wait_for(lambda: (r := self.rows().get(name)) and r["state"] in states and r,
                        timeout or self.wait_timeout, what=f"{name} {'/'.join(states)}")

    def wait_replaced(self, name: str, old_pid: int, timeout: float | None = None) -> dict:
        """Wait until `name` runs again in a process other than `old_pid`."""
        return wait_for(lambda: (r := self.rows()[name])["state"] == "running" and r["pid"] not in (None, old_pid)
                        and r, timeout or self.wait_timeout, what=f"{name} running again after pid {old_pid}")

    def wait_all_running(self, timeout: float = 120) -> dict:
        return wait_for(lambda: (rows := self.rows()) and all(r["state"] == "running" for r in rows.values())
                        and rows, timeout, interval=0.3, what="all servers running")

    def url(self, name: str) -> str:
        """The server's own URL with its token (`--local`: not nginx's, which tests reach on purpose)."""
        out = self.cli("url", "--local", name)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def token(self, name: str) -> str:
        return self.url(name).split("token=", 1)[1]


class Daemon(StatusClient):
    """`notebookd run` in a subprocess, with its own run/state/log dirs under `base`."""

    def __init__(self, base: str, config: str, as_user: str | None = None, extra_env: dict | None = None):
        self.base = base
        self.config_path = os.path.join(base, "notebookd.yaml")
        self.run_dir = os.path.join(base, "run")
        self.as_user = as_user
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.write_config(config)

    def write_config(self, text: str) -> None:
        with open(self.config_path, "w") as fh:
            fh.write(textwrap.dedent(text).replace("{base}", self.base))
        os.chmod(self.config_path, 0o644)

    @property
    def env(self) -> dict:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "NOTEBOOKD_RUN_DIR": self.run_dir,
               "NOTEBOOKD_CONFIG": self.config_path, "LANG": "C.UTF-8", **self.extra_env}
        if self.as_user:
            pw = pwd.getpwnam(self.as_user)
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
        else:
            env["HOME"] = "/root"
        return env


    def start(self, wait_ready: bool = True) -> "Daemon":
        self.log = open(os.path.join(self.base, "daemon.log"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "notebookd", "run"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
            cwd="/", **as_user(self.as_user),
        )
        # a socket file left by a killed daemon may exist: wait for an answer, not for the file
        wait_for(lambda: self.proc.poll() is not None or self.cli("status").returncode in (0, 3),
                 30, what="the daemon to answer")
        assert self.proc.poll() is None, f"daemon exited: {self.daemon_log()}"
        if wait_ready:
            self.wait_all_running()
        return self

    def stop(self, timeout: float = 60) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        self.log.close()
        return rc

    def cli(self, *args: str, user: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        env = dict(self.env)
        if user:
            pw = pwd.getpwnam(user)
            env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
        return subprocess.run([sys.executable, "-m", "notebookd", *args], env=env, capture_output=True,
                              text=True, timeout=timeout, cwd="/", **as_user(user))

    def daemon_log(self) -> str:
        try:
            with open(os.path.join(self.base, "daemon.log"), errors="replace") as fh:
                return fh.read()[-20000:]
        except FileNotFoundError:
            return ""


@pytest.fixture(scope="module")
def workdir():
    """A world-traversable scratch dir for one module (servers run as other users)."""
    base = tempfile.mkdtemp(prefix="nbt-")
    os.chmod(base, 0o755)
    yield base
    if not os.environ.get("NBT_KEEP"):  # NBT_KEEP=1 keeps logs and state for a post-mortem
        subprocess.run(["rm", "-rf", base])


def uid_processes(uid: int) -> list[int]:
    """Live processes of `uid` (zombies have exited: they only wait for their parent to reap them)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                with open(f"/proc/{entry}/stat") as fh:
                    if fh.read().rpartition(")")[2].split()[0] != "Z":
                        out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    return out


def strays(uid: int, server_pid: int) -> list[int]:
    """Live processes of `uid` outside the server's own tree (whatever the running server starts for
    itself, e.g. JupyterLab's helpers, is its business; anything else is a leftover)."""
    import psutil

    try:
        tree = {server_pid} | {p.pid for p in psutil.Process(server_pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        tree = set()
    return sorted(set(uid_processes(uid)) - tree)

