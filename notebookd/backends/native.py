"""The native backend: notebookd spawns and supervises each server itself.

Each server is a `NativeServer`, an explicit state machine driven by one coroutine; `_transition`
is the only place its state changes. Child exits arrive through a pidfd in the event loop, not by
polling; stops go through `procs.stop_tree`, which reaches kernels too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import subprocess
import time

from notebookd import activity, launch, launcher, probe, procs, usage
from notebookd.access import Access, NotReady
from notebookd.fds import Throttle
from notebookd.forkserver import REPORT_TIMEOUT, ForkError, ForkServer
from notebookd.fsutil import ensure_dir
from notebookd.gate import PriorityGate
from notebookd.logs import LogPipe, RotatingFile
from notebookd.model import TRANSITIONS, ServerSpec, ServerState, ServerStatus, check_transition
from notebookd.listeners import PortTaken, SocketBook
from notebookd.ports import in_use, port_holder
from notebookd.probe import Unprobed, http_status
from notebookd.records import Record, RecordBook, fingerprint
from notebookd.stats import Stats, restart_reason
from notebookd.tokens import TokenStore

log = logging.getLogger("notebookd")

S = ServerState


class SpawnError(Exception):
    """The server could not even be started (a problem the admin must fix, or wait out)."""


class NativeServer:
    """One user's server: spawn, wait ready, watch, restart with backoff, stop."""

    def __init__(self, spec: ServerSpec, host: "NativeBackend"):
        self.spec = spec
        self.host = host
        self.state = S.STOPPED
        self.since = time.time()
        self.proc: procs.ServerProcess | None = None
        self.started: float | None = None
        self.restarts = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_exit: str | None = None
        self.health_failures = 0
        self.takes_socket = True  # what the last start's preflight found: a Python command (or fork)
        self.idled = False  # stopped for idleness (not by a stop): goes back to IDLE
        self._urgent = False  # asked for (start/restart, crash or health restart): goes before bulk starts
        self._on_demand = spec.settings.start == "on-demand"  # next start waits in IDLE for a connection
        self._want = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._exit: asyncio.Future | None = None
        self.pipe = host.log_pipe(spec)

    # -- the one place where state changes --
    def _transition(self, new: ServerState, why: str = "") -> None:
        check_transition(self.spec.name, self.state, new)
        log.info("%s: %s -> %s%s", self.spec.name, self.state.value, new.value, f" ({why})" if why else "")
        self.state = new
        self.since = time.time()
        self.host.changed()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and not self.proc.done else None

    @property
    def wanted(self) -> bool:
        return self._want

    @property
    def marker(self) -> str:
        return launch.marker(self.spec.name, self.host.run_dir)

    # -- commands from the backend --
    def start(self, urgent: bool = False) -> None:
        self._urgent = urgent
        # an admin's `notebookd start` starts even an on-demand server now
        self._on_demand = self.spec.settings.start == "on-demand" and not urgent
        self._want = True
        if urgent and self.state is S.IDLE:
            self._wake.set()  # out of the wait for a connection, into a start
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.spec.name}")

    async def stop(self) -> None:
        self._want = False
        self._wake.set()
        if self._task is not None:
            await self._task

    # -- supervision --
    async def _supervise(self) -> None:
        try:
            while self._want:
                if self._on_demand and self.spec.name not in self.host.leftovers \
                        and self.host.hands_socket(self.spec) and not await self._wait_for_connection():
                    break
                self.idled = False
                try:
                    failure = await self._run_once()
                except Exception as exc:  # noqa: BLE001 - a bug here ends no server for good, and no one else's
                    failure = await self._recover(exc)
                if not self._want:
                    break
                if failure is None:  # stopped for idleness: the next connection starts it again
                    self._on_demand = True
                    continue
                self.failures += 1
                self._urgent = True  # the restart after a crash or failed health checks
                self.last_error = failure
                crashloop = self.failures >= self.spec.restart.crashloop_after
                delay = self._backoff()
                target = S.CRASHLOOP if crashloop else S.BACKOFF
                if target in TRANSITIONS[self.state]:  # after a supervision error it may already wait
                    self._transition(target, f"{failure}; retry in {delay:.0f}s")
                await self._sleep(delay)
                if self._want:
                    self.restarts += 1
                    self.host.stats.restarted(self.spec.name, restart_reason(failure))
        except asyncio.CancelledError:
            if self.host.detaching:
                return  # the process stays, its record too: the next daemon adopts it
            raise
        except Exception:  # a bug must not leave a server unsupervised and silent
            log.exception("%s: supervision failed", self.spec.name)
            raise
        finally:
            if not self.host.detaching:
                if self.pid is not None or self.state in (S.STARTING, S.RUNNING):
                    await self._terminate("stop requested")
                if self.state is not S.STOPPED:
                    self._transition(S.STOPPED)

    async def _recover(self, exc: Exception) -> str:
        """An unexpected error in one life of the server: log it, make sure no untracked process is
        left behind, and let the loop start the server again after the usual backoff."""
        log.exception("%s: supervision error; the server is restarted", self.spec.name)
        why = f"notebookd error while supervising: {exc}"
        try:
            if self.state in (S.STARTING, S.RUNNING) or self.pid is not None:
                await self._terminate(why)
        except Exception:  # noqa: BLE001
            log.exception("%s: cannot stop it after a supervision error", self.spec.name)
        return why

    def _backoff(self) -> float:
        return self.spec.restart.delay(self.failures)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep, or return early (True) when woken by a stop/restart."""
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
            return True
        except TimeoutError:
            return False

    async def _run_once(self) -> str | None:
        """One life of the server. Returns why it failed, or None if it was stopped on purpose."""
        record = self.host.claim(self.spec.name)
        adopting = record is not None and record.fingerprint == fingerprint(self.spec)
        self._transition(S.STARTING, f"adopting pid {record.pid}, left running by an earlier notebookd"
                         if adopting else "")
        self._wake.clear()
        spawned = None  # when the process was spawned (not adopted): the start's duration counts from there
        try:
            async with self.host.start_slots.slot(self._urgent):
                if adopting:
                    self._adopt(record)
                    self._hold_socket(from_pid=record.pid, strict=False)
                else:
                    if record is not None:  # started with another spec while no daemon watched
                        await procs.stop_tree(record.pid, self.spec.account.uid, self.marker,
                                              self.spec.settings.stop_timeout)
                    elif self.spec.name not in self.host.sockets.names() and port_holder(self.spec.ip,
                                                                                         self.spec.port):
                        # no record (lost, damaged) but maybe our own earlier server: it carries the marker
                        killed = await procs.stop_tree(None, self.spec.account.uid, self.marker,
                                                       self.spec.settings.stop_timeout)
                        if killed:
                            log.warning("%s: stopped an earlier server without a record (pids %s)",
                                        self.spec.name, ", ".join(map(str, killed)))
                    spawned = time.monotonic()
                    await self._spawn()
                outcome = await self._wait_ready()
        except (SpawnError, OSError) as exc:  # OSError: preparing its files failed (a full disk, a vanished dir)
            if spawned is not None:
                self.host.stats.spawned(time.monotonic() - spawned, ok=False)
            return str(exc) if isinstance(exc, SpawnError) else f"cannot prepare the server: {exc}"
        if spawned is not None and outcome != "stop":
            self.host.stats.spawned(time.monotonic() - spawned, ok=outcome == "ready")
        if outcome == "stop":
            await self._terminate("stop requested")
            return None
        if outcome != "ready":
            if self.pid is not None:
                await self._terminate(outcome)
            await self._reap_strays()
            return outcome
        self.started = record.create_time if adopting else time.time()
        self.health_failures = 0
        self.last_error = None
        self._transition(S.RUNNING, f"pid {self.pid}, port {self.spec.port}")
        outcome = await self._watch()
        ran = time.time() - self.started
        self.started = None
        if outcome is None:
            await self._terminate(f"idle for {self.spec.settings.idle.stop_after:g}s" if self.idled
                                  else "stop requested")
            return None
        if ran >= self.spec.restart.reset_after:
            self.failures = 0
        if self.pid is not None:
            await self._terminate(outcome)
        await self._reap_strays()
        return outcome

    async def _wait_for_connection(self) -> bool:
        """IDLE: the socket held, no process, until a client connects (True) or a stop comes (False).
        The daemon only sees that the socket is readable; the server it starts accepts the connection."""
        try:
            sock = self._hold_socket()
        except SpawnError as exc:  # the port is taken: the start fails (and retries) as usual
            self.last_error = str(exc)
            return True
        self._transition(S.IDLE, "waits for a connection")
        self._wake.clear()
        loop = asyncio.get_running_loop()
        pending = loop.create_future()
        loop.add_reader(sock.fileno(), lambda: pending.done() or pending.set_result(None))
        try:
            async with self._woken() as waker:
                await asyncio.wait([pending, waker], return_when=asyncio.FIRST_COMPLETED)
        finally:
            loop.remove_reader(sock.fileno())
        if not pending.done() and not (self._want and not self._on_demand):
            return False  # a stop (or a restart, which comes back here)
        self._urgent = True  # someone is waiting for it
        self._on_demand = False
        return True

    async def _wait_ready(self) -> str:
        """'ready', 'stop', or why the server never became ready."""
        spec = self.spec
        deadline = time.monotonic() + spec.settings.start_timeout
        pause = 0.1
        async with self._woken() as waker:
            while True:
                if waker.done():
                    return "stop"
                if self._exit.done():
                    return self._exit_reason("before it was ready")
                status = await http_status(spec.ip, spec.port, spec.base_url + "api", timeout=5, tls=spec.tls.enabled)
                if status == 200:
                    return "ready"
                if isinstance(status, Unprobed):  # the daemon's shortage is not the server's time
                    deadline += pause
                    self.host.throttle.warn("probe", "%s: %s", spec.name, status)
                if time.monotonic() > deadline:
                    return probe.not_ready(spec.settings.start_timeout, status)
                await asyncio.wait([self._exit, waker], timeout=pause, return_when=asyncio.FIRST_COMPLETED)
                # short: the server holds a start slot until it is seen ready (a probe is cheap)
                pause = min(pause * 1.5, 0.25)

    async def _watch(self) -> str | None:
        """While RUNNING: None when asked to stop, else why the server went away or was killed."""
        health = self.spec.health
        async with self._woken() as waker:
            while True:
                await asyncio.wait([self._exit, waker], timeout=health.interval,
                                   return_when=asyncio.FIRST_COMPLETED)
                if waker.done():
                    return None
                if self._exit.done():
                    return self._exit_reason("")
                status = await http_status(self.spec.ip, self.spec.port, self.spec.base_url + "api", health.timeout,
                                           tls=self.spec.tls.enabled)
                if status == 200:
                    self.health_failures = 0
                    stop_after = self.spec.settings.idle.stop_after
                    if stop_after is not None:
                        idle = await activity.idle_for(self.spec, self.host.tokens, self.started)
                        if idle is not None and idle >= stop_after:
                            self.idled = True
                            return None
                    continue
                if isinstance(status, Unprobed):
                    self.host.throttle.warn("probe", "%s: %s", self.spec.name, status)
                    continue
                self.health_failures += 1
                self.host.stats.health_failed(self.spec.name)
                self.last_error = probe.unhealthy(self.health_failures, health.failures, status)
                log.warning("%s: %s", self.spec.name, self.last_error)
                self.host.changed()
                if self.health_failures >= health.failures:
                    return f"unhealthy: {status}"

    @contextlib.asynccontextmanager
    async def _woken(self):
        """A future that completes when a stop or restart wakes this server."""
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            yield waker
        finally:
            waker.cancel()

    def _exit_reason(self, when: str) -> str:
        self.last_exit = procs.describe_exit(self._exit.result())
        return f"{self.last_exit} {when}".strip()

    # -- processes --
    async def _spawn(self) -> None:
        spec, acc = self.spec, self.spec.account
        try:
            now = pwd.getpwnam(acc.name)
        except KeyError:
            raise SpawnError(f"user {acc.name!r} no longer exists") from None
        if now.pw_uid != acc.uid:
            raise SpawnError(f"user {acc.name!r} changed uid ({acc.uid} -> {now.pw_uid}); reload to accept")
        fork = spec.settings.spawn == "fork"
        try:  # the template child reports a root_dir it cannot enter itself: no check needed for it
            run = await launch.prepare(spec, self.host.run_dir, self.host.access, system=self.host.system,
                                       check_root_dir=not fork)
        except NotReady as exc:
            raise SpawnError(str(exc)) from None
        self.takes_socket = bool(fork or run.python)
        if self.takes_socket:
            listener = self._hold_socket()
        else:  # not a Python we can hand a socket to (a shell wrapper...): it binds its port itself
            listener = None
            self.host.sockets.release(spec.name)
            if taken := in_use(spec.ip, spec.port):
                raise SpawnError(taken)
        drain = launcher.drain_for(spec.settings.stop_timeout)
        identity = {}
        if self.host.system:
            identity = dict(user=acc.uid, group=acc.gid, extra_groups=list(acc.groups))
        out, keep = self.pipe.writer_fds()
        try:
            if fork:  # the same argv, env, identity: see forkserver.py
                self.proc = await self.host.fork_server().spawn(
                    list(run.args), run.env, run.cwd,
                    (acc.uid, acc.gid, list(acc.groups)) if self.host.system else None, out, keep,
                    listener.fileno(), drain)
            else:
                argv = list(run.argv)
                if listener is not None:
                    try:
                        argv = launcher.wrap(argv, listener.fileno(), drain, run.python, run.kind.app)
                    except ValueError as exc:
                        raise SpawnError(str(exc)) from None
                # Popen's cwd= would chdir as root, before the identity change: a user's symlink would
                # take the server into a directory only root may enter. The cd runs as the user.
                popen = subprocess.Popen(
                    [*launch.enter(run.cwd), *argv], env=run.env, cwd="/", stdin=subprocess.DEVNULL,
                    stdout=out, stderr=out, pass_fds=(keep, listener.fileno()) if listener is not None else (keep,),
                    start_new_session=True,
                    umask=0o077, close_fds=True, **identity,
                )
                self.proc = procs.ServerProcess(popen.pid, popen)
        except ForkError as exc:
            raise SpawnError(str(exc)) from None
        except OSError as exc:
            raise SpawnError(f"cannot run {run.argv[0]}: {exc.strerror or exc}") from None
        finally:
            os.close(out)
            os.close(keep)
        self._exit = self.proc.watch(self.pipe.drain)
        try:
            self.host.records.write(spec, self.proc.pid)
        except Exception as exc:  # noqa: BLE001 - e.g. ENOSPC; psutil's errors are not OSErrors
            # the server runs and is watched; only a later daemon could not adopt it
            log.error("%s: cannot write its record (a restarted notebookd will not adopt it): %s", spec.name, exc)

    def _hold_socket(self, from_pid: int | None = None, strict: bool = True):
        """The listening socket notebookd holds for this user (listeners.py); bound on first use."""
        try:
            return self.host.sockets.hold(self.spec.name, self.spec.ip, self.spec.port, from_pid)
        except PortTaken as exc:
            if strict:
                raise SpawnError(str(exc)) from None
            log.warning("%s: %s; the adopted server keeps its own socket", self.spec.name, exc)
            return None

    def _adopt(self, record: Record) -> None:
        self.proc = procs.ServerProcess(record.pid)
        self._exit = self.proc.watch(self.pipe.drain)

    async def _terminate(self, why: str) -> None:
        if self.state is not S.STOPPING:
            self._transition(S.STOPPING, why)
        killed = await procs.stop_tree(self.pid, self.spec.account.uid, self.marker, self.spec.settings.stop_timeout,
                                       self.host.proc_table)
        if killed:
            log.warning("%s: needed SIGKILL for pid(s) %s", self.spec.name, ", ".join(map(str, killed)))
        if self._exit is not None and not self._exit.done():
            await self._exit
        if self._exit is not None:
            self.last_exit = procs.describe_exit(self._exit.result())
        self.host.records.remove(self.spec.name)

    async def _reap_strays(self) -> None:
        """After an unplanned exit, end its orphaned kernels before the next start."""
        killed = await procs.end_strays(self.spec.account.uid, self.marker)
        if killed:
            log.warning("%s: killed stray processes %s", self.spec.name, ", ".join(map(str, killed)))

    def status(self) -> ServerStatus:
        return ServerStatus(
            name=self.spec.name, state=self.state.value, port=self.spec.port, url=self.spec.url(),
            pid=self.pid, since=self.since, started=self.started, restarts=self.restarts,
            last_error=self.last_error, last_exit=self.last_exit,
            log_tail=self.pipe.sink.tail() if self.state in (S.BACKOFF, S.CRASHLOOP) else [],
        )


class NativeBackend:
    name = "native"

    def __init__(self, run_dir: str, state_dir: str, system: bool, tokens: TokenStore,
                 max_parallel_starts: int | None = None, on_change=lambda: None, sockets: SocketBook | None = None):
        self.run_dir, self.state_dir, self.system = run_dir, state_dir, system
        self.root_uid = 0 if system else -1  # owner of the files a user may read but not change
        self.tokens = tokens
        self.records = RecordBook(state_dir)
        self.leftovers: dict[str, Record] = {}
        self.detaching = False  # the daemon exits for an upgrade and leaves every server running
        self.access = Access(state_dir, tokens)
        self.servers: dict[str, NativeServer] = {}
        # every configured user's listening socket, whatever their server does (the daemon's: it may come
        # with what systemd's fd store kept across the daemon's restart)
        self.sockets = sockets if sockets is not None else SocketBook()
        self.start_slots = PriorityGate(max_parallel_starts or os.cpu_count() or 2)
        self._fork_server: ForkServer | None = None
        self.changed = on_change
        self.stats = Stats()  # restarts by reason, failed health checks, start durations (for the metrics)
        self.throttle = Throttle()  # messages about the daemon's own shortages, not one server's
        self._usage: tuple[float, dict[str, int], dict[str, usage.Usage]] = (float("-inf"), {}, {})
        self.proc_table = procs.ProcessTable()  # one look at /proc for the stops that start together

    async def open(self) -> None:
        ensure_dir(os.path.join(self.run_dir, "servers"), 0o755)
        ensure_dir(os.path.join(self.run_dir, "logs"), 0o700)
        self.records.open()
        # Adopted when their user is started again (same spec), stopped when reconcile forgets them.
        self.leftovers = self.records.live()
        for rec in self.leftovers.values():
            log.info("%s: found server pid %d left running by an earlier notebookd", rec.name, rec.pid)

    def fork_server(self) -> ForkServer:
        """The template for `spawn: fork`, started on first use."""
        if self._fork_server is None:
            # tests only: a shorter deadline, and a fork child of this uid that stops itself before its report
            stop = os.environ.get("NOTEBOOKD_TEST_FORK_STOP_UID")
            deadline = float(os.environ.get("NOTEBOOKD_TEST_FORK_REPORT_TIMEOUT", REPORT_TIMEOUT))
            self._fork_server = ForkServer(report_timeout=deadline, stop_uid=int(stop) if stop else None)
        return self._fork_server

    def _close_fork_server(self) -> None:
        if self._fork_server is not None:
            self._fork_server.close()  # the template only; servers are stopped (or kept) apart from it
            self._fork_server = None

    # -- files --
    def _sink(self, spec: ServerSpec) -> RotatingFile:
        """The server's log file, opened (so that a bad logs.dir fails here, naming the place)."""
        try:
            ensure_dir(spec.logs.dir, 0o755)
            sink = RotatingFile(os.path.join(spec.logs.dir, f"{spec.name}.log"), spec.logs.max_size, spec.logs.keep,
                                uid=self.root_uid, gid=self.root_uid,
                                reader=spec.account.uid if self.system else None)
            sink._open()
        except OSError as exc:
            raise OSError(f"cannot write its log in {spec.logs.dir}: {exc.strerror or exc}") from None
        return sink

    def log_pipe(self, spec: ServerSpec) -> LogPipe:
        sink = self._sink(spec)
        pipe = LogPipe(os.path.join(self.run_dir, "logs", f"{spec.name}.pipe"), sink)
        pipe.open()
        asyncio.get_running_loop().add_reader(pipe.fd, pipe.drain)
        return pipe

    def log_path(self, name: str) -> str | None:
        server = self.servers.get(name)
        return server.pipe.sink.path if server else None

    # -- servers an earlier daemon left running --
    def claim(self, name: str) -> Record | None:
        """The record of a live server left by an earlier daemon for this user, once."""
        return self.leftovers.pop(name, None)

    # -- the Backend contract --
    def names(self) -> set[str]:
        return set(self.servers) | set(self.leftovers)

    def specs(self) -> dict[str, ServerSpec]:
        return {n: s.spec for n, s in self.servers.items() if s.wanted}

    async def start(self, spec: ServerSpec, urgent: bool = False) -> None:
        """`urgent`: asked for by someone (goes before the bulk starts of a reconcile)."""
        server = self.servers.get(spec.name)
        if server is None:
            self.servers[spec.name] = NativeServer(spec, self)
            self.servers[spec.name].start(urgent)
        elif server.spec != spec:
            await self.restart(spec, urgent)
        else:
            server.start(urgent)

    async def stop(self, name: str) -> None:
        server = self.servers.get(name)
        if server is not None:
            await server.stop()

    async def restart(self, spec: ServerSpec, urgent: bool = False) -> None:
        server = self.servers.get(spec.name)
        if server is None:
            return await self.start(spec, urgent)
        sink = self._sink(spec) if server.spec.logs != spec.logs else None  # fails before anything stops
        await server.stop()
        if sink is not None:
            server.pipe.drain()
            server.pipe.sink.close()
            server.pipe.sink = sink  # the same FIFO, now written to the new place
        server.spec = spec
        server.start(urgent)

    def _close_pipe(self, server: NativeServer) -> None:
        asyncio.get_running_loop().remove_reader(server.pipe.fd)
        server.pipe.close()

    async def forget(self, name: str) -> None:
        """Stop and drop a server that is no longer configured."""
        leftover = self.leftovers.pop(name, None)
        if leftover is not None:
            import psutil

            log.info("%s: stopping server pid %d: no longer configured", name, leftover.pid)
            uid = psutil.Process(leftover.pid).uids().real if leftover.alive() else -1
            await procs.stop_tree(leftover.pid, uid, launch.marker(name, self.run_dir), 10.0)
            self.records.remove(name)
        server = self.servers.pop(name, None)
        if server is not None:
            await server.stop()
            self._close_pipe(server)
        self.sockets.release(name)  # the port is free the moment the user is no longer configured

    def hands_socket(self, spec: ServerSpec) -> bool:
        """Whether this user's server can be handed a socket: fork, or a Python command (launcher.py).
        Only the last start's preflight (as the user) knows what a command runs; until then the port is
        held, and a start that finds no Python lets go of it (`NativeServer._spawn`)."""
        if spec.settings.spawn == "fork":
            return True
        server = self.servers.get(spec.name)
        return server is None or server.takes_socket

    def hold_sockets(self, specs: dict[str, ServerSpec]) -> dict[str, str]:
        """Hold the socket of every configured user, servers up or not (held stopped by an admin
        too); returns why a user's could not be held. Running servers' sockets are held already."""
        problems = {}
        for name, spec in specs.items():
            server = self.servers.get(name)
            if server is not None and server.wanted:
                continue  # its own start holds it (or takes it back from an adopted process)
            leftover = self.leftovers.get(name)
            if not self.hands_socket(spec):
                continue
            try:
                self.sockets.hold(name, spec.ip, spec.port, leftover.pid if leftover else None)
            except PortTaken as exc:
                problems[name] = str(exc)
        return problems

    def status(self) -> dict[str, ServerStatus]:
        rows = {n: s.status() for n, s in self.servers.items()}
        for name, used in self.usage().items():
            if name in rows:
                rows[name].memory = used.memory
        return rows

    def usage(self) -> dict[str, usage.Usage]:
        """Memory and CPU of each server's process tree, read from its own processes only (not a walk
        over all of /proc), cached for two seconds: `status` and a scrape share one read. The cache
        holds only while the servers' pids are the same, so a server that has just started (or
        restarted) is never shown with the figures of no process (0 bytes) or of its predecessor."""
        pids = {n: s.pid for n, s in self.servers.items() if s.pid}
        stamp, seen, cached = self._usage
        if time.monotonic() - stamp < 2 and seen == pids:
            return cached
        result = usage.trees(pids)
        self._usage = (time.monotonic(), pids, result)
        return result

    async def close(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.servers.values()))
        for server in self.servers.values():
            self._close_pipe(server)
        self._close_fork_server()
        self.sockets.close()

    async def detach(self) -> None:
        """Let go of every server without stopping it: for a daemon restart (upgrade).

        Records stay, the FIFOs stay (and keep what servers write meanwhile), the next daemon adopts."""
        self.detaching = True
        tasks = [s._task for s in self.servers.values() if s._task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self.servers.values():
            self._close_pipe(server)
        self._close_fork_server()
        self.sockets.close()  # running servers keep their copies; the next daemon takes them back
