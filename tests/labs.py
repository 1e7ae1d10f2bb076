"""One interface over a running notebookd, whichever backend runs its servers, for the shared matrix.

HostLab: the daemon runs on this machine (native, or supervisor with a supervisord of the test's own).
ContainerLab: the daemon runs as notebookd.service inside a booted systemd container (tests/sysroot.py),
with `backend: systemd`; every look (CLI, HTTP, processes) is taken from inside the container.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import textwrap

import psutil

from conftest import Daemon, StatusClient, free_ports, http, uid_processes, wait_for

VENV = sys.prefix  # world-readable (tests/run makes it with umask 022); bound into the container
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Lab(StatusClient):
    """What every backend must answer the same way. `names` maps short names to user names."""

    backend: str
    names: dict[str, str]
    wait_timeout = 90.0  # a container's systemd or a supervisord adds its own delays

    def http(self, url: str, token: str | None = None, method: str = "GET", body: bytes | None = None) -> int: ...
    def kill(self, pid: int, sig: int = signal.SIGKILL) -> None: ...
    def user_pids(self, user: str) -> list[int]: ...
    def proc_user(self, pid: int) -> str: ...
    def parent_of(self, pid: int) -> int: ...  # 0 when the process is gone

    def strays(self, user: str, server_pid: int) -> list[int]:
        """The user's processes outside the server's own tree (JupyterLab may start helpers: its business)."""
        def inside(pid: int) -> bool:
            for _ in range(64):
                if pid == server_pid:
                    return True
                if pid <= 1:
                    return False
                pid = self.parent_of(pid)
            return False
        return [p for p in self.user_pids(user) if not inside(p)]
    def proc_env(self, pid: int) -> dict[str, str]: ...
    def pid_of(self, user: str, text: str) -> int | None: ...
    def set_users(self, entries: dict[str, str]) -> None: ...
    def reload(self) -> subprocess.CompletedProcess: ...
    def secret_places(self) -> list[tuple[str, int, str]]: ...
    def daemon_pid(self) -> int: ...


CONFIG = """\
backend: {backend}
{extra}
metrics: {{listen: 127.0.0.1:{metrics_port}, activity_interval: 2s}}
listen: {{ip: 127.0.0.1, ports: {low}-{high}}}
state_dir: {state}
logs: {{dir: {logs}, max_size: 64KiB, keep: 2}}
restart: {restart}
health: {{interval: 2s, timeout: 5s, failures: 2}}
server: {{stop_timeout: 5s}}
users:
{users}
"""


RESTART = "{backoff_min: 0.5s, backoff_max: 3s, crashloop_after: 20}"


def render(backend: str, extra: str, low: int, state: str, logs: str, entries: dict[str, str],
           restart: str = RESTART, metrics_port: int = 9750) -> str:
    users = "\n".join(f"  {n}: {v}" for n, v in entries.items())
    return CONFIG.format(backend=backend, extra=extra, low=low, high=low + 20, state=state, logs=logs, users=users,
                         restart=restart, metrics_port=metrics_port)


class HostLab(Lab):
    def __init__(self, backend: str, base: str, names: dict[str, str], low: int, supervisord=None,
                 restart: str = RESTART):
        self.backend, self.base, self.names, self.low, self.restart = backend, base, names, low, restart
        self.supervisord = supervisord
        self.extra = ""
        if supervisord is not None:
            self.extra = f"supervisor: {{socket: {supervisord.socket}, conf_d: {supervisord.conf_d}}}"
        self.entries = {n: "{}" for n in names.values()}
        self.metrics_url = f"http://127.0.0.1:{free_ports(1, low + 21)[0]}/metrics"
        self.daemon = Daemon(base, self._config())

    def _config(self) -> str:
        port = int(self.metrics_url.rsplit(":", 1)[1].split("/")[0])
        return render(self.backend, self.extra, self.low, "{base}/state", "{base}/logs", self.entries, self.restart,
                      metrics_port=port)

    def start(self) -> "HostLab":
        self.daemon.start(wait_ready=False)
        self.wait_all_running()
        return self

    def stop(self) -> None:
        self.daemon.stop()

    def cli(self, *args, user=None):
        return self.daemon.cli(*args, user=user)

    def http(self, url, token=None, method="GET", body=None):
        status, data, _ = http(url, token, method, body)
        self.last_http_body = data.decode(errors="replace")
        return status

    def kill(self, pid, sig=signal.SIGKILL):
        os.kill(pid, sig)

    def user_pids(self, user):
        return uid_processes(pwd.getpwnam(user).pw_uid)

    def proc_user(self, pid):
        return psutil.Process(pid).username()

    def parent_of(self, pid):
        try:
            return psutil.Process(pid).ppid()
        except psutil.NoSuchProcess:
            return 0

    def proc_env(self, pid):
        return psutil.Process(pid).environ()

    def pid_of(self, user, text):
        for p in psutil.process_iter(["username", "cmdline"]):
            if p.info["username"] == user and any(text in a for a in p.info["cmdline"] or ()):
                return p.pid
        return None

    def set_users(self, entries):
        self.entries = dict(entries)
        self.daemon.write_config(self._config())

    def reload(self):
        return self.cli("reload")

    def secret_places(self):
        """(path, mode, text) of every file the backend wrote that describes a server."""
        found = []
        roots = [os.path.join(self.base, "run", "servers")]
        if self.supervisord is not None:
            roots.append(self.supervisord.conf_d)
        for root in roots:
            for d, _, files in os.walk(root):
                for f in files:
                    path = os.path.join(d, f)
                    st = os.lstat(path)
                    if os.path.isfile(path):
                        with open(path, errors="replace") as fh:
                            found.append((path, st.st_mode & 0o777, fh.read()))
        return found

    def daemon_pid(self):
        return self.daemon.proc.pid

    def daemon_log(self):
        return self.daemon.daemon_log()

    def restart_keeping_servers(self) -> None:
        """`notebookd shutdown --keep-servers`, then a new daemon (what systemd does on exit 75)."""
        out = self.cli("shutdown", "--keep-servers")
        assert out.returncode == 0, out.stderr
        assert self.daemon.proc.wait(60) == 75
        self.daemon.log.close()
        self.daemon.start(wait_ready=False)


# ---- the systemd backend, in a container ----

HTTP_SNIPPET = """\
import json, sys, urllib.request, urllib.error
url, token, method, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
if token:
    req.add_header("Authorization", "token " + token)
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.dumps([r.status, r.read().decode(errors="replace")]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode(errors="replace")]))
except OSError as e:
    print(json.dumps([0, str(e)]))
"""


def install_units(container, notebookd_bin: str) -> None:
    """The repo's units, as install.sh installs them, into the container's /etc/systemd/system."""
    for name in ("notebookd.service", "notebookd-user@.service", "notebookd-user@.socket"):
        with open(os.path.join(REPO, "units", name)) as fh:
            text = fh.read().replace("/usr/bin/notebookd", notebookd_bin)
        container.run("sh", "-c", f"cat > /etc/systemd/system/{name}", input=text)
    container.run("systemctl", "daemon-reload")


class ContainerLab(Lab):
    backend = "systemd"

    def __init__(self, container, names: dict[str, str], extra: str = "", backend: str = "systemd"):
        self.c = container
        self.backend = backend
        self.names = names
        self.extra = extra
        self.bin = os.path.join(VENV, "bin", "notebookd")
        self.entries = {n: "{}" for n in names.values()}
        self.last_http_body = ""
        self.metrics_url = "http://127.0.0.1:9750/metrics"  # the container's own loopback

    def setup(self) -> "ContainerLab":
        install_units(self.c, self.bin)
        for user in self.names.values():
            self.c.run("useradd", "--create-home", "--shell", "/bin/bash", user)
        self.c.run("mkdir", "-p", "/etc/notebookd")
        self.set_users(self.entries)
        return self

    def start(self) -> "ContainerLab":
        self.c.run("systemctl", "start", "notebookd.service", timeout=180)
        self.wait_all_running()
        return self

    def set_users(self, entries):
        self.entries = dict(entries)
        text = render(self.backend, self.extra, 8800, "/var/lib/notebookd", "/var/log/notebookd", self.entries,
                      getattr(self, "restart", RESTART))
        self.c.run("sh", "-c", "cat > /etc/notebookd/notebookd.yaml", input=textwrap.dedent(text))

    def cli(self, *args, user=None):
        prefix = ["runuser", "-u", user, "--"] if user else []
        return self.c.run(*prefix, self.bin, *args, check=False)

    def http(self, url, token=None, method="GET", body=None):
        # the container has its own network: ask from inside its network namespace
        out = subprocess.run(["nsenter", "-t", str(self.c.leader), "-n", "/usr/bin/python3", "-c", HTTP_SNIPPET,
                              url, token or "", method, (body or b"").decode()], capture_output=True, text=True,
                             timeout=30)
        status, self.last_http_body = json.loads(out.stdout)
        return status

    def kill(self, pid, sig=signal.SIGKILL):
        self.c.run("kill", f"-{int(sig)}", str(pid))

    def user_pids(self, user):
        out = self.c.run("ps", "-u", user, "-o", "pid=", check=False)
        return [int(p) for p in out.stdout.split()]

    def proc_user(self, pid):
        return self.c.run("ps", "-o", "user=", "-p", str(pid)).stdout.strip()

    def parent_of(self, pid):
        out = self.c.run("ps", "-o", "ppid=", "-p", str(pid), check=False).stdout.strip()
        return int(out) if out.isdigit() else 0

    def proc_env(self, pid):
        raw = self.c.run("cat", f"/proc/{pid}/environ").stdout
        return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)

    def pid_of(self, user, text):
        out = self.c.run("pgrep", "-u", user, "-f", text, check=False)
        pids = [int(p) for p in out.stdout.split()]
        return pids[0] if pids else None

    def reload(self):
        return self.cli("reload")

    def secret_places(self):
        found = []
        out = self.c.run("sh", "-c", "find /run/systemd/system -path '*notebookd-user@*' -type f; "
                                     "find /run/notebookd/servers -type f")
        for path in out.stdout.split():
            mode = int(self.c.run("stat", "-c", "%a", path).stdout.strip(), 8)
            found.append((path, mode, self.c.run("cat", path).stdout))
        return found

    def daemon_pid(self):
        return int(self.c.run("systemctl", "show", "-p", "MainPID", "--value", "notebookd").stdout.strip())

    def daemon_log(self):
        return self.c.run("journalctl", "-u", "notebookd", "--no-pager", "-o", "cat", check=False).stdout

    def restart_keeping_servers(self) -> None:
        """`notebookd shutdown --keep-servers`: exit 75, and the unit's RestartForceExitStatus=75 starts
        the next daemon at once."""
        old = self.daemon_pid()
        out = self.cli("shutdown", "--keep-servers")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: self.daemon_pid() not in (0, old) and self.cli("status").returncode in (0, 3), 60,
                 what="the next notebookd")

    def stop(self) -> None:
        self.c.stop()
