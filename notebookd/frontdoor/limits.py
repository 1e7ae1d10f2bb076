"""Failed-login throttling, per user name and per client address.

After `max_failures` failures in a row for a key, logins for that key are refused for
`failure_delay`, doubling with each further failure up to MAX_DELAY. A success clears the user's
and the address's count. A key with no failure for FORGET seconds starts from zero again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

MAX_DELAY = 15 * 60.0
FORGET = 3600.0


@dataclass
class _Count:
    failures: int
    last: float


class Throttle:
    def __init__(self, max_failures: int, failure_delay: float, clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.failure_delay, self.clock = max_failures, failure_delay, clock
        self._counts: dict[str, _Count] = {}

    def configure(self, max_failures: int, failure_delay: float) -> None:
        self.max_failures, self.failure_delay = max_failures, failure_delay

    def wait(self, *keys: str) -> float:
        """Seconds until a login for these keys may be tried again (0: now)."""
        now = self.clock()
        return max([0.0] + [self._until(k, now) - now for k in keys])

    def _until(self, key: str, now: float) -> float:
        count = self._counts.get(key)
        if count is None or count.failures < self.max_failures:
            return 0.0
        extra = count.failures - self.max_failures
        return count.last + min(self.failure_delay * 2 ** min(extra, 30), MAX_DELAY)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        self._sweep(now)
        for key in keys:
            count = self._counts.setdefault(key, _Count(0, now))
            if now - count.last > FORGET:
                count.failures = 0
            count.failures += 1
            count.last = now

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._counts.pop(key, None)

    def _sweep(self, now: float) -> None:
        if len(self._counts) < 1024:
            return
        for key in [k for k, c in self._counts.items() if now - c.last > max(FORGET, MAX_DELAY)]:
            del self._counts[key]
