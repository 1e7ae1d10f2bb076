"""Short commands run from the event loop (notebookd/command.py, backends/tools.py): systemctl, the Slurm
tools, the PAM helper and the preflight check all go through them.

Real processes (sh, cat, sleep); no root needed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import psutil
import pytest

from notebookd import command
from notebookd.backends.base import BackendError
from notebookd.backends.tools import run_tool

ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}


def run(*argv: str, **kw) -> command.Finished:
    return asyncio.run(command.run(list(argv), env=ENV, **{"timeout": 30, **kw}))


def test_exit_status_and_both_outputs():
    done = run("sh", "-c", "echo out; echo err >&2; exit 3")
    assert (done.returncode, done.out, done.err, done.overflow) == (3, b"out\n", b"err\n", False)


def test_killed_by_a_signal_is_a_negative_status():
    assert run("sh", "-c", "kill -TERM $$").returncode == -15


def test_input_larger_than_a_pipe_goes_through_whole():
    data = os.urandom(1 << 20)  # 16 pipe buffers: written as the command reads, while its output is read
    done = run("cat", input=data)
    assert done.returncode == 0 and done.out == data


def test_a_command_that_does_not_read_its_input_still_finishes():
    done = run("true", input=os.urandom(1 << 20))
    assert done.returncode == 0


def test_no_thread_waits_for_the_child():
    """The daemon runs no threads: asyncio's child watcher would start one per command in 3.11."""
    seen = []

    async def main():
        task = asyncio.ensure_future(command.run(["sleep", "0.3"], env=ENV, timeout=30))
        while not task.done():
            seen.append(threading.active_count())
            await asyncio.sleep(0.02)
        return await task

    assert asyncio.run(main()).returncode == 0
    assert seen and max(seen) == 1


def test_timeout_kills_the_command_and_what_it_started(tmp_path):
    pidfile = tmp_path / "pid"
    script = f"sleep 301 & echo $! > {pidfile}; exec sleep 302"
    with pytest.raises(TimeoutError, match="no answer within 5s"):
        run("sh", "-c", script, timeout=5, own_session=True)
    assert pidfile.exists(), "the shell did not start its background sleep within 5 s"
    kid = int(pidfile.read_text())  # not our child: reparented when the shell was killed
    deadline = time.monotonic() + 30
    while not _gone(kid):
        assert time.monotonic() < deadline, "the background sleep outlived the command's group kill"
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # ended; its new parent has not reaped it yet
    except psutil.NoSuchProcess:
        return True


def test_output_beyond_the_limit_is_not_read():
    done = run("sh", "-c", "head -c 300000 /dev/zero", limit=1000)
    assert done.overflow and done.out == b"\0" * 1000


def test_tool_failure_carries_the_tools_own_message():
    with pytest.raises(BackendError, match=r"^frob: no such unit$"):
        asyncio.run(run_tool(["sh", "-c", "echo 'no such   unit' >&2; exit 1"], env=ENV, timeout=30, what="frob"))


def test_tool_failure_without_a_message_says_how_it_ended():
    with pytest.raises(BackendError, match=r"^sh: exit status 4$"):
        asyncio.run(run_tool(["sh", "-c", "exit 4"], env=ENV, timeout=30))


def test_missing_tool():
    with pytest.raises(BackendError, match=r"^cannot run squeue: No such file or directory$"):
        asyncio.run(run_tool(["/nonexistent/squeue"], env=ENV, timeout=30, what="squeue"))


def test_tool_output():
    assert asyncio.run(run_tool(["sh", "-c", "cat; echo more"], env=ENV, timeout=30, input=b"a\n")) == "a\nmore\n"


def test_a_cancelled_run_kills_its_command():
    async def main():
        task = asyncio.ensure_future(command.run(["sleep", "303"], env=ENV, timeout=300))
        while not (procs := [p for p in psutil.Process().children() if _cmdline(p) == ["sleep", "303"]]):
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return procs[0]

    kid = asyncio.run(main())
    kid.wait(30)  # raises TimeoutExpired while it still runs; the run's own watcher may have reaped it already
    assert not kid.is_running()


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:  # an earlier test's child, gone or a zombie
        return []
