"""What the users of each running server are doing, by jupyter's own account: one question, `ask`.

`ask` reads `GET {base_url}api/status` (jupyter_server 1.23 and 2.x alike: kernel and connection
counts, last activity) and `GET {base_url}api/kernels` (which kernels are busy: a silent long cell
moves no last_activity). Both carry `?no_track_activity=1` (the kernels list would otherwise count as
activity; /api/status never does), so asking never keeps an idle server looking busy. It needs the
user's token: servers with `auth: password` only are not asked (their figures stay unknown, and they
are never stopped for idleness).

Two callers, each at its own pace: every backend's idle stop (`idle_for`) asks with each health check of
a server with `idle.stop_after` (README, "Idle servers"); metrics and `status` go through ActivityBook.

Probes run only for running servers, all at once with a bound, and no more often than `min_age`
(`metrics.activity_interval`, 60 s by default, as JupyterHub's activity interval is minutes) however
often someone asks (a scrape, the textfile, the idle refresh): the results are cached and `status`
shows the cache, so it never waits on a server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime

from notebookd.access import uses_token
from notebookd.model import ServerSpec
from notebookd.probe import _insecure_context

log = logging.getLogger("notebookd")

MAX_ANSWER = 64 * 1024  # an /api/status answer is ~150 bytes; anything longer is not one
PARALLEL = 16  # probes in flight at once: 100 users must not open 100 connections in one go
TIMEOUT = 5.0


@dataclass(frozen=True)
class Activity:
    kernels: int | None = None  # None: not known (never probed, password-only auth)
    connections: int | None = None
    last_activity: float | None = None  # wall clock; kept after the server stops (active users)
    busy: int | None = None  # kernels executing; None: /api/kernels gave no answer


class ActivityBook:
    def __init__(self, tokens, min_age: float = 60.0):
        self.tokens = tokens
        self.min_age = min_age
        self.seen: dict[str, Activity] = {}
        self.refreshed = 0.0  # monotonic time of the last refresh
        self._running: asyncio.Task | None = None

    def get(self, name: str) -> Activity:
        return self.seen.get(name, Activity())

    async def refresh(self, running: dict[str, ServerSpec], everyone: set[str]) -> None:
        """Probe the `running` servers unless that was done less than `min_age` seconds ago; a
        refresh under way is shared, not repeated. `everyone`: the users still
        configured (the others are dropped; stopped ones keep their last activity and run no kernels)."""
        if self._running is not None:
            await asyncio.shield(self._running)
            return
        if time.monotonic() - self.refreshed < self.min_age:
            return
        self._running = asyncio.ensure_future(self._refresh(running, everyone))
        try:
            await asyncio.shield(self._running)
        finally:
            self._running = None

    async def _refresh(self, running: dict[str, ServerSpec], everyone: set[str]) -> None:
        gate = asyncio.Semaphore(PARALLEL)

        async def one(spec: ServerSpec) -> tuple[str, Activity | str]:
            async with gate:
                return spec.name, await ask(spec, self.tokens.get(spec.name))

        results = await asyncio.gather(*(one(s) for s in running.values() if uses_token(s)))
        seen = {n: a for n, a in self.seen.items() if n in everyone}
        for name in everyone - running.keys():
            seen[name] = Activity(0, 0, self.get(name).last_activity, 0)
        for name, found in results:
            if isinstance(found, str):
                log.debug("%s: activity probe: %s", name, found)  # the health check reports a sick server
                continue
            last = max(filter(None, (found.last_activity, self.get(name).last_activity)), default=None)
            seen[name] = Activity(found.kernels, found.connections, last, found.busy)
        self.seen = seen
        self.refreshed = time.monotonic()

    def run_idle(self, targets) -> asyncio.Task:
        """A task that refreshes every `min_age` seconds when nobody else did (so `status` has figures
        without any monitoring); `targets()` gives (running specs, configured users)."""
        async def loop() -> None:
            while True:
                await asyncio.sleep(max(1.0, self.refreshed + self.min_age - time.monotonic()))
                if time.monotonic() - self.refreshed >= self.min_age:
                    try:
                        await self.refresh(*targets())
                    except Exception:  # a bug must not end the figures silently
                        log.exception("activity probe failed")
        return asyncio.create_task(loop(), name="activity")


async def idle_for(spec: ServerSpec, tokens, started: float | None) -> float | None:
    """The idle rule (README, "Idle servers"), for every backend's idle stop: seconds since the server's
    last activity by jupyter's account (not before `started`, wall clock), or None while it is active
    or cannot tell (no token to ask with, no answer): a connected client or a busy kernel is activity."""
    if not uses_token(spec):
        return None  # auth: password only: never stopped for idleness
    try:
        token = tokens.get(spec.name)
    except OSError:
        return None
    found = await ask(spec, token)
    if isinstance(found, str) or found.last_activity is None or found.busy is None:
        return None
    if found.connections or found.busy:
        return None
    return time.time() - max(found.last_activity, started or 0)


async def ask(spec: ServerSpec, token: str, timeout: float = TIMEOUT) -> Activity | str:
    """The server's activity (both questions at once), or why there is none (/api/status failed)."""
    status, kernels = await asyncio.gather(_get(spec, token, "api/status", timeout),
                                           _get(spec, token, "api/kernels", timeout))
    found = parse(status) if isinstance(status, bytes) else status
    if isinstance(found, str):
        return found
    busy = parse_kernels(kernels) if isinstance(kernels, bytes) else None
    return Activity(found.kernels, found.connections, found.last_activity, busy)


async def _get(spec: ServerSpec, token: str, what: str, timeout: float) -> bytes | str:
    """The raw HTTP/1.0 answer to GET {base_url}`what`?no_track_activity=1, or why there is none."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(spec.ip, spec.ip)
    hostname = f"[{host}]" if ":" in host else host
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, spec.port, ssl=_insecure_context() if spec.tls.enabled else None, limit=MAX_ANSWER)
            writer.write(f"GET {spec.base_url}{what}?no_track_activity=1 HTTP/1.0\r\n"
                         f"Host: {hostname}:{spec.port}\r\nAuthorization: token {token}\r\n"
                         "Accept: application/json\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            answer = await reader.read(MAX_ANSWER + 1)
            while len(answer) <= MAX_ANSWER and (more := await reader.read(MAX_ANSWER + 1 - len(answer))):
                answer += more
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        if writer is not None:
            writer.close()
    return answer


def _body(answer: bytes) -> bytes | str:
    """The body of a 200 answer, or what was wrong with it."""
    if len(answer) > MAX_ANSWER:
        return "answer too long"
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        return f"HTTP {status[1].decode(errors='replace') if len(status) > 1 else '?'}"
    return body


def parse(answer: bytes) -> Activity | str:
    """An HTTP/1.0 answer of /api/status → Activity (busy unknown), or what was wrong with it."""
    body = _body(answer)
    if isinstance(body, str):
        return body
    try:
        data = json.loads(body)
        kernels, connections = int(data["kernels"]), int(data["connections"])
        last = data.get("last_activity")
        stamp = datetime.fromisoformat(last.replace("Z", "+00:00")).timestamp() if last else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return "not an /api/status answer"
    return Activity(kernels, connections, stamp)


def parse_kernels(answer: bytes) -> int | None:
    """An HTTP/1.0 answer of /api/kernels → how many kernels are busy, None if it is not one.
    (A kernel list longer than MAX_ANSWER, ~200 kernels, is not told: idle stop then waits.)"""
    body = _body(answer)
    if isinstance(body, str):
        return None
    try:
        kernels = json.loads(body)
        return sum(1 for k in kernels if k["execution_state"] == "busy")
    except (ValueError, KeyError, TypeError):
        return None
