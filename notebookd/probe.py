"""The HTTP probe that decides "ready" and "healthy": GET {base_url}api answers 200.

A bare non-blocking socket on the event loop (no streams, no transports): with a hundred servers
probed every `health.interval`, the probe is most of what an idle daemon does.
"""

from __future__ import annotations

import asyncio
import socket


async def http_status(host: str, port: int, path: str, timeout: float) -> int | str:
    """The HTTP status code of GET `path`, or a short reason why there was none."""
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    data = b""
    try:
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
            hostname = f"[{host}]" if ":" in host else host
            await loop.sock_sendall(
                sock, f"GET {path} HTTP/1.0\r\nHost: {hostname}:{port}\r\nConnection: close\r\n\r\n".encode())
            while b"\n" not in data and len(data) < 4096:  # the status line is all we read
                chunk = await loop.sock_recv(sock, 4096)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        sock.close()
    parts = data.split(b"\n", 1)[0].split()
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return "not an HTTP answer"
