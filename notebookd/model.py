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
    STARTING = "starting"    # process spawned (or found, left by an earlier daemon), not answering yet
    RUNNING = "running"      # answering on its port
    STOPPING = "stopping"    # told to go; SIGTERM sent, SIGKILL after the grace period
    BACKOFF = "backoff"      # exited or failed to start; restart scheduled
    CRASHLOOP = "crashloop"  # failed too often in a row; retried at the slowest pace
    ERROR = "error"          # cannot be started as configured (no such user, no port left)
    IDLE = "idle"            # configured, its socket held, no process: the next connection starts it


S = ServerState

# The only moves a server may make, for every backend. Anything else is a bug, and `check_transition`
# says so. An adopted server goes STOPPED -> STARTING ("adopting pid N") -> RUNNING once it answers.
TRANSITIONS: dict[ServerState, frozenset[ServerState]] = {
    S.STOPPED: frozenset({S.STARTING, S.IDLE}),  # IDLE: start: on-demand
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.BACKOFF, S.CRASHLOOP}),
    S.RUNNING: frozenset({S.STOPPING, S.BACKOFF, S.CRASHLOOP}),
    S.STOPPING: frozenset({S.STOPPED, S.BACKOFF, S.CRASHLOOP, S.IDLE}),  # IDLE: stopped for idleness
    # CRASHLOOP: a process manager that gave up after its own retries (supervisord FATAL, systemd failed)
    # IDLE from BACKOFF and CRASHLOOP: an on-demand server whose restart waits for a connection (managers
    # that hold the port: a socket unit)
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.CRASHLOOP, S.IDLE}),
    S.CRASHLOOP: frozenset({S.STARTING, S.STOPPED, S.IDLE}),
    S.ERROR: frozenset(),
    S.IDLE: frozenset({S.STARTING, S.STOPPED}),  # STARTING: a connection is pending on the held socket
}

# States a look at a process manager can miss between two polls: it starts a process, or sees one exit
# and waits to restart it, on its own. Only these may be passed through unseen (`path`).
UNSEEN = (S.STARTING, S.BACKOFF)


class TransitionError(AssertionError):
    pass


def check_transition(name: str, old: ServerState, new: ServerState) -> None:
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"{name}: {old.value} -> {new.value} is not a valid transition")


def path(name: str, old: ServerState, new: ServerState) -> list[ServerState]:
    """The moves from `old` to an observed `new`: [new] when the table allows it, else the shortest way
    through states a poll may have missed (UNSEEN); anything else is a TransitionError."""
    if new is old:
        return []
    if new in TRANSITIONS[old]:
        return [new]
    for via in UNSEEN:
        if via in TRANSITIONS[old] and new in TRANSITIONS[via]:
            return [via, new]
    for a in UNSEEN:
        for b in UNSEEN:
            if a is not b and a in TRANSITIONS[old] and b in TRANSITIONS[a] and new in TRANSITIONS[b]:
                return [a, b, new]
    check_transition(name, old, new)  # raises
    return [new]


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
    url: str | None = None           # where users open it: nginx's public address if `proxy:` names one
    local_url: str | None = None     # the server's own address (loopback, or its Slurm node)
    pid: int | None = None
    since: float | None = None       # wall-clock time of the last state change
    started: float | None = None     # wall-clock time the current process became RUNNING
    restarts: int = 0
    memory: int | None = None        # RSS of the whole process tree, bytes
    kernels: int | None = None       # from jupyter's /api/status (activity.py); None: not known
    connections: int | None = None
    last_activity: float | None = None  # wall clock, jupyter's own figure
    last_error: str | None = None
    last_exit: str | None = None
    log_tail: list[str] = field(default_factory=list)  # last lines of its log, when it is failing

    def to_dict(self) -> dict:
        return asdict(self)
