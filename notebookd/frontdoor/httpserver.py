"""A small HTTP/1.1 server on the event loop, for one client only: nginx, on a unix socket.

nginx sends well-formed requests with a Content-Length (it buffers bodies for these locations) and
keeps connections open (upstream keepalive), so this needs no chunked bodies and no pipelining
beyond one request after another. Limits keep a local process that talks to the socket directly
from holding memory: 32 KiB of headers, 16 KiB of body, 256 connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("notebookd")

MAX_HEAD = 32 * 1024
MAX_BODY = 16 * 1024
MAX_CONNECTIONS = 256
IDLE = 120.0  # an idle keep-alive connection is closed after this (nginx opens a new one)

REASONS = {200: "OK", 204: "No Content", 303: "See Other", 302: "Found", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           413: "Payload Too Large", 429: "Too Many Requests", 500: "Internal Server Error"}


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def query(self, name: str) -> str | None:
        values = parse_qs(urlsplit(self.target).query).get(name)
        return values[0] if values else None

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)

    def encode(self) -> bytes:
        head = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Status')}",
                f"Content-Length: {len(self.body)}", "Cache-Control: no-store"]
        head += [f"{k}: {v}" for k, v in self.headers]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[Request], Awaitable[Response]]


class _Bad(Exception):
    def __init__(self, status: int):
        self.status = status


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _Bad(400) from None
        return None  # the peer closed between requests
    except asyncio.LimitOverrunError:
        raise _Bad(400) from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise _Bad(400) from None
    if not version.startswith("HTTP/1."):
        raise _Bad(400)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _Bad(400)
        name = name.strip().lower()
        # a repeated header (two Cookie lines) joins as a browser would send it
        headers[name] = f"{headers[name]}; {value.strip()}" if name in headers else value.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        raise _Bad(400)
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        raise _Bad(400) from None
    if length > MAX_BODY or length < 0:
        raise _Bad(413)
    body = await reader.readexactly(length) if length else b""
    return Request(method, target, headers, body)


class Server:
    def __init__(self, handler: Handler):
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._connections = 0

    async def start(self, path: str) -> None:
        """Listen on `path`, mode 0666 from the start (nginx's workers run as another user)."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        old = os.umask(0o111)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_HEAD)
        finally:
            os.umask(old)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        try:
            while True:
                try:
                    request = await asyncio.wait_for(_read_request(reader), IDLE)
                except (asyncio.TimeoutError, ConnectionError):
                    return
                except _Bad as bad:
                    writer.write(Response(bad.status, headers=[("Connection", "close")]).encode())
                    await writer.drain()
                    return
                if request is None:
                    return
                try:
                    response = await self.handler(request)
                except Exception:  # a bug in one answer must not end the endpoint
                    log.exception("front door: error answering %s %s", request.method, request.path)
                    response = Response(500)
                writer.write(response.encode())
                await writer.drain()
                if request.header("connection").lower() == "close":
                    return
        except ConnectionError:
            return
        finally:
            self._connections -= 1
            writer.close()
