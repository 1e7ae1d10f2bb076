"""sd_notify for Type=notify units: READY, STATUS, WATCHDOG, RELOADING, STOPPING. Silent elsewhere."""

from __future__ import annotations

import os
import time


class Notifier:
    def __init__(self) -> None:
        self._sd = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._sd = sdnotify.SystemdNotifier()
            if self._sd.socket is not None:
                # never let a slow reader of the socket stall the event loop: a message that does not
                # fit is dropped (sdnotify swallows the EAGAIN), the next one carries the news
                self._sd.socket.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sd is not None

    def send(self, *fields: str) -> None:
        if self._sd is not None:
            self._sd.notify("\n".join(fields))

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) match this to the reload it asked for
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC, if the watchdog is meant for this process."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if self._sd is None or not usec or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2 / 1e6
