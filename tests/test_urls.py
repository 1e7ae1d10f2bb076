"""The URLs users are shown are the ones they open: with `proxy:` naming a host, `notebookd url`, `token`
and `status` give nginx's public address (publicurl.py); `--local` the server's own.

The fast part holds the rule (scheme, port, host) to the cases of the README; the root part runs one
daemon with one user, changes `proxy:` by reload, renders nginx from `notebookd render nginx` and opens
the printed URL through that nginx: the user's own JupyterLab answers.
"""

from __future__ import annotations

import http.client as httpclient
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import urllib.parse

import pytest

from conftest import Daemon, free_ports, http, wait_for
from notebookd.publicurl import origin
from webclient import NGINX, start_nginx


# ---- the rule (fast tier) ----

@pytest.mark.parametrize("listen, server_name, tls, expected", [
    ("443", "lab.example.org", True, "https://lab.example.org"),          # the scheme's own port: not written
    ("0.0.0.0:443", "lab.example.org lab", True, "https://lab.example.org"),  # the first name
    ("80", "Lab.Example.org", False, "http://lab.example.org"),
    ("8443", "lab.example.org", True, "https://lab.example.org:8443"),
    ("443", "lab.example.org", False, "http://lab.example.org:443"),     # plain http on 443: said so
    ("80", "lab.example.org", True, "https://lab.example.org:80"),
    ("[::1]:8080", "_", False, "http://[::1]:8080"),                      # the literal address, never localhost
    ("[2001:db8::7]:443", "_", True, "https://[2001:db8::7]"),
    ("192.0.2.7:8080", "_", False, "http://192.0.2.7:8080"),
    ("8080", "2001:db8::1", False, "http://[2001:db8::1]:8080"),          # an address as server_name
    ("8080", "[2001:db8::1]", False, "http://[2001:db8::1]:8080"),
    ("443", "*.example.org ~^lab\\d+$ .example.org", True, "https://example.org"),  # wildcards, regexes skipped
    ("192.0.2.7:443", "*.example.org", True, "https://192.0.2.7"),        # ... then the listen address
    ("80", "_", False, None),                                             # the defaults: nothing named
    ("[::]:443", "_", True, None),
    ("*:443", "_", True, None),
    ("0.0.0.0:443", "0.0.0.0", True, None),
])
def test_public_origin(listen, server_name, tls, expected):
    assert origin(listen, server_name, tls) == expected


# ---- the real CLI, daemon and nginx (root tier) ----

CONFIG = """\
listen: {{ip: 127.0.0.1, ports: {port}-{port}}}
state_dir: {{base}}/state
logs: {{dir: {{base}}/logs}}
proxy: {proxy}
front_door: {{enabled: {door}}}
users:
  {alice}: {{}}
"""


class Lab:
    """One daemon, one user, and the nginx rendered for the `proxy:` a test asks for."""

    def __init__(self, daemon: Daemon, base: str, alice: str, port: int):
        self.daemon, self.base, self.alice, self.port = daemon, base, alice, port
        self.nginx: subprocess.Popen | None = None
        self.current: tuple | None = None

    def use(self, proxy: str, door: bool = False, nginx: bool = True) -> None:
        """Reload with this `proxy:` (a proxy change restarts no server), and run the nginx it renders."""
        if self.current != (proxy, door):
            self.daemon.write_config(CONFIG.format(port=self.port, proxy=proxy, door=str(door).lower(),
                                                   alice=self.alice))
            out = self.daemon.cli("reload")
            assert out.returncode == 0, out.stderr
            self.current = (proxy, door)
        self.stop_nginx()
        if nginx:
            rendered = self.daemon.cli("render", "nginx")
            assert rendered.returncode == 0, rendered.stderr
            self.nginx = start_nginx(self.base, rendered.stdout)

    def stop_nginx(self) -> None:
        if self.nginx is not None:
            self.nginx.send_signal(signal.SIGQUIT)
            self.nginx.wait(30)
            self.nginx = None

    def cli(self, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
        out = self.daemon.cli(*args, user=user)
        assert out.returncode == 0, out.stderr
        return out


@pytest.fixture(scope="module")
def lab(users, workdir):
    if not os.path.exists(NGINX):
        pytest.skip("needs nginx (tests/run installs it)")
    alice = users("ulalice").pw_name
    port, *proxy_ports = free_ports(3, 27000)
    daemon = Daemon(workdir, CONFIG.format(port=port, proxy="{listen: '80', server_name: _}", door="false",
                                           alice=alice))
    cert, key = os.path.join(workdir, "nginx.crt"), os.path.join(workdir, "nginx.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=lab.example.org",
                    "-addext", "subjectAltName=DNS:lab.example.org"], check=True, capture_output=True)
    lab = Lab(daemon, workdir, alice, port)
    lab.cert, lab.key, lab.proxy_ports = cert, key, proxy_ports
    daemon.start()
    try:
        lab.pid = daemon.rows()[alice]["pid"]
        yield lab
        assert daemon.rows()[alice]["pid"] == lab.pid, "no change of proxy: restarted the server"
    finally:
        lab.stop_nginx()
        daemon.stop()


def _https_proxy(lab, door: bool = False) -> str:
    return (f"{{listen: '127.0.0.1:{lab.proxy_ports[1]}', server_name: lab.example.org lab, "
            f"cert: {lab.cert}, key: {lab.key}}}")


def open_at(url: str, address: str, cafile: str | None = None, accept: str = "text/html",
            token: str | None = None) -> tuple[int, bytes, httpclient.HTTPMessage]:
    """GET `url` as a browser on the lab's network would, connecting to `address` (this machine) for its
    host name (lab.example.org resolves nowhere here): the Host header and the TLS name are the URL's."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    raw = socket.create_connection((address, parts.port or (443 if parts.scheme == "https" else 80)), timeout=60)
    if parts.scheme == "https":
        conn = httpclient.HTTPSConnection(parts.hostname, parts.port, timeout=60)
        conn.sock = ssl.create_default_context(cafile=cafile).wrap_socket(raw, server_hostname=parts.hostname)
    else:
        conn = httpclient.HTTPConnection(parts.hostname, parts.port, timeout=60)
        conn.sock = raw
    headers = {"Accept": accept, **({"Authorization": f"token {token}"} if token else {})}
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.headers
    finally:
        conn.close()


def _is_jupyter_ui(body: bytes) -> bool:
    return b"jupyter-config-data" in body  # the page JupyterLab (and Notebook 7) serve their UI in


def test_url_is_nginx_at_an_ipv6_literal_and_opens_the_users_lab_through_it(lab):
    listen = f"[::1]:{lab.proxy_ports[0]}"
    lab.use(f"{{listen: '{listen}', server_name: _}}")
    mine = lab.cli("url", user=lab.alice).stdout.strip()
    assert lab.cli("url", lab.alice).stdout.strip() == mine, "root is shown the same link"
    m = re.fullmatch(rf"http://\[::1\]:{lab.proxy_ports[0]}/user/{lab.alice}/(lab|tree)\?token=([\w-]+)", mine)
    assert m, mine
    token = m.group(2)
    wait_for(lambda: http(mine)[0] != 0, 30, what="nginx on [::1]")
    status, body, _ = http(mine)
    assert status == 200 and _is_jupyter_ui(body), (status, body[:300])
    status, body, _ = http(mine.split("?")[0])
    assert status != 200 or not _is_jupyter_ui(body), "without the token: the server's login page"
    assert http(f"http://[::1]:{lab.proxy_ports[0]}/user/{lab.alice}/api/status", token)[0] == 200
    with open(os.path.join(lab.base, "nginx-access.log")) as fh:
        assert f"/user/{lab.alice}/{m.group(1)}?token=" in fh.read(), "it went through nginx"

    local = lab.cli("url", "--local", user=lab.alice).stdout.strip()
    assert local == f"http://127.0.0.1:{lab.port}/user/{lab.alice}/{m.group(1)}?token={token}"
    status, body, _ = http(local)
    assert status == 200 and _is_jupyter_ui(body)


def test_status_shows_the_public_url_without_token_in_the_table_and_json(lab):
    lab.use(f"{{listen: '[::1]:{lab.proxy_ports[0]}', server_name: _}}", nginx=False)
    public = f"http://[::1]:{lab.proxy_ports[0]}/user/{lab.alice}/"
    row = json.loads(lab.cli("status", "--json", user=lab.alice).stdout)["servers"][0]
    assert row["url"] == public and row["local_url"] == f"http://127.0.0.1:{lab.port}/user/{lab.alice}/"
    table = lab.daemon.cli("status")
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if ln.startswith(lab.alice))
    assert f" {public} " in line and "token" not in table.stdout


def test_token_prints_the_token_alone_and_the_url_on_stderr(lab):
    lab.use(_https_proxy(lab), nginx=False)
    url = lab.cli("url", user=lab.alice).stdout.strip()
    assert url.startswith(f"https://lab.example.org:{lab.proxy_ports[1]}/user/{lab.alice}/")
    out = lab.cli("token", user=lab.alice)
    assert out.stdout == url.split("?token=")[1] + "\n", "stdout is the token alone, for $(notebookd token)"
    assert out.stderr == f"open {url}\n"
    local = lab.cli("token", "--local", user=lab.alice)
    assert local.stdout == out.stdout
    assert local.stderr == f"open {lab.cli('url', '--local', user=lab.alice).stdout.strip()}\n"
    assert f"http://127.0.0.1:{lab.port}/" in local.stderr


def test_https_at_nginx_with_a_server_name_and_its_port_opens_the_users_lab(lab):
    lab.use(_https_proxy(lab))
    url = lab.cli("url", user=lab.alice).stdout.strip()
    m = re.fullmatch(rf"https://lab\.example\.org:{lab.proxy_ports[1]}/user/{lab.alice}/(lab|tree)\?token=[\w-]+",
                     url)
    assert m, url
    wait_for(lambda: _answers(url, lab.cert), 30, what="nginx with TLS")
    status, body, _ = open_at(url, "127.0.0.1", lab.cert)  # verified: the certificate is for that name
    assert status == 200 and _is_jupyter_ui(body), (status, body[:300])
    row = json.loads(lab.cli("status", "--json").stdout)["servers"][0]
    assert row["url"] == f"https://lab.example.org:{lab.proxy_ports[1]}/user/{lab.alice}/"


def _answers(url: str, cafile: str) -> bool:
    try:
        open_at(url, "127.0.0.1", cafile)
        return True
    except OSError:
        return False


def test_front_door_url_has_no_token_and_the_token_still_opens_the_api(lab):
    lab.use(_https_proxy(lab), door=True)
    url = lab.cli("url", user=lab.alice).stdout.strip()
    assert re.fullmatch(rf"https://lab\.example\.org:{lab.proxy_ports[1]}/user/{lab.alice}/(lab|tree)", url), url
    token = lab.cli("token", user=lab.alice)
    assert token.stderr == f"open {url} (log in there; the token is for scripts and API clients)\n"
    wait_for(lambda: _answers(url, lab.cert), 30, what="nginx with the front door")
    status, _, headers = open_at(url, "127.0.0.1", lab.cert)  # a browser: the login page, then back here
    assert status == 302 and headers["Location"] == f"/?next=/user/{lab.alice}/" + url.rsplit("/", 1)[1]
    api = url.rsplit("/", 1)[0] + "/api/status"
    assert open_at(api, "127.0.0.1", lab.cert, "application/json")[0] == 401
    assert open_at(api, "127.0.0.1", lab.cert, "application/json", token.stdout.strip())[0] == 200
    assert open_at(f"{api}?token={token.stdout.strip()}", "127.0.0.1", lab.cert, "application/json")[0] == 200
    local = lab.cli("url", "--local", user=lab.alice).stdout.strip()
    assert local.endswith(f"?token={token.stdout.strip()}") and http(local)[0] == 200, "the server's own link"


def test_nothing_named_is_the_loopback_url_and_the_schemes_port_is_not_written(lab):
    lab.use("{listen: '443', server_name: _}", nginx=False)
    url = lab.cli("url", user=lab.alice).stdout.strip()
    assert url == lab.cli("url", "--local", user=lab.alice).stdout.strip()
    assert url.startswith(f"http://127.0.0.1:{lab.port}/user/{lab.alice}/")
    lab.use(f"{{listen: '443', server_name: lab.example.org, cert: {lab.cert}, key: {lab.key}}}", nginx=False)
    assert lab.cli("url", user=lab.alice).stdout.startswith(f"https://lab.example.org/user/{lab.alice}/")
