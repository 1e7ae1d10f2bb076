"""Run a jupyter server on a listening socket it is handed, instead of one it binds.

notebookd holds every configured user's listening socket (see notebookd/listeners.py), so a server
must accept on that socket and never bind. Neither jupyter_server 1.23 (Debian) nor 2.x (PyPI) nor
notebook 6 (Debian's NotebookApp) can take a socket: all bind in `_bind_http_server_tcp`, and
jupyter_server 2.x first test-binds the port in `_find_http_port`. This launcher replaces those of
the application it is told (`--app`), refuses every other bind of tornado's, then runs the server
unchanged.

It runs as the user, in the server's own interpreter, by path:

    PYTHON -I /…/notebookd/launcher.py --listen-fd N [--drain S] [--app APP] -m jupyter_server ARGS…
    PYTHON -I /…/notebookd/launcher.py --listen-fd N [--drain S] [--app APP] /path/to/jupyter-server ARGS…

so it imports nothing from notebookd (that interpreter need not have notebookd: Debian's
/usr/bin/python3 with a pip-installed notebookd), and is root-owned like the rest of the package.
`spawn: fork` imports it in the template instead and calls `install()`.

Stopping (SIGTERM, or anything else that calls `ServerApp.stop`) hands over gracefully: the server
closes its copy of the listening socket at once (connections that arrive from then on wait in the
socket's backlog, which notebookd keeps, for the next server), lets every request it already
accepted finish (at most `--drain` seconds; keep-alive is switched off meanwhile, so clients
reconnect to the backlog), and only then stops as jupyter_server does.
"""

from __future__ import annotations

import os
import socket
import sys
import time

DEFAULT_DRAIN = 5.0
# A connection accepted just before the handover whose first request has not arrived yet: waited for
# this long (clients send their request at once), then it counts no more (an idle browser connection).
FRESH_GRACE = 1.0


def drain_for(stop_timeout: float) -> float:
    """How long a stopping server finishes what it accepted: at most half its stop timeout, which
    then ends it."""
    return min(DEFAULT_DRAIN, stop_timeout / 2)


class _Counted:
    """Wraps tornado's per-request delegate to count requests still being answered."""

    def __init__(self, delegate, connection, book: "_InFlight", first: bool = False):
        self._delegate = delegate
        self._book = book
        self._done = True  # until its headers arrive: a keep-alive connection waits here between requests
        if first:  # a new connection: its first request is still to come
            book.fresh[self] = time.monotonic()
        finish, detach = connection.finish, getattr(connection, "detach", None)

        def finished(*args, **kwargs):
            try:
                return finish(*args, **kwargs)
            finally:
                self._end()

        def detached(*args, **kwargs):  # a WebSocket takes over the stream: no longer a request
            self._end()
            return detach(*args, **kwargs)

        connection.finish = finished
        if detach is not None:
            connection.detach = detached

    def _end(self) -> None:
        if not self._done:
            self._done = True
            self._book.count -= 1

    def headers_received(self, start_line, headers):
        self._book.fresh.pop(self, None)
        if self._done:
            self._done = False
            self._book.count += 1
        return self._delegate.headers_received(start_line, headers)

    def data_received(self, chunk):
        return self._delegate.data_received(chunk)

    def finish(self):
        return self._delegate.finish()

    def on_connection_close(self):
        self._book.fresh.pop(self, None)
        self._end()
        return self._delegate.on_connection_close()


class _InFlight:
    def __init__(self):
        self.count = 0  # requests whose headers have arrived and whose answer is not finished
        self.fresh: dict[_Counted, float] = {}  # new connections before their first request, since when

    def waiting(self) -> bool:
        """A request being answered, or a new connection whose first request may still come."""
        now = time.monotonic()
        return self.count > 0 or any(now - since < FRESH_GRACE for since in self.fresh.values())


def listening_socket(fd: int) -> socket.socket:
    """The inherited socket, checked, non-blocking (tornado's accept loop needs that) and kept from
    every child the server starts (kernels, terminals): close-on-exec."""
    sock = socket.socket(fileno=fd)
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise SystemExit(f"notebookd launcher: fd {fd} is not a listening TCP socket")
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


def install(sock: socket.socket, drain: float = DEFAULT_DRAIN, app: str = "ServerApp") -> None:
    """Make every `app` of this process serve on `sock` and hand over gracefully when stopped:
    jupyter_server's ServerApp, or notebook 6's NotebookApp (`app`, as the daemon's probe found it)."""
    _forbid_binding()
    if app == "NotebookApp":
        _install_notebook(sock, drain)
    elif app == "ServerApp":
        _install_server(sock, drain)
    else:
        raise SystemExit(f"notebookd launcher: cannot drive {app!r}")


def _forbid_binding() -> None:
    """No HTTP server of this process binds a port of its own: the one it serves on is the one
    notebookd handed it, whatever the application does (a probe the user forged, a new version that
    binds elsewhere). A bind fails the start instead of serving on a port notebookd did not assign."""
    import errno

    from tornado.tcpserver import TCPServer

    def refuse(self, port, address=None, *args, **kwargs):
        raise OSError(errno.EACCES, f"notebookd: this server serves only on the socket notebookd hands it, "
                                    f"never on a port of its own ({address or '*'}:{port})")

    TCPServer.listen = TCPServer.bind = refuse


def _serve(server, sock: socket.socket, inflight: _InFlight) -> None:
    """Tornado's HTTPServer accepts on `sock`, each request counted in `inflight`."""
    start_request = server.start_request

    def counted(server_conn, request_conn):
        first = not getattr(server_conn, "_notebookd_seen", False)
        server_conn._notebookd_seen = True
        return _Counted(start_request(server_conn, request_conn), request_conn, inflight, first)

    server.start_request = counted
    server.add_sockets([sock])


async def _handover(app, server, inflight: _InFlight, drain: float) -> None:
    """Stop accepting (this process's copy only: the backlog stays with notebookd), let accepted
    requests finish within `drain` seconds, keep-alive off meanwhile."""
    import asyncio

    server.stop()
    server.conn_params.no_keep_alive = True  # shared by every connection: each closes after its answer
    deadline = time.monotonic() + drain
    # connections accepted in the same turn as the stop begin reading their first request a turn later;
    # without a look at them, one the server exits under is reset
    await asyncio.sleep(0.05)
    app.log.info("notebookd: stopped accepting; %d request(s) to finish, %d new connection(s)",
                 inflight.count, len(inflight.fresh))
    while inflight.waiting() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if inflight.count:
        app.log.warning("notebookd: %d request(s) still open after %gs", inflight.count, drain)


def _install_server(sock: socket.socket, drain: float) -> None:
    """jupyter_server 1.23 and 2.x bind in `_bind_http_server_tcp`; 2.x test-binds first in
    `_find_http_port`."""
    from jupyter_server.serverapp import ServerApp

    original_stop = ServerApp.stop
    inflight = _InFlight()

    def _find_http_port(self) -> None:  # 2.x: no test bind; the port is the one notebookd holds
        self.port = sock.getsockname()[1]

    def _bind_http_server_tcp(self) -> bool:
        _serve(self.http_server, sock, inflight)
        self.port = sock.getsockname()[1]
        return True

    def stop(self, from_signal: bool = False) -> None:
        if getattr(self, "_notebookd_draining", False):
            return
        self._notebookd_draining = True
        loop = getattr(self, "io_loop", None)
        server = getattr(self, "_http_server", None)
        if loop is None or server is None:
            return original_stop(self, from_signal)

        async def handover() -> None:
            await _handover(self, server, inflight, drain)
            original_stop(self, False)

        if from_signal:
            getattr(loop, "add_callback_from_signal", loop.add_callback)(handover)
        else:
            loop.add_callback(handover)

    ServerApp._find_http_port = _find_http_port
    ServerApp._bind_http_server_tcp = _bind_http_server_tcp
    ServerApp.stop = stop


def _install_notebook(sock: socket.socket, drain: float) -> None:
    """notebook 6 binds in `_bind_http_server_tcp` too (a loop over random_ports calling
    http_server.listen); SIGTERM stops its loop in `_signal_stop`, after which its `start` shuts the
    kernels down. The handover runs before that loop stops."""
    from notebook.notebookapp import NotebookApp

    inflight = _InFlight()

    def _bind_http_server_tcp(self) -> bool:
        _serve(self.http_server, sock, inflight)
        self.port = sock.getsockname()[1]
        return True

    def _signal_stop(self, sig, frame) -> None:
        if getattr(self, "_notebookd_draining", False):
            return
        self._notebookd_draining = True
        self.log.critical("received signal %s, stopping", sig)

        async def handover() -> None:
            await _handover(self, self.http_server, inflight, drain)
            self.io_loop.stop()

        self.io_loop.add_callback_from_signal(handover)

    NotebookApp._bind_http_server_tcp = _bind_http_server_tcp
    NotebookApp._signal_stop = _signal_stop


def python_of(words: list[str], interpreter: str | None) -> str | None:
    """The Python that would run the command `words` (`interpreter`: the one its #! line names), or
    None if it is not run by Python (a shell wrapper, a binary): then no socket can be handed to it."""
    if os.path.basename(words[0]).startswith("python"):
        return words[0]
    if interpreter and os.path.basename(interpreter).startswith("python"):
        return interpreter
    return None


def wrap(argv: list[str], fd: int, drain: float, python: str, app: str = "ServerApp") -> list[str]:
    """The server's `argv` run under this launcher with socket `fd`. For the daemon: `argv` is
    `PYTHON [FLAGS] -m MODULE ARGS` or `SCRIPT ARGS` (`python`: from `python_of`; a `jupyter SUB`
    is already its jupyter-SUB script, found by preflight.py as the user), `app` the application
    class it runs (jupyter.ServerKind.app)."""
    ours = [os.path.abspath(__file__), f"--listen-fd={fd}", f"--drain={drain:g}", f"--app={app}"]
    if os.path.basename(argv[0]).startswith("python"):
        flags = []
        for word in argv[1:]:
            if not word.startswith("-") or word == "-m":
                break
            flags.append(word)
        return [argv[0], *flags, *ours, *argv[1 + len(flags):]]
    return [python, "-I", *ours, *argv]


def _parse(argv: list[str]) -> tuple[int, float, str, list[str]]:
    fd, drain, app, rest = None, DEFAULT_DRAIN, "ServerApp", list(argv)
    while rest and rest[0].startswith("--"):
        word = rest.pop(0)
        name, _, value = word.partition("=")
        if not value and rest:
            value = rest.pop(0)
        if name == "--listen-fd":
            fd = int(value)
        elif name == "--drain":
            drain = float(value)
        elif name == "--app":
            app = value
        else:
            raise SystemExit(f"notebookd launcher: unknown option {name}")
    if fd is None and os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        fd = 3  # systemd socket activation
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)  # not for the kernels
    if fd is None or not rest:
        raise SystemExit("usage: launcher.py --listen-fd N [--drain S] [--app ServerApp|NotebookApp] "
                         "(-m MODULE | SCRIPT) ARGS...")
    return fd, drain, app, rest


def main(argv: list[str]) -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # notebookd's modules shadow nothing
    fd, drain, app, rest = _parse(argv)
    install(listening_socket(fd), drain, app)
    import runpy

    if rest[0] == "-m":
        module, args = rest[1], rest[2:]
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(rest)
        sys.path[0] = os.path.dirname(os.path.abspath(rest[0]))
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
