"""systemd's view of the daemon: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING), and the file
descriptor store (FDSTORE) that keeps users' listening sockets while no daemon runs. Silent elsewhere.

The fd store: a message `FDSTORE=1` + `FDNAME=` with the descriptor attached (SCM_RIGHTS) on
$NOTIFY_SOCKET; systemd keeps it (up to the unit's FileDescriptorStoreMax=) across a crash, an
automatic restart and `systemctl restart`, and hands it to the next daemon as LISTEN_FDS and
LISTEN_FDNAMES. A full stop flushes it. The sdnotify package cannot attach descriptors, so those
messages are sent here with SCM_RIGHTS.
"""

from __future__ import annotations

import array
import logging
import os
import socket
import time

log = logging.getLogger("notebookd")

LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed descriptor


class Notifier:
    def __init__(self) -> None:
        self._sd = None
        self._address = os.environ.get("NOTIFY_SOCKET") or None
        if self._address:
            import sdnotify

            self._sd = sdnotify.SystemdNotifier()
            if self._sd.socket is not None:
                # never let a slow reader of the socket stall the event loop: a message that does not
                # fit is dropped (sdnotify swallows the EAGAIN), the next one carries the news
                self._sd.socket.setblocking(False)
            if self._address.startswith("@"):
                self._address = "\0" + self._address[1:]  # an abstract socket

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

    # -- the fd store --
    def store(self, name: str, fd: int) -> None:
        """Keep `fd` in systemd's fd store as `name` (systemd ignores a descriptor it holds already)."""
        self._send_fds(f"FDSTORE=1\nFDNAME={name}", [fd])

    def unstore(self, name: str) -> None:
        """Drop every descriptor stored as `name`: the port is free once this daemon closes its copy."""
        self._send_fds(f"FDSTOREREMOVE=1\nFDNAME={name}", [])

    def _send_fds(self, message: str, fds: list[int]) -> None:
        if not self._address:
            return
        # blocking, unlike STATUS=: a dropped FDSTORE would leave the port free across the next restart
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(2.0)
            try:
                # sendmsg, not socket.send_fds: that one drops its address argument (Python 3.11)
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
                sock.sendmsg([message.encode()], rights, 0, self._address)
            except OSError as exc:
                log.error("cannot tell systemd %s: %s", message.replace("\n", " "), exc)


def listen_fds() -> dict[str, list[socket.socket]]:
    """The listening sockets systemd passed to this process (LISTEN_PID is ours), by FDNAME, made
    close-on-exec; the variables are removed so nothing started later takes them for its own."""
    pid, count, names = (os.environ.pop(v, "") for v in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"))
    if pid != str(os.getpid()) or not count.isdigit():
        return {}
    labels = names.split(":") if names else []
    found: dict[str, list[socket.socket]] = {}
    for i in range(int(count)):
        fd = LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            log.warning("descriptor %d from systemd: %s", fd, exc)
            continue
        try:
            listening = sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = False
        if not listening:
            log.warning("descriptor %d from systemd is not a listening TCP socket; closed", fd)
            sock.close()
            continue
        found.setdefault(labels[i] if i < len(labels) else "unknown", []).append(sock)
    return found
