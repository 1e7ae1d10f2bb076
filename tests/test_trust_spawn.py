"""Root never runs, imports or reads what a user can write, and resolves a user's paths only as that
user; one user's stuck fork start costs that user alone. Each test replays the attack as a real user.

One daemon for the module:
- carol runs Debian's jupyter_server from a venv of her own with a `.pth` canary in it: the file would
  be written by uid 0 if root ever ran her interpreter (to probe its versions, for `notebookd url`);
- bob (exec) and frank (fork) replaced their root_dir `~/nb` by a symlink to a 0755 directory inside
  alice's 0700 home: their servers must never have it as cwd (root may enter it; they may not);
- dave's root_dir is a 0700 directory of his own: it works. Root bypasses permissions, so the NFS
  root_squash case (root may not enter a 0700 home) is not emulated; what is shown is that the entry
  happens with the user's rights, which is what makes root_squash work;
- erin's fork child stops itself between its identity change and its report (test knob, see
  `forkserver._child`: the user can do that by racing their own child; the knob makes it deterministic):
  the template's deadline kills it and fails erin's start, while gina's fork server keeps starting.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import time

import pytest

from conftest import Daemon, as_user, free_ports, http, needs_root, uid_processes, wait_for
from notebookd import forkserver, launch

pytestmark = [needs_root, pytest.mark.root]

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {low}-{high}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
restart: {{backoff_min: 0.5s, backoff_max: 2s, crashloop_after: 100}}
server: {{stop_timeout: 5s}}
users:
  {carol}: {{command: [{carol_home}/venv/bin/python, -m, jupyter_server]}}
  {bob}: {{root_dir: "~/nb"}}
  {frank}: {{root_dir: "~/nb", spawn: fork}}
  {dave}: {{root_dir: "~/private"}}
  {erin}: {{spawn: fork}}
  {gina}: {{spawn: fork}}
"""

CANARY = "import os; open(os.path.join({dir!r}, 'canary-%d' % os.getuid()), 'a').close()\n"


def _run_as(user: str, *argv: str) -> None:
    pw = pwd.getpwnam(user)
    subprocess.run(argv, check=True, cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir}, **as_user(user))


@pytest.fixture(scope="module")
def lab(users, workdir):
    alice, bob, carol, dave, erin, frank, gina = (users(n) for n in ("talice", "tbob", "tcarol", "tdave", "terin",
                                                                     "tfrank", "tgina"))
    # alice: a 0700 home with a readable directory (and file) inside it
    os.chmod(alice.pw_dir, 0o700)
    public = os.path.join(alice.pw_dir, "pub")
    os.makedirs(public, exist_ok=True)
    with open(os.path.join(public, "secret.txt"), "w") as fh:
        fh.write("alice's\n")
    os.chmod(public, 0o755)
    os.chmod(os.path.join(public, "secret.txt"), 0o644)
    os.system(f"chown -R {alice.pw_name}: {public}")
    for attacker in (bob, frank):
        _run_as(attacker.pw_name, "ln", "-sfn", public, os.path.join(attacker.pw_dir, "nb"))
    _run_as(dave.pw_name, "mkdir", "-m", "700", "-p", os.path.join(dave.pw_dir, "private"))
    # carol: a venv of her own from Debian's python (its jupyter_server 1.23 and nbclassic), a canary in it
    canaries = os.path.join(workdir, "canaries")
    os.makedirs(canaries, exist_ok=True)
    os.chmod(canaries, 0o1777)
    _run_as(carol.pw_name, "/usr/bin/python3", "-m", "venv", "--system-site-packages", "--without-pip",
            os.path.join(carol.pw_dir, "venv"))
    site = subprocess.run([os.path.join(carol.pw_dir, "venv", "bin", "python"), "-c",
                           "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True,
                          check=True, **as_user(carol.pw_name), cwd="/").stdout.strip()
    with open(os.path.join(site, "zz_canary.pth"), "w") as fh:
        fh.write(CANARY.format(dir=canaries))
    os.chown(os.path.join(site, "zz_canary.pth"), carol.pw_uid, carol.pw_gid)

    low = free_ports(1, 33000)[0]
    names = {"alice": alice.pw_name, "bob": bob.pw_name, "carol": carol.pw_name, "dave": dave.pw_name,
             "erin": erin.pw_name, "frank": frank.pw_name, "gina": gina.pw_name}
    config = CONFIG.format(low=low, high=low + 20, carol_home=carol.pw_dir, **names)
    daemon = Daemon(workdir, config, extra_env={"NOTEBOOKD_TEST_FORK_STOP_UID": str(erin.pw_uid),
                                                "NOTEBOOKD_TEST_FORK_REPORT_TIMEOUT": "3"})
    daemon.start(wait_ready=False)
    daemon.names, daemon.canaries, daemon.alice_home = names, canaries, alice.pw_dir
    for short in ("carol", "dave", "gina"):
        daemon.wait_state(names[short], "running", 180)
    yield daemon
    daemon.stop()


def _canaries(lab) -> dict[str, int]:
    return {name: os.stat(os.path.join(lab.canaries, name)).st_uid for name in os.listdir(lab.canaries)}


def test_root_never_runs_a_users_interpreter(lab):
    """The .pth canary: it runs in every Python of carol's venv. It must have run (her server, her probe),
    and only ever as carol: neither the daemon's start of her server nor `notebookd url` (root's or hers)
    runs her interpreter as root."""
    carol = lab.names["carol"]
    uid = pwd.getpwnam(carol).pw_uid
    as_root = lab.cli("url", carol)
    as_carol = lab.cli("url", user=carol)
    assert as_root.returncode == 0 and as_carol.returncode == 0, as_root.stderr + as_carol.stderr
    # the probe, as carol, found Debian's 1.23 with nbclassic: the link opens the classic UI
    assert as_root.stdout.strip() == as_carol.stdout.strip()
    assert "/tree?token=" in as_root.stdout, as_root.stdout
    found = _canaries(lab)
    assert found == {f"canary-{uid}": uid}, f"the canary ran as someone else than carol: {found}"
    url = as_root.stdout.strip()
    status, _, _ = http(url.split("tree?")[0] + "api/status", url.split("token=")[1])
    assert status == 200, "carol's server works"


def _cwds(uid: int) -> list[str]:
    seen = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    seen.append(os.readlink(f"/proc/{entry}/cwd"))
            except OSError:
                pass
    return seen


@pytest.mark.parametrize("who, spawn", [("bob", "exec"), ("frank", "fork")])
def test_a_symlinked_root_dir_never_reaches_another_users_files(lab, who, spawn):
    """bob's ~/nb points into alice's 0700 home. Before, root changed into it and then became bob: bob's
    server ran there and read alice's files through /proc/PID/cwd. Now the entry is made as bob: it fails,
    the start fails with one line naming bob and the path, and no process of bob's is ever there."""
    name = lab.names[who]
    uid = pwd.getpwnam(name).pw_uid
    path = os.path.join(pwd.getpwnam(name).pw_dir, "nb")
    row = wait_for(lambda: (r := lab.rows()[name])["state"] in ("backoff", "crashloop") and r["last_error"] and r,
                   60, what=f"{name}'s failed start")
    error = row["last_error"]
    assert name in error and path in error and "cannot enter root_dir" in error and "\n" not in error, error
    deadline = time.monotonic() + 6  # several backoff retries (backoff_max 2s)
    while time.monotonic() < deadline:
        inside = [c for c in _cwds(uid) if c.startswith(lab.alice_home)]
        assert not inside, f"a process of {name} has its cwd in alice's home: {inside}"
        time.sleep(0.05)
    assert lab.rows()[name]["pid"] is None


def test_the_exec_spawn_enters_root_dir_as_the_user(lab):
    """The mechanism itself, without the daemon's check in front (a symlink swapped after the check):
    the cd runs after the identity change, so bob's rights decide."""
    bob, dave = lab.names["bob"], lab.names["dave"]
    for user, directory, ok in ((bob, os.path.join(pwd.getpwnam(bob).pw_dir, "nb"), False),
                                (dave, os.path.join(pwd.getpwnam(dave).pw_dir, "private"), True)):
        out = subprocess.run([*launch.enter(directory), "/bin/pwd"], cwd="/", capture_output=True, text=True,
                             env={"USER": user, "PATH": "/usr/bin:/bin"}, **as_user(user))
        if ok:
            assert (out.returncode, out.stdout.strip()) == (0, directory), out.stderr
        else:
            assert out.returncode == 2 and out.stdout == "", out.stdout
            assert out.stderr.strip() == f"notebookd: {user} cannot enter root_dir {directory}", out.stderr


def test_a_0700_root_dir_of_the_users_own_works(lab):
    dave = lab.names["dave"]
    row = lab.rows()[dave]
    assert row["state"] == "running"
    assert os.readlink(f"/proc/{row['pid']}/cwd") == os.path.join(pwd.getpwnam(dave).pw_dir, "private")
    assert http(row["url"] + "api/status", lab.token(dave))[0] == 200


def test_check_config_checks_root_dir_as_the_user(lab):
    out = lab.cli("check-config")
    assert out.returncode == 1
    for who in ("bob", "frank"):
        name = lab.names[who]
        line = next((l for l in out.stderr.splitlines() if f"users.{name}:" in l), "")
        assert f"cannot enter root_dir {pwd.getpwnam(name).pw_dir}/nb" in line, out.stderr
    assert not any(lab.names[w] in out.stderr for w in ("carol", "dave", "gina")), out.stderr


def test_a_fork_child_that_never_reports_costs_only_that_start(lab):
    """erin's child stops before its report: the template kills it after its deadline (3 s here) and fails
    erin's start; the template is not wedged: gina's server is restarted meanwhile, and its pid is a
    child of the same template."""
    erin, gina = lab.names["erin"], lab.names["gina"]
    row = wait_for(lambda: (r := lab.rows()[erin])["state"] in ("backoff", "crashloop") and r["last_error"]
                   and "did not report" in r["last_error"] and r, 60, what="erin's start failing on the deadline")
    assert "\n" not in row["last_error"]
    before = lab.rows()[gina]["pid"]
    template = _ppid(before)
    t = time.monotonic()
    assert lab.cli("restart", gina).returncode == 0
    after = lab.wait_replaced(gina, before, 60)["pid"]
    assert time.monotonic() - t < 60
    assert _ppid(after) == template, "the same template forked gina's new server"
    stopped = [p for p in uid_processes(pwd.getpwnam(erin).pw_uid) if _state(p) == "T"]
    assert len(stopped) <= 1, f"stopped children of erin's pile up (only the current attempt may wait): {stopped}"


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rpartition(")")[2].split()[1])


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def test_an_exit_in_the_same_read_as_the_reply_is_not_lost(users):
    """A server that ends at once: its exit comes right behind the template's reply. With the daemon busy
    (its loop blocked until the template has sent both), both arrive in one read; the exit must still
    reach the waiting future (it was dropped: the pid was registered only when spawn() resumed)."""
    import json
    import socket

    user = users("tgina")

    def both_sent(server) -> bool:
        try:
            first = server.sock.recv(forkserver.MAX_PACKET, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        pid = json.loads(first)["pid"]
        # reaped (no zombie left) and the template asleep again in poll(): it sent the exit after the reply
        return not os.path.exists(f"/proc/{pid}") and _state(server.proc.pid) == "S"

    async def go() -> int | None:
        server = forkserver.ForkServer()
        r, w = os.pipe()
        listening = socket.create_server(("127.0.0.1", 0))  # what notebookd holds for the server (launcher.py)
        try:
            env = {"PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "USER": user.pw_name}
            # The loop reads the template's socket up to its "ready" and then no more, so that the reply
            # and the exit wait unread until the loop is blocked below (a fast template would otherwise
            # answer, and its child exit, in separate reads while the loop still runs).
            loop = asyncio.get_running_loop()
            server._ensure()
            fd = server.sock.fileno()

            def until_ready() -> None:
                server._readable()
                if server._ready is not None and server._ready.done():
                    loop.remove_reader(fd)

            loop.remove_reader(fd)
            loop.add_reader(fd, until_ready)
            task = asyncio.ensure_future(server.spawn(["--version"], env, "/", (user.pw_uid, user.pw_gid, []), w, r,
                                                      listening.fileno(), 1.0))
            deadline = time.monotonic() + 120
            while not server._replies and not task.done():  # the template is up (its imports take seconds)
                assert time.monotonic() < deadline, "the template never took the request"
                await asyncio.sleep(0.05)
            if task.done():
                task.result()  # a spawn that failed says why
            # from here the loop stays blocked while the template answers and the server exits
            wait_for(lambda: both_sent(server), 120, what="the reply and the exit queued")
            loop.add_reader(fd, server._readable)
            proc = await task
            return await asyncio.wait_for(proc.watch(lambda: None), 30)
        finally:
            server.close()
            listening.close()
            os.close(r)
            os.close(w)

    assert asyncio.run(go()) == 0
