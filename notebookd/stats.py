"""Counts of what happened to the servers since the daemon started: restarts by reason, failed
health checks, how long starts took. Backends and the daemon add to them; the metrics read them.

Plain counters, no I/O and no dependency: a backend pays one dict update per event.
"""

from __future__ import annotations

from collections import Counter

# Why a server was restarted (`notebookd_server_restarts_total{reason}`):
#   exit       it exited or never became ready, and was started again
#   unhealthy  it failed `health.failures` probes in a row and was restarted
#   requested  someone asked (`notebookd restart`, a new token or password)
#   reload     its spec changed on a reload, or its certificate was renewed
RESTART_REASONS = ("exit", "unhealthy", "requested", "reload")

SPAWN_STATUSES = ("success", "failure")
# Seconds from spawn to ready: a jupyter_server takes 1-5 s on an idle machine, much longer on a busy one
SPAWN_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, float("inf"))


class Histogram:
    """Cumulative bucket counts and the sum, as Prometheus histograms keep them."""

    def __init__(self, buckets: tuple[float, ...] = SPAWN_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    @property
    def count(self) -> int:
        return self.counts[-1]


class Stats:
    def __init__(self) -> None:
        self.restarts: Counter[tuple[str, str]] = Counter()  # (user, reason)
        self.health_failures: Counter[str] = Counter()
        self.spawns = {status: Histogram() for status in SPAWN_STATUSES}

    def restarted(self, name: str, reason: str) -> None:
        assert reason in RESTART_REASONS, reason
        self.restarts[name, reason] += 1

    def health_failed(self, name: str) -> None:
        self.health_failures[name] += 1

    def spawned(self, seconds: float, ok: bool) -> None:
        self.spawns["success" if ok else "failure"].observe(max(0.0, seconds))


def restart_reason(failure: str) -> str:
    """The reason label of a restart after `failure` (the text a backend logs and shows)."""
    return "unhealthy" if failure.startswith("unhealthy") else "exit"
