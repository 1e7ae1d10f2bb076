"""Memory and CPU of every server's process tree (kernels included), read once per scrape (and
for `status`' MEMORY: the native backend keeps one read for both, NativeBackend.usage).

From each server's pid down through `/proc/PID/task/*/children`: one `stat` read per process of a
server gives its RSS and CPU, so the cost grows with the servers' processes, not with everything
else the machine runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    memory: int  # RSS, bytes, summed over the tree
    cpu: float  # user + system seconds of the live tree, plus what it reaped of its exited children


def trees(roots: dict[str, int]) -> dict[str, Usage]:
    """Usage of each `name: pid` tree (a pid that is gone: left out). A kernel's CPU stays counted
    once it exits and its server reaps it (the children times); a tree's figure drops only when
    the server itself restarts, which Prometheus' rate() reads as a counter reset."""
    result = {}
    for name, pid in roots.items():
        memory, seconds, todo, seen = 0, 0.0, [pid], set()
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            own = _stat(p)
            if own is None:
                continue
            memory, seconds = memory + own[0], seconds + own[1]
            todo.extend(_children(p))
        if pid in seen and memory:
            result[name] = Usage(memory, seconds)
    return result


def _stat(pid: int) -> tuple[int, float] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
    except OSError:
        return None
    # after the command: state ppid … utime(11) stime(12) cutime(13) cstime(14) … rss(21, pages)
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return int(fields[21]) * PAGE, ticks / TICK


def _children(pid: int) -> list[int]:
    """Children of every thread (a server may start a kernel from any of its threads)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                out += [int(x) for x in fh.read().split()]
        except OSError:
            continue
    return out
