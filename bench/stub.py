"""A stand-in server for the status, idle and scrape scenarios: answers GET {base_url}api with 200, and
GET {base_url}api/status as jupyter_server does (the metrics' activity probe; the token is not checked).

It takes jupyter_server's flags (`--ServerApp.port=…`), so notebookd and supervisord run it with
exactly the argv they would give a real server. The daemon's cost does not depend on what it
supervises, and 2 × 100 real servers would not fit in the bench's time on 2 cores.
"""

import http.server
import sys

opts = dict(a[len("--ServerApp."):].split("=", 1) for a in sys.argv[1:] if a.startswith("--ServerApp."))
api = opts.get("base_url", "/") + "api"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        ok = path in (api, api + "/status")
        body = b'{"version": "stub"}' if path == api else b"{}"
        if path == api + "/status":
            body = (b'{"connections": 0, "kernels": 0, "last_activity": "2026-01-01T00:00:00.000000Z", '
                    b'"started": "2026-01-01T00:00:00.000000Z"}')
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def held_socket(port: int):
    """The listening socket notebookd hands its servers (notebookd/launcher.py), if there is one."""
    import os
    import socket

    for fd in sorted(int(f) for f in os.listdir("/proc/self/fd")):  # with 100 users, fds go past 64
        if fd < 3:
            continue
        try:
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and sock.getsockname()[1] == port:
                return sock
        except OSError:
            pass
        sock.close()
    return None


address = (opts.get("ip", "127.0.0.1"), int(opts["port"]))
held = held_socket(address[1])
if held is None:  # supervisord: the stub binds its port itself
    http.server.HTTPServer(address, Handler).serve_forever()
server = http.server.HTTPServer(address, Handler, bind_and_activate=False)
server.socket.close()
server.socket = held
server.serve_forever()
