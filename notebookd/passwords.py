"""Per-user password hashes: argon2, made by jupyter_server's own `passwd()`, kept by root.

The plain password never leaves the process of the person who typed it: `notebookd passwd`
hashes it there and sends only the hash, which the daemon checks for the argon2id format before
it stores it in `<state_dir>/passwords/USER` (root, 0600).
"""

from __future__ import annotations

import os
import re

from notebookd.fsutil import ensure_dir, write_atomic

# jupyter_server's format: "argon2:" + an argon2id PHC string
HASH = re.compile(r"argon2:\$argon2id\$v=\d+\$m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}")
MIN_LENGTH = 8


def hash_password(plain: str) -> str:
    """jupyter_server's argon2 hash of `plain` (argon2 directly, same parameters, without jupyter_server)."""
    if len(plain) < MIN_LENGTH:
        raise ValueError(f"a password needs at least {MIN_LENGTH} characters")
    try:
        from jupyter_server.auth.security import passwd
    except ImportError:
        try:
            import argon2
        except ImportError:
            raise ValueError("neither jupyter_server nor argon2-cffi is installed for this Python") from None
        hashed = "argon2:" + argon2.PasswordHasher(memory_cost=10240, time_cost=10, parallelism=8).hash(plain)
    else:
        hashed = passwd(plain, "argon2")
    if not is_hash(hashed):
        raise ValueError("the password hash came out in an unexpected format")
    return hashed


def is_hash(text: str) -> bool:
    return bool(HASH.fullmatch(text))


class PasswordStore:
    def __init__(self, state_dir: str):
        self.dir = os.path.join(state_dir, "passwords")

    def get(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.dir, name), encoding="ascii") as fh:
                hashed = fh.read().strip()
        except FileNotFoundError:
            return None
        return hashed if is_hash(hashed) else None

    def set(self, name: str, hashed: str) -> None:
        if not is_hash(hashed):
            raise ValueError("not an argon2id password hash (argon2:$argon2id$...)")
        ensure_dir(self.dir, 0o700)
        write_atomic(os.path.join(self.dir, name), hashed.encode(), 0o600)
