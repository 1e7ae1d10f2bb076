"""What only the supervisor backend does: its conf.d file, living beside other programs, adoption.

A supervisord of this module's own runs an unrelated program too; notebookd must never touch it.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import tempfile

import pytest

from conftest import as_user, free_ports, needs_root, wait_for
from labs import HostLab
from managers import Supervisord

pytestmark = needs_root

OTHER = """\
[program:someone-else]
command=/bin/sleep 3600
autostart=true
"""


@pytest.fixture(scope="module")
def lab(users):
    names = {"alice": users("mxalice").pw_name, "bob": users("mxbob").pw_name}
    base = tempfile.mkdtemp(prefix="nbt-supervisor-")
    os.chmod(base, 0o755)
    os.makedirs(os.path.join(base, "conf.d"))
    with open(os.path.join(base, "conf.d", "other.conf"), "w") as fh:
        fh.write(OTHER)
    supervisord = Supervisord(base).start()
    # crashloop_after: 2, so supervisord gives up (FATAL) within seconds in the crash-loop test
    lab = HostLab("supervisor", base, names, free_ports(1, 30000)[0], supervisord,
                  restart="{backoff_min: 0.5s, backoff_max: 3s, crashloop_after: 2}").start()
    lab.supervisord = supervisord
    yield lab
    lab.stop()
    supervisord.stop()
    for user in names.values():
        wait_for(lambda: not lab.user_pids(user), 30, what=f"{user}'s processes gone")
    if not os.environ.get("NBT_KEEP"):
        os.system(f"rm -rf {base}")


def other_pid(lab) -> int:
    """The pid of the program that is not notebookd's, from supervisord itself."""
    import asyncio

    from notebookd.backends import xmlrpc

    info = asyncio.run(xmlrpc.call(lab.supervisord.socket, "supervisor.getProcessInfo", "someone-else"))
    return info["pid"]


def test_conf_file_is_root_only_one_program_per_user(lab):
    path = os.path.join(lab.supervisord.conf_d, "notebookd-users.conf")
    st = os.stat(path)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    text = open(path).read()
    for name in lab.names.values():
        assert f"[program:notebookd-{name}]" in text
        assert f"user={name}" in text
    for key in ("autorestart=true", "stopasgroup=true", "killasgroup=true", "umask=077",
                "stdout_logfile_maxbytes=65536", "stdout_logfile_backups=2"):
        assert text.count(key) == len(lab.names), key
    assert not any(lab.token(n) in text for n in lab.names.values())


def test_logs_are_in_a_directory_only_the_user_and_root_can_enter(lab):
    # root's 0750 directory with an ACL for its user alone: not the user's whole primary group, which
    # other lab members may share
    names = list(lab.names.values())
    for name in names:
        d = os.path.join(lab.base, "logs", name)
        st = os.stat(d)
        assert stat.S_IMODE(st.st_mode) == 0o750 and (st.st_uid, st.st_gid) == (0, 0)
        other = next(n for n in names if n != name)
        assert subprocess.run(["ls", d], capture_output=True, **as_user(name)).returncode == 0
        assert subprocess.run(["ls", d], capture_output=True, **as_user(other)).returncode != 0


def test_other_programs_are_never_touched(lab):
    before = other_pid(lab)
    alice, bob = lab.names["alice"], lab.names["bob"]
    lab.set_users({alice: "{}"})  # bob removed: his group goes, nothing else
    assert lab.reload().returncode == 0
    wait_for(lambda: bob not in lab.rows(), 30, what="bob gone")
    assert f"notebookd-{bob}" not in open(os.path.join(lab.supervisord.conf_d, "notebookd-users.conf")).read()
    assert lab.user_pids(bob) == []
    lab.set_users({alice: "{}", bob: "{}"})
    assert lab.reload().returncode == 0
    lab.wait_all_running()
    assert other_pid(lab) == before


def test_stopping_notebookd_stops_the_servers_and_adoption_is_logged(lab):
    before = {n: r["pid"] for n, r in lab.wait_all_running().items()}
    lab.restart_keeping_servers()
    assert {n: r["pid"] for n, r in lab.wait_all_running().items()} == before
    assert "found under supervisor" in lab.daemon_log()
    assert lab.daemon.stop() == 0
    for name in lab.names.values():
        assert lab.user_pids(name) == [], "a daemon stop stops the servers, kernels included"
    lab.daemon.start(wait_ready=False)
    lab.wait_all_running()


def test_a_server_supervisord_gave_up_on_is_a_crashloop_and_retried(lab):
    alice = lab.names["alice"]
    lab.set_users({alice: "{command: [/bin/sh, -c, 'echo failing; exit 3']}", lab.names["bob"]: "{}"})
    assert lab.reload().returncode == 0
    row = lab.wait_state(alice, "crashloop", 120)
    assert "Exited too quickly" in (row["last_error"] or "")  # supervisord keeps no status for those
    assert lab.cli("status", alice).returncode == 3
    assert "failing" in lab.cli("logs", alice).stdout
    lab.set_users({n: "{}" for n in lab.names.values()})
    assert lab.reload().returncode == 0
    lab.wait_state(alice, "running", 90)


def test_section_survives_shlex_and_percent_expansion():
    """What supervisord will exec is exactly the argv notebookd computed (it shlex-splits the command and
    expands %(...)s): round-trip a section through supervisor's own config parser."""
    from supervisor.options import ServerOptions

    from notebookd import launch
    from notebookd.backends.supervisor import section
    from test_model import spec

    s = spec("alice")
    run = launch.Launch(argv=("/usr/bin/python3", "-c", "print('100% done; \"quoted\" $HOME')", "a b"),
                        env={"HOME": "/home/alice", "ODD": "x%(ENV_HOME)sy 'z'"}, cwd="/home/alice",
                        marker="alice@/run/notebookd")
    text = "[supervisord]\n" + section(s, run, "/tmp/alice.log")
    text = text.replace("user=alice", "user=nobody")  # supervisor looks the user up; alice is made up
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as fh:
        fh.write(text)
        fh.flush()
        opts = ServerOptions()
        opts.configfile = fh.name
        opts.process_config(do_usage=False)
        cmd = opts.process_group_configs[0].process_configs[0].command
    words = shlex.split(cmd)
    assert words[:2] == ["/usr/bin/env", "-i"]
    assert "ODD=x%(ENV_HOME)sy 'z'" in words
    assert words[-4:] == list(run.argv)


def test_example_conf_for_notebookd_itself_parses():
    """etc/supervisor/conf.d/notebookd.conf, read by supervisor's own parser."""
    from supervisor.options import ServerOptions

    from labs import REPO

    with open(os.path.join(REPO, "etc", "supervisor", "conf.d", "notebookd.conf")) as fh:
        text = fh.read().replace("/var/log/supervisor/", "/tmp/")
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as fh:
        fh.write("[supervisord]\n" + text)
        fh.flush()
        opts = ServerOptions()
        opts.configfile = fh.name
        opts.process_config(do_usage=False)
        proc = opts.process_group_configs[0].process_configs[0]
    assert proc.name == "notebookd" and proc.command == "/usr/local/bin/notebookd run"
    from supervisor.datatypes import RestartUnconditionally

    assert proc.autorestart is RestartUnconditionally and proc.stopwaitsecs == 90 and not proc.stopasgroup


def test_a_server_that_cannot_be_prepared_is_an_error_for_that_user_only(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    lab.wait_all_running()
    bob_pid = lab.rows()[bob]["pid"]
    lab.set_users({alice: "{command: [no-such-jupyter]}", bob: "{}"})
    assert lab.reload().returncode == 0
    row = wait_for(lambda: (r := lab.rows()[alice])["last_error"] and "not found" in r["last_error"] and r, 30,
                   what="alice's error")
    assert row["state"] == "backoff" and "no-such-jupyter" in row["last_error"]
    assert lab.rows()[bob]["pid"] == bob_pid and lab.daemon.proc.poll() is None
    lab.set_users({n: "{}" for n in lab.names.values()})
    assert lab.reload().returncode == 0
    lab.wait_state(alice, "running", 90)


def test_servers_speak_tls_under_supervisord_too(lab):
    """access.py's files (TLS key, cookie secret) reach a supervisord-run server; the probe speaks https."""
    plain = lab.extra
    lab.extra = plain + "\ntls: {mode: self-signed}"
    lab.set_users({n: "{}" for n in lab.names.values()})
    try:
        assert lab.reload().returncode == 0
        alice = lab.names["alice"]
        row = wait_for(lambda: (r := lab.rows()[alice])["url"].startswith("https://") and r["state"] == "running"
                       and r, 90, what="alice running with TLS")
        import ssl
        import urllib.request

        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        req = urllib.request.Request(row["url"] + "api/kernels", headers={"Authorization": f"token {lab.token(alice)}"})
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            assert resp.status == 200
        key = os.path.join(lab.base, "run", "servers", alice, "tls.key")
        st = os.stat(key)
        assert stat.S_IMODE(st.st_mode) == 0o400 and st.st_uid == __import__("pwd").getpwnam(alice).pw_uid
    finally:
        lab.extra = plain
        lab.set_users({n: "{}" for n in lab.names.values()})
        assert lab.reload().returncode == 0
        lab.wait_all_running()
