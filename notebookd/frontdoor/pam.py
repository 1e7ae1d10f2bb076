"""The password check: PAM (pamela, as JupyterHub uses it) in a short-lived root helper process
(pamhelper.py: one JSON request on stdin, one JSON answer on stdout).

Why a process and not the daemon itself: a failed pam_unix check sleeps about 2 s and PAM modules
may block on anything (LDAP, sssd), while the daemon runs one event loop and no threads. A process
per check costs ~40 ms of CPU (an interpreter start, pamhelper.py), which a login can afford; it also keeps PAM
modules' state and crashes out of the daemon. The password goes over a pipe, never argv or the
environment, and the helper exits right after the check.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass

from notebookd import command
from notebookd.frontdoor.pamhelper import ACCOUNT_REFUSED

TIMEOUT = 60.0  # a PAM stack that hangs longer (a dead LDAP server) fails the login
PARALLEL = 4  # checks at once; more wait (each failed one holds its slot ~2 s)
QUEUE = 64  # checks waiting beyond that are refused at once ("busy")
ANSWER_LIMIT = 65536  # a helper that says more is broken: the rest is not read
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class Result:
    ok: bool
    reason: str  # for the log: "wrong password", "account refused: …", "PAM error: …"; never the password


class Checker:
    """Runs helper processes, at most PARALLEL at a time (a queue of QUEUE beyond that)."""

    def __init__(self, python: str = sys.executable):
        self.python = python
        self._slots = asyncio.Semaphore(PARALLEL)
        self._waiting = 0

    async def check(self, service: str, user: str, password: str) -> Result:
        if self._waiting >= QUEUE:
            return Result(False, "too many logins at once; refused without a check")
        self._waiting += 1
        try:
            async with self._slots:
                return await self._run(service, user, password)
        finally:
            self._waiting -= 1

    async def _run(self, service: str, user: str, password: str) -> Result:
        # The request is at most the login form's 16 KiB body; it goes over the helper's stdin.
        request = json.dumps({"service": service, "user": user, "password": password}, ensure_ascii=False)
        try:
            done = await command.run([self.python, "-I", "-m", "notebookd.frontdoor.pamhelper"], env=ENV,
                                     timeout=TIMEOUT, input=request.encode(), limit=ANSWER_LIMIT)
        except OSError as exc:
            return Result(False, f"cannot start the PAM helper: {exc}")
        except TimeoutError:
            return Result(False, f"PAM did not answer within {TIMEOUT:.0f}s")
        try:
            answer = json.loads(done.out)
            return Result(bool(answer["ok"]), str(answer["reason"]))
        except (ValueError, KeyError, TypeError):
            tail = done.err.decode(errors="replace").strip().splitlines()
            return Result(False, f"PAM helper failed: {(tail[-1:] or [f'exit {done.returncode}'])[0][:200]}")
