"""Server logs: a FIFO the server writes to, drained into size-rotated files cut only at line ends.

Real FIFOs, real child processes, real files in a temp dir; no root needed.
"""

from __future__ import annotations

import os
import select
import stat
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from notebookd.logs import LogPipe, RotatingFile

# The child's output, made the same way in the child and in the test: numbered lines of random
# length (0..3000 bytes), an empty line now and then, and every 40th line far longer than max_size.
GENERATOR = textwrap.dedent("""\
    import random

    def make_output(seed, count, long_len):
        rnd = random.Random(seed)
        lines = []
        for i in range(count):
            if i % 40 == 17:
                length = long_len + rnd.randrange(5000)
            elif i % 29 == 3:
                length = 0
            else:
                length = rnd.randrange(0, 3001)
            pattern = bytes(97 + (i + j) % 26 for j in range(26))
            text = b"%05d:" % i + pattern * (length // 26 + 1)
            lines.append(text[:length] + b"\\n")
        return b"".join(lines)
    """)

CHILD = GENERATOR + textwrap.dedent("""\
    import os, sys
    seed, count, long_len = (int(a) for a in sys.argv[1:4])
    data = make_output(seed, count, long_len)
    rnd = random.Random(seed + 1)
    view = memoryview(data)
    while view:  # chunks that end anywhere: mid-line, mid-number, on a newline
        n = os.write(1, view[:rnd.randrange(1, 20000)])
        view = view[n:]
    """)


def expected_output(seed: int, count: int, long_len: int) -> bytes:
    scope: dict = {}
    exec(GENERATOR, scope)
    return scope["make_output"](seed, count, long_len)


def log_files(path: str) -> list[str]:
    """Oldest first: path.N … path.1, path."""
    rotated = []
    n = 1
    while os.path.exists(f"{path}.{n}"):
        rotated.append(f"{path}.{n}")
        n += 1
    return rotated[::-1] + ([path] if os.path.exists(path) else [])


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def last_line_start(content: bytes) -> int:
    return content.rfind(b"\n", 0, len(content) - 1) + 1


def assert_cut_at_line_ends(files: list[str], max_size: int) -> None:
    for i, name in enumerate(files):
        content = read(name)
        assert content.endswith(b"\n"), f"{name} ends mid-line"
        # a file goes over max_size only by the rest of the line that crossed it
        assert last_line_start(content) < max_size, f"{name}: a line starts past max_size"
        if i < len(files) - 1:  # and is only rotated once it is full
            assert len(content) >= max_size, f"{name} was rotated at {len(content)} bytes"


@pytest.fixture
def umask_077():
    """A daemon started with a strict umask must still give group-readable logs."""
    old = os.umask(0o077)
    yield
    os.umask(old)


def drain_child(pipe: LogPipe, *args: str) -> subprocess.Popen:
    w, r = pipe.writer_fds()
    try:
        child = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=w, pass_fds=(r,))
    finally:
        os.close(w)
        os.close(r)
    deadline = time.monotonic() + 30
    while child.poll() is None:
        assert time.monotonic() < deadline, "child did not finish"
        select.select([pipe.fd], [], [], 0.05)
        pipe.drain()
    while pipe.drain():  # what the child wrote just before it exited
        pass
    return child


def test_child_output_is_kept_whole_in_order_and_cut_at_line_ends(tmp_path, umask_077):
    seed, count, long_len = 1234, 900, 9000
    max_size = 8 * 1024
    path = str(tmp_path / "alice.log")
    pipe = LogPipe(str(tmp_path / "alice.fifo"), RotatingFile(path, max_size=max_size, keep=1000))
    pipe.open()
    try:
        child = drain_child(pipe, str(seed), str(count), str(long_len))
    finally:
        pipe.close()
    assert child.returncode == 0

    expected = expected_output(seed, count, long_len)
    assert len(expected) > 50 * max_size and b"\n\n" in expected  # the test is not trivially small
    files = log_files(path)
    assert len(files) > 50
    assert not os.path.exists(f"{path}.{len(files)}")  # nothing beyond what log_files found
    assert b"".join(read(f) for f in files) == expected
    assert_cut_at_line_ends(files, max_size)
    # every long line is whole in one file
    long_lines = [line for line in expected.split(b"\n") if len(line) > max_size]
    assert len(long_lines) >= 10
    contents = [read(f) for f in files]
    for line in long_lines:
        assert sum(line + b"\n" in c for c in contents) == 1
    for name in files:
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o640, name


def test_output_written_while_no_daemon_reads_waits_in_the_pipe(tmp_path):
    fifo = str(tmp_path / "bob.fifo")
    first = LogPipe(fifo, RotatingFile(str(tmp_path / "bob.log"), max_size=1 << 20, keep=2))
    first.open()
    w, r = first.writer_fds()  # what a server would hold
    try:
        os.write(w, b"before\n")
        first.drain()
        first.close()  # the daemon goes away (restart, upgrade)
        os.write(w, b"while away\n")  # no EPIPE, no block: the server holds a read end
        second = LogPipe(fifo, RotatingFile(str(tmp_path / "bob.log"), max_size=1 << 20, keep=2))
        second.open()  # a new daemon opens the same FIFO
        assert second.drain() == len(b"while away\n")
        os.write(w, b"after\n")
        second.close()
    finally:
        os.close(w)
        os.close(r)
    assert read(str(tmp_path / "bob.log")) == b"before\nwhile away\nafter\n"


def test_drain_on_an_empty_pipe_does_not_block(tmp_path):
    pipe = LogPipe(str(tmp_path / "c.fifo"), RotatingFile(str(tmp_path / "c.log"), max_size=4096, keep=1))
    pipe.open()
    try:
        started = time.monotonic()
        assert pipe.drain() == 0
        assert time.monotonic() - started < 1
    finally:
        pipe.close()
    assert not os.path.exists(tmp_path / "c.log")  # no output, no file


def test_something_else_at_the_fifo_path_is_replaced(tmp_path):
    fifo = tmp_path / "d.fifo"
    fifo.write_bytes(b"stale regular file")
    pipe = LogPipe(str(fifo), RotatingFile(str(tmp_path / "d.log"), max_size=4096, keep=1))
    pipe.open()
    try:
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        assert stat.S_IMODE(os.lstat(fifo).st_mode) == 0o600
    finally:
        pipe.close()


# ---- RotatingFile on its own ----


def line(i: int, width: int = 60) -> bytes:
    return f"{i:04d} ".encode().ljust(width - 1, b"x") + b"\n"


def test_keep_drops_the_oldest_files(tmp_path):
    path = str(tmp_path / "e.log")
    sink = RotatingFile(path, max_size=100, keep=2)
    data = b"".join(line(i) for i in range(10))  # two 60-byte lines per file: five files' worth
    for i in range(10):
        sink.write(line(i))
    sink.close()
    assert log_files(path) == [f"{path}.2", f"{path}.1", path]
    assert not os.path.exists(f"{path}.3")
    assert read(f"{path}.2") + read(f"{path}.1") + read(path) == data[-6 * 60:]
    assert read(path) == line(8) + line(9)


def test_keep_one_keeps_one_rotated_file(tmp_path):
    path = str(tmp_path / "f.log")
    sink = RotatingFile(path, max_size=100, keep=1)
    sink.write(b"".join(line(i) for i in range(7)))  # one write spanning several rotations
    sink.close()
    assert log_files(path) == [f"{path}.1", path]
    assert read(f"{path}.1") == line(4) + line(5)
    assert read(path) == line(6)


def test_existing_full_log_is_rotated_before_new_output(tmp_path):
    path = tmp_path / "g.log"
    path.write_bytes(b"old run\n" * 20)  # 160 bytes, over max_size, ends at a line end
    sink = RotatingFile(str(path), max_size=100, keep=3)
    sink.write(b"new run\n")
    sink.close()
    assert read(f"{path}.1") == b"old run\n" * 20
    assert read(str(path)) == b"new run\n"


def test_existing_log_with_a_partial_line_is_finished_before_rotating(tmp_path):
    path = tmp_path / "h.log"
    path.write_bytes(b"x" * 150)  # the last run died mid-line, past max_size
    sink = RotatingFile(str(path), max_size=100, keep=3)
    sink.write(b"rest of it\nnext\n")
    sink.close()
    assert read(f"{path}.1") == b"x" * 150 + b"rest of it\n"
    assert read(str(path)) == b"next\n"


def test_existing_small_log_is_appended_to(tmp_path):
    path = tmp_path / "i.log"
    path.write_bytes(b"earlier\n")
    (tmp_path / "i.log.1").write_bytes(b"older\n")
    sink = RotatingFile(str(path), max_size=100, keep=3)
    sink.write(b"now\n")
    sink.close()
    assert read(str(path)) == b"earlier\nnow\n"
    assert read(f"{path}.1") == b"older\n"


def test_existing_rotated_files_shift_along(tmp_path):
    path = str(tmp_path / "j.log")
    for n, text in [(1, b"one\n"), (2, b"two\n")]:
        with open(f"{path}.{n}", "wb") as fh:
            fh.write(text)
    with open(path, "wb") as fh:
        fh.write(b"z" * 120 + b"\n")
    sink = RotatingFile(path, max_size=100, keep=3)
    sink.write(b"fresh\n")
    sink.close()
    assert [read(f) for f in log_files(path)] == [b"two\n", b"one\n", b"z" * 120 + b"\n", b"fresh\n"]


def test_partial_line_is_not_split_by_a_rotation(tmp_path):
    path = str(tmp_path / "k.log")
    sink = RotatingFile(path, max_size=100, keep=3)
    sink.write(b"a" * 150)          # past max_size, no newline yet
    for _ in range(50):
        sink.write(b"b")            # the same line, byte by byte
    assert not os.path.exists(f"{path}.1")
    sink.write(b"c\nnext line\n")   # the line ends: only now may the file rotate
    sink.close()
    assert read(f"{path}.1") == b"a" * 150 + b"b" * 50 + b"c\n"
    assert read(path) == b"next line\n"


def test_line_crossing_the_limit_stays_in_the_file_it_started_in(tmp_path):
    path = str(tmp_path / "l.log")
    sink = RotatingFile(path, max_size=100, keep=3)
    sink.write(b"A" * 89 + b"\n")                          # 90 bytes
    sink.write(b"B" * 29 + b"\n" + b"C" * 9 + b"\n")       # B crosses 100; C must go to the next file
    sink.close()
    assert read(f"{path}.1") == b"A" * 89 + b"\n" + b"B" * 29 + b"\n"
    assert read(path) == b"C" * 9 + b"\n"


def test_line_ending_exactly_at_the_limit(tmp_path):
    path = str(tmp_path / "m.log")
    sink = RotatingFile(path, max_size=100, keep=3)
    sink.write(b"A" * 99 + b"\n" + b"B\n")
    sink.close()
    assert read(f"{path}.1") == b"A" * 99 + b"\n"
    assert read(path) == b"B\n"


def test_existing_log_gets_mode_0640(tmp_path):
    path = tmp_path / "n.log"
    path.write_bytes(b"x\n")
    os.chmod(path, 0o666)  # someone loosened it
    sink = RotatingFile(str(path), max_size=100, keep=3)
    sink.write(b"y\n")
    sink.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_rotated_and_new_files_are_0640_even_with_a_strict_umask(tmp_path, umask_077):
    path = str(tmp_path / "o.log")
    sink = RotatingFile(path, max_size=100, keep=3)
    sink.write(b"".join(line(i) for i in range(5)))
    sink.close()
    files = log_files(path)
    assert len(files) == 3
    for name in files:
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o640, name


# ---- output a user controls (issue 10): endless lines, tokens, who may read ----

def test_a_line_without_end_is_cut_and_a_users_logs_stay_bounded(tmp_path):
    """64 MiB without a newline, max_size 1 MiB, keep 2: was one 64 MiB file (rotation waited for a newline)."""
    from notebookd.logs import LINE_LIMIT

    path = str(tmp_path / "flood.log")
    max_size, keep = 2**20, 2
    sink = RotatingFile(path, max_size=max_size, keep=keep)
    for _ in range(64):
        for i in range(16):
            sink.write(b"\0" * 2**16)
    sink.write(b"end\n" + b"ordinary line\n" * 300_000)  # and then enough to rotate a few times
    sink.close()
    files = log_files(path)
    assert len(files) == keep + 1
    assert sum(os.path.getsize(f) for f in files) <= (keep + 1) * (max_size + LINE_LIMIT + 100)
    for name in files:
        content = read(name)
        assert content.endswith(b"\n")
        assert max(len(x) for x in content.split(b"\n")) <= LINE_LIMIT


def test_the_cut_is_marked_and_counted(tmp_path):
    from notebookd.logs import LINE_LIMIT

    path = str(tmp_path / "cut.log")
    sink = RotatingFile(path, max_size=10 * 2**20, keep=1)
    sink.write(b"before\n" + b"y" * 10)
    for chunk in (b"y" * (LINE_LIMIT - 10), b"z" * 5000, b"z" * 123 + b"\nafter\n"):
        sink.write(chunk)
    sink.close()
    lines = read(path).split(b"\n")
    assert lines[0] == b"before" and lines[1] == b"y" * LINE_LIMIT
    assert lines[2] == b"[notebookd: line longer than 64 KiB cut here]"
    assert lines[3] == b"[notebookd: 5123 more bytes of that line left out]"
    assert lines[4] == b"after"


@pytest.mark.parametrize("cut", range(1, 40, 3))
def test_a_token_is_hidden_wherever_a_read_cuts_it(tmp_path, cut):
    path = str(tmp_path / f"t{cut}.log")
    sink = RotatingFile(path, max_size=2**20, keep=1)
    secret = "3f9a2c0e1b7d4a6f8e5c3b2a1d0f9e8c7b6a5d4c3b2a1f0e"
    text = f"GET /user/bob/lab?token={secret}&x=1 200\nnext line\n".encode()
    sink.write(text[:cut])
    sink.write(text[cut:])
    sink.close()
    content = read(path)
    assert secret.encode() not in content
    assert content == b"GET /user/bob/lab?token=[hidden]&x=1 200\nnext line\n"


def test_a_log_is_readable_by_its_user_alone_besides_root(tmp_path):
    """Was 0640 root:GROUP: every user in that group (LDAP `users`) read it. Now an ACL names the user."""
    path = str(tmp_path / "acl.log")
    sink = RotatingFile(path, max_size=100, keep=2, reader=4242)
    sink.write(b"x" * 150 + b"\n" + b"y\n")  # rotated once: both files
    sink.close()
    for name in (path, path + ".1"):
        acl = os.getxattr(name, "system.posix_acl_access")
        entries = {(tag, ident): perm for tag, perm, ident in
                   (struct.unpack_from("<HHI", acl, 4 + 8 * i) for i in range((len(acl) - 4) // 8))}
        assert entries[(0x02, 4242)] == 4       # the user: read
        assert entries[(0x04, 0xFFFFFFFF)] == 0  # the owning group: nothing
        assert entries[(0x20, 0xFFFFFFFF)] == 0  # others: nothing
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o640  # the group bits show the mask
