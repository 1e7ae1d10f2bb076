"""XML-RPC over a unix socket, without threads: one HTTP/1.0 POST per call on the event loop.

supervisord answers long calls (stopProcess with wait=True) late but never blocks other clients,
so a call that waits for a stop does not hold up the daemon's loop or its other calls.
"""

from __future__ import annotations

import asyncio
import xmlrpc.client

Fault = xmlrpc.client.Fault


class RPCError(Exception):
    """The server could not be reached or did not answer with XML-RPC."""


async def call(socket_path: str, method: str, *params, timeout: float = 60.0):
    body = xmlrpc.client.dumps(params, method, allow_none=False).encode()
    head = (f"POST /RPC2 HTTP/1.0\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(socket_path), 10)
    except (OSError, asyncio.TimeoutError) as exc:
        why = getattr(exc, "strerror", None) or exc or "timeout"
        raise RPCError(f"cannot connect to {socket_path}: {why}") from None
    try:
        writer.write(head + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        raise RPCError(f"{method} on {socket_path}: {getattr(exc, 'strerror', None) or 'no answer'}") from None
    finally:
        writer.close()
    status, _, rest = answer.partition(b"\r\n")
    headers, _, payload = rest.partition(b"\r\n\r\n")
    if not status.split(b" ")[1:2] == [b"200"]:
        raise RPCError(f"{method} on {socket_path}: {status.decode(errors='replace') or 'connection closed'}")
    try:
        result, _ = xmlrpc.client.loads(payload)  # raises Fault for an XML-RPC fault
    except xmlrpc.client.ResponseError as exc:
        raise RPCError(f"{method} on {socket_path}: bad answer: {exc}") from None
    return result[0]
