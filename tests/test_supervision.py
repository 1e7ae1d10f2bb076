"""The managed backends' supervision logic (states, readiness, health counting, restarts, adoption, retries),
driven by a fake process manager and a fake machine (tests/fakes.py) through `ManagedBackend`'s seam. The
same logic meets real supervisord and systemd in tests/test_backends.py; here each rule is pinned down
alone, in milliseconds, and every state move is checked against model.TRANSITIONS as it happens."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile

import pytest

from fakes import FakeMachine, FakeManager, spec
from notebookd.backends.managed import ManagedBackend, Observed
from notebookd.config import Idle
from notebookd.model import TRANSITIONS, ServerState

S = ServerState


class Lab:
    """One backend over the fakes, with the history of every server's states."""

    def __init__(self, found: dict[str, Observed] | None = None):
        self.machine = FakeMachine()
        self.manager = FakeManager(found)
        self._tmp = tempfile.TemporaryDirectory(prefix="nbd-fast-")  # open() makes <run_dir>/servers
        self.run_dir = self._tmp.name
        self.backend = ManagedBackend(self.manager, self.run_dir, "/nonexistent", tokens=None,
                                      on_change=self._changed, poll=3600, machine=self.machine, access=object())
        self.history: dict[str, list[ServerState]] = {}

    def _changed(self) -> None:
        for name, server in self.backend.servers.items():
            seen = self.history.setdefault(name, [S.STOPPED])
            if seen[-1] is not server.state:
                seen.append(server.state)

    async def look(self, seconds: float = 1.0) -> None:
        self.machine.advance(seconds)
        await self.backend._look_once()

    def row(self, name: str = "alice"):
        return self.backend.status()[name]

    def ready(self, s) -> None:
        self.machine.answers[s.port] = 200


def run(coro):
    return asyncio.run(coro)


def _valid(history: list[ServerState]) -> bool:
    return all(b in TRANSITIONS[a] for a, b in zip(history, history[1:]))


def test_a_start_is_starting_until_the_probe_answers_then_running():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        await lab.backend.start(alice)
        assert lab.row().state == "starting" and lab.row().pid is not None
        await lab.look()
        assert lab.row().state == "starting"  # the process runs, but does not answer yet
        lab.ready(alice)
        await lab.look()
        assert lab.row().state == "running" and lab.row().restarts == 0 and lab.row().last_error is None
        assert lab.history["alice"] == [S.STOPPED, S.STARTING, S.RUNNING]
    run(go())


def test_failed_health_probes_are_counted_and_the_third_restarts_through_stopping():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        assert lab.row().state == "running"
        old_pid = lab.row().pid
        lab.machine.answers[alice.port] = 500
        for n in (1, 2):
            await lab.look(alice.health.interval)
            assert lab.row().state == "running"
            assert lab.row().last_error == f"health check failed ({n}/3): 500"
        await lab.look(1.0)  # before the next interval: no probe, nothing counted
        assert lab.row().last_error == "health check failed (2/3): 500"
        await lab.look(alice.health.interval)
        assert ("stop", "alice") in lab.manager.calls and lab.manager.calls[-1] == ("start", "alice")
        assert lab.machine.stopped[-1][3] == alice.settings.stop_timeout  # the kernel sweep after the stop
        lab.machine.answers[alice.port] = 200
        await lab.look()
        assert lab.row().state == "running" and lab.row().pid != old_pid and lab.row().restarts == 1
        assert lab.history["alice"][-4:] == [S.STOPPING, S.BACKOFF, S.STARTING, S.RUNNING]
        assert _valid(lab.history["alice"])
    run(go())


def test_one_good_probe_resets_the_count():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        for answer in (500, 500, 200, 500, 500):
            lab.machine.answers[alice.port] = answer
            await lab.look(alice.health.interval)
        assert lab.row().state == "running" and ("stop", "alice") not in lab.manager.calls
    run(go())


def test_a_crash_the_manager_restarts_between_two_looks_counts_once_and_ends_old_kernels():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        new_pid = lab.manager.crash("alice")
        await lab.look()
        # it went away and came back between two looks: backoff and starting are passed through, logged
        assert lab.history["alice"][-3:] == [S.BACKOFF, S.STARTING, S.RUNNING]
        assert lab.row().restarts == 1 and lab.row().pid == new_pid
        assert lab.machine.swept[-1] == (1001, f"alice@{lab.run_dir}", new_pid)  # keep the new server's tree
        assert _valid(lab.history["alice"])
    run(go())


def test_a_server_the_manager_gave_up_on_is_crashloop_and_started_again_after_backoff_max():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        await lab.backend.start(alice)
        lab.manager.give_up("alice")
        await lab.look()
        assert lab.row().state == "crashloop" and lab.row().last_error == "exit status 1 (Exited too quickly)"
        starts = lab.manager.calls.count(("start", "alice"))
        await lab.look(alice.restart.backoff_max - 2)
        assert lab.manager.calls.count(("start", "alice")) == starts  # not yet
        await lab.look(2)
        assert lab.manager.calls.count(("start", "alice")) == starts + 1
        lab.ready(alice)
        await lab.look()
        assert lab.row().state == "running" and _valid(lab.history["alice"])
    run(go())


def test_not_ready_within_start_timeout_is_restarted_with_the_reason():
    async def go():
        lab, alice = Lab(), spec(start_timeout=20.0)
        await lab.backend.open()
        await lab.backend.start(alice)
        await lab.look(19)
        assert lab.row().state == "starting" and ("stop", "alice") not in lab.manager.calls
        await lab.look(2)
        assert lab.row().last_error == "not ready after 20s (last probe: Connection refused)"
        assert ("stop", "alice") in lab.manager.calls and _valid(lab.history["alice"])
    run(go())


def test_a_server_left_by_an_earlier_daemon_is_adopted_not_restarted():
    async def go():
        lab, alice = Lab(found={"alice": Observed("up", 777, since=999_000.0)}), spec()
        lab.ready(alice)
        await lab.backend.open()
        assert lab.row().state == "starting"  # found, not yet configured: nothing to probe with
        await lab.backend.start(alice)
        row = lab.row()
        assert row.state == "running" and row.pid == 777 and row.restarts == 0
        assert row.started == 999_000.0  # its uptime counts from its own start, not from the adoption
        assert ("stop", "alice") not in lab.manager.calls
        assert lab.history["alice"] == [S.STOPPED, S.STARTING, S.RUNNING]
    run(go())


def test_stop_goes_through_stopping_and_stays_stopped():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        await lab.backend.stop("alice")
        assert lab.row().state == "stopped" and lab.history["alice"][-2:] == [S.STOPPING, S.STOPPED]
        await lab.look(3600)
        assert lab.row().state == "stopped" and lab.manager.calls[-1] == ("stop", "alice")  # not started again
        assert lab.backend.specs() == {}
    run(go())


def test_a_refused_install_is_backoff_and_retried_every_backoff_max():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        lab.manager.fail_install = "supervisord: BAD_NAME"
        await lab.backend.start(alice)
        assert lab.row().state == "backoff" and lab.row().last_error == "supervisord: BAD_NAME"
        lab.manager.fail_install = None
        await lab.look(alice.restart.backoff_max / 2)
        assert lab.row().state == "backoff" and ("start", "alice") not in lab.manager.calls
        await lab.look(alice.restart.backoff_max / 2)
        assert ("start", "alice") in lab.manager.calls
        lab.ready(alice)
        await lab.look()
        assert lab.row().state == "running" and _valid(lab.history["alice"])
    run(go())


def test_stopped_outside_notebookd_is_started_again():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        lab.manager.obs["alice"] = Observed("stopped", last_exit="exit status 0")  # `supervisorctl stop`
        await lab.look()
        await lab.look()
        assert lab.row().state == "running" and lab.manager.calls[-1] == ("start", "alice")
        assert S.BACKOFF in lab.history["alice"] and _valid(lab.history["alice"])
    run(go())


def test_a_held_port_is_named_in_the_error():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        await lab.backend.start(alice)
        lab.manager.crash("alice", restarted=False)
        lab.machine.port_users[alice.port] = "pid 99 (python3, user mallory)"
        await lab.look()
        assert lab.row().state == "backoff"
        assert lab.row().last_error == "port 8801 on 127.0.0.1 is in use by pid 99 (python3, user mallory)"
    run(go())


def test_a_changed_definition_restarts_a_running_server():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        pid = lab.row().pid
        await lab.backend.start(spec(stop_timeout=3.0))
        await lab.look()
        assert lab.row().state == "running" and lab.row().pid != pid and lab.row().restarts == 0
        assert _valid(lab.history["alice"])
    run(go())


@pytest.mark.parametrize("failures, delay", [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 30.0), (9, 30.0)])
def test_backoff_doubles_up_to_the_most_and_is_the_most_in_a_crash_loop(failures, delay):
    from notebookd.config import Restart

    assert Restart(backoff_min=1.0, backoff_max=30.0, crashloop_after=5).delay(failures) == delay


# ---- a manager that holds the port (systemd's socket units): on demand and idle stop ----

class SocketLab(Lab):
    def __init__(self, found=None):
        super().__init__(found)
        from fakes import FakeSocketManager

        self.manager = FakeSocketManager(found)
        self.backend.manager = self.manager
        self.backend.holds_sockets = True


def test_an_on_demand_user_waits_idle_and_a_connection_makes_it_running():
    async def go():
        lab, alice = SocketLab(), spec(start="on-demand")
        await lab.backend.open()
        await lab.backend.start(alice)
        assert lab.row().state == "idle" and ("start", "alice") not in lab.manager.calls
        await lab.look()
        assert lab.row().state == "idle" and lab.row().pid is None
        lab.ready(alice)
        pid = lab.manager.connect("alice")
        await lab.look()
        assert lab.row().state == "running" and lab.row().pid == pid and lab.row().restarts == 0
        assert lab.history["alice"] == [S.STOPPED, S.IDLE, S.STARTING, S.RUNNING]
    run(go())


def test_an_admins_start_of_an_on_demand_user_starts_it_now():
    async def go():
        lab, alice = SocketLab(), spec(start="on-demand")
        await lab.backend.open()
        await lab.backend.start(alice, urgent=True)
        assert lab.manager.calls[-1] == ("start", "alice") and lab.row().state == "starting"
    run(go())


def test_an_idle_server_is_stopped_its_port_kept_and_the_next_connection_starts_it():
    async def go():
        lab, alice = SocketLab(), spec(start="always", idle=dataclasses.replace(Idle(), stop_after=600.0))
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        assert lab.row().state == "running"
        lab.machine.idle[alice.port] = 599.0
        await lab.look(alice.health.interval)
        assert lab.row().state == "running"  # not idle long enough
        lab.machine.idle[alice.port] = None  # a busy kernel or a connected client: active
        await lab.look(alice.health.interval)
        assert lab.row().state == "running"
        lab.machine.idle[alice.port] = 600.0
        await lab.look(alice.health.interval)
        assert lab.row().state == "idle" and ("unlisten", "alice") not in lab.manager.calls
        assert lab.manager.calls[-1] == ("stop", "alice") and lab.machine.stopped  # the kernel sweep too
        await lab.look()
        assert lab.row().state == "idle"  # start: always, but stopped for idleness: not restarted
        lab.manager.connect("alice")
        lab.machine.idle[alice.port] = None
        await lab.look()
        assert lab.row().state == "running" and lab.row().restarts == 0
        assert _valid(lab.history["alice"])
    run(go())


def test_an_always_server_that_exits_while_its_port_is_held_is_started_again():
    async def go():
        lab, alice = SocketLab(), spec()
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        lab.manager.obs["alice"] = Observed("idle", last_exit="exit status 0")  # shut down from the web UI
        await lab.look()
        assert lab.manager.calls[-1] == ("start", "alice")
        await lab.look()
        assert lab.row().state == "running" and lab.row().restarts == 1  # it went away unasked
        assert _valid(lab.history["alice"])
    run(go())


def test_an_admins_stop_closes_the_port_and_a_removed_user_is_uninstalled():
    async def go():
        lab, alice = SocketLab(), spec(start="on-demand")
        await lab.backend.open()
        await lab.backend.start(alice)
        await lab.backend.stop("alice")
        assert lab.row().state == "stopped" and ("unlisten", "alice") in lab.manager.calls
        assert "alice" not in lab.manager.listening
        await lab.look()
        assert lab.row().state == "stopped"  # not wanted: nothing starts it, no connection can
        await lab.backend.start(alice)
        assert lab.row().state == "idle"
        await lab.backend.forget("alice")
        assert ("uninstall", "alice") in lab.manager.calls and "alice" not in lab.backend.status()
    run(go())


def test_a_restart_of_an_on_demand_user_waits_for_its_next_connection():
    async def go():
        lab, alice = SocketLab(), spec(start="on-demand")
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        lab.manager.connect("alice")
        await lab.look()
        assert lab.row().state == "running"
        await lab.backend.restart(spec(start="on-demand", env=(("X", "1"),)))
        assert lab.row().state == "idle"
        assert lab.history["alice"][-3:] == [S.STOPPING, S.STOPPED, S.IDLE]
        assert _valid(lab.history["alice"])
    run(go())


def test_a_restart_whose_install_fails_is_backoff_and_retried():
    async def go():
        lab, alice = Lab(), spec()
        await lab.backend.open()
        lab.ready(alice)
        await lab.backend.start(alice)
        lab.manager.fail_install = "command 'no-such-jupyter' not found"
        await lab.backend.restart(spec(env=(("X", "1"),)))
        await lab.look()
        assert lab.row().state == "backoff" and "no-such-jupyter" in lab.row().last_error
        lab.manager.fail_install = None
        await lab.look(alice.restart.backoff_max)
        await lab.look()
        assert lab.row().state == "running"
        assert _valid(lab.history["alice"])
    run(go())
