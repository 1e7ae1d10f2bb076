"""The CLI's half of the control socket (control.py is the daemon's): one JSON request line, one answer.

Every `notebookd` call imports this, so it imports C modules only: `socket` brings enum and selectors,
`json` brings re, together about 10 ms of a `status` call's ~30 (`python -X importtime`), a third of it.
`_socket` is what socket.py wraps, and `_json`'s scanner and encoder are what json.loads/json.dumps run;
where an interpreter lacks them, the json module does the same work.
"""

from __future__ import annotations

import _socket


class Unreachable(Exception):
    """No daemon answers on the socket."""


class Refused(Exception):
    """The daemon answered with an error."""


def request(path: str, cmd: str, timeout: float = 60.0, **args) -> dict:
    """Send one request; return its data or raise Refused/Unreachable."""
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(path)
            try:
                sock.sendall(dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused before it read the request: the reason waits to be read
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            sock.close()
    except (FileNotFoundError, ConnectionRefusedError):
        raise Unreachable(f"notebookd is not running (no daemon on {path})") from None
    except PermissionError:
        raise Unreachable(f"cannot connect to {path}: permission denied") from None
    except TimeoutError:
        raise Unreachable(f"notebookd on {path} did not answer within {timeout:g}s") from None
    except OSError as exc:
        raise Unreachable(f"cannot talk to notebookd on {path}: {exc.strerror or exc}") from None
    try:
        answer = loads(buf.decode())
    except (ValueError, UnicodeDecodeError):
        raise Unreachable(f"notebookd on {path} closed the connection without an answer") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        raise Refused(answer.get("error", "refused") if isinstance(answer, dict) else "refused")
    return answer.get("data") or {}


class _Decoding:
    """The settings json.JSONDecoder hands `_json`'s scanner: json.loads' defaults."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
    memo: dict = {}


def _unserializable(value):
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


try:
    import _json

    _scan = _json.make_scanner(_Decoding())
    # json.dumps' defaults, as json.encoder passes them: markers, default, encoder, indent, separators,
    # sort_keys, skipkeys, allow_nan
    _encode = _json.make_encoder({}, _unserializable, _json.encode_basestring_ascii, None, ": ", ", ",
                                 False, False, True)
except (ImportError, AttributeError, TypeError):  # pragma: no cover - an interpreter without them
    _scan = _encode = None


def loads(text: str):
    """json.loads(text) for one line (whitespace around it allowed)."""
    if _scan is None:  # pragma: no cover
        import json
        return json.loads(text)
    text = text.strip(" \t\r\n")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


def dumps(value) -> str:
    """json.dumps(value)."""
    if _encode is None:  # pragma: no cover
        import json
        return json.dumps(value)
    return "".join(_encode(value, 0))
