"""Memory and CPU of every server's process tree (kernels included), in one pass over /proc.

A scrape reads this once for all servers: one `process_iter` reads each process's stat and statm
once, whatever the number of servers.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Usage:
    memory: int  # RSS, bytes, summed over the tree
    cpu: float  # user + system seconds of the live tree, plus what it reaped of its exited children


def trees(roots: dict[str, int]) -> dict[str, Usage]:
    """Usage of each `name: pid` tree. A kernel's CPU stays counted once it exits and its server
    reaps it (the children times); a tree's figure drops only when processes that were never
    reaped by it go (a restart), which Prometheus' rate() reads as a counter reset."""
    children: dict[int, list[int]] = {}
    own: dict[int, tuple[int, float]] = {}
    for proc in psutil.process_iter(["ppid", "memory_info", "cpu_times"]):
        info = proc.info
        children.setdefault(info["ppid"], []).append(proc.pid)
        mem, cpu = info["memory_info"], info["cpu_times"]
        own[proc.pid] = (mem.rss if mem else 0,
                         cpu.user + cpu.system + cpu.children_user + cpu.children_system if cpu else 0.0)
    result = {}
    for name, pid in roots.items():
        if pid not in own:
            continue
        memory, seconds, todo, seen = 0, 0.0, [pid], set()
        while todo:
            p = todo.pop()
            if p in seen:
                continue
            seen.add(p)
            m, c = own.get(p, (0, 0.0))
            memory, seconds = memory + m, seconds + c
            todo.extend(children.get(p, ()))
        result[name] = Usage(memory, seconds)
    return result
