"""A server's stdout/stderr: a FIFO read by the daemon, written to size-rotated files.

The FIFO lives in the run dir, so it outlives one daemon process. The daemon holds it open for
reading and writing (so it never sees EOF between servers), reads without blocking, and writes
whatever arrives straight to `<user>.log`. Rotation waits for a line boundary: a file may run over
`max_size` by the rest of one line, but no line is ever split between two files.

Everything in the files is the user's output, written by root: so lines are cut at LINE_LIMIT (and the
cut marked) or a server that never writes a newline would grow one file without bound, and `token=`
values (jupyter's request lines for `?token=` links) are blanked. Each file is root's, readable by its
user alone (a POSIX ACL): users sharing a primary group do not read each other's logs.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import time

from notebookd.fsutil import grant_only

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20  # a burst of output from a server never blocks it on the daemon
TAIL_BYTES = 4096
LINE_LIMIT = 64 * 1024  # longer lines are cut: with it a user's files never pass (keep + 1) × (max_size + this)
CUT_NOTE = b"\n[notebookd: line longer than 64 KiB cut here]\n"
# a token in a query string (`?token=…`, `&token=…`); the value is replaced, the key kept for the reader
_TOKEN = re.compile(rb"(token=)[^\s&#\"'<>]+")
_TOKEN_TAIL = re.compile(rb"(?:t(?:o(?:k(?:e(?:n(?:=[^\s&#\"'<>]*)?)?)?)?)?)\Z")


class RotatingFile:
    """`<dir>/<name>.log` with `.1`…`.keep` behind it, cut only after a newline."""

    def __init__(self, path: str, max_size: int, keep: int, uid: int = -1, gid: int = -1, mode: int = 0o640,
                 reader: int | None = None):
        """`uid`/`gid` own the files; `reader`, a uid that may read them too (by an ACL), or None."""
        self.path, self.max_size, self.keep = path, max_size, keep
        self.uid, self.gid, self.mode, self.reader = uid, gid, mode, reader
        self.fd = -1
        self.size = 0
        self.at_line_start = True
        self.line_len = 0      # bytes of the current (unfinished) line
        self.cutting = False   # inside a line longer than LINE_LIMIT: drop until its end
        self.cut_bytes = 0
        self.acl_warned = False
        self.held = b""        # a tail that may be the start of a token, kept back until it is complete
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
        if self.reader is not None:
            try:
                grant_only(self.fd, self.reader, 0o4)
            except OSError as exc:  # a file system without ACLs: root-only rather than the whole group
                if not self.acl_warned:
                    self.acl_warned = True
                    logging.getLogger("notebookd").warning(
                        "%s: cannot give its user read access (%s): only root reads it", self.path, exc.strerror)
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
        data = self._cut_long_lines(self._redact(data))
        if not data:
            return
        self.recent += data[-TAIL_BYTES:]
        del self.recent[:-TAIL_BYTES]
        if self.fd == -1:
            try:
                self._open()
            except OSError as exc:  # the dir was removed, out of descriptors: count it, try next time
                if exc.errno == errno.ENOENT:
                    try:
                        os.makedirs(os.path.dirname(self.path), 0o755, exist_ok=True)
                        self._open()
                    except OSError as again:
                        exc = again
                if self.fd == -1:
                    self.lost += len(data)
                    self.lost_reason = exc.strerror or str(exc)
                    return
        if self.lost and self._write_raw(self._lost_note()):
            self.lost = 0
        while data:
            if self.size >= self.max_size and self.at_line_start:
                try:
                    self.rotate()
                except OSError as exc:
                    self.lost += len(data)
                    self.lost_reason = exc.strerror or str(exc)
                    return
            if self.size + len(data) <= self.max_size:
                chunk, data = data, b""
            else:
                # cross the limit only up to the end of the line that crosses it
                cut = data.find(b"\n", max(0, self.max_size - self.size - 1))
                chunk, data = (data, b"") if cut == -1 else (data[:cut + 1], data[cut + 1:])
            if self.fd == -1 or not self._write_raw(chunk):
                self.lost += len(chunk) + len(data)
                return

    def _redact(self, data: bytes) -> bytes:
        data = self.held + data
        self.held = b""
        m = _TOKEN_TAIL.search(data, max(0, len(data) - 256))
        if m and m.start() != len(data) and data.rfind(b"\n", m.start()) == -1:
            # `…?tok` or `…?token=ab` at the end of a read: the rest comes with the next one
            data, self.held = data[:m.start()], data[m.start():]
        return _TOKEN.sub(rb"\1[hidden]", data) if b"token=" in data else data

    def flush_held(self) -> None:
        """Write what _redact kept back (at close: nothing more will come)."""
        held, self.held = self.held, b""
        if held:
            self.write(_TOKEN.sub(rb"\1[hidden]", held) + b"\n")

    def _cut_long_lines(self, data: bytes) -> bytes:
        """`data` with every line kept to LINE_LIMIT bytes; a cut is marked once, the rest of that
        line dropped up to its newline (and counted in a second note)."""
        if not self.cutting and self.line_len + len(data) <= LINE_LIMIT:
            nl = data.rfind(b"\n")
            self.line_len = len(data) - nl - 1 if nl != -1 else self.line_len + len(data)
            return data
        out, pos, n = [], 0, len(data)
        while pos < n:
            if self.cutting:
                nl = data.find(b"\n", pos)
                if nl == -1:
                    self.cut_bytes += n - pos
                    break
                self.cut_bytes += nl - pos
                out.append(f"[notebookd: {self.cut_bytes} more bytes of that line left out]\n".encode())
                self.cutting, self.cut_bytes, self.line_len, pos = False, 0, 0, nl + 1
                continue
            room = LINE_LIMIT - self.line_len
            nl = data.rfind(b"\n", pos, min(n, pos + room + 1))
            if nl != -1:  # every line up to there fits: the first starts `line_len` in, the rest are shorter
                out.append(data[pos:nl + 1])
                self.line_len, pos = 0, nl + 1
            elif n - pos <= room:
                out.append(data[pos:])
                self.line_len += n - pos
                break
            else:
                out.append(data[pos:pos + room])
                out.append(CUT_NOTE)
                self.cutting, self.cut_bytes, self.line_len, pos = True, 0, 0, pos + room
        return b"".join(out)

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
        self.flush_held()
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
