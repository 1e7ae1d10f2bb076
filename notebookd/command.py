"""Running a short command from the event loop: Popen, a pidfd for its exit, its pipes read by the loop.

Not asyncio.create_subprocess_exec: in 3.11 that waits for each child in a thread of its own
(ThreadedChildWatcher), and the daemon runs one event loop and no threads. Used for the tools of the
process managers (backends/tools.py: systemctl, squeue, sbatch), the PAM helper and the preflight check.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from dataclasses import dataclass

from notebookd.procs import ServerProcess

# After the exit, how long output may still come: something the command started may hold its pipes.
EOF_WAIT = 5.0


@dataclass(frozen=True)
class Finished:
    returncode: int  # Popen's convention: negative for the signal that ended it
    out: bytes
    err: bytes
    overflow: bool  # it said more than `limit` on stdout or stderr: the rest was not read


async def run(argv: list[str], *, env: dict[str, str], timeout: float, input: bytes | None = None,
              limit: int = 1 << 24, own_session: bool = False, **popen) -> Finished:
    """Run `argv` (in /, with `env` only) to its end; `popen`: Popen's identity arguments (user=, group=,
    extra_groups=, umask=), applied in C between fork and exec.

    Raises OSError when it cannot be started, TimeoutError when it has not ended within `timeout`; it is
    killed by then, with its whole process group when `own_session` (whatever it started too)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd="/",
                            start_new_session=own_session, **popen)
    exited = ServerProcess(proc.pid, proc).watch(lambda: None)
    out, err = _Output(proc.stdout, limit), _Output(proc.stderr, limit)
    stop_feeding = _feed(proc.stdin, input) if input is not None else (lambda: None)
    try:
        try:
            await asyncio.wait_for(asyncio.shield(exited), timeout)
        except asyncio.TimeoutError:
            _kill(proc, own_session)
            await exited
            raise TimeoutError(f"no answer within {timeout:g}s") from None
        except asyncio.CancelledError:
            _kill(proc, own_session)  # no one waits for its answer now; the pidfd watcher still reaps it
            raise
        await asyncio.wait([out.eof, err.eof], timeout=EOF_WAIT)
    finally:
        stop_feeding()
        out.close()
        err.close()
    return Finished(proc.returncode, bytes(out.data), bytes(err.data), out.overflow or err.overflow)


def _kill(proc: subprocess.Popen, group: bool) -> None:
    try:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)  # it leads its own group: what it started ends too
        else:
            proc.kill()  # our own child, by its pid
    except ProcessLookupError:
        pass


class _Output:
    """What a pipe gives until EOF (or `limit` bytes), read by the event loop."""

    def __init__(self, pipe, limit: int):
        self.loop = asyncio.get_running_loop()
        self.pipe, self.limit = pipe, limit
        self.data = bytearray()
        self.overflow = False
        self.eof = self.loop.create_future()
        os.set_blocking(pipe.fileno(), False)
        self.loop.add_reader(pipe.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.pipe.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        room = self.limit - len(self.data)
        self.data += chunk[:room]
        if len(chunk) > room:
            self.overflow = True  # stop listening; a writer that goes on gets EPIPE
        if not chunk or self.overflow:
            self.close()

    def close(self) -> None:
        if not self.pipe.closed:
            self.loop.remove_reader(self.pipe.fileno())
            self.pipe.close()
        if not self.eof.done():
            self.eof.set_result(None)


def _feed(pipe, data: bytes):
    """Write `data` to the command's stdin as it reads it, then close it. Returns the function that
    stops (a command that ended before reading it all got what it read)."""
    loop = asyncio.get_running_loop()
    fd = pipe.fileno()
    os.set_blocking(fd, False)
    rest = memoryview(data)

    def stop() -> None:
        if not pipe.closed:
            loop.remove_writer(fd)
            pipe.close()

    def writable() -> None:
        nonlocal rest
        try:
            rest = rest[os.write(fd, rest):]
        except BlockingIOError:
            return
        except OSError:  # EPIPE: it closed its stdin or exited
            rest = rest[:0]
        if not rest:
            stop()

    loop.add_writer(fd, writable)
    return stop
