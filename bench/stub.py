"""A stand-in server for the status and idle scenarios: answers GET {base_url}api with 200.

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
        ok = self.path.split("?")[0] == api
        body = b'{"version": "stub"}' if ok else b"{}"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer((opts.get("ip", "127.0.0.1"), int(opts["port"])), Handler).serve_forever()
