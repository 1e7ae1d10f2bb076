"""The password check: PAM (pamela, as JupyterHub uses it) in a short-lived root helper process
(pamhelper.py: one JSON request on stdin, one JSON answer on stdout).

Why a process and not the daemon itself: a failed pam_unix check sleeps about 2 s and PAM modules
may block on anything (LDAP, sssd), while the daemon runs one event loop and no threads. A process
per check costs ~40 ms of CPU (an interpreter start, pamhelper.py), which a login can afford; it also keeps PAM
modules' state and crashes out of the daemon. The password goes over a pipe, never argv or the
environment, and the helper exits right after the check.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from notebookd.frontdoor.pamhelper import ACCOUNT_REFUSED
from notebookd.procs import ServerProcess

TIMEOUT = 60.0  # a PAM stack that hangs longer (a dead LDAP server) fails the login
PARALLEL = 4  # checks at once; more wait (each failed one holds its slot ~2 s)
QUEUE = 64  # checks waiting beyond that are refused at once ("busy")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class Result:
    ok: bool
    reason: str  # for the log: "wrong password", "account refused: …", "PAM error: …"; never the password


class Checker:
    """Runs helper processes, at most PARALLEL at a time (a queue of QUEUE beyond that)."""

    def __init__(self, python: str = sys.executable):
        self.python = python
        self._slots = asyncio.Semaphore(PARALLEL)
        self._waiting = 0

    async def check(self, service: str, user: str, password: str) -> Result:
        if self._waiting >= QUEUE:
            return Result(False, "too many logins at once; refused without a check")
        self._waiting += 1
        try:
            async with self._slots:
                return await self._run(service, user, password)
        finally:
            self._waiting -= 1

    async def _run(self, service: str, user: str, password: str) -> Result:
        # Popen and pidfd, not asyncio.create_subprocess_exec: in 3.11 that waits for the child in a
        # thread, and the daemon runs none. The request is at most the login form's 16 KiB body, so it
        # fits the pipe's buffer and the write cannot block.
        request = json.dumps({"service": service, "user": user, "password": password}, ensure_ascii=False)
        try:
            proc = subprocess.Popen([self.python, "-I", "-m", "notebookd.frontdoor.pamhelper"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/", env=ENV)
        except OSError as exc:
            return Result(False, f"cannot start the PAM helper: {exc}")
        exited = ServerProcess(proc.pid, proc).watch(lambda: None)
        out, err = _drain(proc.stdout), _drain(proc.stderr)
        try:
            proc.stdin.write(request.encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(exited), TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()  # our own child, by its pid
            await exited
            return Result(False, f"PAM did not answer within {TIMEOUT:.0f}s")
        finally:
            for fut in (out, err):  # EOF comes with the exit, unless something the helper started holds the pipe
                try:
                    await asyncio.wait_for(asyncio.shield(fut), 5)
                except asyncio.TimeoutError:
                    fut.cancel()
        try:
            answer = json.loads(out.result())
            return Result(bool(answer["ok"]), str(answer["reason"]))
        except (ValueError, KeyError, TypeError, asyncio.CancelledError):
            tail = (err.result() if not err.cancelled() else b"").decode(errors="replace").strip().splitlines()
            return Result(False, f"PAM helper failed: {(tail[-1:] or [f'exit {proc.returncode}'])[0][:200]}")


def _drain(pipe) -> asyncio.Future:
    """Everything `pipe` gives until EOF, read by the event loop (the pipe is closed then)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    data = bytearray()

    def done() -> None:
        if not pipe.closed:
            loop.remove_reader(fd)
            pipe.close()
        if not fut.done():
            fut.set_result(bytes(data))

    def readable() -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk or len(data) > 65536:  # a helper that says this much is broken: stop listening
            done()
        else:
            data.extend(chunk)

    loop.add_reader(fd, readable)
    fut.add_done_callback(lambda f: f.cancelled() and done())
    return fut
