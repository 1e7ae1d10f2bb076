"""The YAML config, parsed once into frozen dataclasses.

Every key is declared once, as a field of its section's dataclass: `setting(default, reader, help,
restart=...)`. The readers of a section, the top-level keys, what a reload may not change and the
checks of the example config (`etc/notebookd/notebookd.yaml`, tests/test_example_config.py) all
come from those declarations. Adding a key: one field here, its lines in the example config.

Problems raise `ConfigError`, one line naming file, line and key path. Nothing here looks at the
system (users, ports in use, directories): that is `checks.py`, so a config can be validated on
another machine.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, Callable

from notebookd import values as v
from notebookd.paths import Layout
from notebookd.yamlsource import ConfigError, Located, parse

BACKENDS = ("native", "supervisor", "systemd", "slurm")
USERNAME = v.USERNAME
AUTH_MODES = ("token", "password", "both")
TLS_MODES = ("off", "self-signed", "files")
SPAWN_MODES = ("exec", "fork")
START_MODES = ("always", "on-demand")


def setting(default: Any, read: Callable[[Located], Any] | None, help: str, *, restart: bool = False) -> Any:
    """Declare one config key: its default, the reader that checks its YAML value (values.py), one
    line of help, and `restart=True` if only a restart of notebookd takes a change (a reload refuses it).
    `read=None`: the key is assembled by `from_document` itself (it depends on other keys)."""
    return field(default=default, metadata={"read": read, "help": help, "restart": restart})


def section(cls: type, help: str, *, restart: bool = False) -> Any:
    """Declare a mapping of keys, read by `cls`'s own declarations (and its `check`, if it has one)."""
    return field(default=cls(), metadata={"section": cls, "help": help, "restart": restart})


def keys_of(cls: type) -> list[Field]:
    """The declared keys of a section, in declaration order (fields that are not keys are left out)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def _backend(item: Located) -> str:
    backend = v.string(item)
    if backend not in BACKENDS:
        raise item.error(f"{backend!r} is not an available backend (available: {', '.join(BACKENDS)})")
    return backend


def _spawn(item: Located) -> str:
    mode = v.string(item)
    if mode not in SPAWN_MODES:
        raise item.error(f"{mode!r} is not a spawn mode ({' or '.join(SPAWN_MODES)})")
    return mode


def _tls_mode(item: Located) -> str:
    if isinstance(item.value, bool):  # YAML 1.1 reads bare off/on/yes/no as booleans
        if item.value is False:
            return "off"
        raise item.error(f"{item.value!r} is not a mode (one of: {', '.join(TLS_MODES)})")
    return v.choice(*TLS_MODES)(item)


# ---- slurm: what each server's job asks for ----

_SLURM_TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE", re.I)
_SLURM_WORD = re.compile(r"[A-Za-z0-9_.,:=+*/@%-]+")
# sbatch options notebookd sets itself: who runs the job, with what environment, where it writes
_SLURM_OWN = re.compile(r"--(?:uid|gid|export|export-file|get-user-env|output|error|input|open-mode|job-name|chdir|"
                        r"wrap|parsable|array|requeue|no-requeue|test-only|hold|wait|batch|nodes|ntasks)(?:=|$)")


def _slurm_word(item: Located) -> str:
    text = v.string(item)
    if text and not _SLURM_WORD.fullmatch(text):
        raise item.error(f"{text!r} is not a Slurm value (letters, digits and . , : = + * / @ % - only)")
    return text


def _slurm_time(item: Located) -> str:
    text = v.string(item)
    if text and not _SLURM_TIME.fullmatch(text):
        raise item.error(f"{text!r} is not a Slurm time limit (minutes, HH:MM:SS or D-HH:MM:SS)")
    return text


def slurm_seconds(text: str) -> float | None:
    """A Slurm time limit in seconds (`man sbatch`, --time: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S); None: no limit."""
    if not text or text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:
        h, m, sec = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, sec = parts
    else:
        h, (m, sec) = 0, (parts + [0])[:2]
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + sec


def _slurm_extra(item: Located) -> tuple[str, ...]:
    words = v.str_list(item)
    for word, located in zip(words, item.value):
        if not word.startswith("--") or not _SLURM_WORD.fullmatch(word):
            raise located.error(f"{word!r}: give each sbatch option as one word, --name=value")
        if _SLURM_OWN.match(word):
            raise located.error(f"{word!r} is set by notebookd (who runs the job, its environment, its output)")
    return words


# ---- sections: each key declared once ----

@dataclass(frozen=True)
class Listen:
    ip: str = setting("127.0.0.1", v.ip, "the address every server binds to")
    ports: tuple[int, int] = setting((8800, 8899), v.port_range, "inclusive range for users without a port")
    allow_insecure: bool = setting(False, v.boolean, "accept a non-loopback ip without TLS")


@dataclass(frozen=True)
class TLS:
    """TLS of the servers themselves (`tls:`); the same certificate for every server."""

    mode: str = setting("off", _tls_mode, "off | self-signed | files")
    cert: str = setting("", v.optional_path, "mode files: the certificate (PEM, with its chain)")
    key: str = setting("", v.optional_path, "mode files: its private key")
    names: tuple[str, ...] = setting((), v.host_names, "self-signed: more DNS names or IPs besides this host's")
    valid_for: float = setting(365 * 86400.0, v.positive_duration, "self-signed: how long a certificate is valid")
    renew_before: float = setting(30 * 86400.0, v.duration, "self-signed: renew this long before it ends")

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def check(self, sec: _Section) -> None:
        if self.mode == "files":
            for name, what in (("cert", "certificate"), ("key", "private key")):
                if not getattr(self, name):
                    raise sec.item.error(f"mode files needs {name}: the path of the {what}")
        elif self.cert or self.key:
            raise (sec.keys.get("cert") or sec.keys["key"]).error(f"only used with mode files (mode is {self.mode})")
        if self.renew_before >= self.valid_for:
            raise (sec.keys.get("renew_before") or sec.keys["valid_for"]).error(
                "renew_before must be shorter than valid_for")


@dataclass(frozen=True)
class Proxy:
    """What `notebookd render nginx` puts in front of the servers."""

    listen: str = setting("80", v.nginx_listen, "nginx `listen`: a port or ADDRESS:PORT")
    server_name: str = setting("_", v.nginx_server_names, "nginx `server_name`")
    cert: str = setting("", v.optional_path, "TLS at nginx: certificate file (with key; both empty: plain HTTP)")
    key: str = setting("", v.optional_path, "TLS at nginx: key file")
    file: str = setting("", v.optional_path, "the daemon keeps this file equal to `render nginx` (servers that "
                        "move: Slurm jobs; users added or removed); empty: render by hand")
    reload: tuple[str, ...] = setting((), v.command, "run (as root) after each change of `file`, e.g. "
                                      "nginx -s reload")

    def check(self, sec: _Section) -> None:
        if bool(self.cert) != bool(self.key):
            raise sec.item.error("cert and key go together: give both for TLS at nginx, or neither")
        if self.reload and not self.file:
            raise sec.keys["reload"].error("reload goes with file: the command runs after notebookd rewrites it")
        if self.reload and not os.path.isabs(self.reload[0]):
            raise sec.keys["reload"].error(f"{self.reload[0]!r}: give the program's absolute path (root runs it)")


def _host_port(item: Located) -> tuple[str, int]:
    """`PORT` (loopback), `IP:PORT` or `[IPv6]:PORT`."""
    v.scalar(item)
    text = str(item.value).strip()
    m = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d+)|(\d+)", text)
    if not m:
        raise item.error(f"{text!r} is not PORT, IP:PORT or [IPv6]:PORT (e.g. 127.0.0.1:9750)")
    ip, port = m.group(1) or m.group(2) or "127.0.0.1", int(m.group(3) or m.group(4))
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        raise item.error(f"{ip!r} is not an IP address") from None
    if not 1 <= port <= 65535:
        raise item.error(f"{port} is not a valid port (1-65535)")
    return ip, port


@dataclass(frozen=True)
class Metrics:
    """Prometheus metrics (`metrics:`): an endpoint on the daemon's loop, a textfile, both or neither."""

    listen: tuple[str, int] | None = setting(None, v.optional(_host_port), "GET /metrics here (IP:PORT); empty: none")
    allow_insecure: bool = setting(False, v.boolean, "accept a non-loopback listen address")
    textfile: str = setting("", v.optional_path, "a .prom file for node_exporter's textfile collector; empty: none")
    interval: float = setting(15.0, v.positive_duration, "how often the textfile is rewritten")
    activity_interval: float = setting(60.0, v.positive_duration,
                                       "kernels, connections, last activity: asked of each server at most this often")

    @property
    def enabled(self) -> bool:
        return self.listen is not None or bool(self.textfile)

    def check(self, sec: _Section) -> None:
        if self.textfile and not self.textfile.endswith(".prom"):
            raise sec.keys["textfile"].error("must end in .prom (node_exporter's textfile collector reads only those)")
        if self.listen and not self.allow_insecure and not ipaddress.ip_address(self.listen[0]).is_loopback:
            raise sec.keys["listen"].error(
                f"{self.listen[0]} is reachable from other machines, and the metrics say who is active when "
                "(set metrics.allow_insecure: true to serve them there, best behind a firewall)")


_PAM_SERVICE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _pam_service(item: Located) -> str:
    name = v.string(item)
    if not _PAM_SERVICE.fullmatch(name):
        raise item.error(f"{name!r} is not a PAM service name (a file name in /etc/pam.d/)")
    return name


@dataclass(frozen=True)
class FrontDoor:
    """The login page in front of every server (`front_door:`): nginx asks notebookd on every request."""

    enabled: bool = setting(False, v.boolean, "a login page (PAM) and an nginx auth_request on every location")
    pam_service: str = setting("notebookd", _pam_service, "/etc/pam.d/<name>; the package ships `notebookd`")
    session_max_age: float = setting(8 * 3600.0, v.positive_duration, "a session ends this long after its login")
    idle_timeout: float = setting(3600.0, v.positive_duration, "... or after this long without a request")
    max_failures: int = setting(5, v.count, "failed logins in a row (per name, per address) before a delay")
    failure_delay: float = setting(30.0, v.positive_duration, "the first delay; doubling, up to 15 minutes")

    def check(self, sec: _Section) -> None:
        if self.idle_timeout > self.session_max_age:
            raise (sec.keys.get("idle_timeout") or sec.keys["session_max_age"]).error(
                "idle_timeout must not be longer than session_max_age")


def _check_front_door(door: FrontDoor, proxy: Proxy, item: Located | None, file: str) -> None:
    """The session cookie is Secure: browsers send it over https only (and to loopback, for a TLS
    terminator on this host, or tests); a plain-http front door elsewhere could log no one in."""
    if not door.enabled or proxy.cert or _loopback_listen(proxy.listen):
        return
    message = ("front_door needs TLS at nginx (proxy.cert and proxy.key), or proxy.listen on a loopback "
               "address behind another TLS terminator")
    if item is not None and isinstance(item.value, dict) and "enabled" in item.value:
        raise item.value["enabled"].error(message)
    raise ConfigError(file, None, "front_door.enabled", message)


def _loopback_listen(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    try:
        return bool(host) and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Kernel:
    """A kernelspec every server offers besides its default one (built from a `kernels.NAME:` entry)."""

    name: str
    display_name: str
    argv: tuple[str, ...]
    language: str = "python"
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class KernelEntry:
    """The keys of one `kernels.NAME:` entry; exactly one of argv, python, venv."""

    display_name: str = setting("", v.string, "shown in the launcher; default: the kernel's name")
    argv: tuple[str, ...] = setting((), v.str_list, "the kernel's command, with {connection_file}")
    python: str = setting("", v.absolute, "an interpreter with ipykernel")
    venv: str = setting("", v.absolute, "a venv with ipykernel")
    language: str = setting("python", v.string, "the kernel's language")
    env: tuple[tuple[str, str], ...] = setting((), v.env, "extra environment of the kernel")

    def check(self, sec: _Section) -> None:
        given = [k for k in ("argv", "python", "venv") if k in sec.keys]
        if len(given) != 1:
            raise sec.item.error("give exactly one of argv, python or venv" +
                                 (f" (got {', '.join(given)})" if given else ""))
        if "argv" in sec.keys:
            if not self.argv or not self.argv[0].startswith("/"):
                raise sec.keys["argv"].error("must start with an absolute path")
            if "{connection_file}" not in self.argv:
                raise sec.keys["argv"].error("must pass {connection_file} to the kernel")

    def kernel(self, name: str) -> Kernel:
        argv = self.argv or (self.python or self.venv.rstrip("/") + "/bin/python",
                             "-m", "ipykernel_launcher", "-f", "{connection_file}")
        return Kernel(name=name, display_name=self.display_name or name, argv=tuple(argv),
                      language=self.language, env=self.env)


@dataclass(frozen=True)
class Idle:
    """When a server counts as idle (README, "Idle servers"), and jupyter's own kernel culling."""

    stop_after: float | None = setting(None, v.optional(v.positive_duration),
                                       "stop a server with no activity for this long; empty: never")
    kernels_after: float | None = setting(None, v.optional(v.positive_duration),
                                          "jupyter culls kernels idle this long (cull_idle_timeout); empty: never")


@dataclass(frozen=True)
class Slurm:
    """backend: slurm: what a server's job asks for (`slurm:` the defaults, `users.NAME.slurm:` overrides keys
    but shared_dir); empty values are left to the cluster's defaults, and sbatch checks what is given."""

    partition: str = setting("", _slurm_word, "--partition")
    account: str = setting("", _slurm_word, "--account")
    qos: str = setting("", _slurm_word, "--qos")
    time: str = setting("", _slurm_time, "--time: minutes, HH:MM:SS or D-HH:MM:SS")
    cpus: int | None = setting(None, v.optional(v.int_range(1, 100000, "CPU count")), "--cpus-per-task")
    mem: str = setting("", _slurm_word, "--mem, Slurm's size syntax (4G, 500M)")
    gres: str = setting("", _slurm_word, "--gres, e.g. gpu:1")
    extra: tuple[str, ...] = setting((), _slurm_extra, "more sbatch options, one word each (--constraint=ib)")
    resubmit_before: float | None = setting(
        None, v.optional(v.positive_duration), "this long before the job's time limit, a new job takes over "
        "(on another node) once it answers, then the old one is cancelled; empty: the job ends at its limit")

    def check(self, sec: _Section) -> None:
        limit = slurm_seconds(self.time)
        if self.resubmit_before is not None and limit is not None and self.resubmit_before >= limit:
            raise (sec.keys.get("resubmit_before") or sec.keys.get("time") or sec.item).error(
                f"resubmit_before ({self.resubmit_before:g}s) must be shorter than the time limit ({limit:g}s)")
    shared_dir: str = setting("", v.optional_path, "a root-owned directory every node sees; empty: the run dir",
                              restart=True)


@dataclass(frozen=True)
class ServerSettings:
    """What a user's server runs with; `server:` gives the defaults, `users.NAME:` overrides them."""

    command: tuple[str, ...] = setting((), v.command, "empty: notebookd's own interpreter, -m jupyter_server")
    args: tuple[str, ...] = setting((), v.server_args, "extra command-line arguments for jupyter_server")
    root_dir: str = setting("~", v.root_dir, "the directory the server shows; ~ is the home, {user} the name")
    base_url: str = setting("/user/{user}/", v.base_url, "URL prefix of each server")
    path: str = setting("/usr/local/bin:/usr/bin:/bin", v.string, "PATH of the server, its kernels and terminals")
    env: tuple[tuple[str, str], ...] = setting((), v.env, "extra environment variables")
    frame_ancestors: tuple[str, ...] = setting(("'self'",), v.str_list, "CSP frame-ancestors (see embed:)")
    auth: str = setting("token", v.choice(*AUTH_MODES), "token | password | both")
    jupyter_config: str = setting("{}", v.jupyter_config, "extra traitlets config (kept as JSON text: hashable)")
    start_timeout: float = setting(60.0, v.positive_duration, "not ready this long after a start: restarted")
    stop_timeout: float = setting(10.0, v.positive_duration, "SIGTERM, then SIGKILL after this long")
    spawn: str = setting("exec", _spawn, "exec, or fork from a template that imported jupyter_server once")
    start: str = setting("always", v.choice(*START_MODES), "always, or on-demand: at the first connection")
    idle: Idle = section(Idle, "idle stop of servers, kernel culling")
    slurm: Slurm = Slurm()  # not a key of server: but of the top level and users.NAME: (from_document)

    def check(self, sec: _Section) -> None:
        """`spawn: fork` forks notebookd's own interpreter: it cannot run another command."""
        if self.spawn == "fork" and self.command:
            where = sec.keys.get("spawn") or sec.keys.get("command") or sec.item
            raise where.error("spawn: fork runs notebookd's own jupyter_server; with a `command`, use spawn: exec")
        if self.idle.stop_after is not None and self.idle.stop_after < self.start_timeout:
            where = sec.keys.get("idle") or sec.keys.get("start_timeout") or sec.item
            raise where.error(f"idle.stop_after ({self.idle.stop_after:g}s) is shorter than start_timeout "
                              f"({self.start_timeout:g}s)")


@dataclass(frozen=True)
class Restart:
    backoff_min: float = setting(1.0, v.duration, "the first wait before a restart")
    backoff_max: float = setting(60.0, v.duration, "the longest wait (it doubles at each failure in a row)")
    crashloop_after: int = setting(5, v.count, "failed starts in a row before the server is shown as crashloop")
    reset_after: float = setting(60.0, v.duration, "running this long clears the failure count")

    def delay(self, failures: int) -> float:
        """The wait before the next start after `failures` failed starts in a row: doubling from backoff_min,
        at most backoff_max, and always backoff_max in a crash loop."""
        if failures >= self.crashloop_after:
            return self.backoff_max
        return min(self.backoff_max, self.backoff_min * 2 ** (failures - 1))

    def check(self, sec: _Section) -> None:
        if "backoff_min" in sec.keys and self.backoff_min <= 0:
            raise sec.keys["backoff_min"].error("must be more than zero")
        if self.backoff_max < self.backoff_min:
            raise (sec.keys.get("backoff_max") or sec.keys["backoff_min"]).error(
                "backoff_max must not be less than backoff_min")


@dataclass(frozen=True)
class Health:
    interval: float = setting(30.0, v.duration, "how often a running server is probed")
    timeout: float = setting(10.0, v.duration, "how long a probe may take")
    failures: int = setting(3, v.count, "failed probes in a row before a restart")

    def check(self, sec: _Section) -> None:
        for name in ("interval", "timeout"):
            if name in sec.keys and getattr(self, name) <= 0:
                raise sec.keys[name].error("must be more than zero")


@dataclass(frozen=True)
class Logs:
    dir: str = setting("", v.absolute, "where <user>.log goes (default: the layout's log dir)")
    max_size: int = setting(10 * 2**20, v.size, "rotate once a log reaches this size")
    keep: int = setting(5, v.count, "rotated files kept")

    def check(self, sec: _Section) -> None:
        if "max_size" in sec.keys and self.max_size < 4096:
            raise sec.keys["max_size"].error("must be at least 4KiB")


@dataclass(frozen=True)
class Supervisor:
    """Where the supervisord that runs the servers listens and reads its program files."""

    socket: str = setting("/run/supervisor.sock", v.absolute, "supervisord's unix_http_server file")
    conf_d: str = setting("/etc/supervisor/conf.d", v.absolute, "a directory its [include] files= reads")


@dataclass(frozen=True)
class Limits:
    """Resource limits per server (systemd backend: MemoryMax=, CPUQuota= of its unit)."""

    memory_max: int | None = setting(None, v.optional(v.size), "bytes per server; empty: no limit")
    cpu_quota: int | None = setting(None, v.optional(v.percent), "percent of one CPU (200%: two cores)")

    def __bool__(self) -> bool:
        return self.memory_max is not None or self.cpu_quota is not None

    def check(self, sec: _Section) -> None:
        if self.memory_max is not None and self.memory_max < 16 * 2**20:
            raise sec.keys["memory_max"].error("must be at least 16MiB (a jupyter server alone needs more)")


@dataclass(frozen=True)
class Embed:
    """`embed:`, the lab-wide place for iframe embedding; users.NAME.frame_ancestors overrides it."""

    frame_ancestors: tuple[str, ...] = setting(("'self'",), v.str_list, "CSP frame-ancestors of every server")


@dataclass(frozen=True)
class GroupEntry:
    name: str
    line: int


@dataclass(frozen=True)
class UserEntry:
    name: str
    line: int | None  # where it was listed; None for members of `groups`
    settings: ServerSettings
    # `users.NAME:` takes this and every key of ServerSettings
    port: int | None = setting(None, v.port, "a fixed port; without one, a user gets one from listen.ports")


def _groups(item: Located) -> tuple[GroupEntry, ...]:
    if item.value is None:
        return ()
    if not isinstance(item.value, list):
        raise item.error(f"expected a list of Unix group names, got {v.kind(item.value)}")
    return tuple(GroupEntry(v.unix_name("group")(x), x.line) for x in item.value)


_KERNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _kernels(item: Located) -> tuple[Kernel, ...]:
    out = []
    for name, entry in v.mapping(item).items():
        if not _KERNEL_NAME.fullmatch(name):
            raise entry.error("not a valid kernel name (letters, digits, '.', '_', '-')")
        out.append(read_section(KernelEntry, entry).kernel(name))
    return tuple(out)


@dataclass(frozen=True)
class Config:
    """The whole file. The order of the keys is the order they are read (and errors found) in."""

    file: str
    backend: str = setting("native", _backend, "native | supervisor | systemd | slurm", restart=True)
    listen: Listen = section(Listen, "where the servers listen")
    tls: TLS = section(TLS, "TLS of the servers themselves")
    proxy: Proxy = section(Proxy, "what `notebookd render nginx` puts in front")
    front_door: FrontDoor = section(FrontDoor, "the login page (PAM) in front of every server")
    kernels: tuple[Kernel, ...] = setting((), _kernels, "kernels every server offers besides its default one")
    embed: Embed = section(Embed, "embedding in other sites")
    slurm: Slurm = section(Slurm, "for backend: slurm: what each server's job asks for")  # before server:
    server: ServerSettings = setting(ServerSettings(), None, "defaults for every user's server")  # after embed:
    restart: Restart = section(Restart, "restarts with backoff")
    health: Health = section(Health, "health probes of running servers")
    logs: Logs = section(Logs, "the servers' log files")
    supervisor: Supervisor = section(Supervisor, "for backend: supervisor", restart=True)
    limits: Limits = section(Limits, "resource limits per server")
    metrics: Metrics = section(Metrics, "Prometheus metrics: an endpoint, a textfile for node_exporter")
    # tokens, passwords, records, ports live there: a daemon that moved only some of them would lose track
    state_dir: str = setting("", v.absolute, "tokens, password hashes, certificates, ports, records", restart=True)
    groups: tuple[GroupEntry, ...] = setting((), _groups, "every member of these Unix groups gets a server")
    users: tuple[UserEntry, ...] = setting((), None, "users and their own settings")  # after server:

    def user(self, name: str) -> UserEntry | None:
        return next((u for u in self.users if u.name == name), None)

    def entry_for(self, name: str) -> UserEntry:
        """The listed entry, or the defaults for a user who comes from a group or the caller."""
        return self.user(name) or UserEntry(name, None, self.server)


# ---- what the declarations give ----

def _readers(cls: type) -> dict[str, Callable[[Located], Any]]:
    return {f.name: f.metadata.get("read") or (lambda item, cls=f.metadata["section"]: read_section(cls, item))
            for f in keys_of(cls)}


_TOP_KEYS = tuple(f.name for f in keys_of(Config))
_SERVER_KEYS = _readers(ServerSettings)
# users.NAME.slurm: is read over the top-level slurm: (in _users), so it is taken as it comes here
_USER_KEYS = {**_readers(UserEntry), **_SERVER_KEYS, "slurm": lambda item: item}


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The keys (`backend`, `supervisor.socket`, ...) whose change only a restart of notebookd takes."""
    changed = []
    for f in keys_of(Config):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a == b:
            continue
        if f.metadata["restart"]:
            if "section" in f.metadata:
                changed += [f"{f.name}.{s.name}" for s in keys_of(f.metadata["section"])
                            if getattr(a, s.name) != getattr(b, s.name)]
            else:
                changed.append(f.name)
        elif "section" in f.metadata:
            changed += [f"{f.name}.{s.name}" for s in keys_of(f.metadata["section"])
                        if s.metadata["restart"] and getattr(a, s.name) != getattr(b, s.name)]
    return changed


# ---- reading ----

class _Section:
    """Reads the keys of one mapping; unknown keys are errors with a suggestion."""

    def __init__(self, item: Located, known: dict[str, Callable[[Located], Any]]):
        self.item, self.known = item, known
        self.keys = v.mapping(item)
        for name, value in self.keys.items():
            if name not in known:
                hint = difflib.get_close_matches(name, known, n=1)
                also = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(sorted(known))})"
                raise value.error(f"unknown key{also}")

    def values(self) -> dict[str, Any]:
        return {name: self.known[name](value) for name, value in self.keys.items()}


def read_section(cls: type, item: Located, base: Any = None, known: dict | None = None) -> Any:
    """A section's value: `base` (default: the declared defaults) with the keys given in `item`."""
    sec = _Section(item, known or _readers(cls))
    value = replace(cls() if base is None else base, **sec.values())
    if hasattr(value, "check"):
        value.check(sec)
    return value


def load(layout: Layout, text: str | None = None) -> Config:
    """Read and check the config file named by `layout` (or `text` standing in for it)."""
    file = layout.config
    if text is None:
        try:
            with open(file, encoding="utf-8") as fh:
                text = fh.read()
        except FileNotFoundError:
            if layout.config_explicit:
                raise ConfigError(file, None, "", "no such file") from None
            text = ""  # no file: every default, which serves just the caller in single-user mode
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(file, None, "", f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return from_document(parse(text, file), layout)


def from_document(root: Located, layout: Layout) -> Config:
    file = root.file
    if root.value is None:  # a document of only comments (after a `---`): every default
        root = replace(root, value={})
    if not isinstance(root.value, dict):
        raise ConfigError(file, root.line, "", f"the file must be a mapping of settings, got {v.kind(root.value)}")
    given = _Section(root, {name: (lambda item: item) for name in _TOP_KEYS}).keys
    # what depends on the machine's layout rather than on a declaration
    got: dict[str, Any] = {"state_dir": layout.state_dir, "logs": Logs(dir=layout.log_dir)}
    for f in keys_of(Config):
        if f.name == "server":
            got["server"] = replace(_server(given, got.get("embed", Embed())), slurm=got.get("slurm", Slurm()))
        elif f.name == "users":
            got["users"] = _users(given.get("users"), got["server"], file)
        elif f.name in given:
            item = given[f.name]
            got[f.name] = (read_section(f.metadata["section"], item, got.get(f.name)) if "section" in f.metadata
                           else f.metadata["read"](item))
        if f.name == "tls":
            _check_remote_access(got.get("listen", Listen()), got.get("tls", TLS()), given.get("listen"), file)
        if f.name == "front_door":
            _check_front_door(got.get("front_door", FrontDoor()), got.get("proxy", Proxy()), given.get("front_door"),
                              file)
    _check_on_demand(got.get("backend", "native"), given)
    return Config(file=file, **got)


def _check_on_demand(backend: str, given: dict[str, Located]) -> None:
    """Only backends that hold users' ports while no server runs can start on demand and stop when
    idle: native (the daemon's sockets) and systemd (socket units)."""
    if backend in ("native", "systemd"):
        return
    places = [given["server"]] if "server" in given else []
    if "users" in given and isinstance(given["users"].value, dict):
        places += list(given["users"].value.values())
    for place in places:
        if not isinstance(place.value, dict):
            continue
        for key in ("start", "idle"):
            item = place.value.get(key)
            if item is None or (key == "start" and item.value == "always"):
                continue
            if key == "idle" and not (isinstance(item.value, dict) and item.value.get("stop_after") is not None
                                      and item.value["stop_after"].value not in (None, "")):
                continue
            if backend == "slurm":  # README, backend slurm: what on-demand would need there
                raise item.error("needs backend: native or systemd (with backend: slurm the server's port is on a compute "
                                 "node, not known before the job runs: nothing on this machine can hold it; "
                                 "idle stop of jobs is not done yet)")
            raise item.error(f"needs backend: native or systemd (backend: {backend} binds its servers' ports "
                             "itself, so nothing holds a port while its server is down)")


def _server(given: dict[str, Located], embed: Embed) -> ServerSettings:
    server = replace(ServerSettings(), frame_ancestors=embed.frame_ancestors)
    if "embed" in given and "server" in given and isinstance(given["server"].value, dict):
        ours, theirs = v.mapping(given["embed"]).get("frame_ancestors"), given["server"].value.get("frame_ancestors")
        if ours is not None and theirs is not None:
            raise theirs.error(f"already given under embed: (line {ours.line}); give it once")
    if "server" in given:
        server = read_section(ServerSettings, given["server"], server)
    return server


def _users(item: Located | None, server: ServerSettings, file: str) -> tuple[UserEntry, ...]:
    users: list[UserEntry] = []
    seen_ports: dict[int, tuple[str, int]] = {}
    for name, entry in v.mapping(item).items() if item is not None else ():
        v.unix_name("user")(Located(name, entry.line, entry.path, file))
        if name == "root":
            raise entry.error("servers never run as root")
        sec = _Section(entry, _USER_KEYS)
        values = sec.values()
        port = values.pop("port", None)
        if port is not None:
            if port in seen_ports:
                other, line = seen_ports[port]
                raise sec.keys["port"].error(f"port {port} is already given to {other} (line {line})")
            seen_ports[port] = (name, sec.keys["port"].line)
        if "slurm" in values:  # a user's slurm: keys override the defaults one by one; shared_dir is lab-wide
            known = {f.name: f.metadata["read"] for f in keys_of(Slurm) if f.name != "shared_dir"}
            values["slurm"] = read_section(Slurm, values["slurm"], server.slurm, known)
        if "env" in values:  # a user's env adds to (and may override) the defaults
            values["env"] = tuple(sorted({**dict(server.env), **dict(values["env"])}.items()))
        settings = replace(server, **values)
        settings.check(sec)
        users.append(UserEntry(name, entry.line, settings, port))
    return tuple(users)


def _check_remote_access(listen: Listen, tls: TLS, item: Located | None, file: str) -> None:
    """The old "listening on all IP addresses and not using encryption" warning, as a rule."""
    if tls.enabled or listen.allow_insecure or ipaddress.ip_address(listen.ip).is_loopback:
        return
    message = (f"{listen.ip} is reachable from other machines but tls.mode is off: tokens, passwords and "
               "notebooks would cross the network in clear (set tls.mode to self-signed or files, "
               "or listen.allow_insecure: true)")
    if item is not None and isinstance(item.value, dict) and "ip" in item.value:
        raise item.value["ip"].error(message)
    raise ConfigError(file, None, "listen.ip", message)
