"""The control socket, the daemon's end: one JSON request per line, one JSON answer; the caller known by
SO_PEERCRED. The client's end, which every CLI call imports, is client.py.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
from collections import namedtuple

from notebookd.client import Refused, Unreachable, request  # noqa: F401 - the daemon's and tests' names too


# the caller of a request (SO_PEERCRED); a named tuple keeps `dataclasses` out of every CLI call
Peer = namedtuple("Peer", "pid uid gid")


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return Peer(*struct.unpack("3i", raw))


# A request is one short line that arrives at once; nothing a client does may hold a descriptor long.
LINE_LIMIT = 64 * 1024
REQUEST_TIMEOUT = 5.0    # from accept to the end of the request line
ANSWER_TIMEOUT = 30.0    # a client that does not read its answer
ADMIN_EXTRA = 32         # connections root (and the daemon's own uid) may open beyond the total cap


class ControlServer:
    """The daemon's end of the socket, with connections capped in total and per uid.

    Users' connections are bounded so that they can never take the descriptors the daemon needs for
    its own work (servers' logs, pidfds, probes); root keeps a few slots of its own beyond the total,
    so `notebookd status` answers while a user floods the socket. Excess connections get a one-line
    refusal and are closed at once."""

    def __init__(self, path: str, handle, max_clients: int | None = None, per_user: int | None = None):
        from notebookd import fds

        self.path, self.handle = path, handle
        limit = fds.nofile()
        # at most an eighth of the descriptors for the socket's clients: the rest stay the daemon's
        self.max_clients = max_clients or max(8, min(256, limit // 8))
        self.per_user = per_user or max(2, min(16, self.max_clients // 4))
        self.by_uid: dict[int, int] = {}
        self.tasks: set = set()
        self.throttle = fds.Throttle()
        self.sock: socket.socket | None = None
        self._paused = None

    async def start(self) -> "ControlServer":
        import asyncio

        from notebookd.fsutil import remove  # the daemon's side only: the CLI's import stays light

        remove(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        # Everyone may connect; what they may do is decided per request from their credentials.
        old = os.umask(0o111)
        try:
            sock.bind(self.path)
        except BaseException:
            sock.close()
            raise
        finally:
            os.umask(old)
        sock.listen(128)
        sock.setblocking(False)
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(sock.fileno(), self._accept)
        return self

    def close(self) -> None:
        if self.sock is None:
            return
        if self._paused is not None:
            self._paused.cancel()
        else:
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self.sock = None
        for task in list(self.tasks):
            task.cancel()

    def _accept(self) -> None:
        from notebookd import fds

        for _ in range(64):  # a bounded batch per wakeup: a flood of connects cannot starve the loop
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if fds.exhausted(exc):
                    # the backlog waits in the kernel; try again shortly instead of spinning on it
                    self.throttle.warn("accept", "control socket: cannot accept a connection: %s; retrying",
                                       exc.strerror)
                    self.loop.remove_reader(self.sock.fileno())
                    self._paused = self.loop.call_later(0.5, self._resume)
                    return
                if exc.errno != errno.ECONNABORTED:
                    self.throttle.warn("accept-error", "control socket: accept failed: %s", exc)
                continue
            self._admit(conn)

    def _resume(self) -> None:
        self._paused = None
        if self.sock is not None:
            self.loop.add_reader(self.sock.fileno(), self._accept)

    def _admit(self, conn: socket.socket) -> None:
        try:
            peer = peer_of(conn)
        except OSError:
            conn.close()
            return
        admin = peer.uid in (0, os.getuid())
        total = sum(self.by_uid.values())
        mine = self.by_uid.get(peer.uid, 0)
        if total >= self.max_clients + (ADMIN_EXTRA if admin else 0) or (not admin and mine >= self.per_user):
            why = (f"too many connections from uid {peer.uid} (at most {self.per_user} at a time)"
                   if not admin and mine >= self.per_user else "too many connections to notebookd; try again")
            self.throttle.warn(f"cap-{peer.uid}", "control socket: refusing a connection: %s", why)
            try:
                conn.setblocking(False)
                conn.send(json.dumps({"ok": False, "error": why}).encode() + b"\n")
            except OSError:
                pass
            conn.close()
            return
        self.by_uid[peer.uid] = mine + 1
        task = self.loop.create_task(self._serve_one(conn, peer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _serve_one(self, conn: socket.socket, peer: Peer) -> None:
        import asyncio
        import logging

        writer = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=LINE_LIMIT)
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    line = await reader.readline()
            except TimeoutError:
                return  # a client that connects and says nothing (or dribbles) loses its slot
            except ValueError:  # longer than LINE_LIMIT
                answer = {"ok": False, "error": f"request longer than {LINE_LIMIT} bytes"}
            else:
                answer = await self._answer(line, peer)
            writer.write(json.dumps(answer).encode() + b"\n")
            async with asyncio.timeout(ANSWER_TIMEOUT):
                await writer.drain()
        except (OSError, TimeoutError):
            pass
        except Exception:  # noqa: BLE001 - one request's bug must not reach the daemon's loop
            logging.getLogger("notebookd").exception("control request from uid %d failed", peer.uid)
        finally:
            if writer is not None:
                writer.close()
            else:
                conn.close()
            left = self.by_uid.get(peer.uid, 1) - 1
            if left:
                self.by_uid[peer.uid] = left
            else:
                self.by_uid.pop(peer.uid, None)

    async def _answer(self, line: bytes, peer: Peer) -> dict:
        import logging

        try:
            req = json.loads(line)
            cmd, args = str(req["cmd"]), dict(req.get("args") or {})
        except (ValueError, KeyError, TypeError, AttributeError):
            return {"ok": False, "error": "malformed request"}
        try:
            return {"ok": True, "data": await self.handle(cmd, args, peer)}
        except Refused as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - answered and logged; the daemon and its servers go on
            logging.getLogger("notebookd").exception("%s (from uid %d) failed", cmd, peer.uid)
            return {"ok": False, "error": f"{cmd} failed inside notebookd: {exc} (see the daemon's log)"}


async def serve(path: str, handle) -> ControlServer:
    """Listen on `path`; `handle(cmd, args, peer)` returns data or raises Refused."""
    return await ControlServer(path, handle).start()
