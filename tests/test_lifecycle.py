"""Nothing notebookd does, and nothing that happens to notebookd, costs a user a kernel or a log line.

Fault tests on one module-scoped lab (alice, bob): the daemon killed with SIGKILL and replaced, an
upgrade restart, servers killed repeatedly or frozen with SIGSTOP, the config changed while no daemon
ran, the log filesystem full, a user deleted from the system.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess

import psutil
import pytest

from conftest import Daemon, free_ports, http, needs_root, strays, uid_processes, wait_for

pytestmark = needs_root

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {low}-{high}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs, max_size: 1MiB, keep: 2}}
restart: {{backoff_min: 0.5s, backoff_max: 2s, crashloop_after: 20}}
health: {{interval: 1s, timeout: 1s, failures: 2}}
server: {{stop_timeout: 5s}}
users:
{users}
"""


@pytest.fixture(scope="module")
def lab(users, workdir):
    names = {short: users(short).pw_name for short in ("alice", "bob")}
    low = free_ports(1, 24500)[0]

    def config(entries: dict[str, str]) -> str:
        return CONFIG.format(low=low, high=low + 20, users="\n".join(f"  {n}: {v}" for n, v in entries.items()))

    daemon = Daemon(workdir, config({n: "{}" for n in names.values()})).start()
    daemon.names = names
    daemon.config_for = config
    yield daemon
    daemon.stop()


def start_kernel(lab, name: str) -> tuple[str, int]:
    row = lab.rows()[name]
    status, body, _ = http(row["url"] + "api/kernels", lab.token(name), method="POST", body=b"{}")
    assert status == 201, body
    kid = json.loads(body)["id"]
    pid = wait_for(lambda: next((p.pid for p in psutil.Process(row["pid"]).children(recursive=True)
                                 if any(kid in a for a in p.cmdline())), None), 30, what="kernel process")
    return kid, pid


def mark_log(lab, name: str, tag: str, n: int) -> list[str]:
    """Make the server write `n` distinctive log lines (404s are logged), return the marks."""
    row = lab.rows()[name] if lab.proc.poll() is None else lab.last_rows[name]
    marks = [f"{tag}-{i:04d}" for i in range(n)]
    for m in marks:
        http(row["url"] + "nope/" + m, lab.token_cache[name])
    return marks


def log_text(lab, name: str) -> str:
    logdir = os.path.join(lab.base, "logs")
    return "".join(open(os.path.join(logdir, f), errors="replace").read()
                   for f in sorted(os.listdir(logdir), reverse=True) if f.startswith(name + ".log"))


@pytest.fixture(autouse=True)
def remember(lab):
    """Rows and tokens as last seen, for the moments when no daemon is there to ask."""
    if lab.proc.poll() is None:
        lab.last_rows = lab.rows()
        lab.token_cache = {n: lab.token(n) for n in lab.last_rows if lab.last_rows[n]["state"] == "running"}
    yield


def test_daemon_killed_9_servers_kernels_and_log_lines_survive(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    before = {n: r["pid"] for n, r in lab.rows().items()}
    kid, kernel = start_kernel(lab, alice)
    lab.proc.kill()  # SIGKILL: no chance to clean anything up
    lab.proc.wait()
    # the servers do not notice: they answer, their kernels live
    for name in (alice, bob):
        assert psutil.pid_exists(before[name])
        assert http(lab.last_rows[name]["url"] + "api/kernels", lab.token_cache[name])[0] == 200
    assert psutil.pid_exists(kernel)
    # they keep logging while no daemon reads: the lines wait in the pipe
    marks = mark_log(lab, alice, "while-away", 200)
    lab.start()
    rows = lab.rows()
    assert {n: r["pid"] for n, r in rows.items()} == before, "adopted, not restarted"
    assert "adopting" in lab.daemon_log()
    text = wait_for(lambda: (t := log_text(lab, alice)) and marks[-1] in t and t, 15, what="lines from the gap")
    assert all(f"/nope/{m} " in text for m in marks), "no line lost while the daemon was away"
    assert psutil.pid_exists(kernel)
    status, body, _ = http(rows[alice]["url"] + f"api/kernels/{kid}", lab.token(alice))
    assert status == 200, "the kernel is still known to its server"
    # and the adopted servers are supervised as before: kill one, it comes back
    os.kill(before[bob], signal.SIGKILL)
    row = lab.wait_replaced(bob, before[bob])
    assert "status unknown" in (row["last_exit"] or "") or row["restarts"] >= 1


def test_upgrade_restart_keeps_servers(lab):
    before = {n: r["pid"] for n, r in lab.rows().items()}
    out = lab.cli("shutdown", "--keep-servers")
    assert out.returncode == 0, out.stderr
    assert lab.proc.wait(30) == 75, "exit 75: systemd's RestartForceExitStatus starts the new daemon"
    assert all(psutil.pid_exists(p) for p in before.values())
    lab.start()
    assert {n: r["pid"] for n, r in lab.rows().items()} == before


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_config_changed_while_no_daemon_ran(lab, users):
    alice, bob = lab.names["alice"], lab.names["bob"]
    before = {n: r["pid"] for n, r in lab.rows().items()}
    assert lab.cli("shutdown", "--keep-servers").returncode == 0
    lab.proc.wait(30)
    # alice's settings changed, bob was removed
    lab.write_config(lab.config_for({alice: "{root_dir: /tmp}"}))
    lab.start()
    try:
        rows = lab.rows()
        assert set(rows) == {alice}
        assert rows[alice]["pid"] != before[alice], "a changed spec is a restart, not an adoption"
        # the daemon answers (and alice may be ready) while it still stops bob: wait for that, do not race it
        wait_for(lambda: _gone(before[bob]), 30, what="the server no longer configured to be stopped")
        assert strays(psutil.Process(rows[alice]["pid"]).uids().real, rows[alice]["pid"]) == []
    finally:  # the later tests of this module need both users back
        lab.write_config(lab.config_for({alice: "{}", bob: "{}"}))
        assert lab.cli("reload").returncode == 0
        lab.wait_all_running()


def test_sigstopped_server_is_found_unhealthy_and_replaced(lab):
    name = lab.names["bob"]
    pid = lab.rows()[name]["pid"]
    os.kill(pid, signal.SIGSTOP)
    row = wait_for(lambda: (r := lab.rows()[name])["last_error"] and "health check failed" in r["last_error"] and r,
                   15, what="a failed health check in status")
    assert row["state"] == "running"
    new = lab.wait_replaced(name, pid, 30)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert http(new["url"] + "api/kernels", lab.token(name))[0] == 200
    assert "unhealthy" in lab.daemon_log()


def test_repeated_kill_9_of_a_server(lab):
    name = lab.names["alice"]
    uid = psutil.Process(lab.rows()[name]["pid"]).uids().real
    for _ in range(5):
        pid = lab.wait_state(name, "running")["pid"]
        os.kill(pid, signal.SIGKILL)
        lab.wait_replaced(name, pid)
    row = lab.rows()[name]
    assert row["state"] == "running" and row["restarts"] >= 5
    assert strays(uid, row["pid"]) == [], "one server, no leftovers of the killed ones"


def test_port_cannot_be_stolen_while_the_server_is_down(lab):
    """notebookd holds the user's socket while the server is stopped (listeners.py): a thief gets EADDRINUSE."""
    name = lab.names["alice"]
    port = lab.rows()[name]["port"]
    assert lab.cli("stop", name).returncode == 0
    lab.wait_state(name, "stopped")
    thief = socket.socket()
    thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the server's old connections linger
    try:
        with pytest.raises(OSError) as caught:
            thief.bind(("127.0.0.1", port))
            thief.listen()
        assert caught.value.errno == errno.EADDRINUSE
    finally:
        thief.close()
    assert lab.cli("start", name).returncode == 0
    lab.wait_state(name, "running", 30)
    assert lab.rows()[lab.names["bob"]]["state"] == "running"


def test_full_log_filesystem(lab):
    """Servers keep running while their log cannot be written; logging resumes, the loss is noted."""
    name = lab.names["bob"]
    logdir = os.path.join(lab.base, "logs")
    lab.cli("shutdown", "--keep-servers")
    lab.proc.wait(30)
    subprocess.run(["rm", "-rf", logdir], check=True)
    os.makedirs(logdir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", logdir], check=True)
    try:
        lab.start()
        lab.last_rows = lab.rows()
        mark_log(lab, name, "fill", 2000)  # ~300 KB of log lines: more than the filesystem holds
        assert os.statvfs(logdir).f_bavail == 0, "the log filesystem is full"
        row = lab.rows()[name]
        assert row["state"] == "running" and http(row["url"] + "api", None)[0] == 200
        subprocess.run(["mount", "-o", "remount,size=4m", logdir], check=True)
        marks = mark_log(lab, name, "after", 20)
        text = wait_for(lambda: (t := log_text(lab, name)) and marks[-1] in t and t, 15, what="logging resumed")
        assert "bytes of output lost: No space left on device" in text
        assert all(f"/nope/{m} " in text for m in marks)
    finally:
        lab.cli("shutdown", "--keep-servers")
        lab.proc.wait(30)
        subprocess.run(["umount", "-l", logdir])
        lab.start()


def test_user_deleted_from_the_system(lab, users, workdir):
    alice, bob = lab.names["alice"], lab.names["bob"]
    frank = users("frank")
    lab.write_config(lab.config_for({alice: "{}", bob: "{}", frank.pw_name: "{}"}))
    assert lab.cli("reload").returncode == 0
    pid = lab.wait_state(frank.pw_name, "running")["pid"]
    others = {n: lab.rows()[n]["pid"] for n in (alice, bob)}
    subprocess.run(["userdel", "--force", frank.pw_name], check=True, capture_output=True)
    assert lab.cli("reload").returncode == 0
    row = wait_for(lambda: (r := lab.rows()[frank.pw_name])["state"] == "error" and r, 30, what="frank's error")
    assert "no such user" in row["last_error"]
    assert not psutil.pid_exists(pid) and uid_processes(frank.pw_uid) == []
    assert {n: lab.rows()[n]["pid"] for n in (alice, bob)} == others
