"""Small fakes for the fast tier: a machine (clock, probe, processes) and a process manager.

Only for pure supervision logic (states, backoff, health counting, adoption): what they stand in for is
tested for real in the root tier (tests/test_backends.py runs the same logic against supervisord and
systemd). Each fake records what it was asked, so a test asserts what a user would see: the states a
server went through, its restarts and last error, and which processes notebookd ended.
"""

from __future__ import annotations

import dataclasses
import itertools

from notebookd.backends.managed import Observed
from notebookd.config import Health, Logs, Restart, ServerSettings
from notebookd.model import Account, ServerSpec

_pids = itertools.count(4000)


def spec(name: str = "alice", port: int = 8801, **settings) -> ServerSpec:
    return ServerSpec(
        account=Account(name, 1001, 1001, (), f"/home/{name}", "/bin/bash"), ip="127.0.0.1", port=port,
        base_url=f"/user/{name}/", root_dir=f"/home/{name}",
        settings=dataclasses.replace(ServerSettings(), **settings),
        restart=Restart(backoff_min=1.0, backoff_max=30.0), health=Health(interval=10.0, timeout=2.0, failures=3),
        logs=Logs(dir="/var/log/notebookd"),
    )


class FakeMachine:
    """A clock that moves only when told, a probe that answers what the test says."""

    def __init__(self):
        self.t = 1_000_000.0
        self.answers: dict[int, int | str] = {}  # port -> what GET {base_url}api gets (default: refused)
        self.probes: list[tuple[int, float]] = []
        self.stopped: list[tuple[int | None, int, str, float]] = []
        self.swept: list[tuple[int, str, int | None]] = []
        self.port_users: dict[int, str] = {}
        self.idle: dict[int, float | None] = {}  # port -> the server's idle seconds (default: active, None)

    async def idle_for(self, spec: ServerSpec, tokens, started) -> float | None:
        return self.idle.get(spec.port)

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    async def probe(self, spec: ServerSpec, timeout: float, host: str | None = None) -> int | str:
        self.probes.append((spec.port, timeout))
        return self.answers.get(spec.port, "Connection refused")

    async def stop_tree(self, pid, uid, marker, grace) -> list[int]:
        self.stopped.append((pid, uid, marker, grace))
        return []

    async def end_strays(self, uid, marker, keep) -> list[int]:
        self.swept.append((uid, marker, keep))
        return []

    def memory(self, pid, uid, marker) -> int:
        return 50 * 2**20

    def port_user(self, ip, port) -> str | None:
        return self.port_users.get(port)

    def uid_of(self, name: str) -> int | None:
        return 1001


class FakeManager:
    """supervisord or systemd as the managed backend sees them: definitions, start, stop, one look."""

    name = "fake"

    def __init__(self, found: dict[str, Observed] | None = None):
        self.obs: dict[str, Observed] = dict(found or {})
        self.defs: dict[str, ServerSpec] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_install: str | None = None  # the BackendError text install raises, if any

    # the Manager protocol
    async def open(self) -> set[str]:
        return set(self.obs)

    async def install(self, spec: ServerSpec, access) -> bool:
        from notebookd.backends.base import BackendError

        self.calls.append(("install", spec.name))
        if self.fail_install:
            raise BackendError(self.fail_install)
        old = self.defs.get(spec.name)
        found = old is None and spec.name in self.obs  # left running by an earlier daemon, same definition
        self.defs[spec.name] = spec
        return not found and old != spec

    async def uninstall(self, name: str) -> None:
        self.calls.append(("uninstall", name))
        self.defs.pop(name, None)
        self.obs.pop(name, None)

    async def start(self, name: str) -> None:
        self.calls.append(("start", name))
        if self.obs.get(name, Observed()).state != "up":
            self.obs[name] = Observed("up", next(_pids))

    async def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        self.obs[name] = Observed("stopped", last_exit="exit status 0")

    async def observe(self, names: list[str]) -> dict[str, Observed]:
        return {n: dataclasses.replace(self.obs.get(n, Observed())) for n in names}

    def log_path(self, name: str) -> str | None:
        return None

    def journal_unit(self, name: str) -> str | None:
        return None

    async def close(self) -> None:
        pass

    # what happens to a server on its own
    def crash(self, name: str, restarted: bool = True) -> int | None:
        """The process dies; the manager starts a new one (a new pid) or, if not, shows it backing off."""
        pid = next(_pids) if restarted else None
        self.obs[name] = Observed("up", pid) if restarted else Observed("backoff", last_exit="exit status 1")
        return pid

    def give_up(self, name: str) -> None:
        self.obs[name] = Observed("gave_up", last_exit="exit status 1", error="Exited too quickly")


class FakeSocketManager(FakeManager):
    """A manager that holds each user's port while no process runs (systemd's socket units): `listen`
    holds it alone (a connection then starts the server: `connect`), `unlisten` closes it."""

    holds_sockets = True

    def __init__(self, found: dict[str, Observed] | None = None):
        super().__init__(found)
        self.listening: set[str] = set()

    async def listen(self, name: str) -> bool:
        self.calls.append(("listen", name))
        self.listening.add(name)
        if self.obs.get(name, Observed()).state != "up":
            self.obs[name] = Observed("idle")
        return True

    async def unlisten(self, name: str) -> None:
        self.calls.append(("unlisten", name))
        self.listening.discard(name)
        if self.obs.get(name, Observed()).state == "idle":
            self.obs[name] = Observed("stopped")

    async def start(self, name: str) -> None:
        self.listening.add(name)
        await super().start(name)

    async def stop(self, name: str) -> None:
        await super().stop(name)
        if name in self.listening:
            self.obs[name] = Observed("idle", last_exit="exit status 0")

    def connect(self, name: str) -> int:
        """A client connects to an idle user's port: the manager starts the server."""
        assert name in self.listening and self.obs[name].state == "idle"
        pid = next(_pids)
        self.obs[name] = Observed("up", pid)
        return pid
