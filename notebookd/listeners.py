"""The listening sockets notebookd holds, one per configured user, for as long as the user is configured.

The daemon binds each user's (address, port) itself, as root, and keeps the socket whatever the
user's server is doing: while no server accepts (starting, backoff, stopped, killed) connections
wait in the socket's backlog, and no other process can bind that address and port. Servers never
bind: they are handed this socket (notebookd/launcher.py) and accept on it.

Across daemon restarts: under systemd every held socket is also kept in systemd's fd store (a
`keeper`, notify.Notifier), which hands them to the next daemon (`inherited`), so the port is never
free, whether or not a server runs. A server left running by an earlier daemon has its own copy of
the socket too; without the fd store the next daemon takes it back from that process (pidfd_getfd)
rather than binding a new one, which would fail. Without either, a user's port is free from the old
daemon's exit until the new one binds it again.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
from dataclasses import dataclass
from typing import Protocol

from notebookd.ports import taken

BACKLOG = 1024  # connections that may wait while no server accepts (capped by net.core.somaxconn)
_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (since 5.6)


class PortTaken(Exception):
    """The user's address and port cannot be held (the message names the holder)."""


@dataclass
class Held:
    ip: str
    port: int
    sock: socket.socket


def bind(ip: str, port: int) -> socket.socket:
    """A listening TCP socket on exactly `ip`:`port`, close-on-exec (handed on only on purpose)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # an earlier server's TIME_WAIT is no holder
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # "::" is v6 only, as in tornado
        sock.bind((ip, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortTaken(taken(ip, port)) from None
        raise PortTaken(f"cannot bind {ip}:{port}: {exc.strerror or exc}") from None
    return sock


def take_from(pid: int, ip: str, port: int) -> socket.socket | None:
    """A copy of the socket listening on `ip`:`port` that process `pid` holds, or None."""
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        for entry in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                    continue
            except OSError:
                continue
            fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(entry), 0)
            if fd < 0:
                continue
            sock = socket.socket(fileno=fd)
            try:
                if (sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                        and sock.getsockname()[:2] == (ip, port)):
                    sock.set_inheritable(False)
                    return sock
            except OSError:
                pass
            sock.close()
    except OSError:
        return None
    finally:
        os.close(pidfd)
    return None


class Keeper(Protocol):
    """Where held sockets outlive the daemon (systemd's fd store)."""

    def store(self, name: str, fd: int) -> None: ...

    def unstore(self, name: str) -> None: ...


class SocketBook:
    """User name -> the socket notebookd holds for them."""

    def __init__(self, keeper: Keeper | None = None, inherited: dict[str, list[socket.socket]] | None = None):
        self._held: dict[str, Held] = {}
        self._keeper = keeper
        self._inherited = dict(inherited or {})  # from the last daemon, by user, until claimed

    def get(self, name: str) -> socket.socket | None:
        held = self._held.get(name)
        return held.sock if held else None

    def hold(self, name: str, ip: str, port: int, from_pid: int | None = None) -> socket.socket:
        """The user's socket on `ip`:`port`: the one held already, else the one the last daemon left
        in systemd's fd store, else taken from `from_pid` (a server left by an earlier daemon), else
        bound now (and put in the fd store). Raises PortTaken."""
        held = self._held.get(name)
        if held is not None and (held.ip, held.port) == (ip, port):
            return held.sock
        if held is not None:
            self.release(name)  # moved to another address or port: the old one is free at once
        sock = self._claim(name, ip, port)
        if sock is not None:  # kept for us by systemd while no daemon ran: already in its store
            self._held[name] = Held(ip, port, sock)
            return sock
        sock = take_from(from_pid, ip, port) if from_pid else None
        if sock is None:
            sock = bind(ip, port)
        self._held[name] = Held(ip, port, sock)
        if self._keeper is not None:
            self._keeper.store(name, sock.fileno())
        return sock

    def _claim(self, name: str, ip: str, port: int) -> socket.socket | None:
        """The inherited socket of `name` if it listens on `ip`:`port`; any other is let go of."""
        found, stale = None, []
        for sock in self._inherited.pop(name, []):
            try:
                match = found is None and sock.getsockname()[:2] == (ip, port)
            except OSError:
                match = False
            if match:
                found = sock
            else:
                stale.append(sock)
        if stale:  # the user moved while no daemon ran: the store must let go of the old port too
            if self._keeper is not None:
                self._keeper.unstore(name)
                if found is not None:
                    self._keeper.store(name, found.fileno())
            for sock in stale:
                sock.close()
        return found

    def release(self, name: str) -> None:
        """Let go of the user's port for good (removed, moved, or a server that binds it itself)."""
        held = self._held.pop(name, None)
        inherited = self._inherited.pop(name, [])
        if self._keeper is not None and (held is not None or inherited):
            self._keeper.unstore(name)
        for sock in inherited:
            sock.close()
        if held is not None:
            held.sock.close()

    def release_others(self, names: set[str]) -> list[str]:
        """Let go of what the last daemon kept for users not in `names` (removed while none ran)."""
        gone = sorted(set(self._inherited) - names)
        for name in gone:
            self.release(name)
        return gone

    def names(self) -> set[str]:
        return set(self._held) | set(self._inherited)

    def close(self) -> None:
        """The daemon exits: close its copies; what systemd's fd store keeps stays for the next one."""
        for held in self._held.values():
            held.sock.close()
        for socks in self._inherited.values():
            for sock in socks:
                sock.close()
        self._held.clear()
        self._inherited.clear()
