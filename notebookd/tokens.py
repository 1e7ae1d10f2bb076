"""Per-user tokens: random, kept by root in the state dir, never in argv or logs."""

import os
import secrets

from notebookd.fsutil import ensure_dir, write_atomic


class TokenStore:
    def __init__(self, state_dir: str):
        self.dir = os.path.join(state_dir, "tokens")

    def get(self, name: str) -> str:
        """The user's token, created on first use."""
        path = os.path.join(self.dir, name)
        try:
            with open(path, encoding="ascii") as fh:
                token = fh.read().strip()
            if token:
                return token
        except FileNotFoundError:
            pass
        return self.rotate(name)

    def rotate(self, name: str) -> str:
        ensure_dir(self.dir, 0o700)
        token = secrets.token_hex(24)
        write_atomic(os.path.join(self.dir, name), token.encode(), 0o600)
        return token
