"""Authenticated JSON reads of a server's own API, for the idle rule (README, "Idle servers")."""

from __future__ import annotations

import asyncio
import json


async def http_json(host: str, port: int, path: str, token: str, tls: bool = False, timeout: float = 10.0):
    """The decoded JSON body of GET `path` with the user's token, or None on any failure.

    `path` must carry `no_track_activity=1` where jupyter would otherwise count the request as
    activity (/api/kernels); /api/status never counts."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            from notebookd.probe import _insecure_context

            reader, writer = await asyncio.open_connection(host, port, ssl=_insecure_context() if tls else None)
            hostname = f"[{host}]" if ":" in host else host
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {hostname}:{port}\r\nAuthorization: token {token}\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read(1 << 20)
            while chunk := await reader.read(1 << 20):
                data += chunk
    except (TimeoutError, OSError):
        return None
    finally:
        if writer is not None:
            writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None
