"""The password check: PAM (pamela, as JupyterHub uses it) in a short-lived root helper process.

    python -I -m notebookd.frontdoor.pam     (one JSON request on stdin, one JSON answer on stdout)

Why a process and not the daemon itself: a failed pam_unix check sleeps about 2 s and PAM modules
may block on anything (LDAP, sssd), while the daemon runs one event loop and no threads. A process
per check costs ~60 ms of CPU (an interpreter start), which a login can afford; it also keeps PAM
modules' state and crashes out of the daemon. The password goes over a pipe, never argv or the
environment, and the helper exits right after the check.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass

TIMEOUT = 60.0  # a PAM stack that hangs longer (a dead LDAP server) fails the login
PARALLEL = 4  # checks at once; more wait (each failed one holds its slot ~2 s)
QUEUE = 64  # checks waiting beyond that are refused at once ("busy")
ACCOUNT_REFUSED = "account refused by PAM"  # the password was right; the account stage said no


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
        request = json.dumps({"service": service, "user": user, "password": password}).encode()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python, "-I", "-m", "notebookd.frontdoor.pam", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd="/",
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
        except OSError as exc:
            return Result(False, f"cannot start the PAM helper: {exc}")
        try:
            out, err = await asyncio.wait_for(proc.communicate(request), TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()  # our own child, by its pid
            await proc.wait()
            return Result(False, f"PAM did not answer within {TIMEOUT:.0f}s")
        try:
            answer = json.loads(out)
            return Result(bool(answer["ok"]), str(answer["reason"]))
        except (ValueError, KeyError, TypeError):
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
            return Result(False, f"PAM helper failed: {tail[0][:200]}")


def _check(service: str, user: str, password: str) -> tuple[bool, str]:
    try:
        import pamela
    except ImportError:
        return False, "PAM error: the pamela module is missing (apt install python3-pamela, or pip install pamela)"
    try:
        # no setcred and no session: this is a password check, not a login to this machine. The
        # account stage runs on its own below, so its refusals are told apart from a wrong password
        # (pamela 1.2 would run it inside authenticate; Debian 12's 1.0 has no `check` and never does).
        try:
            pamela.authenticate(user, password, service=service, resetcred=0, check=False)
        except TypeError:
            pamela.authenticate(user, password, service=service, resetcred=0)
    except pamela.PAMError as exc:
        return False, f"wrong password or unknown account ({_pam_text(exc)})"
    try:
        pamela.check_account(user, service=service)  # expired, locked, outside its allowed times
    except pamela.PAMError as exc:
        return False, f"{ACCOUNT_REFUSED} ({_pam_text(exc)})"
    return True, "ok"


def _pam_text(exc: Exception) -> str:
    return str(exc)[:200]


def main() -> int:
    try:
        request = json.loads(sys.stdin.buffer.read(65536))
        service, user, password = (str(request[k]) for k in ("service", "user", "password"))
    except (ValueError, KeyError, TypeError):
        print(json.dumps({"ok": False, "reason": "bad request to the PAM helper"}))
        return 0
    ok, reason = _check(service, user, password)  # as root: pam_unix reads /etc/shadow itself
    print(json.dumps({"ok": ok, "reason": reason}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
