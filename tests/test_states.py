"""Every state a server can be in, as `status` and its exit code show it, and what systemd is told.

One real jupyter_server (alice) and a few servers that misbehave on purpose: a command that exits at once
(crash loop), one that never listens (start timeout), a user that does not exist (error). The misbehaving
ones are real processes too, just not jupyter: jupyter cannot be made to fail this way on demand.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import psutil
import pytest

from conftest import Daemon, free_ports, needs_root, wait_for

pytestmark = needs_root


@pytest.fixture(scope="module")
def notify_socket(workdir):
    """A datagram socket read continuously, as systemd reads NOTIFY_SOCKET."""
    path = os.path.join(workdir, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    messages: list[tuple[float, str]] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                messages.append((time.monotonic(), sock.recv(4096).decode()))
            except (socket.timeout, BlockingIOError):
                continue

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    yield path, lambda: list(messages)
    done.set()
    thread.join()
    sock.close()


@pytest.fixture(scope="module")
def lab(users, workdir, notify_socket):
    alice, crash, slow = users("alice").pw_name, users("bob").pw_name, users("carol").pw_name
    low = free_ports(1, 23000)[0]
    daemon = Daemon(workdir, f"""\
listen: {{ports: {low}-{low + 10}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
restart: {{backoff_min: 0.2s, backoff_max: 1s, crashloop_after: 3}}
users:
  {alice}: {{}}
  {crash}: {{command: [/bin/sh, -c, "echo about to fail; exit 3"]}}
  {slow}: {{command: [/bin/sh, -c, "exec sleep 600"], start_timeout: 3s, stop_timeout: 1s}}
  nbtghost: {{}}
""", extra_env={"NOTIFY_SOCKET": notify_socket[0], "WATCHDOG_USEC": "1000000"}).start(wait_ready=False)
    daemon.names = {"alice": alice, "crash": crash, "slow": slow, "ghost": "nbtghost"}
    daemon.notify = notify_socket[1]
    daemon.wait_state(alice, "running", 90)
    yield daemon
    daemon.stop()


def exit_code(lab, name: str) -> int:
    return lab.cli("status", name).returncode


def test_running_is_exit_0(lab):
    name = lab.names["alice"]
    assert lab.rows()[name]["state"] == "running" and exit_code(lab, name) == 0


def test_a_server_that_keeps_exiting_is_a_crash_loop(lab):
    name = lab.names["crash"]
    row = lab.wait_state(name, "crashloop", 30)
    assert row["last_error"].startswith("exit status 3") and row["restarts"] >= 2
    assert row["log_tail"] and row["log_tail"][-1] == "about to fail", "status shows why, from its log"
    assert "last log line: about to fail" in lab.cli("status").stdout
    assert exit_code(lab, name) == 3
    # its output is in its log, every attempt of it
    with open(os.path.join(lab.base, "logs", f"{name}.log")) as fh:
        assert fh.read().count("about to fail") >= 3
    # retried slowly: a crash-looping server costs the daemon almost no CPU
    daemon = psutil.Process(lab.proc.pid)
    before = sum(daemon.cpu_times()[:2])
    time.sleep(5)
    used = sum(daemon.cpu_times()[:2]) - before
    assert used < 0.5, f"daemon used {used:.2f} CPU-s in 5 s with a crash loop"


def test_a_server_that_never_listens_times_out(lab):
    name = lab.names["slow"]
    row = lab.wait_state(name, "starting", 30)
    assert row["pid"] and exit_code(lab, name) == 3
    row = wait_for(lambda: (r := lab.rows()[name])["last_error"] and "not ready after 3s" in r["last_error"] and r,
                   30, what="start timeout")
    assert row["state"] in ("backoff", "starting", "stopping", "crashloop")
    # the hung process was killed before the next try: never two at once
    sleepers = [p for p in psutil.process_iter(["cmdline", "username"]) if p.info["username"] == name]
    assert len(sleepers) <= 1


def test_a_missing_user_is_an_error_for_that_user_only(lab):
    row = lab.rows()["nbtghost"]
    assert row["state"] == "error" and "no such user" in row["last_error"]
    assert exit_code(lab, "nbtghost") == 3
    assert exit_code(lab, lab.names["alice"]) == 0
    out = json.loads(lab.cli("status", "--json").stdout)
    assert {r["name"] for r in out["servers"]} >= set(lab.names.values())


def test_stopped_is_exit_3_and_all_running_is_exit_0(lab):
    name = lab.names["alice"]
    assert lab.cli("stop", name).returncode == 0
    assert lab.rows()[name]["state"] == "stopped" and exit_code(lab, name) == 3
    assert lab.cli("start", name).returncode == 0
    lab.wait_state(name, "running")
    assert exit_code(lab, name) == 0


def test_systemd_is_told_ready_status_and_watchdog(lab):
    messages = lab.notify()
    texts = [m for _, m in messages]
    ready = [m for m in texts if "READY=1" in m]
    assert ready, texts
    assert any(m.startswith("STATUS=") or "\nSTATUS=" in m for m in texts)
    status_lines = [line for m in texts for line in m.splitlines() if line.startswith("STATUS=")]
    assert any("running" in s for s in status_lines), status_lines
    pings = [t for t, m in messages if m == "WATCHDOG=1"]
    time.sleep(2.2)
    pings = [t for t, m in lab.notify() if m == "WATCHDOG=1"]
    assert len(pings) >= 4, "WATCHDOG=1 at half of WATCHDOG_USEC (1 s): every 0.5 s"
    gaps = [b - a for a, b in zip(pings[-4:], pings[-3:])]
    assert all(0.3 < g < 0.9 for g in gaps), gaps


def test_reload_and_stop_are_announced(lab):
    seen = len(lab.notify())
    os.kill(lab.proc.pid, signal.SIGHUP)
    wait_for(lambda: any("RELOADING=1" in m for _, m in lab.notify()[seen:]), 10, what="RELOADING=1")
    wait_for(lambda: any("READY=1" in m for _, m in lab.notify()[seen:]), 10, what="READY=1 after the reload")
    assert lab.stop() == 0
    assert any("STOPPING=1" in m for _, m in lab.notify()[seen:])
