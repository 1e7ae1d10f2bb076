"""What supervision asks of the machine, behind one small seam: the clock, the HTTP probe, the idle
question, the processes of a server, who holds a port, a user's uid.

The idea is supervisor's `options` object: the state machines call only this, so the fast tier drives
them with a fake machine (tests/fakes.py) and the root tier with this real one. Nothing here decides
anything; each method is one call to the module that does the work.
"""

from __future__ import annotations

import pwd
import time

from notebookd import activity, procs
from notebookd.model import ServerSpec
from notebookd.ports import describe_holder, port_holder
from notebookd.probe import http_status


class Machine:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def probe(self, spec: ServerSpec, timeout: float, host: str | None = None) -> int | str:
        """`GET {base_url}api` on `host` (default: the spec's ip): 200 means ready (or healthy); else the
        status or why there was none (`probe.Unprobed`: the daemon could not even try)."""
        return await http_status(host or spec.ip, spec.port, spec.base_url + "api", timeout, tls=spec.tls.enabled)

    async def idle_for(self, spec: ServerSpec, tokens, started: float | None) -> float | None:
        """Seconds the server has been idle by jupyter's account, None while active (activity.idle_for)."""
        return await activity.idle_for(spec, tokens, started)

    async def stop_tree(self, pid: int | None, uid: int, marker: str, grace: float) -> list[int]:
        return await procs.stop_tree(pid, uid, marker, grace)

    async def end_strays(self, uid: int, marker: str, keep: int | None) -> list[int]:
        return await procs.end_strays(uid, marker, keep)

    def memory(self, pid: int, uid: int, marker: str) -> int:
        return procs.tree_memory(procs.server_processes(pid, uid, marker))

    def port_user(self, ip: str, port: int) -> str | None:
        """Who holds the port (for the message), or None when it is free."""
        return describe_holder(ip, port) if port_holder(ip, port) else None

    def uid_of(self, name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None
