"""The PAM helper the daemon runs per login (pam.py): kept to json, sys and pamela, so it starts fast.

    python -I -m notebookd.frontdoor.pamhelper   < {"service": …, "user": …, "password": …}
"""

import json
import sys

ACCOUNT_REFUSED = "account refused by PAM"  # the password was right; the account stage said no


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
