"""The front door's cost, as root: a login to the first byte of JupyterLab, and what auth_request adds
to every proxied request.

    BENCH_PYTHON=/opt/venv/bin/python bench/run-frontdoor [--n 1000] [--logins 20] [--idle-logins 5]

One bench user (`nbf<3 letters>`) with a running server, and `--idle-logins` more with
`start: on-demand` (idle: no process until their first request), all with a real password set by
chpasswd and deleted at the end; one daemon with `front_door.enabled`, and two nginx on loopback
with the configs `notebookd render nginx` makes:
with the front door, and without it (the same server, reached with the token header). Per-request
latencies are taken on one keep-alive connection each, alternating blocks of 50, so noise from other
work on the machine hits both alike. The unix socket is also timed directly (no nginx).

Login → first byte: the login POST (PAM), its redirect to the user's URL, the server's redirect to
JupyterLab, the first byte of that page. For an idle user the first request to their URL starts the
server (each idle user logs in once: their server then runs).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse

from notebookd import control, nginx

PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))
PAM_FILE = os.path.join(HERE, "..", "packaging", "debian", "notebookd.pam")
PASSWORD = "bench front door pass"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port(start: int) -> int:
    port = start + os.getpid() % 500
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                port += 1


def start_nginx(base: str, site: str) -> subprocess.Popen:
    os.makedirs(base, exist_ok=True)
    conf = os.path.join(base, "nginx.conf")
    with open(os.path.join(base, "site.conf"), "w") as fh:
        fh.write(site)
    with open(conf, "w") as fh:
        fh.write(textwrap.dedent(f"""\
            worker_processes 1;
            error_log {base}/error.log;
            events {{ worker_connections 256; }}
            http {{
                access_log off;
                client_body_temp_path {base}/body;
                proxy_temp_path {base}/proxy;
                fastcgi_temp_path {base}/fastcgi;
                uwsgi_temp_path {base}/uwsgi;
                scgi_temp_path {base}/scgi;
                include {base}/site.conf;
            }}
            """))
    return subprocess.Popen(["/usr/sbin/nginx", "-c", conf, "-e", f"{base}/error.log",
                             "-g", f"daemon off; pid {base}/nginx.pid;"])


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def get(conn: http.client.HTTPConnection, path: str, headers: dict) -> int:
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


def per_request(port: int, path: str, headers: dict, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    out = []
    for _ in range(n):
        t = time.perf_counter()
        status = get(conn, path, headers)
        out.append(time.perf_counter() - t)
        assert status == 200, status
    conn.close()
    return out


def socket_direct(path: str, user: str, cookie: str, n: int) -> list[float]:
    """The auth endpoint alone: the request nginx sends, over one kept-alive unix socket connection."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    req = (f"GET /_notebookd/auth/{user} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\n"
           f"X-Notebookd-Method: GET\r\nX-Notebookd-Uri: /user/{user}/api/status\r\n\r\n").encode()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        s.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(4096)
        out.append(time.perf_counter() - t)
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
    s.close()
    return out


def endpoint_connections(path: str) -> set[int]:
    """Inodes of the connected sockets at `path` (/proc/net/unix: the daemon's accepted ends)."""
    with open("/proc/net/unix") as fh:
        return {int(f[6]) for f in (line.split() for line in fh) if len(f) == 8 and f[7] == path
                and f[5] == "03"}  # 03: connected (a listening socket is 01)


def login_to_first_byte(port: int, user: str) -> tuple[float, float]:
    """POST the login form (with its CSRF field) → 303 → the server → JupyterLab's first byte."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=180)
    origin = f"http://127.0.0.1:{port}"
    conn.request("GET", "/_notebookd/login")
    resp = conn.getresponse()
    page = resp.read().decode()
    csrf_cookie = re.search(r"notebookd_csrf=([^;]+)", resp.headers["Set-Cookie"]).group(1)
    field = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
    body = urllib.parse.urlencode({"user": user, "password": PASSWORD, "_csrf": field}).encode()
    started = time.perf_counter()
    conn.request("POST", "/_notebookd/login", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": origin,
        "Cookie": f"notebookd_csrf={csrf_cookie}"})
    resp = conn.getresponse()
    resp.read()
    checked = time.perf_counter() - started
    assert resp.status == 303, resp.status
    cookie = "notebookd_session=" + re.search(r"notebookd_session=([^;]+)", resp.headers["Set-Cookie"]).group(1)
    location = resp.headers["Location"]
    for _ in range(5):  # /user/NAME/ → lab: follow the server's redirects
        conn.request("GET", location, headers={"Cookie": cookie, "Accept": "text/html"})
        resp = conn.getresponse()
        if resp.status in (301, 302, 303):
            resp.read()
            location = urllib.parse.urljoin(location, resp.headers["Location"])
            continue
        resp.read(1)
        first = time.perf_counter() - started
        resp.read()
        assert resp.status == 200, (resp.status, location)
        conn.close()
        return checked, first
    raise SystemExit("too many redirects")


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:.3f} ms (p90 {sorted(xs)[int(len(xs) * 0.9)] * 1000:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000, help="proxied requests per variant")
    parser.add_argument("--logins", type=int, default=20)
    parser.add_argument("--idle-logins", type=int, default=5, help="on-demand users, one login each")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (creates a user, runs a daemon)")
    user = "nbf" + "".join(random.choice(string.ascii_lowercase) for _ in range(3))
    work = tempfile.mkdtemp(prefix="nbf-")
    os.chmod(work, 0o755)
    service = f"notebookd-bench-{user}"
    procs: list[subprocess.Popen] = []
    idle = [f"{user}{i}" for i in range(args.idle_logins)]
    made = []
    try:
        for name in [user] + idle:
            subprocess.run(["useradd", "--create-home", name], check=True)
            made.append(name)
        subprocess.run(["chpasswd"], input="".join(f"{n}:{PASSWORD}\n" for n in made), text=True, check=True)
        shutil.copy(PAM_FILE, f"/etc/pam.d/{service}")
        door_port, plain_port, server_port = free_port(31000), free_port(31600), free_port(32200)
        with open(f"{work}/notebookd.yaml", "w") as fh:
            fh.write(f"listen: {{ip: 127.0.0.1, ports: {server_port}-{server_port + len(idle)}}}\n"
                     f"state_dir: {work}/state\nlogs: {{dir: {work}/logs}}\n"
                     f"proxy: {{listen: '127.0.0.1:{door_port}'}}\n"
                     f"front_door: {{enabled: true, pam_service: {service}}}\nusers:\n  {user}: {{}}\n"
                     + "".join(f"  {n}: {{start: on-demand}}\n" for n in idle))
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/root", "NOTEBOOKD_RUN_DIR": f"{work}/run",
               "NOTEBOOKD_CONFIG": f"{work}/notebookd.yaml"}
        daemon = subprocess.Popen([PY, "-m", "notebookd", "run"], env=env, cwd="/",
                                  stdout=open(f"{work}/daemon.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(daemon)

        def states() -> dict[str, str]:
            out = subprocess.run([PY, "-m", "notebookd", "status", "--json"], env=env, capture_output=True,
                                 text=True)
            return {r["name"]: r["state"] for r in json.loads(out.stdout)["servers"]} if out.returncode == 0 else {}

        log(f"starting {user}'s server; {len(idle)} on-demand users wait idle")
        wait(lambda: states() == {user: "running", **{n: "idle" for n in idle}}, 180, "the servers")
        data = control.request(f"{work}/run/control.sock", "proxy")
        plain = json.loads(json.dumps(data))
        plain["front_door"]["enabled"] = False
        plain["proxy"]["listen"] = f"127.0.0.1:{plain_port}"
        procs.append(start_nginx(f"{work}/nginx-door", nginx.render(data)))
        procs.append(start_nginx(f"{work}/nginx-plain", nginx.render(plain)))
        token = subprocess.run([PY, "-m", "notebookd", "token", user], env=env, capture_output=True,
                               text=True).stdout.strip()
        wait(lambda: socket.socket().connect_ex(("127.0.0.1", plain_port)) == 0, 20, "nginx")
        wait(lambda: socket.socket().connect_ex(("127.0.0.1", door_port)) == 0, 20, "nginx")

        log(f"{args.logins} logins")
        timed = [login_to_first_byte(door_port, user) for _ in range(args.logins)]
        posts, logins = [t[0] for t in timed], [t[1] for t in timed]
        log(f"{len(idle)} logins of idle users")
        idle_timed = []
        for name in idle:
            assert states()[name] == "idle", name
            idle_timed.append(login_to_first_byte(door_port, name))
            assert states()[name] == "running", name
        idle_posts, idle_logins = [t[0] for t in idle_timed], [t[1] for t in idle_timed]
        cookie = "notebookd_session=" + _session(door_port, user)
        path = f"/user/{user}/api/status?no_track_activity=1"
        log(f"{args.n} proxied requests each, with and without the front door")
        door, direct, sock = [], [], []
        seen: list[set[int]] = []
        for _ in range(max(1, args.n // 50)):
            door += per_request(door_port, path, {"Cookie": cookie}, 50)
            seen.append(endpoint_connections(f"{work}/run/frontdoor.sock"))
            direct += per_request(plain_port, path, {"Authorization": f"token {token}"}, 50)
            sock += socket_direct(f"{work}/run/frontdoor.sock", user, cookie, 50)
        diffs = statistics.median(door) - statistics.median(direct)
        print(f"login → first byte of JupyterLab (server running): {ms(logins)}  ({len(logins)} logins)")
        print(f"  of which the login POST (PAM check in its helper process): {ms(posts)}")
        if idle:
            print(f"login → first byte of JupyterLab (server idle, started by that request): {ms(idle_logins)}"
                  f"  ({len(idle_logins)} logins)")
            print(f"  of which the login POST: {ms(idle_posts)}")
        print(f"GET api/status through nginx, front door (session cookie): {ms(door)}")
        print(f"GET api/status through nginx, no front door (token header): {ms(direct)}")
        print(f"auth_request cost per proxied request (difference of medians): {diffs * 1000:.3f} ms")
        print(f"auth endpoint alone, unix socket, keep-alive: {ms(sock)}")
        print(f"nginx's connections to the auth endpoint: {len(set().union(*seen))} distinct over "
              f"{len(door)} requests (sampled after each block of 50; keepalive reuses them)")
        return 0
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM if proc is procs[0] else signal.SIGQUIT)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        try:
            os.unlink(f"/etc/pam.d/{service}")
        except FileNotFoundError:
            pass
        for name in made:
            subprocess.run(["userdel", "--remove", "--force", name], capture_output=True)
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def _session(port: int, user: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/_notebookd/login")
    resp = conn.getresponse()
    page = resp.read().decode()
    csrf = re.search(r"notebookd_csrf=([^;]+)", resp.headers["Set-Cookie"]).group(1)
    field = re.search(r'name="_csrf" value="([^"]+)"', page).group(1)
    conn.request("POST", "/_notebookd/login", body=urllib.parse.urlencode(
        {"user": user, "password": PASSWORD, "_csrf": field}).encode(), headers={
        "Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://127.0.0.1:{port}",
        "Cookie": f"notebookd_csrf={csrf}"})
    resp = conn.getresponse()
    resp.read()
    return re.search(r"notebookd_session=([^;]+)", resp.headers["Set-Cookie"]).group(1)


if __name__ == "__main__":
    sys.exit(main())
