"""Automatic ports: each user keeps the port they were first given, across restarts of notebookd."""

from __future__ import annotations

import errno
import json
import os
import socket

from notebookd.fsutil import ensure_dir, write_atomic


class PortBook:
    """The persisted user -> port map for users without an explicit port."""

    def __init__(self, state_dir: str):
        self.path = os.path.join(state_dir, "ports.json")

    def _load(self) -> dict[str, int]:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
            return {str(k): int(v) for k, v in data.items()}
        except (FileNotFoundError, ValueError, AttributeError):
            return {}

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

    def _save(self, book: dict[str, int]) -> None:
        data = json.dumps(dict(sorted(book.items())), indent=1).encode()
        try:
            with open(self.path, "rb") as fh:
                if fh.read() == data:
                    return
        except FileNotFoundError:
            pass
        ensure_dir(os.path.dirname(self.path), 0o755)
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
