"""The metrics' pure parts: the `metrics:` keys, the series of a snapshot as prometheus_client parses
them, the /api/status answer, and the endpoint's request rules on a loopback socket of its own.

Fast tier: no root, no servers. The snapshots are made up on purpose (states and counts no test
could bring about quickly, like a crash loop); test_metrics.py checks the same with real servers.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from notebookd import activity, config, metrics
from notebookd.paths import Layout
from notebookd.stats import Histogram, Stats, restart_reason
from notebookd.yamlsource import ConfigError

FILE = "/etc/notebookd/notebookd.yaml"
LAYOUT = Layout(system=True, config=FILE, config_explicit=True, run_dir="/run/nbd-test",
                state_dir="/var/lib/nbd-test", log_dir="/var/log/nbd-test")


def load(text: str) -> config.Config:
    return config.load(LAYOUT, text)


@pytest.mark.parametrize("given, want", [
    ("9750", ("127.0.0.1", 9750)),
    ("127.0.0.1:9750", ("127.0.0.1", 9750)),
    ("'[::1]:9750'", ("::1", 9750)),
])
def test_listen_forms(given, want):
    assert load(f"metrics: {{listen: {given}}}").metrics.listen == want


def test_metrics_are_off_by_default():
    assert not load("").metrics.enabled
    assert load("metrics: {textfile: /var/lib/prometheus/node-exporter/notebookd.prom}").metrics.enabled


@pytest.mark.parametrize("text, message", [
    ("metrics: {listen: 0.0.0.0:9750}", "1: metrics.listen: 0.0.0.0 is reachable from other machines"),
    ("metrics: {listen: 'localhost:9750'}", "is not PORT, IP:PORT or [IPv6]:PORT"),
    ("metrics: {listen: 99999}", "99999 is not a valid port"),
    ("metrics: {textfile: notebookd.prom}", "must be an absolute path"),
    ("metrics: {textfile: /tmp/notebookd.txt}", "must end in .prom"),
    ("metrics: {interval: 0s}", "must be more than zero"),
    ("metrics: {listn: 9750}", "did you mean 'listen'"),
])
def test_bad_metrics_keys_get_one_line(text, message):
    with pytest.raises(ConfigError) as err:
        load(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_non_loopback_needs_the_explicit_opt_in():
    m = load("metrics: {listen: '0.0.0.0:9750', allow_insecure: true}").metrics
    assert m.listen == ("0.0.0.0", 9750)


def snapshot(**kw) -> metrics.Snapshot:
    stats = Stats()
    stats.restarted("alice", "exit")
    stats.restarted("alice", "exit")
    stats.restarted("bob", "unhealthy")
    stats.health_failed("bob")
    stats.spawned(3.0, ok=True)
    stats.spawned(70.0, ok=False)
    rows = (metrics.Row("alice", "running", None, 2, 3, 1000.0),
            metrics.Row("bob", "crashloop", None, None, None, None),
            metrics.Row("ghost", "error", None, None, None, None))
    values = dict(rows=rows, stats=stats, backend="native", reload_ok=False, reload_at=500.0, now=1000.0 + 3600)
    values.update(kw)
    return metrics.Snapshot(**values)


def samples(text: bytes) -> dict[str, dict[tuple, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_every_label_value_is_there_from_the_start():
    got = samples(metrics.exposition(snapshot()))
    state = got["notebookd_server_state"]
    assert len(state) == 3 * len(metrics.STATES) and sum(state.values()) == 3
    assert state[(("state", "crashloop"), ("user", "bob"))] == 1
    assert got["notebookd_servers"][(("state", "error"),)] == 1
    assert got["notebookd_servers"][(("state", "stopping"),)] == 0
    # main's on-demand state: taken from model.ServerState, so it is there (0) before anyone is idle
    assert "idle" in metrics.STATES and got["notebookd_servers"][(("state", "idle"),)] == 0
    restarts = got["notebookd_server_restarts_total"]
    assert len(restarts) == 3 * 4
    assert restarts[(("reason", "exit"), ("user", "alice"))] == 2
    assert restarts[(("reason", "unhealthy"), ("user", "bob"))] == 1
    assert restarts[(("reason", "reload"), ("user", "ghost"))] == 0
    assert got["notebookd_health_check_failures_total"][(("user", "bob"),)] == 1
    assert got["notebookd_server_kernels"] == {(("user", "alice"),): 2, (("user", "bob"),): 0,
                                               (("user", "ghost"),): 0}
    assert got["notebookd_server_memory_bytes"][(("user", "bob"),)] == 0  # no process: nothing in use
    # a timestamp nobody saw is left out, not made up
    assert got["notebookd_server_last_activity_timestamp_seconds"] == {(("user", "alice"),): 1000.0}
    assert got["notebookd_active_users"] == {(("period", "24h"),): 1, (("period", "7d"),): 1}
    assert got["notebookd_config_last_reload_success"] == {(): 0}
    assert got["notebookd_config_last_reload_timestamp_seconds"] == {(): 500.0}
    assert list(got["notebookd_build_info"]) == [(("backend", "native"), ("version", metrics.__version__))]


def test_a_cached_exposition_is_what_building_it_afresh_gives():
    """The text of a family whose inputs did not change is reused; any change to them rebuilds it."""
    cache: dict = {}
    snap = snapshot()
    first = metrics.exposition(snap, cache)
    assert first == metrics.exposition(snap) and cache
    kept = dict(cache)
    assert metrics.exposition(snap, cache) == first and cache == kept
    changes = [dict(rows=(metrics.Row("alice", "stopped", None, 2, 3, 1000.0),) + snap.rows[1:]),
               dict(rows=(metrics.Row("alice", "running", 42, 5, 1, 1500.0, 7 * 2**20, 1.5),) + snap.rows[1:]),
               dict(rows=snap.rows[:2]), dict(reload_ok=True, now=snap.now + 86400)]
    for change in changes:
        changed = snapshot(**change)
        assert metrics.exposition(changed, cache) == metrics.exposition(changed), change
    stats = snapshot().stats
    stats.restarted("ghost", "requested")
    stats.health_failed("alice")
    changed = snapshot(stats=stats)
    got = samples(metrics.exposition(changed, cache))
    assert got["notebookd_server_restarts_total"][(("reason", "requested"), ("user", "ghost"))] == 1
    assert got["notebookd_health_check_failures_total"][(("user", "alice"),)] == 1


def test_spawn_histogram_buckets():
    got = samples(metrics.exposition(snapshot()))
    buckets = got["notebookd_server_spawn_duration_seconds_bucket"]
    assert buckets[(("le", "2.5"), ("status", "success"))] == 0
    assert buckets[(("le", "5.0"), ("status", "success"))] == 1
    assert buckets[(("le", "60.0"), ("status", "failure"))] == 0
    assert buckets[(("le", "+Inf"), ("status", "failure"))] == 1
    assert got["notebookd_server_spawn_duration_seconds_sum"][(("status", "failure"),)] == 70.0
    assert got["notebookd_server_spawn_duration_seconds_count"][(("status", "success"),)] == 1


def test_active_users_by_period():
    rows = tuple(metrics.Row(f"u{i}", "stopped", None, 0, 0, 1e6 - age) for i, age in
                 enumerate((10, 86400 - 1, 86400 + 1, 7 * 86400 + 1)))
    got = samples(metrics.exposition(snapshot(rows=rows, now=1e6)))["notebookd_active_users"]
    assert got == {(("period", "24h"),): 2, (("period", "7d"),): 3}


def test_histogram_is_cumulative():
    h = Histogram((1.0, 2.0, float("inf")))
    for v in (0.5, 1.5, 1.5, 9):
        h.observe(v)
    assert h.counts == [1, 3, 4] and h.count == 4 and h.sum == 12.5


def test_restart_reasons_from_failures():
    assert restart_reason("unhealthy: no answer within 10s") == "unhealthy"
    assert restart_reason("killed by SIGKILL") == "exit"
    assert restart_reason("not ready after 60s (last probe: 502)") == "exit"
    with pytest.raises(AssertionError):
        Stats().restarted("alice", "because")


def test_api_status_answers():
    ok = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
          b'{"connections": 1, "kernels": 2, "last_activity": "2026-12-01T10:00:00.000000Z", "started": "x"}')
    got = activity.parse(ok)
    assert (got.kernels, got.connections, got.last_activity) == (2, 1, 1796119200.0)
    assert activity.parse(b"HTTP/1.1 403 Forbidden\r\n\r\n{}") == "HTTP 403"
    assert activity.parse(b"HTTP/1.1 200 OK\r\n\r\n<html>") == "not an /api/status answer"
    assert activity.parse(b"HTTP/1.1 200 OK\r\n\r\n" + b" " * (activity.MAX_ANSWER + 1)) == "answer too long"


def test_api_kernels_answers_count_busy_kernels():
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
    listing = [{"id": "a", "execution_state": "busy"}, {"id": "b", "execution_state": "idle"},
               {"id": "c", "execution_state": "busy"}]
    assert activity.parse_kernels(head + json.dumps(listing).encode()) == 2
    assert activity.parse_kernels(head + b"[]") == 0
    assert activity.parse_kernels(b"HTTP/1.1 403 Forbidden\r\n\r\n[]") is None  # unknown, not "none busy"
    assert activity.parse_kernels(head + b'{"kernels": 2}') is None


def test_endpoint_routes_only_get_metrics():
    async def fake():
        return snapshot()

    service = metrics.Service(fake)
    run = asyncio.run
    assert run(service.route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == "200 OK"
    assert run(service.route(b"GET /metrics?debug=1 HTTP/1.0\r\n\r\n"))[0] == "200 OK"
    assert run(service.route(b"PUT /metrics HTTP/1.1\r\n\r\n"))[0].startswith("405")
    assert run(service.route(b"GET /metricsx HTTP/1.1\r\n\r\n"))[0].startswith("404")
    assert run(service.route(b"GET /metrics\r\n\r\n"))[0].startswith("400")  # HTTP/0.9
    assert run(service.route(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n"))[0].startswith("400")  # TLS hello


def test_builds_are_shared_and_rate_limited():
    built = []

    async def fake():
        built.append(1)
        await asyncio.sleep(0.05)
        return snapshot()

    async def main():
        service = metrics.Service(fake)
        texts = await asyncio.gather(*(service.render() for _ in range(20)))
        again = await service.render()
        return texts, again

    texts, again = asyncio.run(main())
    assert len(built) == 1 and len(set(texts)) == 1 and again == texts[0]
