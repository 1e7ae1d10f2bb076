"""What one user's server should be (`ServerSpec`) and what it is doing (`ServerState`, `ServerStatus`).

Backends, the reconcile step and the status output all speak these types; nothing here knows
about jupyter or about processes.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field

from notebookd.config import TLS, Health, Limits, Logs, Restart, ServerSettings


class ServerState(enum.Enum):
    STOPPED = "stopped"      # no process, none scheduled
    STARTING = "starting"    # process spawned, not answering yet
    RUNNING = "running"      # answering on its port
    STOPPING = "stopping"    # told to go; SIGTERM sent, SIGKILL after the grace period
    BACKOFF = "backoff"      # exited or failed to start; restart scheduled
    CRASHLOOP = "crashloop"  # failed too often in a row; retried at the slowest pace
    ERROR = "error"          # cannot be started as configured (no such user, no port left)
    IDLE = "idle"            # configured, its socket held, no process: the next connection starts it

    @property
    def is_up(self) -> bool:
        return self is ServerState.RUNNING


# The only moves a server may make. Anything else is a bug, and `check_transition` says so.
TRANSITIONS: dict[ServerState, frozenset[ServerState]] = {
    ServerState.STOPPED: frozenset({ServerState.STARTING, ServerState.RUNNING,  # RUNNING: adopted
                                    ServerState.IDLE}),  # IDLE: start: on-demand
    ServerState.STARTING: frozenset({ServerState.RUNNING, ServerState.STOPPING, ServerState.BACKOFF,
                                     ServerState.CRASHLOOP}),
    ServerState.RUNNING: frozenset({ServerState.STOPPING, ServerState.BACKOFF, ServerState.CRASHLOOP}),
    ServerState.STOPPING: frozenset({ServerState.STOPPED, ServerState.BACKOFF, ServerState.CRASHLOOP,
                                     ServerState.IDLE}),  # IDLE: stopped for idleness
    ServerState.BACKOFF: frozenset({ServerState.STARTING, ServerState.STOPPED}),
    ServerState.CRASHLOOP: frozenset({ServerState.STARTING, ServerState.STOPPED}),
    ServerState.ERROR: frozenset(),
    ServerState.IDLE: frozenset({ServerState.STARTING, ServerState.STOPPED}),  # STARTING: a connection came
}


class TransitionError(AssertionError):
    pass


def check_transition(name: str, old: ServerState, new: ServerState) -> None:
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"{name}: {old.value} -> {new.value} is not a valid transition")


@dataclass(frozen=True)
class Account:
    """A Unix user as the server will run: looked up once per (re)load."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, sorted
    home: str
    shell: str


@dataclass(frozen=True)
class ServerSpec:
    """Everything that decides how one user's server runs. Equal specs mean nothing to restart."""

    account: Account
    ip: str
    port: int
    base_url: str  # with {user} filled in, ending in '/'
    root_dir: str  # absolute, ~ expanded
    settings: ServerSettings
    restart: Restart
    health: Health
    logs: Logs
    limits: Limits = Limits()  # enforced by the systemd backend only
    tls: TLS = TLS()  # the server speaks https itself unless tls.mode is off

    @property
    def name(self) -> str:
        return self.account.name

    def url(self, host: str | None = None) -> str:
        host = host or self.ip
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.tls.enabled else "http"
        return f"{scheme}://{host}:{self.port}{self.base_url}"


@dataclass
class ServerStatus:
    """One row of `notebookd status`: plain data, the CLI formats it."""

    name: str
    state: str
    port: int | None = None
    url: str | None = None
    pid: int | None = None
    since: float | None = None       # wall-clock time of the last state change
    started: float | None = None     # wall-clock time the current process became RUNNING
    restarts: int = 0
    memory: int | None = None        # RSS of the whole process tree, bytes
    last_error: str | None = None
    last_exit: str | None = None
    log_tail: list[str] = field(default_factory=list)  # last lines of its log, when it is failing

    def to_dict(self) -> dict:
        return asdict(self)
