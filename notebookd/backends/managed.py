"""A Backend on top of a process manager that keeps the servers alive itself (supervisord, systemd).

The manager restarts crashed servers; this layer keeps what the manager cannot know: which servers
notebookd wants up, whether a server answers HTTP (`running` means the same as with the native
backend: `GET {base_url}api` is 200), failed health probes, kernels that a stop or a crash leaves
behind, and a retry for servers the manager gave up on (never given up, as with the native backend).

The manager's view is read every `poll` seconds (one call for all servers) and right after every
action. `status()` only reads what the last look found, so it never blocks.

A manager with `holds_sockets` (systemd: a socket unit per user) keeps each user's port while the
server is down, so this layer also does what the native backend does with the sockets it holds:
`start: on-demand` (only the port, state IDLE; the first connection starts the server) and idle stop
(activity.idle_for, asked with each health check; the server stops, the port stays, back to IDLE).
An admin's stop also stops the manager's listening (`unlisten`), so that no connection starts the server again.

A daemon shutdown stops the servers, as with the native backend; `detach()` (`notebookd shutdown
--keep-servers`) or a crash leaves them running under their manager: a new daemon finds them
(`Manager.open`), and starting a server whose definition did not change is a no-op there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Protocol

from notebookd import launch, probe
from notebookd.access import Access, NotReady
from notebookd.backends.base import BackendError
from notebookd.config import ServerSettings
from notebookd.fsutil import ensure_dir
from notebookd.machine import Machine
from notebookd.model import ServerSpec, ServerState, ServerStatus, path
from notebookd.probe import Unprobed
from notebookd.stats import Stats
from notebookd.tokens import TokenStore

log = logging.getLogger("notebookd")


@dataclass
class Observed:
    """What the manager says about one server.

    state: stopped | up (a process runs) | starting (the manager is starting it) | stopping |
    backoff (waiting to restart it) | gave_up (supervisor FATAL, systemd failed) | idle (no process,
    the port held: the next connection starts it; managers with `holds_sockets`)."""

    state: str = "stopped"
    pid: int | None = None
    since: float | None = None
    last_exit: str | None = None
    error: str | None = None
    memory: int | None = None
    host: str | None = None  # where the server answers, if not on its spec's ip (a Slurm job's node)
    handover: bool = False  # a new process that already answers took over from the old one (Slurm's
    # resubmit_before): the server stays running, nothing crashed


class Manager(Protocol):
    name: str
    # optional `local = False`: its servers run on other machines (Slurm's nodes), so notebookd neither
    # sweeps nor measures their processes here (the job's own wrapper ends them there)

    async def open(self) -> set[str]:
        """Connect; return the servers it already has (left running by an earlier daemon)."""

    async def install(self, spec: ServerSpec, access: Access) -> bool:
        """Write the server's definition; True if it changed (a running server must restart)."""

    async def uninstall(self, name: str) -> None:
        """Drop the definition of a stopped server (and close its port)."""

    # With `holds_sockets = True` (the manager keeps each user's port while the server is down):
    # async def listen(self, name) -> bool: hold the port only, the first connection starts the server;
    #     False if this user's server binds its port itself (then start it)
    # async def unlisten(self, name) -> None: close the port (after an admin's stop)

    async def start(self, name: str) -> None:
        """Start it unless it runs; return once it is starting."""

    async def stop(self, name: str) -> None:
        """Stop it; return once its processes are gone."""

    async def observe(self, names: list[str]) -> dict[str, Observed]:
        """The state of these servers, in one call."""

    def log_path(self, name: str) -> str | None: ...

    def journal_unit(self, name: str) -> str | None: ...

    async def close(self) -> None: ...


@dataclass
class Server:
    name: str
    spec: ServerSpec | None  # None: found running under the manager, not (yet) configured again
    wanted: bool = False
    busy: int = 0  # an action is under way: the poller leaves it alone
    obs: Observed = field(default_factory=Observed)
    state: ServerState = ServerState.STOPPED
    since: float = 0.0  # when `state` was entered (the machine's clock)
    last_pid: int | None = None
    pid_seen: float = 0.0
    ready_pid: int | None = None
    started: float | None = None
    restarts: int = 0
    planned: bool = False  # the next new pid is one we asked for (not an automatic restart)
    crashed: bool = False  # the last process went away unasked: its successor counts as a restart
    last_error: str | None = None
    health_failures: int = 0
    next_probe: float = 0.0
    gave_up_at: float | None = None
    retry_at: float = 0.0  # after a failed install or start: when the poller tries again
    timed: bool = False  # the current process was started while this daemon watched: its start is timed
    idled: bool = False  # stopped for idleness: waits in IDLE for a connection, whatever its start mode


class ManagedBackend:
    def __init__(self, manager: Manager, run_dir: str, state_dir: str, tokens: TokenStore, on_change=lambda: None,
                 poll: float = 1.0, machine: Machine | None = None, access: Access | None = None):
        self.manager = manager
        self.machine = machine or Machine()
        self.name = manager.name
        self.run_dir = run_dir
        self.tokens = tokens
        self.access = access or Access(state_dir, tokens)  # the daemon reaches it too (sessions, certificates)
        self.changed = on_change
        self.poll = poll
        self.servers: dict[str, Server] = {}
        self._task: asyncio.Task | None = None
        self._look = asyncio.Lock()
        self._memory_at = 0.0
        self.stats = Stats()  # restarts by reason, failed health checks, start durations (for the metrics)
        self.local = getattr(manager, "local", True)
        self.holds_sockets = getattr(manager, "holds_sockets", False)

    # -- the Backend contract --
    async def open(self) -> None:
        ensure_dir(os.path.join(self.run_dir, "servers"), 0o755)
        for name in await self.manager.open():
            self.servers[name] = Server(name, None, since=self.machine.now())
            log.info("%s: found under %s, left by an earlier notebookd", name, self.name)
        await self._look_once()
        self._task = asyncio.create_task(self._poll_loop(), name=f"{self.name}-poll")

    def names(self) -> set[str]:
        return set(self.servers)

    def specs(self) -> dict[str, ServerSpec]:
        return {n: s.spec for n, s in self.servers.items() if s.wanted and s.spec is not None}

    async def start(self, spec: ServerSpec, urgent: bool = False) -> None:
        # `urgent` orders the native backend's own spawns; here the process manager does the spawning
        server = self.servers.get(spec.name)
        if server is not None and server.spec is not None and server.spec != spec:
            return await self.restart(spec)
        server = server or self.servers.setdefault(spec.name, Server(spec.name, spec, since=self.machine.now()))
        async with self._busy(server):
            server.spec, server.wanted = spec, True
            if not self._on_demand(server, urgent):  # STARTING even if the install fails: then BACKOFF, retried
                self._mark_starting(server)
            changed = await self.manager.install(spec, self.access)
            if changed and server.obs.state not in ("stopped", "gave_up", "idle"):
                log.info("%s: definition changed, restarting it", spec.name)
                await self._stop_now(server)
            if server.obs.state in ("stopped", "gave_up", "idle") or changed:
                server.planned = True
            if server.obs.state == "up" and not changed or not await self._listen(server, urgent):
                self._mark_starting(server)
                await self.manager.start(spec.name)
            server.retry_at = 0.0
        await self._look_safely()

    def _mark_starting(self, server: Server) -> None:
        """STARTING, from any state without a process (the table allows it from each)."""
        if server.state in (S.STOPPED, S.BACKOFF, S.CRASHLOOP, S.IDLE):
            self._set_state(server, S.STARTING, f"asking {self.name}")

    def _on_demand(self, server: Server, urgent: bool = False) -> bool:
        """Whether the server waits for a connection rather than starting now: `start: on-demand`, or
        stopped for idleness; an admin's `notebookd start` (`urgent`) starts it now."""
        return (self.holds_sockets and not urgent and server.spec is not None
                and (server.spec.settings.start == "on-demand" or server.idled))

    async def _listen(self, server: Server, urgent: bool = False) -> bool:
        """IDLE: the manager holds the port and starts the server at its first connection. False if
        it does not wait (then the caller starts it)."""
        if not self._on_demand(server, urgent) or not await self.manager.listen(server.name):
            return False
        if server.state is not S.IDLE:
            self._set_state(server, S.IDLE, "waits for a connection")
        server.planned = True  # the process a connection starts is one we asked for
        return True

    async def stop(self, name: str) -> None:
        await self._end(name, forget=False)

    async def restart(self, spec: ServerSpec, urgent: bool = False) -> None:
        server = self.servers.get(spec.name)
        if server is None:
            return await self.start(spec)
        async with self._busy(server):
            server.wanted = False
            await self._stop_now(server)
            server.spec = spec
            server.wanted, server.planned = True, True  # wanted even if what follows fails: retried
            if not self._on_demand(server, urgent):  # STARTING even if the install fails: then BACKOFF, retried
                self._mark_starting(server)
            await self.manager.install(spec, self.access)
            if not await self._listen(server, urgent):
                self._mark_starting(server)
                await self.manager.start(spec.name)
            server.retry_at = 0.0
        await self._look_safely()

    async def forget(self, name: str) -> None:
        await self._end(name, forget=True)

    async def _end(self, name: str, forget: bool) -> None:
        """Stop the user's server and want it no more; `forget`: drop it from the manager too."""
        server = self.servers.get(name)
        if server is None:
            return
        async with self._busy(server):
            server.wanted, server.idled = False, False
            await self._stop_now(server)
            if self.holds_sockets and not forget:
                await self.manager.unlisten(name)  # stopped means stopped: no connection starts it again
            if forget:
                await self.manager.uninstall(name)
                self.servers.pop(name, None)
        if forget:
            self.changed()
        else:
            await self._look_safely()

    def status(self) -> dict[str, ServerStatus]:
        rows = {}
        for name, s in self.servers.items():
            spec = s.spec
            rows[name] = ServerStatus(
                name=name, state=s.state.value, port=spec.port if spec else None,
                url=spec.url(self.address(name)) if spec else None,
                pid=s.obs.pid if s.obs.state == "up" else None, since=s.since, started=s.started,
                restarts=s.restarts, memory=s.obs.memory if s.obs.state == "up" else None,
                last_error=s.last_error, last_exit=s.obs.last_exit,
            )
        return rows

    def address(self, name: str) -> str | None:
        """Where the server answers when that is not its spec's ip (the node of a Slurm job)."""
        server = self.servers.get(name)
        return server.obs.host if server is not None and server.obs.state == "up" else None

    def log_path(self, name: str) -> str | None:
        return self.manager.log_path(name) if name in self.servers else None

    def journal_unit(self, name: str) -> str | None:
        return self.manager.journal_unit(name) if name in self.servers else None

    async def close(self) -> None:
        """Daemon shutdown: stop every server in parallel (the manager's stop, then the kernel sweep)."""
        await asyncio.gather(*(self.stop(name) for name in list(self.servers)))
        await self.detach()

    async def detach(self) -> None:
        """Let go (`notebookd shutdown --keep-servers`): the servers keep running under their manager,
        and the next daemon adopts them (`Manager.open`, and an unchanged definition starts nothing)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.manager.close()

    # -- actions --
    @contextlib.asynccontextmanager
    async def _busy(self, server: Server):
        """Marks an action under way (the poller then leaves the server's state to it); a manager's
        refusal becomes the server's last error (shown in `status`, logged), never an exception that
        would take the daemon down with it."""
        server.busy += 1
        try:
            yield
        except (BackendError, OSError, NotReady) as exc:  # OSError: its files (a full disk), command not found
            server.last_error = str(exc) if not isinstance(exc, OSError) else f"cannot prepare the server: {exc}"
            if isinstance(exc, FileNotFoundError) and exc.filename is None:
                server.last_error = str(exc)  # jupyter.command: "command 'x' not found in PATH ..."
            log.error("%s: %s", server.name, server.last_error)
            if server.spec is not None:
                server.retry_at = self.machine.now() + server.spec.restart.backoff_max
            self.changed()
        finally:
            server.busy -= 1

    async def _stop_now(self, server: Server, why: str = "stop requested") -> None:
        """The manager stops the server (its process group or cgroup); then every process that carries
        the server's marker goes too: kernels start their own sessions, out of supervisord's reach.
        Ends STOPPED, or BACKOFF when the server is still wanted (a restart follows)."""
        if server.state in (S.STARTING, S.RUNNING):
            self._set_state(server, S.STOPPING, why)
        await self.manager.stop(server.name)
        uid = self._uid(server) if self.local else None
        if uid is not None:
            grace = (server.spec.settings if server.spec else ServerSettings()).stop_timeout
            killed = await self.machine.stop_tree(None, uid, launch.marker(server.name, self.run_dir), grace)
            if killed:
                log.warning("%s: ended processes the manager left behind: %s", server.name,
                            ", ".join(map(str, killed)))
        server.ready_pid = server.started = None
        if server.state is S.STOPPING and server.idled and server.wanted:
            self._set_state(server, S.IDLE, "waits for a connection")
        elif server.state is S.STOPPING:
            self._set_state(server, S.BACKOFF if server.wanted else S.STOPPED, "restarting" if server.wanted else "")
        elif server.state is not S.STOPPED and not server.wanted:
            self._set_state(server, S.STOPPED)

    def _uid(self, server: Server) -> int | None:
        if server.spec is not None:
            return server.spec.account.uid
        return self.machine.uid_of(server.name)

    # -- watching --
    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self._look_once()
            except BackendError as exc:
                log.error("%s: %s", self.name, exc)
            except Exception:  # a bug must not stop the watching silently
                log.exception("%s: watching the servers failed", self.name)

    async def _look_once(self) -> None:
        async with self._look:
            names = sorted(self.servers)
            if not names:
                return
            seen = await self.manager.observe(names)
            if self.local and self.machine.monotonic() - self._memory_at > MEMORY_EVERY:
                self._fill_memory(seen)
            for name, obs in seen.items():  # keep the last figure between two counts
                if obs.memory is None and name in self.servers and obs.pid == self.servers[name].obs.pid:
                    obs.memory = self.servers[name].obs.memory
            await asyncio.gather(*(self._update(self.servers[n], seen.get(n, Observed()))
                                   for n in names if n in self.servers))

    def _fill_memory(self, seen: dict[str, Observed]) -> None:
        self._memory_at = self.machine.monotonic()
        for name, obs in seen.items():
            server = self.servers.get(name)
            if obs.memory is not None or not obs.pid or server is None:
                continue
            uid = self._uid(server)
            if uid is not None:
                obs.memory = self.machine.memory(obs.pid, uid, launch.marker(name, self.run_dir))

    async def _update(self, s: Server, obs: Observed) -> None:
        now = self.machine.now()
        old_pid = s.last_pid
        if obs.host != s.obs.host:
            self.changed()  # where it answers moved (a job on another node): `render nginx` changes
        s.obs = obs
        if obs.handover and old_pid is not None and s.ready_pid == old_pid:
            log.info("%s: pid %s took over from pid %s%s", s.name, obs.pid, old_pid,
                     f" on {obs.host}" if obs.host else "")
            s.last_pid = s.ready_pid = obs.pid
            s.pid_seen, s.health_failures = now, 0
            return
        if old_pid is not None and obs.pid != old_pid and s.wanted and not s.busy and not s.planned:
            s.crashed = True  # the process we knew is gone, and nobody asked for that
        if obs.pid and obs.pid != old_pid:  # a new process
            # not timed: a process that already ran when this daemon first looked (adopted)
            s.timed = s.planned or s.crashed or old_pid is not None
            if s.planned:
                s.planned = s.crashed = False
            elif s.crashed or old_pid is not None:
                s.restarts += 1
                self.stats.restarted(s.name, "exit")
                s.crashed = False
            s.pid_seen, s.ready_pid, s.health_failures = now, None, 0
            s.idled = False  # a connection woke it (or a restart): it runs as its start mode says
            if old_pid is not None and not s.busy:
                if s.state is S.RUNNING:  # even if the new one answers at once: its uptime starts again
                    self._set_state(s, S.BACKOFF, f"pid {old_pid} went away; {self.name} started pid {obs.pid}")
                await self._end_strays(s, keep=obs.pid)
        elif not obs.pid and old_pid is not None and not s.busy:
            await self._end_strays(s, keep=None)  # it exited: its kernels must not outlive it
        s.last_pid = obs.pid if obs.state == "up" else None
        if obs.state == "up" and s.spec is not None:
            await self._probe(s, now)
        if not s.busy:  # an action under way owns the state until it is done
            self._set_state(s, self._state_of(s), self._why_moved(s))
        if obs.state in ("backoff", "gave_up") or (obs.error and obs.state != "up"):
            s.last_error = self._why_down(s)
        if s.busy or not s.wanted:
            if obs.state != "gave_up":
                s.gave_up_at = None
            return
        # the manager will not bring these back by itself
        if obs.state == "idle" and s.spec is not None and not self._on_demand(s):
            # exited while its port is held (a user's shutdown from the web UI; or killed, seen between
            # systemd's states when a pending connection makes the socket start it): not planned, so the
            # new process counts as a restart
            async with self._busy(s):
                log.info("%s: exited; starting it again (start: always)", s.name)
                await self.manager.start(s.name)
        elif obs.state == "stopped" and s.spec is not None:
            if now < s.retry_at:
                return
            if not s.retry_at:
                log.warning("%s: stopped outside notebookd (or its manager restarted); starting it again", s.name)
            async with self._busy(s):
                await self.manager.install(s.spec, self.access)
                if not await self._listen(s):
                    await self.manager.start(s.name)
                s.retry_at = 0.0
        elif obs.state == "gave_up":
            s.gave_up_at = s.gave_up_at or now
            if now - s.gave_up_at >= s.spec.restart.backoff_max:
                s.gave_up_at = None
                await self._act(s, self.manager.start(s.name))
        else:
            s.gave_up_at = None

    async def _act(self, s: Server, action) -> None:
        s.busy += 1
        try:
            await action
        except BackendError as exc:
            s.last_error = str(exc)
            log.error("%s: %s", s.name, exc)
        finally:
            s.busy -= 1

    async def _probe(self, s: Server, now: float) -> None:
        spec = s.spec
        if s.ready_pid != s.obs.pid:
            code = await self.machine.probe(spec, READY_PROBE_TIMEOUT, s.obs.host)
            if code == 200:
                s.ready_pid, s.started, s.last_error = s.obs.pid, min(now, s.obs.since or now), None
                s.next_probe = now + spec.health.interval
                if s.timed:
                    self.stats.spawned(now - s.pid_seen, ok=True)
            elif now - s.pid_seen > spec.settings.start_timeout and not s.busy and s.wanted:
                if s.timed:
                    self.stats.spawned(now - s.pid_seen, ok=False)
                s.last_error = probe.not_ready(spec.settings.start_timeout, code)
                log.warning("%s: %s; restarting it", s.name, s.last_error)
                # counted as "exit", as native counts a start never ready
                await self._act(s, self._restart_by_manager(s, "exit", s.last_error))
            return
        if now < s.next_probe or s.busy:
            return
        s.next_probe = now + spec.health.interval
        code = await self.machine.probe(spec, spec.health.timeout, s.obs.host)
        if code == 200:
            s.health_failures = 0
            if spec.settings.idle.stop_after is not None and self.holds_sockets and s.wanted:
                idle = await self.machine.idle_for(spec, self.tokens, s.started)
                if idle is not None and idle >= spec.settings.idle.stop_after and not s.busy:
                    s.idled = True
                    await self._act(s, self._stop_now(s, f"idle for {idle:.0f}s"))
                    s.obs = Observed("idle", last_exit=s.obs.last_exit)  # what was seen before the stop is gone
                    s.last_pid = None
            return
        if isinstance(code, Unprobed):  # the daemon is out of descriptors: nothing known about the server
            return
        s.health_failures += 1
        self.stats.health_failed(s.name)
        s.last_error = probe.unhealthy(s.health_failures, spec.health.failures, code)
        log.warning("%s: %s", s.name, s.last_error)
        if s.health_failures >= spec.health.failures and s.wanted:
            await self._act(s, self._restart_by_manager(s, "unhealthy", f"unhealthy: {code}"))

    async def _restart_by_manager(self, s: Server, reason: str, why: str) -> None:
        """notebookd's own restart (never ready, unhealthy): counted now, so a restart asked for meanwhile
        (a reload) cannot hide it; its new process is then one we asked for. `reason`: the metrics'
        label; `why`: the state change's, in the log."""
        s.restarts += 1
        self.stats.restarted(s.name, reason)
        s.planned = True
        await self._stop_now(s, why)
        await self.manager.start(s.name)

    async def _end_strays(self, s: Server, keep: int | None) -> None:
        """Processes with the server's marker that are not the current server or its children."""
        uid = self._uid(s) if self.local else None
        if uid is None:
            return
        killed = await self.machine.end_strays(uid, launch.marker(s.name, self.run_dir), keep)
        if killed:
            log.warning("%s: ended processes its last run left behind: %s", s.name, ", ".join(map(str, killed)))

    def _state_of(self, s: Server) -> ServerState:
        """The manager's view, in notebookd's states."""
        o = s.obs.state
        if o == "up":
            return S.RUNNING if s.ready_pid == s.obs.pid else S.STARTING
        if o == "gave_up":
            return S.CRASHLOOP if s.wanted else S.STOPPED
        if o == "idle":  # the port held, no process: waits for a connection, or (start: always) is restarted
            if not s.wanted or s.spec is None:
                return S.STOPPED
            return S.IDLE if self._on_demand(s) else S.BACKOFF
        if o == "stopped":
            # wanted but down: notebookd starts it again, at once or (after a failed install or start) every
            # backoff_max; nobody restarts a server that is not wanted
            return S.BACKOFF if s.wanted and s.spec is not None and s.state is not S.STOPPED else S.STOPPED
        return _OBSERVED[o]

    def _why_moved(self, s: Server) -> str:
        if s.obs.state == "up":
            return f"pid {s.obs.pid}" + (f", port {s.spec.port}" if s.spec else f", found under {self.name}")
        return s.obs.last_exit or s.obs.error or ""

    def _why_down(self, s: Server) -> str:
        spec = s.spec
        holder = self.machine.port_user(spec.ip, spec.port) if spec is not None else None
        if holder:
            return f"port {spec.port} on {spec.ip} is in use by {holder}"
        if s.obs.last_exit and s.obs.error:
            return f"{s.obs.last_exit} ({s.obs.error})"
        return s.obs.last_exit or s.obs.error or s.last_error or f"{self.name}: {s.obs.state}"

    async def _look_safely(self) -> None:
        try:
            await self._look_once()
        except BackendError as exc:
            log.error("%s: %s", self.name, exc)

    def _set_state(self, s: Server, state: ServerState, why: str = "") -> None:
        """The one place a managed server's state changes: every move is one the table allows
        (model.path walks through states a poll may have missed, and logs each)."""
        for step in path(s.name, s.state, state):
            log.info("%s: %s -> %s%s", s.name, s.state.value, step.value, f" ({why})" if why else "")
            s.state, s.since = step, self.machine.now()
            if step not in (S.RUNNING, S.STOPPING):
                s.started = None
            self.changed()


S = ServerState
# the manager's own states that map one to one
_OBSERVED = {"starting": S.STARTING, "stopping": S.STOPPING, "backoff": S.BACKOFF}
READY_PROBE_TIMEOUT = 2.0  # a starting server is probed often: a short timeout, it is asked again soon
MEMORY_EVERY = 5.0  # seconds between two memory counts (a walk over /proc for every server)
