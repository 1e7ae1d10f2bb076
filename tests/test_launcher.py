"""notebookd/launcher.py: a jupyter_server that accepts on a socket it is handed and never binds.

Real servers as a real user, under PyPI's jupyter_server 2.x (this venv) and Debian's 1.23
(/usr/bin/python3, python3-jupyter-server): the socket is bound by root here, as the daemon does.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

import notebookd.launcher
from conftest import as_user, free_ports, http, needs_root, wait_for

pytestmark = [needs_root, pytest.mark.root]

LAUNCHER = notebookd.launcher.__file__
PYTHONS = {"2.x": sys.executable, "1.23": "/usr/bin/python3"}


def listening(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    return sock


class Server:
    def __init__(self, python: str, sock: socket.socket, user, token: str, log: str):
        self.log = log
        argv = [python, "-I", LAUNCHER, f"--listen-fd={sock.fileno()}", "-m", "jupyter_server",
                "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={sock.getsockname()[1]}",
                "--ServerApp.port_retries=0", "--ServerApp.open_browser=False",
                f"--ServerApp.root_dir={user.pw_dir}"]
        env = {"HOME": user.pw_dir, "USER": user.pw_name, "PATH": "/usr/bin:/bin", "JUPYTER_TOKEN": token,
               "JUPYTER_CONFIG_DIR": os.path.join(user.pw_dir, "nbt-config")}  # test only: token by env
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(argv, env=env, cwd=user.pw_dir, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, pass_fds=(sock.fileno(),), start_new_session=True,
                                         **as_user(user.pw_name))

    def logged(self, text: str) -> bool:
        with open(self.log, errors="replace") as fh:
            return text in fh.read()


def user_bind(user, port: int) -> str:
    """What an ordinary user gets trying to bind the port: 'bound' or the errno name."""
    code = ("import errno, socket, sys\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"try:\n    s.bind(('127.0.0.1', {port})); s.listen(); print('bound')\n"
            "except OSError as e:\n    print(errno.errorcode[e.errno])\n")
    return subprocess.run(["/usr/bin/python3", "-I", "-c", code], capture_output=True, text=True, cwd="/",
                          **as_user(user.pw_name)).stdout.strip()


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.add(target)
    return found


@pytest.fixture(scope="module", params=sorted(PYTHONS))
def version(request, users, workdir):
    python = PYTHONS[request.param]
    if subprocess.run([python, "-c", "import jupyter_server"], capture_output=True).returncode:
        pytest.skip(f"no jupyter_server for {python}")
    user = users("lnch")
    (port,) = free_ports(1, 23500)
    sock = listening(port)
    yield request.param, python, user, sock
    sock.close()


def test_serves_on_the_handed_socket_and_the_port_is_never_free(version, workdir):
    name, python, user, sock = version
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    assert user_bind(user, port) == "EADDRINUSE"  # no server yet
    server = Server(python, sock, user, "tok-one", os.path.join(workdir, f"{name}-a.log"))
    try:
        # no readiness wait: a connection made while the server starts waits in the backlog
        status, body, _ = http(url + "api", timeout=120)
        assert status == 200 and json.loads(body)["version"].startswith(name.split(".")[0] + ".")
        assert user_bind(user, port) == "EADDRINUSE"

        held = f"socket:[{os.fstat(sock.fileno()).st_ino}]"
        assert held in socket_inodes(server.proc.pid)
        assert http(url + "api/kernels", "tok-one", "POST", b"{}", timeout=60)[0] == 201
        import psutil

        kernels = wait_for(lambda: [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                                    if "ipykernel" in " ".join(p.cmdline())], 60, what="a kernel process")
        for kernel in kernels:
            assert held not in socket_inodes(kernel.pid), "a kernel inherited the listening socket"

        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
        assert user_bind(user, port) == "EADDRINUSE"  # down, still held
        for kernel in kernels:  # orphaned by the kill (own sessions): not the test's to keep
            try:
                kernel.kill()
            except psutil.Error:
                pass
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()


def test_stop_finishes_accepted_requests_and_leaves_new_ones_to_the_next_server(version, workdir):
    name, python, user, sock = version
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    old = Server(python, sock, user, "tok-old", os.path.join(workdir, f"{name}-old.log"))
    new = None
    try:
        assert http(url + "api", timeout=120)[0] == 200
        body = json.dumps({"type": "file", "format": "text", "content": "handed over"}).encode()
        slow = socket.create_connection(("127.0.0.1", port), timeout=60)
        slow.sendall(f"PUT /api/contents/drained.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     f"Authorization: token tok-old\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode())
        assert slow.recv(4096).startswith(b"HTTP/1.1 100")  # the server has the request: it is in flight
        old.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: old.logged("stopped accepting; 1 request(s) to finish"), 60, what="the old server draining")
        # accepted before the stop: it is answered by the old server, which is still running
        assert old.proc.poll() is None
        later = socket.create_connection(("127.0.0.1", port), timeout=120)  # waits in the backlog
        later.sendall(f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      "Authorization: token tok-new\r\nConnection: close\r\n\r\n".encode())
        slow.sendall(body)
        answer = slow.recv(4096).decode(errors="replace")
        assert answer.startswith(("HTTP/1.1 201", "HTTP/1.1 200")), answer  # created, or replaced
        assert old.proc.wait(60) == 0
        assert user_bind(user, port) == "EADDRINUSE"

        new = Server(python, sock, user, "tok-new", os.path.join(workdir, f"{name}-new.log"))
        reply = b""
        while chunk := later.recv(65536):
            reply += chunk
        # tok-new: answered by the new server, not the old one (which would refuse that token)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert b'"last_activity"' in reply
        with open(os.path.join(user.pw_dir, "drained.txt")) as fh:
            assert fh.read() == "handed over"
    finally:
        for server in (old, new):
            if server is not None and server.proc.poll() is None:
                server.proc.terminate()
                server.proc.wait(60)
