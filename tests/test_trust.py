"""Attacks by ordinary lab members on the daemon and on each other, replayed as real Unix users.

One module-scoped lab: alice and bob have servers (native backend); mallory is an ordinary user with
none, and carol shares bob's primary group (as users do where LDAP gives everyone `users`). Each
test is an attack from issue 10 that worked on an earlier main; it asserts what the victims notice.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import Daemon, as_user, free_ports, http, needs_root, wait_for
from webclient import run_code

from notebookd import control

pytestmark = needs_root

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {low}-{high}}}
state_dir: {{base}}/state
logs: {{dir: {logs}, max_size: 1MiB, keep: 2}}
restart: {{backoff_min: 0.5s, backoff_max: 2s, crashloop_after: 20}}
health: {{interval: 1s, timeout: 5s, failures: 3}}
server: {{stop_timeout: 5s}}
{groups}
users:
  {alice}: {{}}
  {bob}: {{}}
"""


@pytest.fixture(scope="module")
def lab(users, workdir):
    names = {short: users(short).pw_name for short in ("alice", "bob", "mallory")}
    bob = users("bob")
    carol = f"{names['bob'][:-3]}carol"
    subprocess.run(["useradd", "--create-home", "--gid", str(bob.pw_gid), carol], capture_output=True)
    names["carol"] = carol
    low = free_ports(1, 25200)[0]

    def config(logs: str = "{base}/logs", groups: str = "") -> str:
        return CONFIG.format(low=low, high=low + 20, logs=logs, alice=names["alice"], bob=names["bob"],
                             groups=groups)

    daemon = Daemon(workdir, config()).start()
    daemon.names = names
    daemon.config_for = config
    yield daemon
    daemon.stop()
    subprocess.run(["userdel", "--remove", "--force", carol], capture_output=True)


def pids(lab) -> dict[str, int]:
    rows = lab.rows()
    assert all(r["state"] == "running" for r in rows.values()), rows
    return {n: r["pid"] for n, r in rows.items()}


def daemon_log_lines(lab) -> int:
    with open(os.path.join(lab.base, "daemon.log"), "rb") as fh:
        return fh.read().count(b"\n")


def run_as(user: str, code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd="/", **as_user(user), **kw)


HOLDER = """\
    import socket, sys, json, time
    path, n = sys.argv[1], int(sys.argv[2])
    held, failed = [], 0
    for i in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        for attempt in range(500):  # a full backlog says EAGAIN: knock again, as a patient attacker does
            try:
                s.connect(path)
                held.append(s)
                break
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        if not held or held[-1] is not s:
            failed += 1
            s.close()
    print(json.dumps({"held": len(held), "failed": failed}), flush=True)
    sys.stdin.readline()  # hold everything until the test asks
    closed = 0
    for s in held:
        s.setblocking(False)
        try:
            closed += s.recv(4096, socket.MSG_PEEK) is not None
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    print(json.dumps({"closed": closed}), flush=True)
    sys.stdin.readline()
"""


def test_a_user_holding_2000_control_connections_starves_nothing(lab):
    """Issue 10, item 3: 1,500 idle connections made every probe fail with EMFILE and stopped every
    server. Here the daemon runs with 1024 descriptors (systemd's default soft limit), and cannot
    raise it; the attacker holds 2,000 connections."""
    before = pids(lab)
    resource.prlimit(lab.proc.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    lines_before = daemon_log_lines(lab)
    attacker = run_as(lab.names["mallory"], HOLDER, os.path.join(lab.run_dir, "control.sock"), "2000",
                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        report = json.loads(attacker.stdout.readline())
        assert report == {"held": 2000, "failed": 0}, report
        # while they are held: three health intervals and more, root asking all along
        deadline = time.monotonic() + 8
        slowest = 0.0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            data = control.request(os.path.join(lab.run_dir, "control.sock"), "status", timeout=5)
            slowest = max(slowest, time.monotonic() - t0)
            assert {r["name"]: r["pid"] for r in data["servers"]} == before
            assert all(r["state"] == "running" and not r["last_error"] for r in data["servers"]), data
        assert slowest < 1.0, f"status took {slowest:.2f}s under the flood"
        out = lab.cli("status")
        assert out.returncode == 0, out.stderr
        # idle connections lose their slot: every connection the attacker holds has been closed by now
        attacker.stdin.write("check\n")
        attacker.stdin.flush()
        assert json.loads(attacker.stdout.readline())["closed"] == report["held"]
    finally:
        attacker.stdin.close()
        attacker.wait(30)  # (the limit stays: raising a hard limit again needs a capability we may lack)
    assert lab.proc.poll() is None
    assert pids(lab) == before
    for name in before:  # and the servers answer their users
        assert http(lab.rows()[name]["url"] + "api/status", lab.token(name))[0] == 200
    assert daemon_log_lines(lab) - lines_before < 40, "the daemon's log was flooded"


def test_a_slow_or_endless_request_line_is_cut_off(lab):
    """A request must come at once and be short: a client dribbling bytes or sending megabytes loses."""
    code = """\
        import socket, sys, time, json
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sys.argv[1])
        try:
            s.sendall(b"{" + b" " * (1 << 20))
        except OSError:
            pass
        s.settimeout(10)
        try:
            print(s.recv(4096).decode().strip())
        except OSError as exc:
            print(exc)
    """
    out = run_as(lab.names["mallory"], code, os.path.join(lab.run_dir, "control.sock"),
                 stdout=subprocess.PIPE, text=True)
    text = out.communicate(timeout=30)[0]
    assert "request longer than" in text or "reset" in text.lower(), text


def write_to_server_stdout(lab, name: str, code: str) -> None:
    """What a user's notebook can always do: write to the kernel's fd 1, the server's output."""
    row = lab.wait_state(name, "running")
    run_code(row["url"], lab.token(name), textwrap.dedent(code) + "\n42")


def user_log_bytes(lab, name: str) -> int:
    logdir = os.path.join(lab.base, "logs")
    return sum(os.path.getsize(os.path.join(logdir, f)) for f in os.listdir(logdir) if f.startswith(name + ".log"))


def log_text(lab, name: str) -> bytes:
    logdir = os.path.join(lab.base, "logs")
    return b"".join(open(os.path.join(logdir, f), "rb").read()
                    for f in sorted(os.listdir(logdir), reverse=True) if f.startswith(name + ".log"))


def test_64_mib_without_a_newline_stays_bounded_on_disk(lab):
    """Issue 10, item 4: 64 MiB of NULs without a newline, logs {max_size: 1MiB, keep: 2}: the file grew
    to 65 MB because rotation waited for a newline."""
    bob = lab.names["bob"]
    write_to_server_stdout(lab, bob, """\
        import os, sys
        fd = 1
        for i in range(64):
            os.write(fd, b"\\0" * 2**20)
        os.write(fd, b"END OF FLOOD\\n")
    """)
    wait_for(lambda: b"more bytes of that line left out" in log_text(lab, bob), 120, what="the end of the flood")
    limit = 3 * (2**20 + 64 * 1024 + 200)
    assert user_log_bytes(lab, bob) <= limit
    text = log_text(lab, bob)
    assert b"[notebookd: line longer than 64 KiB cut here]" in text
    assert b"\0" * (64 * 1024 + 1) not in text


def test_only_the_user_and_root_read_a_users_log(lab):
    """Issue 10: logs were 0640 root:GROUP; carol, in bob's primary group, read bob's log."""
    bob, carol = lab.names["bob"], lab.names["carol"]
    path = os.path.join(lab.base, "logs", f"{bob}.log")
    reader = "import sys; open(sys.argv[1]).read(1)"
    denied = subprocess.run([sys.executable, "-c", reader, path], capture_output=True, text=True, **as_user(carol))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    out = lab.cli("logs", "-n", "50", user=bob)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    assert lab.cli("logs", bob, user=carol).returncode == 1


def test_no_token_reaches_a_log_file(lab):
    """A `?token=` link in a line jupyter (or anything else in the server) logs is blanked."""
    bob = lab.names["bob"]
    token = lab.token(bob)
    url = lab.rows()[bob]["url"]
    http(f"{url}no-such-page?token={token}")
    write_to_server_stdout(lab, bob, f"""\
        import os, sys
        fd = 1
        os.write(fd, b"open {url}lab?tok")  # cut inside the word, as a pipe read may cut it
        os.write(fd, b"en={token}&x=1 now\\n")
        os.write(fd, b"marker-after-token\\n")
    """)
    wait_for(lambda: b"marker-after-token" in log_text(lab, bob), 60, what="the lines in bob's log")
    text = log_text(lab, bob)
    assert token.encode() not in text
    assert b"lab?token=[hidden]&x=1 now" in text


def test_a_lost_log_dir_is_made_again_and_exits_are_still_seen(lab):
    """The log dir removed under running servers (an admin's mistake): rotation then failed inside the
    exit callback, the exit was never noticed, and the server was never restarted."""
    bob = lab.names["bob"]
    subprocess.run(["rm", "-rf", os.path.join(lab.base, "logs")], check=True)
    write_to_server_stdout(lab, bob, """\
        import os, sys
        fd = 1
        for i in range(3 * 2**10):
            os.write(fd, b"%06d " % i + b"x" * 1017 + b"\\n")
    """)
    old = lab.rows()[bob]["pid"]
    subprocess.run(["kill", "-KILL", str(old)], check=True, **as_user(bob))
    row = lab.wait_replaced(bob, old)
    assert row["state"] == "running"
    assert os.path.exists(os.path.join(lab.base, "logs", f"{bob}.log"))


def test_a_second_daemon_refuses_and_leaves_the_first_alone(lab):
    """Issue 10: a second `notebookd run` deleted the live control socket."""
    before = pids(lab)
    out = subprocess.run([sys.executable, "-m", "notebookd", "run"], env=lab.env, capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 1
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "another notebookd" in lines[0] and str(lab.proc.pid) in lines[0], out.stderr
    assert pids(lab) == before  # the first still answers on its socket, with the same servers


def test_a_reload_that_cannot_be_applied_stops_no_server(lab):
    """A logs.dir that cannot be made made the reload raise, which ended the main loop and stopped
    every server."""
    before = pids(lab)
    blocker = os.path.join(lab.base, "a-file")
    open(blocker, "w").close()
    lab.write_config(lab.config_for(logs=blocker + "/logs"))
    try:
        out = lab.cli("reload")
        assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "a-file/logs" in out.stderr
        assert lab.proc.poll() is None
        assert pids(lab) == before
    finally:
        lab.write_config(lab.config_for())
    assert lab.cli("reload").returncode == 0
    assert pids(lab) == before


def restart_daemon(lab) -> subprocess.CompletedProcess | None:
    out = lab.cli("shutdown", "--keep-servers")
    assert out.returncode == 0, out.stderr
    lab.proc.wait(60)
    lab.log.close()


def test_damaged_state_files_neither_stop_the_daemon_nor_move_ports(lab):
    """ports.json truncated, then with a null, a record with a string pid: each stopped the daemon at
    start or silently gave every user a new port."""
    before = {n: (r["pid"], r["port"]) for n, r in lab.rows().items()}
    alice = lab.names["alice"]
    state = os.path.join(lab.base, "state")
    ports = os.path.join(state, "ports.json")

    restart_daemon(lab)  # servers keep running; a new daemon adopts them
    with open(ports, "r+") as fh:  # truncated: the copy beside it is used
        fh.truncate(5)
    with open(os.path.join(state, "servers", f"{alice}.json")) as fh:
        record = json.load(fh)
    record["pid"] = str(record["pid"])
    with open(os.path.join(state, "servers", f"{alice}.json"), "w") as fh:
        json.dump(record, fh)
    lab.start()
    rows = lab.rows()
    assert {n: r["port"] for n, r in rows.items()} == {n: p for n, (_, p) in before.items()}
    assert rows[lab.names["bob"]]["pid"] == before[lab.names["bob"]][0]  # adopted
    assert "is damaged; using the copy" in lab.daemon_log()
    assert os.path.exists(os.path.join(state, "servers", f"{alice}.json.bad"))

    # both the file and its copy bad: refuse with one line naming the file, servers untouched
    kept = {n: r["pid"] for n, r in lab.rows().items()}
    restart_daemon(lab)
    for path in (ports, ports + ".bak"):
        with open(path, "w") as fh:
            fh.write('{"%s": null}' % alice)
    out = subprocess.run([sys.executable, "-m", "notebookd", "run"], env=lab.env, capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 1
    errors = [x for x in out.stderr.splitlines() if "ERROR" in x or "Traceback" in x]
    assert len(errors) == 1 and ports in errors[0], out.stderr
    for pid in kept.values():
        os.kill(pid, 0)  # still running
    with open(ports, "w") as fh:
        json.dump({n: p for n, (_, p) in before.items()}, fh)
    lab.start()
    assert {n: r["pid"] for n, r in lab.rows().items()} == kept


def test_a_group_member_with_a_bad_name_gets_no_server(lab):
    """Members of `groups:` skipped the user-name check; their names reach nginx locations, unit names
    and paths. A name only a directory service (or `useradd --badname`) allows is now warned about."""
    bad, group = f"{lab.names['mallory'][:-7]}Odd.Name", f"{lab.names['mallory'][:-7]}grp"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "--badname", "--no-create-home", "--gid", group, bad], check=True)
        lab.write_config(lab.config_for(groups=f"groups: [{group}]"))
        out = lab.cli("reload")
        assert out.returncode == 0, out.stderr
        data = lab.status()
        assert bad not in {r["name"] for r in data["servers"]}
        assert any(bad in w and "not a valid user name" in w for w in data["daemon"]["warnings"]), data["daemon"]
    finally:
        lab.write_config(lab.config_for())
        lab.cli("reload")
        subprocess.run(["userdel", "--force", bad], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)


def send(lab, cmd: str, **args):
    """A request on the control socket whose answer is read later (`.makefile().readline()`)."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(120)
    sock.connect(os.path.join(lab.run_dir, "control.sock"))
    sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
    return sock


def answer(sock) -> dict:
    with sock, sock.makefile("rb") as fh:
        return json.loads(fh.readline())


def test_a_token_rotation_cannot_undo_an_admins_stop(lab):
    """`token --rotate` checked "held or configured" before taking the lock: a user whose server an admin
    was stopping (the request waiting behind another) restarted it right after."""
    alice, bob = lab.names["alice"], lab.names["bob"]
    # alice's server is slow to stop (a process of hers ignores SIGTERM): her stop holds the lock a while
    run_code(lab.rows()[alice]["url"], lab.token(alice), textwrap.dedent("""\
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"],
                         start_new_session=True)
        42"""))
    try:
        first = send(lab, "stop", users=[alice])
        lab.wait_state(alice, "stopping")
        second = send(lab, "stop", users=[bob])  # waits for the lock behind alice's stop
        rotate = subprocess.run([sys.executable, "-m", "notebookd", "token", "--rotate"], env={
            **lab.env, "HOME": f"/home/{bob}", "USER": bob}, capture_output=True, text=True, timeout=120,
            cwd="/", **as_user(bob))
        assert rotate.returncode == 0, rotate.stderr
        assert answer(first)["ok"] and answer(second)["ok"]
        assert "restarted" not in rotate.stdout, rotate.stdout
        assert lab.rows()[bob]["state"] == "stopped"
    finally:
        assert lab.cli("start", alice, bob).returncode == 0
        lab.wait_state(alice, "running")
        lab.wait_state(bob, "running")
