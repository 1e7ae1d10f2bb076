"""`start: on-demand` and `idle.stop_after` (native backend): a user without a process until a client
connects, whose server answers that very connection, and which goes back to `idle` when unused.

Real daemon, real users and servers. The idle stop is shortened to seconds here; the rule is
jupyter's own activity (README, "Idle servers").
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import socket
import ssl
import urllib.request
from http.cookiejar import CookieJar

import pytest

from conftest import Daemon, free_ports, http, needs_root, uid_processes, wait_for
from test_launcher import user_bind
from webclient import run_code

pytestmark = [needs_root, pytest.mark.root]

CONFIG = """\
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
health: {{interval: 2s}}
server: {{start: on-demand, start_timeout: 30s, idle: {{stop_after: 30s}}}}
users:
  {execu}: {{port: {p1}}}
  {forku}: {{port: {p2}, spawn: fork}}
  {browseu}: {{port: {p3}, spawn: fork}}
  {wsu}: {{port: {p4}}}
"""

TLS_CONFIG = """\
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
tls: {{mode: self-signed}}
server: {{start: on-demand, start_timeout: 60s, spawn: fork}}
users:
  {tlsu}: {{port: {port}}}
"""


@pytest.fixture(scope="module")
def lab(users, workdir):
    names = {short: users(short).pw_name for short in ("odexec", "odfork", "odbrowse", "odws")}
    ports = free_ports(4, 25500)
    daemon = Daemon(workdir, CONFIG.format(execu=names["odexec"], forku=names["odfork"], browseu=names["odbrowse"],
                                           wsu=names["odws"], p1=ports[0], p2=ports[1], p3=ports[2],
                                           p4=ports[3])).start(wait_ready=False)
    daemon.names = names
    for name in names.values():
        daemon.wait_state(name, "idle", 60)
    yield daemon
    daemon.stop()


@pytest.mark.parametrize("short", ["odexec", "odfork"])
def test_idle_user_has_no_process_and_its_first_request_is_answered(lab, short):
    name = lab.names[short]
    row = lab.wait_state(name, "idle")
    uid = pwd.getpwnam(name).pw_uid
    assert row["pid"] is None and uid_processes(uid) == []
    assert user_bind(pwd.getpwnam(name), row["port"]) == "EADDRINUSE"
    assert lab.cli("status").returncode == 0, "idle counts as up for monitoring"
    status, body, _ = http(row["url"] + "api", timeout=120)  # the connection that starts it
    assert status == 200 and "version" in json.loads(body)
    assert lab.rows()[name]["state"] == "running"


@pytest.mark.parametrize("short", ["odexec", "odfork"])
def test_unused_server_goes_back_to_idle_and_a_post_starts_it_again(lab, short):
    name = lab.names[short]
    row = lab.rows()[name]
    if row["state"] != "running":
        assert http(row["url"] + "api", timeout=120)[0] == 200
    lab.wait_state(name, "idle", 120)
    uid = pwd.getpwnam(name).pw_uid
    wait_for(lambda: uid_processes(uid) == [], 30, what="no process left of the idle user")
    # the first request after the idle stop is a POST with the token: answered by the new server
    status, body, _ = http(row["url"] + "api/kernels", lab.token(name), "POST", b"{}", timeout=120)
    assert status == 201, body
    assert lab.rows()[name]["state"] == "running"
    kernel = json.loads(body)["id"]
    assert http(row["url"] + f"api/kernels/{kernel}", lab.token(name), "DELETE", timeout=60)[0] == 204


def test_a_browser_s_first_visit_with_the_token_link_wakes_the_server_and_logs_in(lab):
    """What a user does: open the link `notebookd url` printed, while the server is idle. The browser
    follows the redirects, gets the login cookie and JupyterLab's page, all from the server it woke."""
    name = lab.names["odbrowse"]
    lab.wait_state(name, "idle")
    link = lab.url(name)
    jar = CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    browser.addheaders = [("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) Chrome/120"),
                          ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8")]
    with browser.open(link, timeout=120) as page:
        body = page.read()
        assert page.status == 200 and page.headers.get_content_type() == "text/html", page.headers
        assert page.url.split("?")[0].endswith("/lab"), page.url  # JupyterLab, not the login page
    assert b"jupyter-config-data" in body
    assert lab.rows()[name]["state"] == "running"
    # logged in by that visit: the cookie alone opens the API (a browser's next request has no token)
    base = link.split("/lab?")[0] + "/"
    with browser.open(base + "api/contents", timeout=60) as listing:
        assert listing.status == 200 and "content" in json.loads(listing.read())


def test_a_websocket_is_the_first_connection_and_a_kernel_answers_right_after(lab):
    """The connection that wakes the server is a WebSocket upgrade (jupyter_server's event stream: the
    one WebSocket that needs no kernel first); on the same server, 6*7 then runs over kernel channels."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    name = lab.names["odws"]
    row = lab.wait_state(name, "idle")
    assert uid_processes(pwd.getpwnam(name).pw_uid) == []
    token = lab.token(name)

    async def subscribe():
        url = row["url"].replace("http", "ws", 1) + "api/events/subscribe"
        conn = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"},
                                                   connect_timeout=120, request_timeout=120))
        try:
            return conn.protocol is not None and conn.close_code is None
        finally:
            conn.close()

    assert asyncio.run(subscribe()), "the waking WebSocket was upgraded and stays open"
    pid = lab.rows()[name]["pid"]
    assert pid is not None
    assert run_code(row["url"], token, "6*7") == "42"
    assert lab.rows()[name]["pid"] == pid, "the server the WebSocket woke is the one that ran the code"


@pytest.fixture(scope="module")
def tls_lab(users, workdir):
    name = users("odtls").pw_name
    base = os.path.join(workdir, "tls")
    os.makedirs(base, mode=0o755)
    daemon = Daemon(base, TLS_CONFIG.format(tlsu=name, port=free_ports(1, 25700)[0])).start(wait_ready=False)
    daemon.name = name
    daemon.wait_state(name, "idle", 60)
    yield daemon
    daemon.stop()


def test_the_first_request_over_tls_is_answered_by_the_server_it_wakes(tls_lab):
    """`tls: self-signed`: the handshake itself waits in the backlog and is made by the new server. The
    user's certificate is made when its server first starts, so this first client cannot pin it yet: it
    checks afterwards that the certificate it was shown is the user's own."""
    name = tls_lab.name
    row = tls_lab.wait_state(name, "idle")
    assert row["url"].startswith("https://") and row["pid"] is None
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    path = row["url"].split(str(row["port"]), 1)[1] + "api"
    with socket.create_connection(("127.0.0.1", row["port"]), timeout=120) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            shown = tls.getpeercert(binary_form=True)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    cafile = os.path.join(tls_lab.base, "state", "tls", f"user-{name}.crt")
    with open(cafile) as fh:
        assert ssl.PEM_cert_to_DER_cert(fh.read()) == shown
    # (the daemon's readiness probe may see it a moment after the client got its answer)
    tls_lab.wait_state(name, "running", 60)
    # and the next client verifies it: a kernel over https and wss
    assert run_code(row["url"], tls_lab.token(name), "6*7", cafile=cafile) == "42"
