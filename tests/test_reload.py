"""Live reload: only what changed is touched; a broken file changes nothing."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from conftest import Daemon, free_ports, http, needs_root, wait_for

pytestmark = needs_root

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {low}-{high}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
users:
{users}
"""


@pytest.fixture(scope="module")
def lab(users, workdir):
    names = [users(n).pw_name for n in ("alice", "bob", "carol")]
    low = free_ports(1, 21000)[0]

    def config(entries: dict[str, str]) -> str:
        body = "\n".join(f"  {n}: {v}" for n, v in entries.items())
        return CONFIG.format(low=low, high=low + 20, users=body)

    daemon = Daemon(workdir, config({names[0]: "{}", names[1]: "{}"})).start()
    daemon.names = names
    daemon.config_for = config
    yield daemon
    daemon.stop()


def pids(lab) -> dict[str, int]:
    return {n: r["pid"] for n, r in lab.rows().items()}


def test_broken_file_keeps_running_config_and_servers(lab):
    before = pids(lab)
    good = open(lab.config_path).read()
    lab.write_config(good + "  oops: [unclosed\n")
    out = lab.cli("reload")
    assert out.returncode == 1
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert f"{lab.config_path}:" in out.stderr and "YAML syntax error" in out.stderr
    status = lab.status()
    assert status["daemon"]["reload"]["ok"] is False
    assert lab.config_path in status["daemon"]["reload"]["error"]
    assert "last reload FAILED" in lab.cli("status").stdout
    assert pids(lab) == before
    # SIGHUP with the same broken file: still nothing changes, the daemon lives on
    os.kill(lab.proc.pid, signal.SIGHUP)
    wait_for(lambda: "reload failed" in lab.daemon_log().split("reloaded")[-1], 10, what="the failed reload logged")
    assert lab.proc.poll() is None and pids(lab) == before
    lab.write_config(good)
    assert lab.cli("reload").returncode == 0
    assert lab.status()["daemon"]["reload"]["ok"] is True and pids(lab) == before


def test_reload_touches_only_added_changed_and_removed_users(lab):
    alice, bob, carol = lab.names
    before = pids(lab)
    # carol added, bob's root_dir changed, alice untouched
    lab.write_config(lab.config_for({alice: "{}", bob: "{root_dir: /tmp}", carol: "{}"}))
    os.kill(lab.proc.pid, signal.SIGHUP)
    wait_for(lambda: (r := lab.rows()).get(carol, {}).get("state") == "running"
             and r[bob]["state"] == "running" and r[bob]["pid"] != before[bob], 60, what="carol up, bob restarted")
    after = pids(lab)
    assert after[alice] == before[alice]
    # bob's server now serves /tmp
    assert http(lab.rows()[bob]["url"] + "api/contents", lab.token(bob))[0] == 200
    # carol removed again: her server goes away, the others stay
    lab.write_config(lab.config_for({alice: "{}", bob: "{root_dir: /tmp}"}))
    assert lab.cli("reload").returncode == 0
    wait_for(lambda: carol not in lab.rows(), 30, what="carol gone")
    assert pids(lab) == {alice: after[alice], bob: after[bob]}


def test_a_new_member_of_a_configured_group_gets_a_server_on_reload(lab, users):
    alice, bob = lab.names[:2]
    group = f"{alice[:-5]}grp"  # the session's unique prefix, so parallel runs do not collide
    subprocess.run(["groupadd", group], check=True)
    try:
        before = pids(lab)
        text = lab.config_for({alice: "{}", bob: "{root_dir: /tmp}"}).replace("users:", f"groups: [{group}]\nusers:")
        lab.write_config(text)
        assert lab.cli("reload").returncode == 0
        assert pids(lab) == before, "an empty group adds nobody"
        dave = users("dave").pw_name
        subprocess.run(["gpasswd", "-a", dave, group], check=True, capture_output=True)
        assert lab.cli("reload").returncode == 0
        row = lab.wait_state(dave, "running", 60)
        assert http(row["url"] + "api/kernels", lab.token(dave))[0] == 200
        assert {n: p for n, p in pids(lab).items() if n != dave} == before
    finally:
        lab.write_config(lab.config_for({alice: "{}", bob: "{root_dir: /tmp}"}))
        lab.cli("reload")
        subprocess.run(["groupdel", group], capture_output=True)


def test_many_sighups_in_a_row_change_nothing(lab):
    before = pids(lab)
    done = lab.daemon_log().count("INFO reloaded")
    for _ in range(20):
        os.kill(lab.proc.pid, signal.SIGHUP)
    # signals that arrive while one is pending merge into one (the kernel does not queue them)
    wait_for(lambda: lab.daemon_log().count("INFO reloaded") > done, 30, what="a reload")
    assert lab.proc.poll() is None and pids(lab) == before
    assert lab.cli("status").returncode == 0
