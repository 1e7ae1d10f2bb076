"""The control socket: one JSON request per line, one JSON answer; the caller known by SO_PEERCRED.

The client half is imported by every CLI call, so this module stays light (no asyncio at import).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections import namedtuple


class Unreachable(Exception):
    """No daemon answers on the socket."""


class Refused(Exception):
    """The daemon answered with an error."""


# the caller of a request (SO_PEERCRED); a named tuple keeps `dataclasses` out of every CLI call
Peer = namedtuple("Peer", "pid uid gid")


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


def request(path: str, cmd: str, timeout: float = 60.0, **args) -> dict:
    """Send one request; return its data or raise Refused/Unreachable."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise Unreachable(f"notebookd is not running (no daemon on {path})") from None
    except PermissionError:
        raise Unreachable(f"cannot connect to {path}: permission denied") from None
    except socket.timeout:
        raise Unreachable(f"notebookd on {path} did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise Unreachable(f"cannot talk to notebookd on {path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(buf)
    except ValueError:
        raise Unreachable(f"notebookd on {path} closed the connection without an answer") from None
    if not answer.get("ok"):
        raise Refused(answer.get("error", "refused"))
    return answer.get("data") or {}


async def serve(path: str, handle):
    """Listen on `path`; `handle(cmd, args, peer)` returns data or raises Refused."""
    import asyncio

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = peer_of(writer.get_extra_info("socket"))
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                req = json.loads(line)
                cmd, args = str(req["cmd"]), dict(req.get("args") or {})
            except (ValueError, KeyError, TypeError, AttributeError):
                answer = {"ok": False, "error": "malformed request"}
            else:
                try:
                    answer = {"ok": True, "data": await handle(cmd, args, peer)}
                except Refused as exc:
                    answer = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    from notebookd.fsutil import remove  # the daemon's side only: the CLI's import stays light

    remove(path)
    # Everyone may connect; what they may do is decided per request from their credentials.
    old = os.umask(0o111)
    try:
        server = await asyncio.start_unix_server(on_client, path=path)
    finally:
        os.umask(old)
    return server
