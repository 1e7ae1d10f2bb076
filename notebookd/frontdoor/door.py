"""The front door's endpoint: what nginx asks (auth_request) and the login/logout pages it proxies.

One unix socket, `<run_dir>/frontdoor.sock`, served by the daemon's event loop (httpserver.py):

- `GET /_notebookd/auth/USER` (auth_request, internal at nginx): 200 with the user's token in
  `X-Notebookd-Token` (nginx sends it on as `Authorization: token …`), 401 (nobody logged in: nginx
  shows the login page) or 403 (another user's session or token, or a cross-site request).
- `/`, `/_notebookd/login` (GET: the form; POST: PAM check), `/_notebookd/logout` (GET, POST),
  `/_notebookd/denied` (nginx's error_page for 401: a redirect to the login page, or 401 for APIs).

nginx passes only the headers it names (`proxy_pass_request_headers off`), so every X-Notebookd-*
header here was set by nginx, never by the browser. A local process can talk to the socket
directly; it gets a token only by presenting a live session or that very token, and its failed
logins count against the user name like anyone's.

CSRF: jupyter_server skips its XSRF check for token-authenticated requests, and through the front
door every request is; so for a session, unsafe methods and WebSocket upgrades must come with an
Origin (or, lacking that, a Referer) that is the front door's own origin, besides SameSite=Lax.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import secrets
from http.cookies import CookieError, SimpleCookie
from typing import Callable
from urllib.parse import parse_qs, quote, urlsplit

from notebookd.frontdoor import page
from notebookd.frontdoor.httpserver import Request, Response, Server
from notebookd.frontdoor.limits import Throttle
from notebookd.frontdoor.pam import ACCOUNT_REFUSED, Checker
from notebookd.frontdoor.sessions import COOKIE, SessionStore

log = logging.getLogger("notebookd")

SOCKET = "frontdoor.sock"
CSRF_COOKIE = "notebookd_csrf"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")
UNKNOWN_USER_DELAY = 2.0  # what pam_unix's failure delay costs, so an unknown name answers as slowly
TOKEN_HEADER = "X-Notebookd-Token"


def _cookies(request: Request) -> dict[str, str]:
    jar = SimpleCookie()
    try:
        jar.load(request.header("cookie"))
    except CookieError:
        return {}
    return {k: m.value for k, m in jar.items()}


def _cookie(name: str, value: str, max_age: int | None = None, same_site: str = "Lax") -> tuple[str, str]:
    age = f"; Max-Age={max_age}" if max_age is not None else ""
    return "Set-Cookie", f"{name}={value}; HttpOnly; Secure; SameSite={same_site}; Path=/{age}"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else ""


class FrontDoor:
    def __init__(self, run_dir: str, tokens, specs: Callable[[], dict]):
        self.path = os.path.join(run_dir, SOCKET)
        self.tokens, self.specs = tokens, specs
        self.settings = None
        self.sessions = SessionStore(8 * 3600.0, 3600.0)
        self.throttle = Throttle(5, 30.0)
        self.pam = Checker()
        self._server: Server | None = None

    # -- lifecycle (the daemon's hook) --
    async def follow(self, config) -> None:
        """Start, reconfigure or stop the endpoint to match `config.front_door`."""
        self.settings = settings = config.front_door
        self.sessions.configure(settings.session_max_age, settings.idle_timeout)
        self.throttle.configure(settings.max_failures, settings.failure_delay)
        for user in self.sessions.users() - set(self.specs()):
            self.sessions.end_user(user)  # no longer configured: out at once
        if settings.enabled and self._server is None:
            self._server = Server(self.handle)
            await self._server.start(self.path)
            log.info("front door: listening on %s (PAM service %s)", self.path, settings.pam_service)
        elif not settings.enabled and self._server is not None:
            self.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    # -- routing --
    async def handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/_notebookd/auth/"):
            return self.auth(request, path[len("/_notebookd/auth/"):])
        if path == "/_notebookd/login" and request.method == "POST":
            return await self.login(request)
        if path in ("/", "/_notebookd/login"):  # `/` sends a logged-in browser on; the other always asks
            return self.login_page(request, redirect=path == "/")
        if path == "/_notebookd/logout":
            return self.logout(request) if request.method == "POST" else self.logout_page(request)
        if path == "/_notebookd/denied":
            return self.denied(request)
        return Response(404, b"not found\n", [("Content-Type", "text/plain")])

    # -- auth_request --
    def auth(self, request: Request, user: str) -> Response:
        spec = self.specs().get(user)
        if spec is None:
            return Response(403)
        token = self.tokens.get(user)
        offered = self._offered_token(request)
        if offered is not None and hmac.compare_digest(offered.encode(), token.encode()):
            return Response(200, headers=[(TOKEN_HEADER, token)])  # scripts and API clients, as before
        session = self.sessions.get(_cookies(request).get(COOKIE))
        if session is None:
            return Response(403 if offered is not None else 401)
        if session.user != user:
            return Response(403)
        refusal = self._cross_site(request)
        if refusal:
            method = request.header("x-notebookd-method") or "GET"
            log.warning("front door: refused %s %s for %s: %s", method, self._uri_path(request), user, refusal)
            return Response(403)
        return Response(200, headers=[(TOKEN_HEADER, token)])

    @staticmethod
    def _offered_token(request: Request) -> str | None:
        auth = request.header("authorization")
        if auth:
            scheme, _, value = auth.partition(" ")
            return value.strip() if scheme.lower() == "token" else ""
        query = parse_qs(urlsplit(request.header("x-notebookd-uri")).query).get("token")
        return query[0] if query else None

    def _own_origin(self, request: Request) -> str:
        return f"{request.header('x-notebookd-proto') or 'https'}://{request.header('host')}".lower()

    def _cross_site(self, request: Request) -> str:
        """Why this session request is refused as possibly cross-site, or "" if it is not."""
        method = (request.header("x-notebookd-method") or request.method).upper()
        upgrade = bool(request.header("x-notebookd-upgrade"))
        if method in SAFE_METHODS and not upgrade:
            return ""
        own = self._own_origin(request)
        origin = request.header("origin")
        if origin:
            seen = origin.lower()
        else:
            seen = _origin_of(request.header("referer"))
            if not seen:
                return "no Origin or Referer on " + ("a WebSocket upgrade" if upgrade else "an unsafe method")
        if seen != own:
            return f"Origin {seen[:100]} is not the front door's {own}"
        return ""

    @staticmethod
    def _uri_path(request: Request) -> str:
        return urlsplit(request.header("x-notebookd-uri")).path[:200]  # never the query: ?token=

    # -- pages --
    def denied(self, request: Request) -> Response:
        """nginx's 401 page: browsers go to the login form (and come back), APIs get 401."""
        uri = request.header("x-notebookd-uri") or "/"
        wants_html = "text/html" in request.header("accept") and not request.header("x-notebookd-upgrade")
        if not wants_html:
            body = json.dumps({"message": "not logged in: log in at /"}).encode()
            return Response(401, body, [("Content-Type", "application/json")])
        return Response(302, headers=[("Location", "/?next=" + quote(uri, safe="/"))])

    def _csrf_value(self, request: Request) -> tuple[str, list[tuple[str, str]]]:
        value = _cookies(request).get(CSRF_COOKIE, "")
        if len(value) >= 32:
            return value, []
        value = secrets.token_urlsafe(32)
        return value, [_cookie(CSRF_COOKIE, value, same_site="Strict")]

    def _next_for(self, user: str, wanted: str) -> str:
        """Where a login goes: `wanted` if it is under the user's own base_url, else the base_url."""
        base = self.specs()[user].base_url
        parts = urlsplit(wanted or "")
        if not parts.scheme and not parts.netloc and parts.path.startswith(base) and "\\" not in wanted:
            return wanted
        return base

    def login_page(self, request: Request, message: str = "", user: str = "", status: int = 200,
                   next_url: str | None = None, redirect: bool = False) -> Response:
        session = self.sessions.get(_cookies(request).get(COOKIE)) if redirect else None
        if session is not None and session.user in self.specs():
            return Response(303, headers=[("Location", self._next_for(session.user, request.query("next") or ""))])
        csrf, headers = self._csrf_value(request)
        body = page.login(csrf, next_url if next_url is not None else request.query("next") or "", user, message)
        return Response(status, body, page.HEADERS + headers)

    async def login(self, request: Request) -> Response:
        form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        field = {k: v[0] for k, v in form.items() if v}
        user, password, next_url = field.get("user", "").strip(), field.get("password", ""), field.get("next", "")
        addr = request.header("x-notebookd-addr") or "local"
        expected = _cookies(request).get(CSRF_COOKIE, "")
        given = field.get("_csrf", "")
        if not expected or not hmac.compare_digest(given.encode(), expected.encode()) or self._cross_site(request):
            log.warning("front door: login form from %s refused: missing or wrong CSRF field or Origin", addr)
            return self.login_page(request, "The login form had expired or came from another site. "
                                            "Please try again.", user if USERNAME.fullmatch(user) else "", 403,
                                   next_url)
        shown = user if USERNAME.fullmatch(user) else "(an invalid user name)"
        keys = (f"user:{user}", f"addr:{addr}")
        wait = self.throttle.wait(*keys)
        if wait > 0:
            log.warning("front door: login for %s from %s refused: too many failed logins (%.0fs to wait)",
                        shown, addr, wait)
            return self.login_page(request, f"Too many failed logins. Try again in {max(1, round(wait))} seconds.",
                                   user if USERNAME.fullmatch(user) else "", 429, next_url)
        settings = self.settings
        if not USERNAME.fullmatch(user) or user not in self.specs():
            await asyncio.sleep(UNKNOWN_USER_DELAY)  # answer as a wrong password would, no faster
            ok, reason = False, "not a user with a server here"
        else:
            result = await self.pam.check(settings.pam_service, user, password)
            ok, reason = result.ok, result.reason
        del password
        if not ok or user not in self.specs():  # (the config may have changed during the check)
            self.throttle.failed(*keys)
            log.warning("front door: failed login for %s from %s: %s", shown, addr, reason)
            # the password was right but the account may not log in: saying so tells nothing new
            text = ("This account may not log in now (expired, locked, or its password must be changed "
                    "first). Ask the lab's administrators." if reason.startswith(ACCOUNT_REFUSED)
                    else "Wrong user name or password.")
            return self.login_page(request, text, user if USERNAME.fullmatch(user) else "", 401, next_url)
        self.throttle.succeeded(*keys)
        session_id = self.sessions.create(user, replacing=_cookies(request).get(COOKIE))
        log.info("front door: %s logged in from %s", user, addr)
        return Response(303, headers=[("Location", self._next_for(user, next_url)), _cookie(COOKIE, session_id)])

    def logout_page(self, request: Request) -> Response:
        session = self.sessions.get(_cookies(request).get(COOKIE))
        if session is None:
            return Response(303, headers=[("Location", "/")])
        return Response(200, page.logout(session.user, session.csrf), list(page.HEADERS))

    def logout(self, request: Request) -> Response:
        session_id = _cookies(request).get(COOKIE, "")
        session = self.sessions.get(session_id, touch=False)
        form = parse_qs(request.body.decode("utf-8", "replace"))
        given = (form.get("_csrf") or [""])[0]
        if session is None:
            return Response(303, headers=[("Location", "/"), _cookie(COOKIE, "", 0)])
        if not hmac.compare_digest(given.encode(), session.csrf.encode()) or self._cross_site(request):
            return Response(403, page.message("Not logged out", "The logout form had expired or came from "
                                                                "another site."), list(page.HEADERS))
        self.sessions.end(session_id)
        log.info("front door: %s logged out", session.user)
        return Response(303, headers=[("Location", "/"), _cookie(COOKIE, "", 0)])
