"""Where things live, for the system daemon (root) and for the single-user mode.

Kept free of heavy imports: the status path of the CLI uses it to find the control socket.
"""

import os
from collections import namedtuple

SYSTEM_CONFIG = "/etc/notebookd/notebookd.yaml"
SYSTEM_RUN_DIR = "/run/notebookd"
SYSTEM_STATE_DIR = "/var/lib/notebookd"
SYSTEM_LOG_DIR = "/var/log/notebookd"
SOCKET_NAME = "control.sock"


# A named tuple, not a dataclass: `dataclasses` pulls in `inspect`, and every CLI call (status
# included) imports this module. config_explicit: named by --config or $NOTEBOOKD_CONFIG (a missing
# file is then an error).
class Layout(namedtuple("Layout", "system config config_explicit run_dir state_dir log_dir")):
    """The places one notebookd instance uses; `system` is True for the root daemon."""

    __slots__ = ()

    @property
    def socket(self) -> str:
        return os.path.join(self.run_dir, SOCKET_NAME)


def _user_state_home() -> str:
    return os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")


def _user_run_dir() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK):
        return os.path.join(runtime, "notebookd")
    return os.path.join(_user_state_home(), "notebookd", "run")


def layout(config: str | None = None, euid: int | None = None) -> Layout:
    """The layout for this process: root gets the system paths, anyone else their own."""
    system = (os.geteuid() if euid is None else euid) == 0
    explicit = config or os.environ.get("NOTEBOOKD_CONFIG")
    if system:
        default_config = SYSTEM_CONFIG
        run_dir, state_dir, log_dir = SYSTEM_RUN_DIR, SYSTEM_STATE_DIR, SYSTEM_LOG_DIR
    else:
        config_home = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        default_config = os.path.join(config_home, "notebookd", "notebookd.yaml")
        state_dir = os.path.join(_user_state_home(), "notebookd")
        run_dir, log_dir = _user_run_dir(), os.path.join(state_dir, "logs")
    return Layout(
        system=system,
        config=explicit or default_config,
        config_explicit=bool(explicit),
        run_dir=os.environ.get("NOTEBOOKD_RUN_DIR") or run_dir,
        state_dir=state_dir,
        log_dir=log_dir,
    )


def client_socket(config: str | None = None) -> str:
    """The socket a CLI call should talk to.

    A non-root caller talks to their own single-user daemon when one is running, else to the
    system daemon, which answers for the caller's own server only.
    """
    if os.environ.get("NOTEBOOKD_RUN_DIR"):
        return os.path.join(os.environ["NOTEBOOKD_RUN_DIR"], SOCKET_NAME)
    mine = layout(config).socket
    if os.geteuid() != 0 and not os.path.exists(mine):
        return os.path.join(SYSTEM_RUN_DIR, SOCKET_NAME)
    return mine
