"""What the daemon writes down about each running server, so that a later daemon can adopt it.

A record names the pid **and** the process start time (a pid alone may be reused by a stranger
after a reboot or a long downtime) and a fingerprint of the spec the server was started with, so
a daemon that comes back to a changed config restarts exactly the servers whose spec changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

from notebookd.fsutil import ensure_dir, write_atomic
from notebookd.model import ServerSpec

log = logging.getLogger("notebookd")


def fingerprint(spec: ServerSpec) -> str:
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Record:
    name: str
    pid: int
    create_time: float
    fingerprint: str

    def alive(self) -> bool:
        """The recorded process still runs (same pid and the same start time)."""
        import psutil

        try:
            return abs(psutil.Process(self.pid).create_time() - self.create_time) < 0.01
        except psutil.Error:
            return False


class RecordBook:
    def __init__(self, state_dir: str):
        self.dir = os.path.join(state_dir, "servers")

    def open(self) -> None:
        ensure_dir(self.dir, 0o700)

    def write(self, spec: ServerSpec, pid: int) -> Record:
        import psutil

        rec = Record(spec.name, pid, psutil.Process(pid).create_time(), fingerprint(spec))
        write_atomic(self._path(spec.name), json.dumps(asdict(rec)).encode(), 0o600)
        return rec

    def remove(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def live(self) -> dict[str, Record]:
        """Records whose process still runs; stale ones are deleted."""
        found = {}
        for entry in sorted(os.listdir(self.dir)):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(self.dir, entry)
            rec = _read(path)
            if rec is None:
                # kept for the admin: its server (if it still runs) cannot be adopted; a new start
                # reports the port it holds
                log.warning("%s is not a valid server record; ignored (kept as %s.bad)", path, path)
                os.replace(path, path + ".bad")
            elif rec.name == entry[:-5] and rec.alive():
                found[rec.name] = rec
            else:
                os.unlink(path)
        return found

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, f"{name}.json")


def _read(path: str) -> Record | None:
    try:
        with open(path, "rb") as fh:
            data = json.loads(fh.read())
        rec = Record(**data)
    except (OSError, ValueError, TypeError):
        return None
    ok = (isinstance(rec.name, str) and isinstance(rec.fingerprint, str)
          and isinstance(rec.pid, int) and not isinstance(rec.pid, bool) and rec.pid > 0
          and isinstance(rec.create_time, (int, float)) and not isinstance(rec.create_time, bool))
    return rec if ok else None
