"""What a server needs to let its user in and keep others out: token, password hash, TLS key.

`Access.install` writes them into the server's directory (`<run_dir>/servers/USER/`, root-owned,
0750 root:group) just before a start, each readable by the server's user only:

- `token`    0400, owned by the user: `JUPYTER_TOKEN_FILE` (auth token or both)
- `password` 0400, owned by the user: the argon2 hash (auth password or both), read by the
  root-owned `jupyter_server_config.py` that `jupyter.write_config` puts next to it
- `tls.key`  0400, owned by the user; `tls.crt` 0444 (tls self-signed: the user's own pair; files:
  the admin's)
- `cookie_secret` 0400, owned by the user: signs the login cookies. Kept by root in
  `<state_dir>/sessions/USER`, so logins survive restarts, and replaced by `end_sessions` when a
  token is rotated or a password set: every browser logged in with the old one is logged out.

A file the current settings do not call for is removed, so switching `auth` back to token leaves
no stale hash behind.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

from notebookd import tls as tlsmod
from notebookd.fsutil import ensure_dir, remove, write_atomic
from notebookd.model import ServerSpec
from notebookd.passwords import PasswordStore
from notebookd.tokens import TokenStore


class NotReady(Exception):
    """The server cannot be started safely yet (e.g. password auth without a password)."""


@dataclass(frozen=True)
class ServerAccess:
    token_file: str | None = None
    password_file: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cookie_secret_file: str | None = None


def uses_token(spec: ServerSpec) -> bool:
    return spec.settings.auth in ("token", "both")


def uses_password(spec: ServerSpec) -> bool:
    return spec.settings.auth in ("password", "both")


class Access:
    def __init__(self, state_dir: str, tokens: TokenStore):
        self.tokens = tokens
        self.passwords = PasswordStore(state_dir)
        self.certificates = tlsmod.Certificates(state_dir)
        self.sessions_dir = os.path.join(state_dir, "sessions")

    def end_sessions(self, name: str) -> None:
        """A new cookie secret at the next start: every login cookie of this user's server stops working."""
        remove(os.path.join(self.sessions_dir, name))

    def _cookie_secret(self, name: str) -> bytes:
        path = os.path.join(self.sessions_dir, name)
        try:
            with open(path, "rb") as fh:
                secret = fh.read()
            if len(secret) >= 32:
                return secret
        except FileNotFoundError:
            pass
        ensure_dir(self.sessions_dir, 0o700)
        secret = secrets.token_hex(32).encode()
        write_atomic(path, secret, 0o600)
        return secret

    def install(self, spec: ServerSpec, directory: str, root_uid: int) -> ServerAccess:
        acc = spec.account
        paths = {name: os.path.join(directory, name) for name in ("token", "password")}
        wanted: dict[str, str | None] = {"token": None, "password": None}
        if uses_password(spec):
            hashed = self.passwords.get(acc.name)
            if hashed is None:
                raise NotReady(f"auth is {spec.settings.auth} but {acc.name} has no password yet "
                               f"(notebookd passwd {acc.name})")
            write_atomic(paths["password"], hashed.encode(), 0o400, acc.uid, acc.gid)
            wanted["password"] = paths["password"]
        if uses_token(spec):
            write_atomic(paths["token"], self.tokens.get(acc.name).encode(), 0o400, acc.uid, acc.gid)
            wanted["token"] = paths["token"]
        for name, path in paths.items():
            if wanted[name] is None:
                remove(path)
        certfile = keyfile = None
        if spec.tls.enabled:
            try:
                cert, key = self.certificates.pair(spec.tls, spec.ip, acc.name)
                certfile, keyfile = tlsmod.install(cert, key, directory, acc.uid, acc.gid, root_uid)
            except tlsmod.TLSError as exc:
                raise NotReady(str(exc)) from None
        else:
            for name in ("tls.crt", "tls.key"):
                remove(os.path.join(directory, name))
        cookie = os.path.join(directory, "cookie_secret")
        write_atomic(cookie, self._cookie_secret(acc.name), 0o400, acc.uid, acc.gid)
        return ServerAccess(wanted["token"], wanted["password"], certfile, keyfile, cookie)

