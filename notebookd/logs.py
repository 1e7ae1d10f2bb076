"""A server's stdout/stderr: a FIFO read by the daemon, written to size-rotated files.

The FIFO lives in the run dir, so it outlives one daemon process. The daemon holds it open for
reading and writing (so it never sees EOF between servers), reads without blocking, and writes
whatever arrives straight to `<user>.log`. Rotation waits for a line boundary: a file may run over
`max_size` by the rest of one line, but no line is ever split between two files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20  # a burst of output from a server never blocks it on the daemon
TAIL_BYTES = 4096


class RotatingFile:
    """`<dir>/<name>.log` with `.1`…`.keep` behind it, cut only after a newline."""

    def __init__(self, path: str, max_size: int, keep: int, uid: int = -1, gid: int = -1, mode: int = 0o640):
        self.path, self.max_size, self.keep = path, max_size, keep
        self.uid, self.gid, self.mode = uid, gid, mode
        self.fd = -1
        self.size = 0
        self.at_line_start = True
        self.lost = 0  # bytes that could not be written (disk full), reported once space is back
        self.lost_reason = ""
        self.recent = bytearray()  # the last few KiB written, for `status` of a failing server

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, self.mode)
        st = os.fstat(self.fd)
        if stat.S_IMODE(st.st_mode) != self.mode:
            os.fchmod(self.fd, self.mode)
        if (self.uid != -1 and st.st_uid != self.uid) or (self.gid != -1 and st.st_gid != self.gid):
            os.fchown(self.fd, self.uid, self.gid)
        self.size = st.st_size
        if self.size:
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                self.at_line_start = fh.read(1) == b"\n"

    def rotate(self) -> None:
        self.close()
        for n in range(self.keep - 1, 0, -1):
            try:
                os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
            except FileNotFoundError:
                pass
        try:
            os.replace(self.path, f"{self.path}.1")
        except FileNotFoundError:
            pass
        self._open()

    def tail(self, lines: int = 5) -> list[str]:
        text = self.recent.decode(errors="replace")
        return [line for line in text.splitlines() if line.strip()][-lines:]

    def write(self, data: bytes) -> None:
        self.recent += data[-TAIL_BYTES:]
        del self.recent[:-TAIL_BYTES]
        if self.fd == -1:
            self._open()
        if self.lost and self._write_raw(self._lost_note()):
            self.lost = 0
        while data:
            if self.size >= self.max_size and self.at_line_start:
                self.rotate()
            if self.size + len(data) <= self.max_size:
                chunk, data = data, b""
            else:
                # cross the limit only up to the end of the line that crosses it
                cut = data.find(b"\n", max(0, self.max_size - self.size - 1))
                chunk, data = (data, b"") if cut == -1 else (data[:cut + 1], data[cut + 1:])
            if not self._write_raw(chunk):
                self.lost += len(chunk) + len(data)
                return

    def _lost_note(self) -> bytes:
        prefix = b"" if self.at_line_start else b"\n"
        return prefix + f"[notebookd {time.strftime('%Y-%m-%d %H:%M:%S')}] {self.lost} bytes of output lost: {self.lost_reason}\n".encode()

    def _write_raw(self, chunk: bytes) -> bool:
        try:
            view = memoryview(chunk)
            while view:
                n = os.write(self.fd, view)
                self.size += n
                self.at_line_start = view[n - 1] == 0x0A if n else self.at_line_start
                view = view[n:]
            return True
        except OSError as exc:
            self.lost_reason = exc.strerror or str(exc)
            return False

    def close(self) -> None:
        if self.fd != -1:
            os.close(self.fd)
            self.fd = -1


class LogPipe:
    """The FIFO one server writes to, and the daemon end that reads it into a RotatingFile."""

    def __init__(self, fifo: str, sink: RotatingFile):
        self.fifo, self.sink = fifo, sink
        self.fd = -1

    def open(self) -> None:
        """Create the FIFO if needed and open the daemon's end (read+write: never EOF)."""
        try:
            st = os.lstat(self.fifo)
            if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
                os.unlink(self.fifo)
                raise FileNotFoundError
        except FileNotFoundError:
            os.mkfifo(self.fifo, 0o600)
        self.fd = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.fd, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # the default 64 KiB still works, it only blocks a chatty server sooner

    def writer_fds(self) -> tuple[int, int]:
        """Fresh fds for the child: (write end for stdout/stderr, read end it keeps open).

        The child holding a read end means its writes never fail with EPIPE, even while no
        daemon is reading; what it writes then waits in the pipe for the next daemon."""
        w = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(w, True)
        r = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        return w, r

    def drain(self) -> int:
        """Read what is there (never blocks) into the log file; returns the bytes moved."""
        moved = 0
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return moved
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                return moved
            self.sink.write(data)
            moved += len(data)

    def close(self) -> None:
        if self.fd != -1:
            self.drain()
            os.close(self.fd)
            self.fd = -1
        self.sink.close()
