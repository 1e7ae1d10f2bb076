"""Prometheus metrics: the series (`families`), `GET /metrics` on the daemon's own loop, the textfile.

The exposition is prometheus_client's (0.16, Debian 12's, and later), imported only when metrics
are configured. Series follow JupyterHub's names where there is one (jupyterhub_running_servers,
jupyterhub_server_spawn_duration_seconds{status}, jupyterhub_active_users{period}), and every label
value is there from the start (a state a server is not in is 0), so alerts see zeros, not absent
series. Only `notebookd_server_last_activity_timestamp_seconds` waits until the first activity
probe: a made-up timestamp would be worse than none.

The endpoint is a plain asyncio server: one request per connection, the request head at most
`MAX_HEAD` bytes within `HEAD_TIMEOUT` seconds (a client that trickles bytes is cut off, and the
loop serves everyone else meanwhile), at most `MAX_CLIENTS` connections at once, and only
`GET /metrics`. A flood of scrapes builds the text at most once per `MIN_BUILD` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from notebookd import __version__
from notebookd.config import Metrics as MetricsConfig
from notebookd.fsutil import write_atomic
from notebookd.model import ServerState
from notebookd.stats import RESTART_REASONS, Stats

log = logging.getLogger("notebookd")

STATES = tuple(s.value for s in ServerState)
PERIODS = (("24h", 86400.0), ("7d", 7 * 86400.0))
MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0
WRITE_TIMEOUT = 10.0
MAX_CLIENTS = 16
MIN_BUILD = 1.0


@dataclass(frozen=True)
class Row:
    """What the metrics need of one server (its status row, the activity cache, the one /proc read)."""

    name: str
    state: str
    pid: int | None
    kernels: int | None
    connections: int | None
    last_activity: float | None
    memory: int = 0  # bytes, the whole process tree; 0 without a process
    cpu: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    rows: tuple[Row, ...]
    stats: Stats
    backend: str
    reload_ok: bool
    reload_at: float
    now: float


# Each family's builder, with a key of everything it reads (None: built every time, small or always
# changing). With 100 users the per-user families are ~2,000 samples and prometheus_client takes
# ~10 ms to build and print them, the largest part of a scrape; states, counters and the activity
# figures rarely change between two scrapes 15 s apart, so their text is kept and reused while
# their key stays the same (exposition(snap, cache)).

def _state_key(snap: Snapshot):
    return tuple((r.name, r.state) for r in snap.rows)


def _state(snap: Snapshot) -> list:
    from prometheus_client.core import GaugeMetricFamily

    rows = snap.rows
    servers = GaugeMetricFamily("notebookd_servers", "Servers in each state.", labels=["state"])
    for state in STATES:
        servers.add_metric([state], sum(r.state == state for r in rows))
    each = GaugeMetricFamily("notebookd_server_state", "1 for the state each user's server is in, else 0.",
                             labels=["user", "state"])
    for r in rows:
        for s in STATES:
            each.add_metric([r.name, s], 1 if r.state == s else 0)
    return [servers, each]


def _restarts_key(snap: Snapshot):
    restarts = snap.stats.restarts
    return tuple((r.name, tuple(restarts[r.name, reason] for reason in RESTART_REASONS)) for r in snap.rows)


def _restarts(snap: Snapshot) -> list:
    from prometheus_client.core import CounterMetricFamily

    restarts = CounterMetricFamily("notebookd_server_restarts", "Restarts of each server, by reason.",
                                   labels=["user", "reason"])
    for r in snap.rows:
        for reason in RESTART_REASONS:
            restarts.add_metric([r.name, reason], snap.stats.restarts[r.name, reason])
    return [restarts]


def _spawn(snap: Snapshot) -> list:
    from prometheus_client.core import HistogramMetricFamily

    spawn = HistogramMetricFamily("notebookd_server_spawn_duration_seconds",
                                  "Seconds from spawning a server to its first answer (status: success, "
                                  "or failure for starts that never became ready).", labels=["status"])
    for status, hist in snap.stats.spawns.items():
        buckets = [("+Inf" if b == float("inf") else repr(b), c) for b, c in zip(hist.buckets, hist.counts)]
        spawn.add_metric([status], buckets, hist.sum)
    return [spawn]


def _usage(snap: Snapshot) -> list:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    memory = GaugeMetricFamily("notebookd_server_memory_bytes",
                               "Resident memory of each server's process tree, kernels included.", labels=["user"])
    cpu = CounterMetricFamily("notebookd_server_cpu_seconds", "CPU seconds of each server's process tree, "
                              "kernels included (resets when the server restarts).", labels=["user"])
    for r in snap.rows:
        memory.add_metric([r.name], r.memory)
        cpu.add_metric([r.name], r.cpu)
    return [memory, cpu]


def _activity_key(snap: Snapshot):
    return tuple((r.name, r.kernels, r.connections, r.last_activity) for r in snap.rows)


def _activity(snap: Snapshot) -> list:
    from prometheus_client.core import GaugeMetricFamily

    kernels = GaugeMetricFamily("notebookd_server_kernels", "Kernels each server runs (jupyter's /api/status).",
                                labels=["user"])
    connections = GaugeMetricFamily("notebookd_server_connections",
                                    "Kernel connections (open notebooks) of each server.", labels=["user"])
    last = GaugeMetricFamily("notebookd_server_last_activity_timestamp_seconds",
                             "When each server last saw activity (Unix time; jupyter's own figure).", labels=["user"])
    for r in snap.rows:
        kernels.add_metric([r.name], r.kernels or 0)
        connections.add_metric([r.name], r.connections or 0)
        if r.last_activity is not None:
            last.add_metric([r.name], r.last_activity)
    return [kernels, connections, last]


def _health_key(snap: Snapshot):
    return tuple((r.name, snap.stats.health_failures[r.name]) for r in snap.rows)


def _health(snap: Snapshot) -> list:
    from prometheus_client.core import CounterMetricFamily

    health = CounterMetricFamily("notebookd_health_check_failures", "Failed health probes of each server.",
                                 labels=["user"])
    for r in snap.rows:
        health.add_metric([r.name], snap.stats.health_failures[r.name])
    return [health]


def _daemon(snap: Snapshot) -> list:
    from prometheus_client.core import GaugeMetricFamily

    info = GaugeMetricFamily("notebookd_build_info", "notebookd's version and backend (always 1).",
                             labels=["version", "backend"])
    info.add_metric([__version__, snap.backend], 1)
    active = GaugeMetricFamily("notebookd_active_users", "Users whose server saw activity within the period "
                               "(since this daemon started).", labels=["period"])
    for period, seconds in PERIODS:
        active.add_metric([period], sum(1 for r in snap.rows
                                        if r.last_activity and snap.now - r.last_activity <= seconds))
    return [GaugeMetricFamily("notebookd_config_last_reload_success",
                              "1 if the last reload of the config worked (or none was asked for), else 0.",
                              value=1 if snap.reload_ok else 0),
            GaugeMetricFamily("notebookd_config_last_reload_timestamp_seconds",
                              "When the config was last (re)loaded or a reload failed (Unix time).",
                              value=snap.reload_at),
            info, active]


PARTS = ((_state_key, _state), (_restarts_key, _restarts), (None, _spawn), (None, _usage),
         (_activity_key, _activity), (_health_key, _health), (None, _daemon))


def families(snap: Snapshot) -> list:
    """The metric families of one snapshot (prometheus_client's core types)."""
    return [family for _, build in PARTS for family in build(snap)]


class _Families:
    def __init__(self, items: list):
        self.items = items

    def collect(self):
        return self.items


def exposition(snap: Snapshot, cache: dict | None = None) -> bytes:
    """The text of `snap`; with a `cache` (kept by the caller between scrapes), a family whose inputs
    did not change is not built again (the same text, byte for byte, as building it would give)."""
    from prometheus_client import generate_latest

    out = []
    for i, (key_of, build) in enumerate(PARTS):
        key = key_of(snap) if key_of is not None and cache is not None else None
        kept = cache.get(i) if key is not None else None
        if kept is not None and kept[0] == key:
            out.append(kept[1])
            continue
        text = generate_latest(_Families(build(snap)))
        if key is not None:
            cache[i] = (key, text)
        out.append(text)
    return b"".join(out)


def available() -> str | None:
    """None if prometheus_client can be imported, else the one-line reason."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return ("metrics: need the prometheus_client library (Debian: apt install python3-prometheus-client; "
                "pip: pip install 'notebookd[metrics]')")
    return None


class Service:
    """The endpoint and the textfile, as `metrics:` asks; `snapshot` is an async callable the daemon gives."""

    def __init__(self, snapshot):
        self.snapshot = snapshot
        self.config = MetricsConfig()
        self.server: asyncio.base_events.Server | None = None
        self.error: str | None = None  # why the endpoint or the textfile is not working (shown in status)
        self._writer: asyncio.Task | None = None
        self._clients = 0
        self._built: tuple[float, bytes] = (float("-inf"), b"")
        self._building: asyncio.Future | None = None
        self._texts: dict = {}  # exposition's cache: each family's inputs and text at the last build

    async def apply(self, config: MetricsConfig) -> None:
        """Start, move or stop the endpoint and the textfile writer to match `config`."""
        old, self.config = self.config, config
        if config.enabled and (reason := available()):
            self.error = reason
            log.error("%s", reason)
            await self.close()
            return
        if config.listen != old.listen or self.server is None:
            await self._close_server()
            self.error = None
            if config.listen is not None:
                ip, port = config.listen
                try:
                    self.server = await asyncio.start_server(self._client, ip, port, limit=MAX_HEAD)
                    log.info("metrics: serving GET /metrics on %s", _address(ip, port))
                except OSError as exc:
                    self.error = f"metrics: cannot listen on {_address(ip, port)}: {exc.strerror or exc}"
                    log.error("%s", self.error)
        if (config.textfile, config.interval) != (old.textfile, old.interval) or self._writer is None:
            self._stop_writer()
            if config.textfile:
                self._writer = asyncio.create_task(self._write_loop(), name="metrics-textfile")

    async def close(self) -> None:
        await self._close_server()
        self._stop_writer()

    async def write_textfile(self) -> None:
        """One rewrite of the textfile (atomically: node_exporter never reads half of it)."""
        path = self.config.textfile
        data = await self.render()
        try:
            write_atomic(path, data, 0o644)
        except OSError as exc:
            error = f"metrics: cannot write {path}: {exc.strerror or exc}"
            if error != self.error:
                log.error("%s", error)
            self.error = error
        else:
            if self.error and self.error.startswith(f"metrics: cannot write {path}"):
                self.error = None

    async def render(self) -> bytes:
        """The exposition text, built at most once per MIN_BUILD seconds; builds under way are shared."""
        at, data = self._built
        if time.monotonic() - at < MIN_BUILD:
            return data
        if self._building is None:
            self._building = asyncio.ensure_future(self._build())
        fut = self._building
        try:
            return await asyncio.shield(fut)
        finally:
            if fut.done() and self._building is fut:
                self._building = None

    async def _build(self) -> bytes:
        data = exposition(await self.snapshot(), self._texts)
        self._built = (time.monotonic(), data)
        return data

    async def _close_server(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            self._writer = None

    async def _write_loop(self) -> None:
        while True:
            try:
                await self.write_textfile()
            except Exception:  # a bug must not end the textfile silently
                log.exception("metrics: writing %s failed", self.config.textfile)
            await asyncio.sleep(self.config.interval)

    # -- the endpoint --
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.transport.abort()  # more than a few scrapers at once is a flood, not monitoring
            return
        self._clients += 1
        try:
            try:
                code, body = await self._answer(reader)
            except Exception:  # a bug: the scraper sees a 500, the log says why, the daemon goes on
                log.exception("metrics: building the answer failed")
                code, body = "500 Internal Server Error", b"see notebookd's log\n"
            headers = [f"HTTP/1.1 {code}", f"Content-Length: {len(body)}", "Connection: close"]
            if code.startswith("200"):
                from prometheus_client import CONTENT_TYPE_LATEST

                headers.append(f"Content-Type: {CONTENT_TYPE_LATEST}")
            else:
                headers.append("Content-Type: text/plain; charset=utf-8")
            if code.startswith("405"):
                headers.append("Allow: GET")
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
            async with asyncio.timeout(WRITE_TIMEOUT):
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            self._clients -= 1
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # a client that does not read its answer gets no more time
            else:
                writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[str, bytes]:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return "408 Request Timeout", b"the request took too long\n"
        except asyncio.LimitOverrunError:
            return "431 Request Header Fields Too Large", b"request head too large\n"
        except asyncio.IncompleteReadError:
            return "400 Bad Request", b"incomplete request\n"
        return await self.route(head)

    async def route(self, head: bytes) -> tuple[str, bytes]:
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return "400 Bad Request", b"not an HTTP/1 request\n"
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != b"/metrics":
            return "404 Not Found", b"only /metrics is served here\n"
        if method != b"GET":
            return "405 Method Not Allowed", b"only GET /metrics is served here\n"
        return "200 OK", await self.render()


def _address(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def address(config: MetricsConfig) -> str | None:
    """The endpoint's address as the config gives it, or None when there is none."""
    return _address(*config.listen) if config.listen else None


LIVE = ("starting", "running", "stopping")  # states whose pid is a process of the server's


def snapshot_rows(status_rows, activity, used: dict) -> tuple[Row, ...]:
    """`used`: usage.Usage of each server with a process (one read of /proc for the whole snapshot)."""
    rows = []
    for r in status_rows:
        a, u = activity.get(r.name), used.get(r.name) if r.state in LIVE else None
        rows.append(Row(r.name, r.state, r.pid if r.state in LIVE else None, a.kernels, a.connections,
                        a.last_activity, u.memory if u else 0, u.cpu if u else 0.0))
    return tuple(rows)


def snapshot_of(rows: tuple[Row, ...], stats: Stats, backend: str, last_reload: dict, started: float) -> Snapshot:
    return Snapshot(rows=rows, stats=stats, backend=backend, reload_ok=bool(last_reload.get("ok", True)),
                    reload_at=last_reload.get("at") or started, now=time.time())

