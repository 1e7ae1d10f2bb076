"""Readers of one YAML value each: a `Located` in, a checked Python value out, or its one-line error.

A config key (config.py) names its reader; readers know nothing of where a key sits in the file.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from typing import Any, Callable

from notebookd.units import parse_duration, parse_size
from notebookd.yamlsource import Located

Reader = Callable[[Located], Any]


def kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", type(None): "nothing"}.get(type(value), type(value).__name__)


def mapping(item: Located) -> dict[str, Located]:
    if item.value is None:
        return {}
    if not isinstance(item.value, dict):
        raise item.error(f"expected a mapping, got {kind(item.value)}")
    return item.value


# Values end up in argv, environments, nginx and systemd unit files, one per line: a newline in a value
# would add a line (a directive) of its own there.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def string(item: Located, whitespace_ok: bool = False) -> str:
    if isinstance(item.value, bool) or not isinstance(item.value, (str, int, float)):
        raise item.error(f"expected a string, got {kind(item.value)}")
    text = str(item.value)
    if m := _CONTROL.search(" ".join(text.split()) if whitespace_ok else text):
        raise item.error(f"control character U+{ord(m.group()):04X} in the value (newlines, tabs and the like "
                         "are not allowed)")
    return text


def scalar(item: Located) -> None:
    if isinstance(item.value, (dict, list)) or item.value is None:
        raise item.error(f"expected a single value, got {kind(item.value)}")


def boolean(item: Located) -> bool:
    if not isinstance(item.value, bool):
        raise item.error(f"expected true or false, got {item.value!r}")
    return item.value


def int_range(low: int, high: int, what: str) -> Reader:
    def read(item: Located) -> int:
        scalar(item)
        v = item.value
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise item.error(f"{v!r} is not a valid {what} ({low}-{high})")
        return v
    return read


port = int_range(1, 65535, "port")
count = int_range(1, 1000, "count")


def choice(*choices: str) -> Reader:
    def read(item: Located) -> str:
        value = string(item)
        if value not in choices:
            raise item.error(f"{value!r} is not one of: {', '.join(choices)}")
        return value
    return read


def _parsed(parse: Callable[[Any], Any]) -> Reader:
    """A reader of one value written the way `parse` reads it ("90s", "512M"), its complaint as the error."""
    def read(item: Located) -> Any:
        scalar(item)
        try:
            return parse(item.value)
        except ValueError as exc:
            raise item.error(str(exc)) from None
    return read


duration = _parsed(parse_duration)
size = _parsed(parse_size)


def positive_duration(item: Located) -> float:
    seconds = duration(item)
    if seconds <= 0:
        raise item.error("must be more than zero")
    return seconds


def optional(read: Reader) -> Reader:
    """`read`, or None for an empty value (`memory_max:` or `memory_max: null`: no limit)."""
    def wrapped(item: Located) -> Any:
        return None if item.value is None else read(item)
    return wrapped


def percent(item: Located) -> int:
    scalar(item)
    m = re.fullmatch(r"\s*(\d+)\s*%\s*", str(item.value))
    if isinstance(item.value, bool) or not m or not 1 <= int(m.group(1)) <= 100000:
        raise item.error(f"{item.value!r} is not a CPU quota (e.g. 50%, 200% for two cores)")
    return int(m.group(1))


def ip(item: Located) -> str:
    try:
        return str(ipaddress.ip_address(string(item)))
    except ValueError:
        raise item.error(f"{item.value!r} is not an IP address (e.g. 127.0.0.1, ::1, 0.0.0.0)") from None


def port_range(item: Located) -> tuple[int, int]:
    scalar(item)
    v = item.value
    if isinstance(v, int) and not isinstance(v, bool):
        low = high = port(item)
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


def str_list(item: Located) -> tuple[str, ...]:
    if not isinstance(item.value, list):
        raise item.error(f"expected a list, got {kind(item.value)}")
    return tuple(string(x) for x in item.value)


def command(item: Located) -> tuple[str, ...]:
    if isinstance(item.value, str):
        try:
            words = tuple(shlex.split(item.value))
        except ValueError as exc:
            raise item.error(f"cannot split command: {exc}") from None
        if not words:
            raise item.error("the command is empty")
    else:
        words = str_list(item)  # [] means the default command
    return words


# traits notebookd decides itself; `args` setting them would undo the port, the bind rule or auth
_OWN_FLAGS = re.compile(r"--(?:(?:ServerApp|NotebookApp)\.)?(ip|port|port_retries|base_url|certfile|keyfile|"
                        r"token|password|hashed_password|allow_remote_access)(?:=|$)|--\w*IdentityProvider\.")


def server_args(item: Located) -> tuple[str, ...]:
    words = str_list(item)
    for word, located in zip(words, item.value):
        if _OWN_FLAGS.match(word):
            raise located.error(f"{word!r} is set by notebookd (listen:, tls:, auth:) and cannot be given here")
    return words


def _check_placeholders(item: Located, text: str) -> None:
    for name in re.findall(r"\{([^}]*)\}", text):
        if name != "user":
            raise item.error(f"unknown placeholder {{{name}}} (only {{user}} is known)")
    if "{" in text.replace("{user}", "") or "}" in text.replace("{user}", ""):
        raise item.error(f"{text!r} has an unmatched brace (the only placeholder is {{user}})")


def base_url(item: Located) -> str:
    url = string(item)
    if not url.startswith("/"):
        raise item.error(f"{url!r} must start with '/'")
    _check_placeholders(item, url)
    return url if url.endswith("/") else url + "/"


def root_dir(item: Located) -> str:
    path = string(item)
    if not (path.startswith("/") or path == "~" or path.startswith("~/")):
        raise item.error(f"{path!r} must be absolute or start with '~/' (the user's home)")
    _check_placeholders(item, path)
    return path


def absolute(item: Located) -> str:
    path = string(item)
    if not path.startswith("/"):
        raise item.error(f"{path!r} must be an absolute path")
    return path


def optional_path(item: Located) -> str:
    """An absolute path, or "" for none."""
    return "" if item.value in ("", None) else absolute(item)


def env(item: Located) -> tuple[tuple[str, str], ...]:
    out = []
    for key, value in mapping(item).items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise value.error("not a valid environment variable name")
        if key.startswith("JUPYTER_TOKEN") or key.startswith("NOTEBOOKD_"):
            raise value.error("is set by notebookd and cannot be overridden")
        out.append((key, "" if value.value is None else string(value)))
    return tuple(sorted(out))


def jupyter_config(item: Located) -> str:
    for value in mapping(item).values():
        if not isinstance(value.value, dict):
            raise value.error("expected a mapping of trait names to values (e.g. ServerApp: {...})")
    return json.dumps(_plain(item), sort_keys=True)


def _plain(item: Located) -> Any:
    if isinstance(item.value, dict):
        return {k: _plain(v) for k, v in item.value.items()}
    if isinstance(item.value, list):
        return [_plain(v) for v in item.value]
    if not isinstance(item.value, (str, int, float, bool, type(None))):
        raise item.error(f"{kind(item.value)} values cannot be passed to jupyter")
    return item.value


USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


def unix_name(what: str) -> Reader:
    def read(item: Located) -> str:
        name = string(item)
        if not USERNAME.fullmatch(name):
            raise item.error(f"{name!r} is not a valid Unix {what} name")
        return name
    return read


_HOST_NAME = re.compile(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")


def host_names(item: Located) -> tuple[str, ...]:
    names = str_list(item)
    for name, located in zip(names, item.value):
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not _HOST_NAME.fullmatch(name):
                raise located.error(f"{name!r} is neither a host name nor an IP address") from None
    return names


def nginx_listen(item: Located) -> str:
    scalar(item)
    text = str(item.value)
    m = re.fullmatch(r"(?:(\[[0-9a-fA-F:]+\]|[0-9.]+|\*):)?(\d+)", text)
    if not m or not 1 <= int(m.group(2)) <= 65535:
        raise item.error(f"{text!r} is not a port or ADDRESS:PORT (e.g. 443, 0.0.0.0:443, [::]:443)")
    return text


def nginx_server_names(item: Located) -> str:
    text = " ".join(string(item, whitespace_ok=True).split())
    if not text or re.search(r"[;{}'\"\\$#]", text):
        raise item.error(f"{item.value!r} is not a list of nginx server names (e.g. lab.example.org or _)")
    return text
