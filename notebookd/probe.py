"""The HTTP probe that decides "ready" and "healthy": GET {base_url}api answers 200."""

from __future__ import annotations

import asyncio

from notebookd.fds import exhausted


class Unprobed(str):
    """No probe was made: the daemon itself is out of descriptors (or memory). Says nothing about
    the server, so it is never counted as a failed check."""


async def http_status(host: str, port: int, path: str, timeout: float, tls: bool = False) -> int | str:
    """The HTTP status code of GET `path`, or a short reason why there was none.

    With `tls` the probe speaks https without checking the certificate: it asks whether the
    server answers, not who it is (it is one of ours, on an address we gave it)."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, ssl=_insecure_context() if tls else None)
            hostname = f"[{host}]" if ":" in host else host
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {hostname}:{port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:  # ssl.SSLError included
        if exhausted(exc):
            return Unprobed(f"not probed: notebookd is out of resources ({exc.strerror})")
        return exc.strerror or str(exc)
    finally:
        if writer is not None:
            writer.close()
    parts = line.split()
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return "not an HTTP answer"


def _insecure_context():
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
