"""The native backend end to end: real users, real jupyter_server processes, a real daemon.

One daemon serves the whole module (servers are expensive to start); tests that stop or kill a
server wait until it is back before they end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import time

import psutil
import pytest

from conftest import Daemon, free_ports, http, needs_root, strays, uid_processes, wait_for

pytestmark = needs_root

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {auto_low}-{auto_high}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs, max_size: 16KiB, keep: 3}}
restart: {{backoff_min: 0.5s, backoff_max: 2s, crashloop_after: 50}}
server: {{stop_timeout: 10s}}
users:
  {alice}: {{port: {alice_port}}}
  {bob}: {{}}
  {carol}: {{port: {carol_port}}}
"""


@pytest.fixture(scope="module")
def lab(users, workdir):
    alice, bob, carol = users("alice"), users("bob"), users("carol")
    alice_port, carol_port, auto_low = free_ports(3)
    # alice's own ~/.jupyter tries to move her port and switch auth off: it must not matter
    jdir = os.path.join(alice.pw_dir, ".jupyter")
    os.makedirs(jdir, exist_ok=True)
    for name in ("jupyter_config.json", "jupyter_server_config.json"):
        with open(os.path.join(jdir, name), "w") as fh:
            json.dump({"ServerApp": {"port": 9, "token": "", "password": "", "disable_check_xsrf": True},
                       "IdentityProvider": {"token": ""}, "PasswordIdentityProvider": {"token": ""}}, fh)
    with open(os.path.join(jdir, "jupyter_config.py"), "w") as fh:
        fh.write("c.ServerApp.port = 9\nc.IdentityProvider.token = ''\n")
    os.system(f"chown -R {alice.pw_name}: {jdir}")

    # carol's port is held by a stranger when the daemon starts
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", carol_port))
    squatter.listen()

    config = CONFIG.format(alice=alice.pw_name, bob=bob.pw_name, carol=carol.pw_name, alice_port=alice_port,
                           carol_port=carol_port, auto_low=auto_low, auto_high=auto_low + 10)
    daemon = Daemon(workdir, config).start(wait_ready=False)
    daemon.names = {"alice": alice.pw_name, "bob": bob.pw_name, "carol": carol.pw_name}
    daemon.squatter = squatter
    daemon.wait_state(alice.pw_name, "running")
    daemon.wait_state(bob.pw_name, "running")
    yield daemon
    squatter.close()
    daemon.stop()


def _uids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Uid:"):
                return [int(x) for x in line.split()[1:]]
    raise AssertionError("no Uid line")


def test_each_server_runs_as_its_user_and_answers_with_its_token(lab):
    rows = lab.rows()
    for short in ("alice", "bob"):
        name = lab.names[short]
        row = rows[name]
        pw = psutil.Process(row["pid"])
        uid = os.stat(f"/proc/{row['pid']}").st_uid
        assert _uids(row["pid"]) == [uid] * 4 and uid == __import__("pwd").getpwnam(name).pw_uid
        gid = __import__("pwd").getpwnam(name).pw_gid
        assert pw.gids().real == pw.gids().effective == gid
        env = pw.environ()
        assert env["USER"] == env["LOGNAME"] == name and env["HOME"] == f"/home/{name}"
        assert not {k for k in env if k.startswith(("SUDO", "NOTEBOOKD_RUN", "NOTEBOOKD_CONFIG", "PYTEST"))}
        assert "JUPYTER_TOKEN" not in env  # only the file name travels
        assert os.getsid(row["pid"]) == row["pid"], "each server leads its own session"
        token = lab.token(name)
        status, body, _ = http(row["url"] + "api/kernels", token)
        assert status == 200, body
        status, _, _ = http(row["url"] + "api/kernels")
        assert status == 403, "a request without the token must be refused"
        status, _, _ = http(row["url"] + "api/kernels", lab.token(lab.names["bob" if short == "alice" else "alice"]))
        assert status == 403, "another user's token must be refused"


def test_kernels_run_code_as_the_user(lab):
    import subprocess
    import sys

    name = lab.names["bob"]
    row = lab.rows()[name]
    script = os.path.join(os.path.dirname(__file__), "scripts", "kernel_42.py")
    for code, want in (("6*7", "42"), ("__import__('os').getuid()", str(__import__("pwd").getpwnam(name).pw_uid)),
                       ("__import__('os').getcwd()", repr(f"/home/{name}"))):
        out = subprocess.run([sys.executable, script, row["url"], lab.token(name), code],
                             capture_output=True, text=True, timeout=120)
        assert out.stdout.strip() == want, out.stderr


def test_logs_command_shows_a_users_own_log_only(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    out = lab.cli("logs", bob, "-n", "3", user=bob)
    assert out.returncode == 0 and 1 <= len(out.stdout.splitlines()) <= 3
    assert "ServerApp" in out.stdout
    refused = lab.cli("logs", alice, user=bob)
    assert refused.returncode == 1 and "permission denied" in refused.stderr and not refused.stdout


def test_users_own_jupyter_config_cannot_move_port_or_disable_auth(lab):
    row = lab.rows()[lab.names["alice"]]
    assert f":{row['port']}/" in row["url"] and row["port"] != 9
    assert http(row["url"] + "api/kernels")[0] == 403


def test_no_token_in_argv_logs_or_readable_files(lab):
    tokens = {lab.token(n) for n in (lab.names["alice"], lab.names["bob"])}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        assert not any(t in cmdline for t in tokens), f"token in argv of pid {proc.pid}"
    logs = os.path.join(lab.base, "logs")
    for entry in os.listdir(logs):
        with open(os.path.join(logs, entry), errors="replace") as fh:
            text = fh.read()
        assert not any(t in text for t in tokens), f"token in {entry}"
    # where tokens are stored: root-only in the state dir, the user's own 0400 copy in the run dir
    for short in ("alice", "bob"):
        name = lab.names[short]
        kept = os.stat(os.path.join(lab.base, "state", "tokens", name))
        assert (kept.st_uid, stat.S_IMODE(kept.st_mode)) == (0, 0o600)
        handed = os.stat(os.path.join(lab.run_dir, "servers", name, "token"))
        pw = __import__("pwd").getpwnam(name)
        assert (handed.st_uid, stat.S_IMODE(handed.st_mode)) == (pw.pw_uid, 0o400)
        with open(os.path.join(lab.run_dir, "servers", name, "token")) as fh:
            assert fh.read() == lab.token(name), "no trailing newline"
    for root, dirs, files in os.walk(lab.base):
        for f in files:
            path = os.path.join(root, f)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH:
                with open(path, errors="replace") as fh:
                    assert not any(t in fh.read() for t in tokens), f"token in world-readable {path}"


def test_status_json_and_exit_codes(lab):
    time.sleep(2.5)  # memory figures are cached for 2 s; let them cover fully started servers
    out = lab.cli("status", "--json")
    data = json.loads(out.stdout)
    rows = {r["name"]: r for r in data["servers"]}
    carol = rows[lab.names["carol"]]
    # carol's port is taken: she is not running, so the whole status is "not all running"
    assert out.returncode == 3
    assert carol["state"] in ("backoff", "starting", "crashloop")
    for short in ("alice", "bob"):
        r = rows[lab.names[short]]
        assert r["state"] == "running" and r["pid"] and r["memory"] > 10 * 2**20 and r["restarts"] >= 0
        assert "token" not in r["url"]
    # the table names the columns an admin looks for
    table = lab.cli("status")
    assert table.returncode == 3
    assert table.stdout.splitlines()[0].split()[:5] == ["USER", "STATE", "PID", "PORT", "URL"]
    only_alice = lab.cli("status", lab.names["alice"])
    assert only_alice.returncode == 0, only_alice.stdout


def test_port_taken_by_another_process_is_reported_for_that_user_only(lab):
    carol = lab.names["carol"]
    row = wait_for(lambda: (r := lab.rows()[carol])["last_error"] and r, 30, what="carol's error")
    assert f"port {row['port']}" in row["last_error"] and "in use" in row["last_error"]
    assert str(os.getpid()) in row["last_error"], "names the process holding the port"
    rows = lab.rows()
    assert rows[lab.names["alice"]]["state"] == rows[lab.names["bob"]]["state"] == "running"
    # once the stranger lets go, carol comes up by herself
    lab.squatter.close()
    lab.wait_state(carol, "running", 60)
    status, _, _ = http(lab.rows()[carol]["url"] + "api/kernels", lab.token(carol))
    assert status == 200


def test_kill_9_of_a_server_brings_it_back(lab):
    name = lab.names["bob"]
    before = lab.rows()[name]
    os.kill(before["pid"], signal.SIGKILL)
    row = lab.wait_replaced(name, before["pid"])
    assert row["restarts"] == before["restarts"] + 1
    assert row["port"] == before["port"]
    assert http(row["url"] + "api/kernels", lab.token(name))[0] == 200


def _start_kernel(row: dict, token: str) -> int:
    status, body, _ = http(row["url"] + "api/kernels", token, method="POST", body=b"{}")
    assert status == 201, body
    kernel_id = json.loads(body)["id"]
    # the kernel process: a child of the server whose argv names the kernel's connection file
    return wait_for(lambda: next((p.pid for p in psutil.Process(row["pid"]).children(recursive=True)
                                  if any(kernel_id in a for a in p.cmdline())), None), 30, what="kernel process")


def test_stop_with_running_kernel_leaves_nothing_behind(lab):
    name = lab.names["alice"]
    uid = __import__("pwd").getpwnam(name).pw_uid
    row = lab.rows()[name]
    kernel = _start_kernel(row, lab.token(name))
    assert os.getsid(kernel) != os.getsid(row["pid"]), "kernels run in their own session"
    out = lab.cli("stop", name)
    assert out.returncode == 0, out.stderr
    assert uid_processes(uid) == [], "no process of the user's server may survive a stop"
    assert lab.rows()[name]["state"] == "stopped"
    assert lab.cli("status", name).returncode == 3
    assert lab.cli("start", name).returncode == 0
    lab.wait_state(name, "running")


def test_orphaned_kernel_of_a_crashed_server_is_ended(lab):
    name = lab.names["alice"]
    uid = __import__("pwd").getpwnam(name).pw_uid
    row = lab.rows()[name]
    kernel = _start_kernel(row, lab.token(name))
    os.kill(row["pid"], signal.SIGKILL)  # the server dies, its kernel (own session) would linger
    new = lab.wait_replaced(name, row["pid"])
    assert not psutil.pid_exists(kernel) or psutil.Process(kernel).status() == psutil.STATUS_ZOMBIE
    assert strays(uid, new["pid"]) == [], "the orphaned kernel is gone, nothing but the new server's tree"


def test_non_owner_control_requests_are_refused(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    before = lab.rows()[alice]["pid"]
    out = lab.cli("stop", alice, user=bob)
    assert out.returncode == 1 and "permission denied" in out.stderr and len(out.stderr.splitlines()) == 1
    assert lab.cli("restart", alice, user=bob).returncode == 1
    assert lab.cli("reload", user=bob).returncode == 1
    out = lab.cli("url", alice, user=bob)
    assert out.returncode == 1 and lab.token(alice) not in out.stdout + out.stderr
    assert lab.rows()[alice]["pid"] == before
    # bob sees and acts on his own server only
    mine = lab.cli("url", user=bob)
    assert mine.returncode == 0 and mine.stdout.strip() == lab.url(bob)
    status = json.loads(lab.cli("status", "--json", user=bob).stdout)
    assert [r["name"] for r in status["servers"]] == [bob]


def test_rotated_logs_hold_every_line_none_split(lab):
    name = lab.names["bob"]
    row = lab.rows()[name]
    token = lab.token(name)
    # bob's server logs one line per request (404s are logged at warning level); each path is unique
    marks = [f"line-{i:05d}-" + "x" * (i % 300) for i in range(600)]
    for mark in marks:
        http(row["url"] + "nope/" + mark, token)
    logdir = os.path.join(lab.base, "logs")
    current = os.path.join(logdir, name + ".log")
    wait_for(lambda: marks[-1] in open(current, errors="replace").read(), 10, what="the last line in the log")
    files = sorted(f for f in os.listdir(logdir) if f.startswith(name + ".log"))
    assert len(files) == 4, f"rotated into .1 .. .3 with keep: 3: {files}"
    # the newest files hold the end of the stream; every marked line that is still kept is whole
    text = ""
    for f in reversed(files[1:]):  # .3 (oldest) .. .1
        text += open(os.path.join(logdir, f), errors="replace").read()
    text += open(os.path.join(logdir, files[0]), errors="replace").read()
    for f in files:
        st = os.stat(os.path.join(logdir, f))
        assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == 0
        assert st.st_gid == 0  # root's; the user reads it by an ACL (its group would be other users too)
        assert os.getxattr(os.path.join(logdir, f), "system.posix_acl_access")
        with open(os.path.join(logdir, f), "rb") as fh:
            data = fh.read()
        assert data.endswith(b"\n"), f"{f} ends mid-line"
        assert data[:1] == b"[", f"{f} starts mid-line"
    seen = re.findall(r"/nope/(line-(\d{5})-x*) ", text)
    numbers = [int(n) for _, n in seen]
    assert numbers == sorted(numbers)
    # every line from the first kept one to the last is there, each complete
    first = numbers[0]
    assert numbers == list(range(first, 600)) and first < 600 - 100
    for whole, n in seen:
        assert whole == marks[int(n)]


def test_auto_port_survives_a_daemon_restart_and_shutdown_stops_all(lab):
    names = list(lab.names.values())
    ports = {n: r["port"] for n, r in lab.rows().items()}
    pids = [r["pid"] for r in lab.rows().values()]
    t0 = time.monotonic()
    assert lab.stop() == 0
    stop_time = time.monotonic() - t0
    for pid in pids:
        assert not psutil.pid_exists(pid)
    for n in names:
        assert uid_processes(__import__("pwd").getpwnam(n).pw_uid) == []
    assert lab.cli("status").returncode == 4, "no daemon: exit 4"
    assert stop_time < 10, "servers stop in parallel"
    lab.start()
    assert {n: r["port"] for n, r in lab.rows().items()} == ports
