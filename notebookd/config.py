"""The YAML config, parsed once into frozen dataclasses.

Every key is declared once here, with its type, default and check; `etc/notebookd/notebookd.yaml`
documents them and a test keeps the two in step. Problems raise `ConfigError`, one line naming
file, line and key path. Nothing here looks at the system (users, ports in use, directories):
that is `checks.py`, so a config can be validated on another machine.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
import shlex
from dataclasses import dataclass, replace
from typing import Any, Callable

from notebookd.paths import Layout
from notebookd.units import parse_duration, parse_size
from notebookd.yamlsource import ConfigError, Located, parse

BACKENDS = ("native", "supervisor", "systemd")
USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


@dataclass(frozen=True)
class Listen:
    ip: str = "127.0.0.1"
    ports: tuple[int, int] = (8800, 8899)  # inclusive range for automatic ports
    allow_insecure: bool = False  # a non-loopback ip without TLS is refused unless this is true


AUTH_MODES = ("token", "password", "both")
TLS_MODES = ("off", "self-signed", "files")


@dataclass(frozen=True)
class TLS:
    """TLS of the servers themselves (`tls:`); the same certificate for every server."""

    mode: str = "off"
    cert: str = ""  # files: the admin's certificate (PEM, with its chain) and key
    key: str = ""
    names: tuple[str, ...] = ()  # self-signed: more DNS names or IPs besides this host's own
    valid_for: float = 365 * 86400.0
    renew_before: float = 30 * 86400.0

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


@dataclass(frozen=True)
class Proxy:
    """What `notebookd render nginx` puts in front of the servers."""

    listen: str = "80"  # nginx `listen`: a port or ADDRESS:PORT
    server_name: str = "_"
    cert: str = ""  # TLS at nginx: certificate and key files; both empty: plain HTTP
    key: str = ""


@dataclass(frozen=True)
class FrontDoor:
    """The login page in front of every server (`front_door:`): nginx asks notebookd per request."""

    enabled: bool = False
    pam_service: str = "notebookd"  # /etc/pam.d/<name>; the package ships one (common-auth, common-account)
    session_max_age: float = 8 * 3600.0  # a session ends this long after its login, used or not
    idle_timeout: float = 3600.0  # ... or after this long without a request
    max_failures: int = 5  # failed logins in a row (per user name, per client address) before a delay
    failure_delay: float = 30.0  # the first delay; it doubles with each further failure, up to 15 min


@dataclass(frozen=True)
class Kernel:
    """A kernelspec every server offers besides its default one (`kernels.NAME:`)."""

    name: str
    display_name: str
    argv: tuple[str, ...]
    language: str = "python"
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ServerSettings:
    """What a user's server runs with; `server:` gives the defaults, `users.NAME:` overrides them."""

    command: tuple[str, ...] = ()  # empty: notebookd's own interpreter, `-m jupyter_server`
    args: tuple[str, ...] = ()
    root_dir: str = "~"
    base_url: str = "/user/{user}/"
    path: str = "/usr/local/bin:/usr/bin:/bin"
    env: tuple[tuple[str, str], ...] = ()
    frame_ancestors: tuple[str, ...] = ("'self'",)
    auth: str = "token"  # token | password | both
    jupyter_config: str = "{}"  # JSON text: extra traitlets config, kept hashable
    start_timeout: float = 60.0
    stop_timeout: float = 10.0
    spawn: str = "exec"  # or "fork": from a template that imported jupyter_server once (forkserver.py)


SPAWN_MODES = ("exec", "fork")


@dataclass(frozen=True)
class Restart:
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    crashloop_after: int = 5  # consecutive failed starts before the server is shown as a crash loop
    reset_after: float = 60.0  # running this long clears the failure count


@dataclass(frozen=True)
class Health:
    interval: float = 30.0
    timeout: float = 10.0
    failures: int = 3


@dataclass(frozen=True)
class Logs:
    dir: str = ""
    max_size: int = 10 * 2**20
    keep: int = 5


@dataclass(frozen=True)
class Supervisor:
    """Where the supervisord that runs the servers listens and reads its program files."""

    socket: str = "/run/supervisor.sock"  # Debian's supervisord: unix_http_server file
    conf_d: str = "/etc/supervisor/conf.d"  # a directory its [include] files= reads


@dataclass(frozen=True)
class Limits:
    """Resource limits per server (systemd backend: MemoryMax=, CPUQuota= of its unit)."""

    memory_max: int | None = None  # bytes; None: no limit
    cpu_quota: int | None = None  # percent of one CPU (200: two cores); None: no limit

    def __bool__(self) -> bool:
        return self.memory_max is not None or self.cpu_quota is not None


@dataclass(frozen=True)
class UserEntry:
    name: str
    line: int | None  # where it was listed; None for members of `groups`
    port: int | None
    settings: ServerSettings


@dataclass(frozen=True)
class GroupEntry:
    name: str
    line: int


@dataclass(frozen=True)
class Config:
    file: str
    backend: str = "native"
    listen: Listen = Listen()
    server: ServerSettings = ServerSettings()
    restart: Restart = Restart()
    health: Health = Health()
    logs: Logs = Logs()
    supervisor: Supervisor = Supervisor()
    limits: Limits = Limits()
    state_dir: str = ""
    groups: tuple[GroupEntry, ...] = ()
    users: tuple[UserEntry, ...] = ()
    tls: TLS = TLS()
    proxy: Proxy = Proxy()
    kernels: tuple[Kernel, ...] = ()
    front_door: FrontDoor = FrontDoor()

    def user(self, name: str) -> UserEntry | None:
        return next((u for u in self.users if u.name == name), None)

    def entry_for(self, name: str) -> UserEntry:
        """The listed entry, or the defaults for a user who comes from a group or the caller."""
        return self.user(name) or UserEntry(name, None, None, self.server)


# ---- scalar readers: each takes a Located and returns a checked value or raises its error ----

def _str(item: Located) -> str:
    if isinstance(item.value, bool) or not isinstance(item.value, (str, int, float)):
        raise item.error(f"expected a string, got {_kind(item.value)}")
    return str(item.value)


def _scalar(item: Located) -> None:
    if isinstance(item.value, (dict, list)) or item.value is None:
        raise item.error(f"expected a single value, got {_kind(item.value)}")


def _int_range(low: int, high: int, what: str) -> Callable[[Located], int]:
    def read(item: Located) -> int:
        _scalar(item)
        v = item.value
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise item.error(f"{v!r} is not a valid {what} ({low}-{high})")
        return v
    return read


_port = _int_range(1, 65535, "port")


def _duration(item: Located) -> float:
    _scalar(item)
    try:
        return parse_duration(item.value)
    except ValueError as exc:
        raise item.error(str(exc)) from None


def _size(item: Located) -> int:
    _scalar(item)
    try:
        return parse_size(item.value)
    except ValueError as exc:
        raise item.error(str(exc)) from None


def _ip(item: Located) -> str:
    try:
        return str(ipaddress.ip_address(_str(item)))
    except ValueError:
        raise item.error(f"{item.value!r} is not an IP address (e.g. 127.0.0.1, ::1, 0.0.0.0)") from None


def _port_range(item: Located) -> tuple[int, int]:
    _scalar(item)
    v = item.value
    if isinstance(v, int) and not isinstance(v, bool):
        low = high = _port(item)
    else:
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", str(v))
        if not m:
            raise item.error(f"{v!r} is not a port range (e.g. 8800-8899)")
        low, high = int(m.group(1)), int(m.group(2))
        for p in (low, high):
            if not 1 <= p <= 65535:
                raise item.error(f"{p} is not a valid port (1-65535)")
        if low > high:
            raise item.error(f"range {low}-{high} is empty")
    return low, high


def _command(item: Located) -> tuple[str, ...]:
    if isinstance(item.value, str):
        try:
            words = tuple(shlex.split(item.value))
        except ValueError as exc:
            raise item.error(f"cannot split command: {exc}") from None
        if not words:
            raise item.error("the command is empty")
    else:
        words = _str_list(item)  # [] means the default command
    return words


def _str_list(item: Located) -> tuple[str, ...]:
    if not isinstance(item.value, list):
        raise item.error(f"expected a list, got {_kind(item.value)}")
    return tuple(_str(x) for x in item.value)


def _base_url(item: Located) -> str:
    url = _str(item)
    if not url.startswith("/"):
        raise item.error(f"{url!r} must start with '/'")
    _check_placeholders(item, url)
    return url if url.endswith("/") else url + "/"


def _root_dir(item: Located) -> str:
    path = _str(item)
    if not (path.startswith("/") or path == "~" or path.startswith("~/")):
        raise item.error(f"{path!r} must be absolute or start with '~/' (the user's home)")
    _check_placeholders(item, path)
    return path


def _check_placeholders(item: Located, text: str) -> None:
    for name in re.findall(r"\{([^}]*)\}", text):
        if name != "user":
            raise item.error(f"unknown placeholder {{{name}}} (only {{user}} is known)")
    if "{" in text.replace("{user}", "") or "}" in text.replace("{user}", ""):
        raise item.error(f"{text!r} has an unmatched brace (the only placeholder is {{user}})")


def _env(item: Located) -> tuple[tuple[str, str], ...]:
    mapping = _mapping(item)
    out = []
    for key, value in mapping.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise value.error("not a valid environment variable name")
        if key.startswith("JUPYTER_TOKEN") or key.startswith("NOTEBOOKD_"):
            raise value.error("is set by notebookd and cannot be overridden")
        out.append((key, "" if value.value is None else _str(value)))
    return tuple(sorted(out))


def _jupyter_config(item: Located) -> str:
    mapping = _mapping(item)
    for key, value in mapping.items():
        if not isinstance(value.value, dict):
            raise value.error("expected a mapping of trait names to values (e.g. ServerApp: {...})")
    return json.dumps(_plain(item), sort_keys=True)


def _plain(item: Located) -> Any:
    if isinstance(item.value, dict):
        return {k: _plain(v) for k, v in item.value.items()}
    if isinstance(item.value, list):
        return [_plain(v) for v in item.value]
    if not isinstance(item.value, (str, int, float, bool, type(None))):
        raise item.error(f"{_kind(item.value)} values cannot be passed to jupyter")
    return item.value


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), type(value).__name__)


def _mapping(item: Located) -> dict[str, Located]:
    if item.value is None:
        return {}
    if not isinstance(item.value, dict):
        raise item.error(f"expected a mapping, got {_kind(item.value)}")
    return item.value


def _optional(read: Callable[[Located], Any]) -> Callable[[Located], Any]:
    """`read`, or None for an empty value (`memory_max:` or `memory_max: null`: no limit)."""
    def wrapped(item: Located) -> Any:
        return None if item.value is None else read(item)
    return wrapped


def _percent(item: Located) -> int:
    _scalar(item)
    m = re.fullmatch(r"\s*(\d+)\s*%\s*", str(item.value))
    if isinstance(item.value, bool) or not m or not 1 <= int(m.group(1)) <= 100000:
        raise item.error(f"{item.value!r} is not a CPU quota (e.g. 50%, 200% for two cores)")
    return int(m.group(1))


def _spawn(item: Located) -> str:
    mode = _str(item)
    if mode not in SPAWN_MODES:
        raise item.error(f"{mode!r} is not a spawn mode ({' or '.join(SPAWN_MODES)})")
    return mode


def _check_spawn(settings: ServerSettings, section: _Section) -> None:
    """`spawn: fork` forks notebookd's own interpreter: it cannot run another command."""
    if settings.spawn == "fork" and settings.command:
        where = section.keys.get("spawn") or section.keys.get("command") or section.item
        raise where.error("spawn: fork runs notebookd's own jupyter_server; with a `command`, use spawn: exec")


def _positive_duration(item: Located) -> float:
    seconds = _duration(item)
    if seconds <= 0:
        raise item.error("must be more than zero")
    return seconds


# ---- sections ----

class _Section:
    """Reads the keys of one mapping; unknown keys are errors with a suggestion."""

    def __init__(self, item: Located, known: dict[str, Callable[[Located], Any]]):
        self.item, self.known = item, known
        self.keys = _mapping(item)
        for key, value in self.keys.items():
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                also = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(sorted(known))})"
                raise value.error(f"unknown key{also}")

    def values(self) -> dict[str, Any]:
        return {key: self.known[key](value) for key, value in self.keys.items()}


_SERVER_KEYS: dict[str, Callable[[Located], Any]] = {
    "command": _command,
    "args": lambda item: _args(item),
    "root_dir": _root_dir,
    "base_url": _base_url,
    "path": _str,
    "env": _env,
    "frame_ancestors": _str_list,
    "auth": lambda item: _choice(item, AUTH_MODES),
    "jupyter_config": _jupyter_config,
    "start_timeout": _positive_duration,
    "stop_timeout": _positive_duration,
    "spawn": _spawn,
}
_USER_KEYS = {"port": _port, **_SERVER_KEYS}

_TOP_KEYS = ("backend", "listen", "server", "restart", "health", "logs", "supervisor", "limits", "state_dir",
             "groups", "users", "tls", "proxy", "kernels", "embed", "front_door")


def _positive(item_key: str, value: float, section: _Section) -> None:
    if value <= 0:
        raise section.keys[item_key].error("must be more than zero")


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
        raise ConfigError(file, root.line, "", f"the file must be a mapping of settings, got {_kind(root.value)}")
    top = _Section(root, {key: (lambda item: item) for key in _TOP_KEYS})
    keys = top.keys

    backend = "native"
    if "backend" in keys:
        backend = _str(keys["backend"])
        if backend not in BACKENDS:
            raise keys["backend"].error(f"{backend!r} is not an available backend (available: {', '.join(BACKENDS)})")

    listen = Listen()
    if "listen" in keys:
        sec = _Section(keys["listen"], {"ip": _ip, "ports": _port_range, "allow_insecure": _bool})
        listen = replace(listen, **sec.values())
    tls = _tls(keys["tls"]) if "tls" in keys else TLS()
    _check_remote_access(listen, tls, keys.get("listen"), file)
    proxy = Proxy()
    if "proxy" in keys:
        sec = _Section(keys["proxy"], {"listen": _proxy_listen, "server_name": _server_names,
                                       "cert": _optional_path, "key": _optional_path})
        proxy = replace(proxy, **sec.values())
        if bool(proxy.cert) != bool(proxy.key):
            raise keys["proxy"].error("cert and key go together: give both for TLS at nginx, or neither")
    kernels = _kernels(keys["kernels"]) if "kernels" in keys else ()
    front_door = _front_door(keys["front_door"], proxy, keys.get("proxy")) if "front_door" in keys else FrontDoor()

    server = ServerSettings()
    if "embed" in keys:  # the lab-wide place for iframe embedding; users.NAME.frame_ancestors overrides it
        sec = _Section(keys["embed"], {"frame_ancestors": _str_list})
        server = replace(server, **sec.values())
        given = keys["server"].value if "server" in keys and isinstance(keys["server"].value, dict) else {}
        if "frame_ancestors" in sec.keys and "frame_ancestors" in given:
            raise given["frame_ancestors"].error(
                f"already given under embed: (line {sec.keys['frame_ancestors'].line}); give it once")
    if "server" in keys:
        sec = _Section(keys["server"], _SERVER_KEYS)
        server = replace(server, **sec.values())
        _check_spawn(server, sec)

    restart = Restart()
    if "restart" in keys:
        sec = _Section(keys["restart"], {
            "backoff_min": _duration, "backoff_max": _duration,
            "crashloop_after": _int_range(1, 1000, "count"), "reset_after": _duration,
        })
        restart = replace(restart, **sec.values())
        if "backoff_min" in sec.keys:
            _positive("backoff_min", restart.backoff_min, sec)
        if restart.backoff_max < restart.backoff_min:
            raise (sec.keys.get("backoff_max") or sec.keys["backoff_min"]).error(
                "backoff_max must not be less than backoff_min")

    health = Health()
    if "health" in keys:
        sec = _Section(keys["health"], {
            "interval": _duration, "timeout": _duration, "failures": _int_range(1, 1000, "count"),
        })
        health = replace(health, **sec.values())
        for key in ("interval", "timeout"):
            if key in sec.keys:
                _positive(key, getattr(health, key), sec)

    logs = Logs(dir=layout.log_dir)
    if "logs" in keys:
        sec = _Section(keys["logs"], {"dir": _absolute, "max_size": _size, "keep": _int_range(1, 1000, "count")})
        logs = replace(logs, **sec.values())
        if "max_size" in sec.keys and logs.max_size < 4096:
            raise sec.keys["max_size"].error("must be at least 4KiB")

    supervisor = Supervisor()
    if "supervisor" in keys:
        sec = _Section(keys["supervisor"], {"socket": _absolute, "conf_d": _absolute})
        supervisor = replace(supervisor, **sec.values())

    limits = Limits()
    if "limits" in keys:
        sec = _Section(keys["limits"], {"memory_max": _optional(_size), "cpu_quota": _optional(_percent)})
        limits = replace(limits, **sec.values())
        if limits.memory_max is not None and limits.memory_max < 16 * 2**20:
            raise sec.keys["memory_max"].error("must be at least 16MiB (a jupyter server alone needs more)")

    state_dir = _absolute(keys["state_dir"]) if "state_dir" in keys else layout.state_dir

    groups: list[GroupEntry] = []
    if "groups" in keys and keys["groups"].value is not None:
        if not isinstance(keys["groups"].value, list):
            raise keys["groups"].error(f"expected a list of Unix group names, got {_kind(keys['groups'].value)}")
        for item in keys["groups"].value:
            groups.append(GroupEntry(_name(item, "group"), item.line))

    users: list[UserEntry] = []
    seen_ports: dict[int, tuple[str, int]] = {}
    for name, item in _mapping(keys["users"]).items() if "users" in keys else ():
        _name(Located(name, item.line, item.path, file), "user")
        if name == "root":
            raise item.error("servers never run as root")
        sec = _Section(item, _USER_KEYS)
        values = sec.values()
        port = values.pop("port", None)
        if port is not None:
            if port in seen_ports:
                other, line = seen_ports[port]
                raise sec.keys["port"].error(f"port {port} is already given to {other} (line {line})")
            seen_ports[port] = (name, sec.keys["port"].line)
        if "env" in values:  # a user's env adds to (and may override) the defaults
            values["env"] = tuple(sorted({**dict(server.env), **dict(values["env"])}.items()))
        settings = replace(server, **values)
        _check_spawn(settings, sec)
        users.append(UserEntry(name, item.line, port, settings))

    return Config(
        file=file, backend=backend, listen=listen, server=server, restart=restart, health=health,
        logs=logs, supervisor=supervisor, limits=limits, state_dir=state_dir, groups=tuple(groups), users=tuple(users),
        tls=tls, proxy=proxy, kernels=kernels, front_door=front_door,
    )


def _absolute(item: Located) -> str:
    path = _str(item)
    if not path.startswith("/"):
        raise item.error(f"{path!r} must be an absolute path")
    return path


def _name(item: Located, what: str) -> str:
    name = _str(item)
    if not USERNAME.fullmatch(name):
        raise item.error(f"{name!r} is not a valid Unix {what} name")
    return name


# ---- access: auth, TLS, the remote-access rule, the proxy, shared kernels ----

def _choice(item: Located, choices: tuple[str, ...]) -> str:
    value = _str(item)
    if value not in choices:
        raise item.error(f"{value!r} is not one of: {', '.join(choices)}")
    return value


def _optional_path(item: Located) -> str:
    """An absolute path, or "" for none."""
    return "" if item.value in ("", None) else _absolute(item)


def _bool(item: Located) -> bool:
    if not isinstance(item.value, bool):
        raise item.error(f"expected true or false, got {item.value!r}")
    return item.value


# traits notebookd decides itself; `args` setting them would undo the port, the bind rule or auth
_OWN_FLAGS = re.compile(r"--(?:(?:ServerApp|NotebookApp)\.)?(ip|port|port_retries|base_url|certfile|keyfile|"
                        r"token|password|hashed_password|allow_remote_access)(?:=|$)|--\w*IdentityProvider\.")


def _args(item: Located) -> tuple[str, ...]:
    words = _str_list(item)
    for word, located in zip(words, item.value):
        if _OWN_FLAGS.match(word):
            raise located.error(f"{word!r} is set by notebookd (listen:, tls:, auth:) and cannot be given here")
    return words


def _tls(item: Located) -> TLS:
    sec = _Section(item, {"mode": _tls_mode, "cert": _optional_path, "key": _optional_path, "names": _tls_names,
                          "valid_for": _positive_duration, "renew_before": _duration})
    tls = replace(TLS(), **sec.values())
    if tls.mode == "files":
        for key, what in (("cert", "certificate"), ("key", "private key")):
            if not getattr(tls, key):
                raise item.error(f"mode files needs {key}: the path of the {what}")
    elif tls.cert or tls.key:
        raise (sec.keys.get("cert") or sec.keys["key"]).error(f"only used with mode files (mode is {tls.mode})")
    if tls.renew_before >= tls.valid_for:
        raise (sec.keys.get("renew_before") or sec.keys["valid_for"]).error(
            "renew_before must be shorter than valid_for")
    return tls


def _tls_mode(item: Located) -> str:
    if isinstance(item.value, bool):  # YAML 1.1 reads bare off/on/yes/no as booleans
        if item.value is False:
            return "off"
        raise item.error(f"{item.value!r} is not a mode (one of: {', '.join(TLS_MODES)})")
    return _choice(item, TLS_MODES)


_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")


def _tls_names(item: Located) -> tuple[str, ...]:
    names = _str_list(item)
    for name, located in zip(names, item.value):
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not _HOST_NAME.fullmatch(name):
                raise located.error(f"{name!r} is neither a host name nor an IP address") from None
    return names


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


def _proxy_listen(item: Located) -> str:
    _scalar(item)
    text = str(item.value)
    m = re.fullmatch(r"(?:(\[[0-9a-fA-F:]+\]|[0-9.]+|\*):)?(\d+)", text)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise item.error(f"{text!r} is not a port or ADDRESS:PORT (e.g. 443, 0.0.0.0:443, [::]:443)")
    return text


def _server_names(item: Located) -> str:
    text = " ".join(_str(item).split())
    if not text or re.search(r"[;{}'\"\\$#]", text):
        raise item.error(f"{item.value!r} is not a list of nginx server names (e.g. lab.example.org or _)")
    return text


_KERNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _kernels(item: Located) -> tuple[Kernel, ...]:
    out = []
    for name, entry in _mapping(item).items():
        if not _KERNEL_NAME.fullmatch(name):
            raise entry.error("not a valid kernel name (letters, digits, '.', '_', '-')")
        sec = _Section(entry, {"display_name": _str, "argv": _str_list, "python": _absolute, "venv": _absolute,
                               "language": _str, "env": _env})
        values = sec.values()
        given = [k for k in ("argv", "python", "venv") if k in values]
        if len(given) != 1:
            raise entry.error("give exactly one of argv, python or venv" +
                              (f" (got {', '.join(given)})" if given else ""))
        if "argv" in values:
            argv = values["argv"]
            if not argv or not argv[0].startswith("/"):
                raise sec.keys["argv"].error("must start with an absolute path")
            if "{connection_file}" not in argv:
                raise sec.keys["argv"].error("must pass {connection_file} to the kernel")
        else:
            python = values.get("python") or values["venv"].rstrip("/") + "/bin/python"
            argv = (python, "-m", "ipykernel_launcher", "-f", "{connection_file}")
        out.append(Kernel(name=name, display_name=values.get("display_name", name), argv=tuple(argv),
                          language=values.get("language", "python"), env=values.get("env", ())))
    return tuple(out)


_PAM_SERVICE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


def _pam_service(item: Located) -> str:
    name = _str(item)
    if not _PAM_SERVICE.fullmatch(name):
        raise item.error(f"{name!r} is not a PAM service name (a file name in /etc/pam.d/)")
    return name


def _front_door(item: Located, proxy: Proxy, proxy_item: Located | None) -> FrontDoor:
    sec = _Section(item, {"enabled": _bool, "pam_service": _pam_service, "session_max_age": _positive_duration,
                          "idle_timeout": _positive_duration, "max_failures": _int_range(1, 1000, "count"),
                          "failure_delay": _positive_duration})
    door = replace(FrontDoor(), **sec.values())
    if door.idle_timeout > door.session_max_age:
        raise (sec.keys.get("idle_timeout") or sec.keys["session_max_age"]).error(
            "idle_timeout must not be longer than session_max_age")
    if door.enabled and not proxy.cert and not _loopback_listen(proxy.listen):
        # the session cookie is Secure: browsers send it over https only (and to loopback, for tests
        # or a TLS terminator on this host); a plain-http front door could never log anyone in
        where = proxy_item if proxy_item is not None else sec.keys.get("enabled", item)
        raise where.error("front_door needs TLS at nginx (proxy.cert and proxy.key), or proxy.listen on a "
                          "loopback address behind another TLS terminator")
    return door


def _loopback_listen(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    try:
        return bool(host) and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
