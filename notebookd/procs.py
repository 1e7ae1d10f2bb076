"""Finding and ending every process of one server, kernels included.

Kernels start their own sessions, so the server's process group does not reach them, and a kernel
orphaned by a crashed server is no longer its descendant. Each server's environment carries a
marker (`NOTEBOOKD_SERVER`) that kernels inherit; a stop takes the server's descendants and every
process of that uid with the marker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Callable

import psutil

log = logging.getLogger("notebookd")

MARKER_VAR = "NOTEBOOKD_SERVER"

# The grace periods of a stop, named once. A server gets its own stop_timeout (server.stop_timeout);
# what is left after that gets SIGTERM again and this long, then SIGKILL:
TERM_AGAIN_WAIT = 2.0
# kernels a crashed server left behind: they have no server to shut them down, so only this long
STRAY_GRACE = 2.0
# SIGKILL cannot be refused: waiting longer only covers a process stuck in the kernel (D state)
KILL_WAIT = 5.0


def describe_exit(returncode: int | None, core: bool = False) -> str:
    """An exit in words, the same for every backend: "exit status 1", "killed by SIGKILL".

    `returncode` in Popen's convention (negative: the signal); None when it is not ours to know (a process
    adopted from an earlier daemon, or a manager that does not say)."""
    if returncode is None:
        return "exited (status unknown)"
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}" + (" (core dumped)" if core else "")


class ProcessTable:
    """Every process's parent and real uid, from one pass over /proc shared by the stops that start
    together (a stop-all of N servers reads /proc once, not 3N times). Only the first look of a stop
    uses it; the looks for survivors after a grace period read /proc afresh."""

    def __init__(self, max_age: float = 0.1):
        self.max_age = max_age
        self._taken = -1.0
        self._rows: dict[int, tuple[psutil.Process, int, int]] = {}

    def rows(self, fresh: bool = False) -> dict[int, tuple[psutil.Process, int, int]]:
        now = time.monotonic()
        if fresh or now - self._taken > self.max_age:
            rows = {}
            for proc in psutil.process_iter(["ppid", "uids"]):
                uids = proc.info["uids"]
                if uids is not None and proc.info["ppid"] is not None:
                    rows[proc.pid] = (proc, proc.info["ppid"], uids.real)
            self._rows, self._taken = rows, now
        return self._rows


def server_processes(pid: int | None, uid: int, marker: str, table: ProcessTable | None = None,
                     fresh: bool = True) -> list[psutil.Process]:
    """The server's process tree and every process of `uid` carrying its marker (kernels)."""
    rows = (table or ProcessTable()).rows(fresh=fresh)
    found: dict[int, psutil.Process] = {}
    if pid and pid in rows:
        children: dict[int, list[int]] = {}
        for child, (_, ppid, _) in rows.items():
            children.setdefault(ppid, []).append(child)
        todo = [pid]
        while todo:
            p = todo.pop()
            if p not in found:
                found[p] = rows[p][0]
                todo.extend(children.get(p, ()))
    for p, (proc, _, owner) in rows.items():
        if p in found or owner != uid:
            continue
        try:
            if proc.environ().get(MARKER_VAR) == marker:
                found[p] = proc
        except psutil.Error:
            continue
    return [proc for proc in found.values() if _alive(proc)] if not fresh else list(found.values())


def tree_memory(procs: list[psutil.Process]) -> int:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def _signal_all(procs: list[psutil.Process], sig: int) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil checks the start time: a reused pid is left alone
        except psutil.Error:
            pass


def watch_pid(pid: int, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback()` from the event loop once process `pid` has ended (soon, if it is gone already).

    The one pidfd watcher: no polling, no SIGCHLD, no thread, and it works for processes that are not
    our children (adopted servers, the fork server's). Returns the function that stops watching and
    closes the pidfd. Raises OSError when no pidfd can be had (out of descriptors)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return loop.call_soon(callback).cancel
    watching = True

    def stop() -> None:
        nonlocal watching
        if watching:
            watching = False
            loop.remove_reader(fd)
            os.close(fd)

    def readable() -> None:
        stop()
        callback()

    loop.add_reader(fd, readable)
    return stop


async def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until the processes have exited (pidfd, no polling); return those still alive."""
    loop = asyncio.get_running_loop()
    waiters = []
    stops = []
    try:
        for proc in procs:
            fut = loop.create_future()
            stops.append(watch_pid(proc.pid, lambda f=fut: f.done() or f.set_result(None)))
            if proc.is_running():  # psutil checks the start time: a pidfd of a reused pid is not this one
                waiters.append(fut)
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)
    finally:
        for stop in stops:
            stop()
    return [p for p in procs if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def stop_tree(pid: int | None, uid: int, marker: str, grace: float,
                    table: ProcessTable | None = None) -> list[int]:
    """SIGTERM the server's group, SIGKILL after `grace`; then the same for any stray kernel.
    `table`: shared with the other stops of the same moment (NativeBackend's), for the first look.

    Returns the pids that needed SIGKILL (for the log)."""
    procs = server_processes(pid, uid, marker, table, fresh=table is None)
    if not procs:
        return []
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)  # the server leads its own session and group
            os.killpg(pid, signal.SIGCONT)  # a stopped (SIGSTOP) server must run to act on SIGTERM
        except (ProcessLookupError, PermissionError):
            pass
    # The server stops its kernels itself on SIGTERM; give it the grace period to do so.
    survivors = await wait_gone(procs, grace)
    killed = []
    if survivors:
        _signal_all(survivors, signal.SIGTERM)
        _signal_all(survivors, signal.SIGCONT)
        survivors = await wait_gone(survivors, min(TERM_AGAIN_WAIT, grace))
    for _ in range(3):  # a stray may fork while we look; a few passes catch its children too
        survivors += [p for p in server_processes(None, uid, marker) if p not in survivors]
        if not survivors:
            break
        killed += [p.pid for p in survivors]
        _signal_all(survivors, signal.SIGKILL)
        survivors = await wait_gone(survivors, KILL_WAIT)
    return killed


async def end_strays(uid: int, marker: str, keep: int | None = None) -> list[int]:
    """The stray-kernel sweep: end every process with the server's marker that is not `keep` (the
    current server) or one of its descendants: kernels its last run left behind. Returns their pids."""
    current: set[int] = set()
    if keep:
        try:
            current = {keep} | {c.pid for c in psutil.Process(keep).children(recursive=True)}
        except psutil.Error:
            pass
    strays = [p for p in server_processes(None, uid, marker) if p.pid not in current]
    if not strays:
        return []
    _signal_all(strays, signal.SIGTERM)
    _signal_all(strays, signal.SIGCONT)
    survivors = await wait_gone(strays, STRAY_GRACE)
    _signal_all(survivors, signal.SIGKILL)
    await wait_gone(survivors, KILL_WAIT)
    return [p.pid for p in strays]


class ServerProcess:
    """A server's main process: our own child (reaped, exit status known), or one adopted from an
    earlier daemon (reparented away from us, so its exit status is not ours to read)."""

    def __init__(self, pid: int, popen=None):
        self.pid = pid
        self.popen = popen
        self.done = False
        self.returncode: int | None = None

    def watch(self, on_exit) -> asyncio.Future:
        """A future resolved with the exit status (None if unknown) when the process ends (watch_pid)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def finish() -> None:
            try:
                if self.popen is not None:
                    self.returncode = self.popen.wait()  # it has exited: this reaps without blocking
                self.done = True
                on_exit()
            except Exception:  # noqa: BLE001 - whatever on_exit does, the exit is known and must be told
                log.exception("pid %d: after its exit", self.pid)
            finally:
                self.done = True
                if not fut.done():
                    fut.set_result(self.returncode)

        def poll_exit() -> None:
            """Without a pidfd (the daemon ran out of descriptors): look once a second, and go back to a
            pidfd as soon as one can be had."""
            if self._exited():
                finish()
            elif not attach(quiet=True):
                loop.call_later(1.0, poll_exit)

        def attach(quiet: bool = False) -> bool:
            try:
                watch_pid(self.pid, finish)
            except OSError as exc:
                if not quiet:
                    log.warning("pid %d: cannot watch it with a pidfd (%s); polling it instead", self.pid,
                                exc.strerror or exc)
                return False
            return True

        if not attach():
            loop.call_later(1.0, poll_exit)
        return fut

    def _exited(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is not None
        try:
            return psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True
