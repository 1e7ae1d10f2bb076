"""Automatic ports: each user keeps the port they were first given, across restarts of notebookd."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket

from notebookd.fsutil import ensure_dir, write_atomic

log = logging.getLogger("notebookd")


class PortBookError(Exception):
    """ports.json is damaged and no good copy is left: refuse rather than hand every port out again."""


class PortBook:
    """The persisted user -> port map for users without an explicit port.

    Written atomically, with the previous good version kept beside it (`ports.json.bak`): a damaged
    file (a crash, a full disk, a hand edit) is recovered from the copy, and if both are bad the
    daemon refuses to go on with one line naming the file, since giving every user a new port would
    break every link and proxy rule at once."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "ports.json")
        self.backup = self.path + ".bak"

    @staticmethod
    def _read(path: str) -> dict[str, int] | None:
        """The map in `path`; {} if there is no file; None if it is not a valid map of ports."""
        try:
            with open(path, "rb") as fh:
                data = json.loads(fh.read())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535 for v in data.values()):
            return None
        return {str(k): v for k, v in data.items()}

    def _load(self) -> dict[str, int]:
        book = self._read(self.path)
        if book is not None:
            return book
        copy = self._read(self.backup)
        if copy is None or (not copy and not os.path.exists(self.backup)):
            raise PortBookError(f"{self.path} is damaged (not a JSON map of user names to ports) and "
                                f"{self.backup} cannot replace it: fix or remove the file")
        log.warning("%s is damaged; using the copy in %s", self.path, self.backup)
        self._save(copy, force=True)
        return copy

    def assign(self, wanted: list[str], explicit: dict[str, int], ports: tuple[int, int],
               ip: str) -> tuple[dict[str, int], dict[str, str]]:
        """Ports for the users in `wanted`; returns (ports, problems by user)."""
        book = self._load()
        taken = set(explicit.values())
        result: dict[str, int] = {}
        low, high = ports
        for name in sorted(wanted):
            port = book.get(name)
            if port is not None and low <= port <= high and port not in taken:
                result[name] = port
                taken.add(port)
        reserved = {p for n, p in book.items() if n not in result}
        problems: dict[str, str] = {}
        for name in sorted(set(wanted) - set(result)):
            port = _first_free(low, high, taken | reserved, ip) or _first_free(low, high, taken, ip)
            if port is None:
                problems[name] = f"no free port left in {low}-{high}"
                continue
            result[name] = port
            taken.add(port)
            book[name] = port
            reserved.discard(port)
            for other in [n for n, p in book.items() if p == port and n != name]:
                del book[other]  # a stale reservation of someone no longer configured
        book.update(result)
        self._save(book)
        return result, problems

    def _save(self, book: dict[str, int], force: bool = False) -> None:
        data = json.dumps(dict(sorted(book.items())), indent=1).encode()
        if not force and self._read(self.path) == book and os.path.exists(self.backup):
            return
        ensure_dir(os.path.dirname(self.path), 0o755)
        write_atomic(self.backup, data, 0o644)  # first the copy: one of the two is always whole
        write_atomic(self.path, data, 0o644)


def _first_free(low: int, high: int, skip: set[int], ip: str) -> int | None:
    for port in range(low, high + 1):
        if port not in skip and port_holder(ip, port) is None:
            return port
    return None


def port_holder(ip: str, port: int) -> str | None:
    """None if `ip:port` can be bound now, else a short reason ("in use")."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use"
            return exc.strerror or str(exc)
    return None


def taken(ip: str, port: int) -> str:
    """The one-line error for a port another process holds, naming the holder."""
    return f"port {port} on {ip} is in use by {describe_holder(ip, port)}"


def in_use(ip: str, port: int) -> str | None:
    """`taken`'s line if `ip:port` cannot be bound now, else None."""
    return taken(ip, port) if port_holder(ip, port) else None


def describe_holder(ip: str, port: int) -> str:
    """Who listens on the port, for the error shown in status (best effort, needs root for others)."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid:
                    try:
                        proc = psutil.Process(conn.pid)
                        return f"pid {conn.pid} ({proc.name()}, user {proc.username()})"
                    except psutil.Error:
                        return f"pid {conn.pid}"
    except Exception:  # noqa: BLE001 - only an explanation; the error stands without it
        pass
    return "another process"
