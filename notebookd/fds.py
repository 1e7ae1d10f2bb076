"""File descriptors are the daemon's scarcest shared resource: raise the limit, notice exhaustion,
and say so in the log without flooding it.

Any local user can make the daemon hold descriptors (control connections, a server's output), so
running out must be an ordinary, logged, recoverable condition, never a verdict on a server.
"""

from __future__ import annotations

import errno
import logging
import resource
import time

log = logging.getLogger("notebookd")

# Errors that say "the daemon (or the machine) is out of something", not "the peer is broken".
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

# Children inherit the soft limit; past this, programs that walk every possible fd get slow.
NOFILE_CEILING = 65536


def exhausted(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in EXHAUSTED


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit (at most NOFILE_CEILING); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE_CEILING if hard == resource.RLIM_INFINITY else min(hard, NOFILE_CEILING)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, want, exc)
    return soft, hard


def nofile() -> int:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return NOFILE_CEILING if soft == resource.RLIM_INFINITY else soft


class Throttle:
    """Log one message per `every` seconds per key; the rest are counted and summed up next time."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, key: str, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.every) < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        suffix = f" ({held} more like this since the last message)" if held else ""
        log.warning(message + suffix, *args)
