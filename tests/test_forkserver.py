"""`spawn: fork`: servers forked from a template are as separated as exec'd ones, and supervised alike.

Real users, a real daemon, real servers (module-scoped), plus the privilege drop on its own in a fork.
"""

from __future__ import annotations

import grp
import os
import pwd
import signal

import pytest

from conftest import Daemon, free_ports, http, needs_root, wait_for
from notebookd import forkserver

pytestmark = needs_root

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {low}-{high}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
restart: {{backoff_min: 0.5s, backoff_max: 2s}}
server: {{spawn: fork}}
users:
  {alice}: {{}}
  {bob}: {{}}
  {dave}: {{spawn: exec}}
"""


@pytest.fixture(scope="module")
def lab(users, workdir):
    alice, bob, dave = users("falice"), users("fbob"), users("fdave")
    # bob is in an extra group: it must be among his server's groups, and only his
    group = f"{bob.pw_name}x"[:32]
    if not _group_exists(group):
        os.system(f"groupadd {group}")
    os.system(f"usermod -aG {group} {bob.pw_name}")
    low = free_ports(1, 32000)[0]
    daemon = Daemon(workdir, CONFIG.format(alice=alice.pw_name, bob=bob.pw_name, dave=dave.pw_name,
                                           low=low, high=low + 20))
    daemon.start(wait_ready=True)
    daemon.names = {"alice": alice.pw_name, "bob": bob.pw_name, "dave": dave.pw_name}
    yield daemon
    daemon.stop()
    os.system(f"groupdel {group} 2>/dev/null")


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as fh:
        return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)


def _environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as fh:
        items = [x.decode() for x in fh.read().split(b"\0") if x]
    return dict(x.split("=", 1) for x in items)


def _template_pid(server_pid: int) -> int:
    with open(f"/proc/{server_pid}/stat") as fh:
        return int(fh.read().rpartition(")")[2].split()[1])


def _memory_holds(pid: int, needles: list[bytes]) -> set[bytes]:
    """Which of `needles` occur anywhere in the readable memory of `pid`."""
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5] in ("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            found.update(n for n in needles if n in chunk)
    return found


def test_forked_servers_have_exactly_their_users_identity(lab):
    rows = lab.rows()
    for short in ("alice", "bob"):
        name = lab.names[short]
        pw = pwd.getpwnam(name)
        pid = rows[name]["pid"]
        st = _status(pid)
        assert st["Uid"].split() == [str(pw.pw_uid)] * 4, st["Uid"]   # real, effective, saved, fs
        assert st["Gid"].split() == [str(pw.pw_gid)] * 4, st["Gid"]
        groups = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem} - {pw.pw_gid}
        assert {int(g) for g in st["Groups"].split()} == groups
        for cap in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
            assert int(st[cap], 16) == 0, (cap, st[cap])
        assert st["Umask"] == "0077"
        assert os.getsid(pid) == pid  # its own session, like an exec'd server
        assert os.readlink(f"/proc/{pid}/cwd") == pw.pw_dir
        assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
        assert os.stat(f"/proc/{pid}").st_uid == pw.pw_uid  # dumpable again: /proc is the user's
        # its parent is the template, not the daemon
        assert _template_pid(pid) != lab.proc.pid


def test_forked_environment_is_the_exec_one(lab):
    """The server's environment is what an exec'd one gets: seen in a kernel it starts (which inherits
    it), since /proc/PID/environ of a fork keeps showing the template's block unless the kernel lets
    us move it (PR_SET_MM needs CAP_SYS_RESOURCE, which containers often withhold)."""
    import json
    import time

    rows = lab.rows()
    name = lab.names["alice"]
    server = rows[name]["pid"]
    execd = _environ(rows[lab.names["dave"]]["pid"])
    shown = _environ(server)
    assert set(shown) in ({"PATH", "LANG"}, set(execd)), shown  # the template's clean env, or the server's
    status, body, _ = http(rows[name]["url"] + "api/kernels", lab.token(name), "POST", b"{}")
    assert status == 201, body
    kernel_id = json.loads(body)["id"]
    try:
        import psutil

        kernel = wait_for(lambda: psutil.Process(server).children(), 60, what="a kernel")[0]
        time.sleep(0.5)
        env = _environ(kernel.pid)
        assert set(execd) <= set(env)
        pw = pwd.getpwnam(name)
        assert (env["HOME"], env["USER"], env["LOGNAME"]) == (pw.pw_dir, name, name)
        assert env["NOTEBOOKD_SERVER"].startswith(name + "@")
        assert env["JUPYTER_TOKEN_FILE"].endswith(f"/servers/{name}/token")
        assert not any(k in env for k in ("NOTEBOOKD_RUN_DIR", "NOTEBOOKD_CONFIG")), "the daemon's env leaked"
    finally:
        http(rows[name]["url"] + f"api/kernels/{kernel_id}", lab.token(name), "DELETE")


def test_each_sees_only_its_own_token_and_the_template_holds_none(lab):
    rows = lab.rows()
    tokens = {short: lab.token(name).encode() for short, name in lab.names.items()}
    alice_pid, bob_pid = rows[lab.names["alice"]]["pid"], rows[lab.names["bob"]]["pid"]
    template = _template_pid(alice_pid)
    assert template == _template_pid(bob_pid) != lab.proc.pid
    # memory first: sending a wrong token to a server below puts it into that server's memory
    assert _memory_holds(template, list(tokens.values())) == set(), "the template holds a token"
    assert _memory_holds(alice_pid, [tokens["bob"], tokens["dave"]]) == set()
    assert _memory_holds(bob_pid, [tokens["alice"], tokens["dave"]]) == set()
    assert len(os.listdir(f"/proc/{template}/task")) == 1, "the template runs threads"
    # nothing of the template's leaks into a server: not its socket to the daemon, no other fd
    template_fds = {os.readlink(f"/proc/{template}/fd/{fd}") for fd in os.listdir(f"/proc/{template}/fd")}
    for pid in (alice_pid, bob_pid):
        links = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert links[0] == "/dev/null" and links[1] == links[2] == links[3] and links[1].endswith(".pipe")
        shared = {link for link in links.values() if link.startswith("socket:")} & template_fds
        assert not shared, f"a server holds the template's sockets {shared}"
    for value in list(_environ(template).values()) + open(f"/proc/{template}/cmdline").read().split("\0"):
        assert not any(t.decode() in value for t in tokens.values())
    for short, other in (("alice", "bob"), ("bob", "alice")):
        url = rows[lab.names[short]]["url"]
        assert http(url + "api/status", tokens[short].decode())[0] == 200
        assert http(url + "api/status", tokens[other].decode())[0] == 403


def test_a_killed_forked_server_is_reported_and_restarted(lab):
    name = lab.names["bob"]
    old = lab.rows()[name]["pid"]
    os.kill(old, signal.SIGKILL)
    row = lab.wait_replaced(name, old, 90)
    assert row["last_exit"] == "killed by SIGKILL"  # the template reaped it and told the daemon
    assert _status(row["pid"])["Uid"].split()[0] == str(pwd.getpwnam(name).pw_uid)


def test_stop_and_start_a_forked_server(lab):
    name = lab.names["alice"]
    pid = lab.rows()[name]["pid"]
    assert lab.cli("stop", name).returncode == 0
    assert lab.rows()[name]["state"] == "stopped"
    assert not os.path.exists(f"/proc/{pid}") or _status(pid)["State"].startswith("Z")
    assert lab.cli("start", name).returncode == 0
    lab.wait_state(name, "running", 90)


def test_drop_privileges_cannot_be_undone(users):
    pw = users("fcarol")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        result = []
        try:
            forkserver.drop_privileges(pw.pw_uid, pw.pw_gid, [])
            for attempt in (lambda: os.setuid(0), lambda: os.seteuid(0), lambda: os.setresuid(0, 0, 0),
                            lambda: os.setgid(0), lambda: os.setgroups([0])):
                try:
                    attempt()
                    result.append("regained")
                except PermissionError:
                    result.append("refused")
            result.append(str(os.getresuid()) + str(os.getresgid()) + str(os.getgroups()))
        except BaseException as exc:
            result.append(repr(exc))
        os.write(w, "|".join(result).encode())
        os._exit(0)
    os.close(w)
    out = os.read(r, 4096).decode()
    os.waitpid(pid, 0)
    uid, gid = pw.pw_uid, pw.pw_gid
    assert out == "|".join(["refused"] * 5 + [f"({uid}, {uid}, {uid})({gid}, {gid}, {gid})[]"]), out
