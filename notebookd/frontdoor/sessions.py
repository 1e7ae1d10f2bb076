"""Front-door sessions: random ids kept only in the daemon's memory, with a hard and an idle expiry.

The cookie carries the id; the store keys sessions by the id's SHA-256, so a lookup compares digests
(no timing hint about a valid id) and a memory dump shows no usable cookie. A daemon restart ends
every session (users log in again); nothing about sessions is written to disk.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

COOKIE = "notebookd_session"


@dataclass
class Session:
    user: str
    created: float
    seen: float
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))  # the logout form's field


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii", "replace")).hexdigest()


class SessionStore:
    def __init__(self, max_age: float, idle_timeout: float, clock: Callable[[], float] = time.monotonic):
        self.max_age, self.idle_timeout, self.clock = max_age, idle_timeout, clock
        self._sessions: dict[str, Session] = {}

    def configure(self, max_age: float, idle_timeout: float) -> None:
        """New limits (a reload) apply to existing sessions too."""
        self.max_age, self.idle_timeout = max_age, idle_timeout

    def create(self, user: str, replacing: str | None = None) -> str:
        """A new session id for `user`; the session in `replacing` (the browser's old cookie) ends:
        a login always gets a fresh id, so an id planted before the login is worth nothing after it."""
        if replacing:
            self.end(replacing)
        self._sweep()
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        self._sessions[_key(session_id)] = Session(user, now, now)
        return session_id

    def get(self, session_id: str | None, touch: bool = True) -> Session | None:
        """The live session of this id (its idle clock restarted), or None."""
        if not session_id:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if now - session.created >= self.max_age or now - session.seen >= self.idle_timeout:
            del self._sessions[key]
            return None
        if touch:
            session.seen = now
        return session

    def end(self, session_id: str) -> Session | None:
        return self._sessions.pop(_key(session_id), None)

    def end_user(self, user: str) -> int:
        """End every session of `user` (their token was rotated, or they are no longer configured)."""
        keys = [k for k, s in self._sessions.items() if s.user == user]
        for k in keys:
            del self._sessions[k]
        return len(keys)

    def users(self) -> set[str]:
        return {s.user for s in self._sessions.values()}

    def __len__(self) -> int:
        return len(self._sessions)

    def _sweep(self) -> None:
        now = self.clock()
        dead = [k for k, s in self._sessions.items()
                if now - s.created >= self.max_age or now - s.seen >= self.idle_timeout]
        for k in dead:
            del self._sessions[k]
