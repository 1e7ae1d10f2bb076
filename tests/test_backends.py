"""The shared matrix: the same behaviour from every backend, each against its real process manager.

native: notebookd itself; supervisor: a supervisord of this module's own (its socket, its conf.d);
systemd: notebookd.service inside a booted Debian 12 container (tests/sysroot.py), where each user's
server is a notebookd-user@USER.service. Two users each, alice and bob; tests that change state put
it back before they end (one set of servers per backend: they are expensive to start).
"""

from __future__ import annotations

import json
import os
import signal
import tempfile

import pytest

from conftest import free_ports, needs_root, wait_for
from labs import REPO, VENV, ContainerLab, HostLab
from managers import Supervisord

pytestmark = needs_root

BACKENDS = ["native", "supervisor", "systemd"]


@pytest.fixture(scope="module", params=BACKENDS)
def lab(request, users):
    backend = request.param
    # names of their own: other modules (and other test runs on this machine) use nbtalice, nbtbob
    names = {"alice": users("mxalice").pw_name, "bob": users("mxbob").pw_name}
    base = tempfile.mkdtemp(prefix=f"nbt-{backend}-")
    os.chmod(base, 0o755)
    if backend == "systemd":
        import sysroot

        container = sysroot.Container(sysroot.root(), [VENV, REPO], os.path.join(base, "container.log")).boot()
        lab = ContainerLab(container, names).setup().start()
        yield lab
        lab.stop()
    else:
        supervisord = Supervisord(base).start() if backend == "supervisor" else None
        low = free_ports(1, 28000 if backend == "native" else 29000)[0]
        lab = HostLab(backend, base, names, low, supervisord).start()
        yield lab
        lab.stop()
        if supervisord is not None:
            supervisord.stop()  # and with it the servers, which outlive notebookd under supervisord
        for user in names.values():  # nothing of the test users may outlive the module
            wait_for(lambda: not lab.user_pids(user), 30, what=f"{user}'s processes gone")
    if not os.environ.get("NBT_KEEP"):
        os.system(f"rm -rf {base}")


def _start_kernel(lab, name: str) -> int:
    row = lab.rows()[name]
    status = lab.http(row["url"] + "api/kernels", lab.token(name), method="POST", body=b"{}")
    assert status == 201, status
    kernel_id = json.loads(lab.last_http_body)["id"]
    return wait_for(lambda: lab.pid_of(name, kernel_id), 30, what="the kernel process")


def test_servers_run_as_their_users_and_answer_only_their_token(lab):
    rows = lab.wait_all_running()
    for short, name in lab.names.items():
        row = rows[name]
        assert lab.proc_user(row["pid"]) == name
        env = lab.proc_env(row["pid"])
        assert env["USER"] == name and "JUPYTER_TOKEN" not in env and env["NOTEBOOKD_SERVER"].startswith(name + "@")
        assert not {k for k in env if k.startswith(("SUPERVISOR", "SUDO", "PYTEST", "INVOCATION_ID"))} - \
            ({"INVOCATION_ID"} if lab.backend == "systemd" else set()), "nothing of the manager's environment"
        assert lab.http(row["url"] + "api/kernels", lab.token(name)) == 200
        assert lab.http(row["url"] + "api/kernels") == 403
        other = lab.names["bob" if short == "alice" else "alice"]
        assert lab.http(row["url"] + "api/kernels", lab.token(other)) == 403


def test_status_rows_and_exit_codes(lab):
    out = lab.cli("status", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(out.stdout)
    assert data["daemon"]["backend"] == lab.backend
    for row in data["servers"]:
        assert row["state"] == "running" and row["pid"] and row["port"] and "token" not in row["url"]
    table = lab.cli("status")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:5] == ["USER", "STATE", "PID", "PORT", "URL"]
    alice = lab.names["alice"]
    assert lab.cli("stop", alice).returncode == 0
    assert lab.rows()[alice]["state"] == "stopped"
    assert lab.cli("status", alice).returncode == 3 and lab.cli("status").returncode == 3
    assert lab.cli("status", lab.names["bob"]).returncode == 0
    assert lab.cli("start", alice).returncode == 0
    lab.wait_state(alice, "running")
    assert lab.cli("status").returncode == 0


def test_restart_gives_a_new_process_on_the_same_port(lab):
    bob = lab.names["bob"]
    before = lab.rows()[bob]
    assert lab.cli("restart", bob).returncode == 0
    row = lab.wait_replaced(bob, before["pid"])
    assert row["port"] == before["port"] and row["restarts"] == before["restarts"], "asked for, not a crash"
    assert lab.http(row["url"] + "api/kernels", lab.token(bob)) == 200


def test_kill_9_of_a_server_brings_it_back(lab):
    bob = lab.names["bob"]
    before = lab.rows()[bob]
    lab.kill(before["pid"], signal.SIGKILL)
    row = lab.wait_replaced(bob, before["pid"])
    assert row["restarts"] == before["restarts"] + 1
    assert row["port"] == before["port"]
    assert lab.http(row["url"] + "api/kernels", lab.token(bob)) == 200


def test_stop_leaves_no_kernel_behind(lab):
    alice = lab.names["alice"]
    kernel = _start_kernel(lab, alice)
    assert kernel in lab.user_pids(alice)
    assert lab.cli("stop", alice).returncode == 0
    assert lab.user_pids(alice) == [], "no process of the user's server may survive a stop"
    assert lab.cli("start", alice).returncode == 0
    lab.wait_state(alice, "running")


def test_kernel_of_a_killed_server_does_not_linger(lab):
    alice = lab.names["alice"]
    row = lab.rows()[alice]
    kernel = _start_kernel(lab, alice)
    lab.kill(row["pid"], signal.SIGKILL)
    new = lab.wait_replaced(alice, row["pid"])
    wait_for(lambda: kernel not in lab.user_pids(alice), 30, what="the orphaned kernel gone")
    # JupyterLab starts short-lived helpers of its own at start-up (node, `npm prefix -g` where node is
    # installed): wait for them to end rather than race them
    wait_for(lambda: lab.user_pids(alice) == [new["pid"]], 60, what="only the new server left")


def test_a_user_acts_on_their_own_server_only(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    before = lab.rows()[alice]["pid"]
    out = lab.cli("stop", alice, user=bob)
    assert out.returncode == 1 and "permission denied" in out.stderr
    out = lab.cli("url", alice, user=bob)
    assert out.returncode == 1 and lab.token(alice) not in out.stdout + out.stderr
    assert lab.rows()[alice]["pid"] == before
    assert lab.cli("url", user=bob).stdout.strip() == lab.url(bob)


def test_logs_are_readable_by_root_and_the_user(lab):
    bob = lab.names["bob"]
    for user in (None, bob):
        out = lab.cli("logs", bob, "-n", "200", user=user)
        assert out.returncode == 0, out.stderr
        assert "Jupyter Server" in out.stdout and "is running at" in out.stdout
    assert lab.cli("logs", lab.names["alice"], user=bob).returncode == 1


def test_no_token_in_argv_logs_or_files_others_can_read(lab):
    tokens = {lab.token(n) for n in lab.names.values()}
    for name in lab.names.values():
        pid = lab.rows()[name]["pid"]
        assert not any(t in " ".join(lab.proc_env(pid).values()) for t in tokens)
        logs = lab.cli("logs", name, "-n", "1000").stdout
        assert not any(t in logs for t in tokens)
    for path, mode, text in lab.secret_places():
        if any(t in text for t in tokens):
            assert not mode & 0o077 or path.endswith("/token"), f"token in {path} (mode {oct(mode)})"
            assert not mode & 0o044, f"token in {path}, readable by others"


def test_reload_changes_one_user_only(lab):
    alice, bob = lab.names["alice"], lab.names["bob"]
    before = {n: r["pid"] for n, r in lab.rows().items()}
    lab.set_users({alice: "{}", bob: "{root_dir: /tmp}"})
    out = lab.reload()
    assert out.returncode == 0, out.stderr
    row = lab.wait_replaced(bob, before[bob])
    assert lab.rows()[alice]["pid"] == before[alice]
    assert lab.http(row["url"] + "api/contents", lab.token(bob)) == 200
    lab.set_users({alice: "{}", bob: "{}"})
    assert lab.reload().returncode == 0
    lab.wait_replaced(bob, row["pid"])
    assert lab.rows()[alice]["pid"] == before[alice]


def test_backend_cannot_change_on_reload(lab):
    lab.set_users({n: "{}" for n in lab.names.values()})
    if isinstance(lab, HostLab):
        other = "native" if lab.backend != "native" else "systemd"
        lab.daemon.write_config(open(lab.daemon.config_path).read().replace(f"backend: {lab.backend}",
                                                                             f"backend: {other}"))
    else:
        lab.c.run("sed", "-i", "s/^backend: systemd/backend: native/", "/etc/notebookd/notebookd.yaml")
    out = lab.reload()
    assert out.returncode == 1 and "take effect only when notebookd is restarted" in out.stderr
    lab.set_users({n: "{}" for n in lab.names.values()})
    assert lab.reload().returncode == 0


def test_shutdown_keep_servers_and_the_next_daemon_adopts_them(lab):
    before = {n: r["pid"] for n, r in lab.wait_all_running().items()}
    lab.restart_keeping_servers()
    rows = lab.wait_all_running()
    assert {n: r["pid"] for n, r in rows.items()} == before, "the same processes, adopted"
    bob = lab.names["bob"]
    assert lab.http(rows[bob]["url"] + "api/kernels", lab.token(bob)) == 200


def test_a_server_that_never_answers_is_restarted_after_start_timeout(lab):
    """`running` means answering HTTP with every backend, not just "the manager started a process"."""
    alice, bob = lab.names["alice"], lab.names["bob"]
    lab.set_users({alice: "{command: [/bin/sh, -c, 'exec sleep 600'], start_timeout: 3s}", bob: "{}"})
    assert lab.reload().returncode == 0
    row = wait_for(lambda: (r := lab.rows()[alice])["last_error"] and "not ready after 3s" in r["last_error"] and r,
                   60, what="the start timeout")
    assert row["state"] != "running" and lab.cli("status", alice).returncode == 3
    assert len(lab.user_pids(alice)) <= 1, "the hung process is ended before the next try"
    lab.set_users({n: "{}" for n in lab.names.values()})
    assert lab.reload().returncode == 0
    lab.wait_state(alice, "running")


def test_a_frozen_server_is_restarted_as_unhealthy(lab):
    """The process is there but does not answer (SIGSTOP): health.failures failed probes restart it."""
    bob = lab.names["bob"]
    before = lab.wait_state(bob, "running")
    lab.kill(before["pid"], signal.SIGSTOP)
    row = lab.wait_replaced(bob, before["pid"], timeout=90)
    assert row["restarts"] == before["restarts"] + 1
    assert lab.http(row["url"] + "api/kernels", lab.token(bob)) == 200
    assert before["pid"] not in lab.user_pids(bob)


def test_every_backend_fills_the_same_metrics(lab):
    """GET /metrics from each backend's daemon: the same series, agreeing with `status`. Run last: the
    tests above left counts behind (since the adopting daemon: a start that timed out and reloads for
    alice, an unhealthy restart for bob)."""
    from prometheus_client.parser import text_string_to_metric_families

    rows = lab.wait_all_running()
    assert lab.http(lab.metrics_url) == 200, lab.last_http_body
    series: dict[str, dict] = {}
    for family in text_string_to_metric_families(lab.last_http_body):
        for s in family.samples:
            series.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    assert series["notebookd_build_info"] == {(("backend", lab.backend), ("version", notebookd_version())): 1}
    alice, bob = lab.names["alice"], lab.names["bob"]
    restarts = series["notebookd_server_restarts_total"]
    for name, row in rows.items():
        assert series["notebookd_server_state"][(("state", "running"), ("user", name))] == 1
        assert series["notebookd_server_memory_bytes"][(("user", name),)] > 20 * 2**20
        assert series["notebookd_server_cpu_seconds_total"][(("user", name),)] > 0
        assert series["notebookd_server_kernels"][(("user", name),)] == 0
        assert restarts[(("reason", "exit"), ("user", name))] + restarts[(("reason", "unhealthy"), ("user", name))] \
            == row["restarts"], "the reasons add up to status' count"
    assert restarts[(("reason", "unhealthy"), ("user", bob))] == 1
    assert series["notebookd_health_check_failures_total"][(("user", bob),)] >= 2
    assert restarts[(("reason", "reload"), ("user", alice))] >= 1, "its command changed on reload"
    assert series["notebookd_server_spawn_duration_seconds_count"][(("status", "failure"),)] >= 1, "start timeout"
    assert series["notebookd_server_spawn_duration_seconds_count"][(("status", "success"),)] >= 2
    assert series["notebookd_servers"][(("state", "running"),)] == 2
    # the scrape asked each running server's /api/status: status shows the figures too
    assert all(r["kernels"] == 0 and r["last_activity"] for r in lab.rows().values())
    assert lab.http(lab.metrics_url.replace("/metrics", "/"), method="GET") == 404


def notebookd_version() -> str:
    import notebookd

    return notebookd.__version__
