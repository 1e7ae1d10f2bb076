"""`start: on-demand` and `idle.stop_after` (native backend): a user without a process until a client
connects, whose server answers that very connection, and which goes back to `idle` when unused.

Real daemon, real users and servers. The idle stop is shortened to seconds here; the rule is
jupyter's own activity (README, "Idle servers").
"""

from __future__ import annotations

import json
import pwd

import pytest

from conftest import Daemon, free_ports, http, needs_root, uid_processes, wait_for
from test_launcher import user_bind

pytestmark = [needs_root, pytest.mark.root]

CONFIG = """\
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
health: {{interval: 2s}}
server: {{start: on-demand, start_timeout: 30s, idle: {{stop_after: 30s}}}}
users:
  {execu}: {{port: {p1}}}
  {forku}: {{port: {p2}, spawn: fork}}
"""


@pytest.fixture(scope="module")
def lab(users, workdir):
    names = {short: users(short).pw_name for short in ("odexec", "odfork")}
    ports = free_ports(2, 25500)
    daemon = Daemon(workdir, CONFIG.format(execu=names["odexec"], forku=names["odfork"], p1=ports[0],
                                           p2=ports[1])).start(wait_ready=False)
    daemon.names = names
    for name in names.values():
        daemon.wait_state(name, "idle", 60)
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("short", ["odexec", "odfork"])
def test_idle_user_has_no_process_and_its_first_request_is_answered(lab, short):
    name = lab.names[short]
    row = lab.wait_state(name, "idle")
    uid = pwd.getpwnam(name).pw_uid
    assert row["pid"] is None and uid_processes(uid) == []
    assert user_bind(pwd.getpwnam(name), row["port"]) == "EADDRINUSE"
    assert lab.cli("status").returncode == 0, "idle counts as up for monitoring"
    status, body, _ = http(row["url"] + "api", timeout=120)  # the connection that starts it
    assert status == 200 and "version" in json.loads(body)
    assert lab.rows()[name]["state"] == "running"


@pytest.mark.parametrize("short", ["odexec", "odfork"])
def test_unused_server_goes_back_to_idle_and_a_post_starts_it_again(lab, short):
    name = lab.names[short]
    row = lab.rows()[name]
    if row["state"] != "running":
        assert http(row["url"] + "api", timeout=120)[0] == 200
    lab.wait_state(name, "idle", 120)
    uid = pwd.getpwnam(name).pw_uid
    wait_for(lambda: uid_processes(uid) == [], 30, what="no process left of the idle user")
    # the first request after the idle stop is a POST with the token: answered by the new server
    status, body, _ = http(row["url"] + "api/kernels", lab.token(name), "POST", b"{}", timeout=120)
    assert status == 201, body
    assert lab.rows()[name]["state"] == "running"
    kernel = json.loads(body)["id"]
    assert http(row["url"] + f"api/kernels/{kernel}", lab.token(name), "DELETE", timeout=60)[0] == 204
