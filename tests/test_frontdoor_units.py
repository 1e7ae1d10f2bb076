"""The front door's logic without a daemon: sessions, throttling, config, the nginx text, and the
auth decisions of the endpoint (its handler called directly; the real path is tests/test_frontdoor.py)."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace

import pytest

from notebookd import config, nginx
from notebookd.frontdoor.door import TOKEN_HEADER, FrontDoor
from notebookd.frontdoor.httpserver import Request
from notebookd.frontdoor.limits import Throttle
from notebookd.frontdoor.sessions import COOKIE, SessionStore
from notebookd.paths import Layout


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_idle_and_at_their_max_age():
    clock = Clock()
    store = SessionStore(max_age=100, idle_timeout=30, clock=clock)
    sid = store.create("alice")
    clock.now += 29
    assert store.get(sid).user == "alice"  # and its idle clock restarts
    clock.now += 29
    assert store.get(sid) is not None
    clock.now += 31
    assert store.get(sid) is None, "idle too long"
    sid = store.create("alice")
    for step in (25, 25, 25, 24):
        clock.now += step
        assert store.get(sid) is not None
    clock.now += 1
    assert store.get(sid) is None, "past max_age however busy"


def test_a_login_rotates_the_session_and_ids_are_random():
    store = SessionStore(100, 30, clock=Clock())
    old = store.create("alice")
    new = store.create("alice", replacing=old)
    assert old != new and store.get(old) is None and store.get(new).user == "alice"
    assert len(new) >= 40 and len({store.create("bob") for _ in range(50)}) == 50
    assert store.end_user("alice") == 1 and store.get(new) is None


def test_throttle_delays_after_n_failures_per_key_and_doubles():
    clock = Clock()
    t = Throttle(max_failures=3, failure_delay=10, clock=clock)
    for _ in range(2):
        t.failed("user:a", "addr:1")
        assert t.wait("user:a", "addr:1") == 0
    t.failed("user:a", "addr:1")
    assert t.wait("user:a") == 10 and t.wait("addr:1") == 10 and t.wait("user:b", "addr:2") == 0
    assert t.wait("user:b", "addr:1") == 10, "another name from the same address waits too"
    clock.now += 10
    assert t.wait("user:a") == 0
    t.failed("user:a")
    assert t.wait("user:a") == 20
    t.succeeded("user:a")
    assert t.wait("user:a") == 0


def _layout() -> Layout:
    return Layout(system=True, config="/x.yaml", config_explicit=True, run_dir="/run/notebookd",
                  state_dir="/var/lib/notebookd", log_dir="/var/log/notebookd")


def test_config_front_door_keys_and_the_tls_rule():
    c = config.load(_layout(), "front_door: {enabled: true, session_max_age: 2h, idle_timeout: 10m}\n"
                               "proxy: {listen: '127.0.0.1:8080'}\n")
    assert c.front_door == config.FrontDoor(enabled=True, session_max_age=7200.0, idle_timeout=600.0)
    with pytest.raises(config.ConfigError, match="needs TLS at nginx"):
        config.load(_layout(), "front_door: {enabled: true}\nproxy: {listen: '443'}\n")
    config.load(_layout(), "front_door: {enabled: true}\nproxy: {listen: '443', cert: /c.pem, key: /k.pem}\n")
    with pytest.raises(config.ConfigError, match=r"x.yaml:1: front_door.idle_timeout: .*longer"):
        config.load(_layout(), "front_door: {session_max_age: 1h, idle_timeout: 2h}\n")
    with pytest.raises(config.ConfigError, match="not a PAM service name"):
        config.load(_layout(), "front_door: {pam_service: ../shadow}\n")


DATA = {"config": "/etc/notebookd/notebookd.yaml",
        "servers": [{"name": "alice", "ip": "127.0.0.1", "port": 8801, "base_url": "/user/alice/", "tls": False}],
        "proxy": {"listen": "443", "server_name": "_", "cert": "/c", "key": "/k"},
        "front_door": {"enabled": True, "socket": "/run/notebookd/frontdoor.sock"}}


def test_nginx_with_the_front_door_asks_notebookd_and_replaces_authorization():
    text = nginx.render(DATA)
    location = re.search(r"location /user/alice/ \{(.*?)\n    \}", text, re.S).group(1)
    assert "auth_request /_notebookd/auth/alice;" in location
    assert "auth_request_set $notebookd_token $upstream_http_x_notebookd_token;" in location
    assert 'proxy_set_header Authorization "token $notebookd_token";' in location
    auth = re.search(r"location /_notebookd/auth/ \{(.*?)\n    \}", text, re.S).group(1)
    assert "internal;" in auth and "proxy_pass_request_headers off;" in auth
    assert "server unix:/run/notebookd/frontdoor.sock;" in text
    assert "return 404" not in text
    plain = nginx.render({**DATA, "front_door": {"enabled": False, "socket": "/x"}})
    assert "auth_request" not in plain and "notebookd_front_door" not in plain


class Tokens:
    def get(self, name):
        return f"token-of-{name}"


def _door() -> FrontDoor:
    specs = {n: SimpleNamespace(base_url=f"/user/{n}/") for n in ("alice", "bob")}
    door = FrontDoor("/nonexistent", Tokens(), lambda: specs)
    door.settings = config.FrontDoor(enabled=True)
    return door


def _auth(door, user, method="GET", cookie="", origin="", upgrade="", authorization="", uri=None):
    headers = {"host": "lab.example.org", "x-notebookd-proto": "https", "x-notebookd-method": method,
               "x-notebookd-uri": uri or f"/user/{user}/api/kernels", "cookie": cookie, "origin": origin,
               "x-notebookd-upgrade": upgrade, "authorization": authorization}
    return door.auth(Request("GET", f"/_notebookd/auth/{user}", {k: v for k, v in headers.items() if v}), user)


def test_auth_decisions():
    door = _door()
    alice = f"{COOKIE}={door.sessions.create('alice')}"
    ok = _auth(door, "alice", cookie=alice)
    assert ok.status == 200 and (TOKEN_HEADER, "token-of-alice") in ok.headers
    assert _auth(door, "bob", cookie=alice).status == 403, "alice's session on bob's server"
    assert _auth(door, "alice").status == 401, "nobody logged in"
    assert _auth(door, "carol", cookie=alice).status == 403, "not configured"
    assert _auth(door, "alice", authorization="token token-of-alice").status == 200, "scripts keep their token"
    assert _auth(door, "alice", authorization="token token-of-bob").status == 403
    assert _auth(door, "alice", uri="/user/alice/api/kernels?token=token-of-alice").status == 200
    forged = _auth(door, "alice", cookie=alice, authorization="token forged")
    assert forged.status == 200 and (TOKEN_HEADER, "token-of-alice") in forged.headers
    # CSRF: unsafe methods and upgrades need the front door's own origin
    assert _auth(door, "alice", "POST", alice, origin="https://lab.example.org").status == 200
    assert _auth(door, "alice", "POST", alice, origin="https://evil.example.com").status == 403
    assert _auth(door, "alice", "DELETE", alice).status == 403, "no Origin, no Referer"
    assert _auth(door, "alice", "GET", alice, origin="http://127.0.0.1:9", upgrade="websocket").status == 403
    assert _auth(door, "alice", "GET", alice, origin="https://lab.example.org", upgrade="websocket").status == 200


def test_login_post_without_the_csrf_field_is_refused_before_pam():
    door = _door()

    async def no_pam(*args):
        raise AssertionError("PAM must not be asked")

    door.pam.check = no_pam
    req = Request("POST", "/_notebookd/login", {"cookie": "notebookd_csrf=" + "x" * 40, "host": "h",
                                                "origin": "https://h"}, b"user=alice&password=secret")
    answer = asyncio.run(door.handle(req))
    assert answer.status == 403 and b"expired" in answer.body and b"secret" not in answer.body


def test_denied_sends_browsers_to_the_login_page_and_apis_a_401():
    door = _door()
    page = door.denied(Request("GET", "/_notebookd/denied", {"accept": "text/html,*/*",
                                                             "x-notebookd-uri": "/user/alice/lab?a=1&b=2"}))
    assert page.status == 302 and ("Location", "/?next=/user/alice/lab%3Fa%3D1%26b%3D2") in page.headers
    api = door.denied(Request("GET", "/_notebookd/denied", {"accept": "application/json",
                                                            "x-notebookd-uri": "/user/alice/api/kernels"}))
    assert api.status == 401


def test_next_stays_on_the_users_own_server():
    door = _door()
    assert door._next_for("alice", "/user/alice/lab/tree/x.ipynb") == "/user/alice/lab/tree/x.ipynb"
    for evil in ("https://evil.example.com/user/alice/", "//evil.example.com/user/alice/", "/user/bob/",
                 "/user/alice\\..\\bob/"):
        assert door._next_for("alice", evil) == "/user/alice/"
