"""The `notebookd` command. Thin: it parses arguments, talks to the daemon and formats answers.

Only C modules are imported up front (client.py: _socket, _json); `status` must stay fast, so json,
socket, argparse (for help, errors and the rarer command lines), YAML, psutil, asyncio and jupyter are
imported by the paths that need them.
"""

from __future__ import annotations

import os
import sys
import time

from notebookd import __version__
from notebookd import client, commands, paths

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNREACHABLE = 0, 1, 2, 3, 4


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code


def _parser():
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):
            """One line, not argparse's usage block: scripts and people both read the last line."""
            self.exit(EXIT_USAGE, f"{self.prog}: {message} (see '{self.prog} --help')\n")

    p = Parser(prog="notebookd", description="Run and supervise one jupyter_server per user.")
    p.add_argument("--version", action="version", version=f"notebookd {__version__}")
    p.add_argument("--config", "-c", metavar="PATH",
                   help=f"config file (default: $NOTEBOOKD_CONFIG or {paths.SYSTEM_CONFIG}; "
                        "for non-root users ~/.config/notebookd/notebookd.yaml)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for command in commands.COMMANDS:
        c = sub.add_parser(command.name, help=command.help)
        for a in command.args:
            c.add_argument(*a.flags, **a.options)
    return p


class _Args:
    """What argparse's Namespace would hold."""

    def __init__(self, **values):
        self.__dict__.update(values)


def _dest(arg: commands.Arg) -> str:
    flag = next((f for f in arg.flags if f.startswith("--")), arg.flags[0])
    return flag.lstrip("-").replace("-", "_")


def quick_parse(argv: list[str]) -> _Args | None:
    """The everyday command lines (`status`, `status --json alice`, `-c FILE stop bob`), read straight from
    the declarations: building argparse's parsers is most of what `status` costs before it asks the
    daemon. Anything else (help, an unknown or valued option, a wrong count) returns None for argparse,
    which gives the same result or the same one-line error."""
    config, i = None, 0
    while i < len(argv) and argv[i].startswith("-"):
        if argv[i] in ("-c", "--config") and i + 1 < len(argv):
            config, i = argv[i + 1], i + 2
        elif argv[i].startswith("--config="):
            config, i = argv[i][len("--config="):], i + 1
        else:
            return None
    command = commands.BY_NAME.get(argv[i]) if i < len(argv) else None
    if command is None:
        return None
    values: dict = {"config": config, "command": command.name}
    switches, positional = {}, None
    for a in command.args:
        if a.flags[0].startswith("-"):
            store_true = a.options.get("action") == "store_true"
            values[_dest(a)] = False if store_true else a.options.get("default")
            switches.update({flag: _dest(a) if store_true else None for flag in a.flags})
        elif "choices" in a.options or positional is not None:
            return None
        else:
            positional = a
    words: list[str] = []
    closed = False  # argparse takes one run of positional words: `status a --json b` is its error
    for word in argv[i + 1:]:
        if word.startswith("-"):
            if switches.get(word) is None:
                return None
            values[switches[word]] = True
            closed = bool(words)
        elif closed:
            return None
        else:
            words.append(word)
    if positional is None:
        return None if words else _Args(**values)
    nargs = positional.options.get("nargs")
    if (nargs == "+" and not words) or (nargs == "?" and len(words) > 1) or nargs not in ("*", "+", "?"):
        return None
    values[positional.flags[0]] = words if nargs != "?" else (words[0] if words else None)
    return _Args(**values)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = quick_parse(argv) or _parser().parse_args(argv)
    try:
        return globals()["cmd_" + args.command.replace("-", "_")](args)
    except CliError as exc:
        print(f"notebookd: {exc}", file=sys.stderr)
        return exc.code
    except client.Unreachable as exc:
        print(f"notebookd: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except client.Refused as exc:
        print(f"notebookd: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


def _load(args):
    from notebookd import config as configmod

    layout = paths.layout(args.config)
    try:
        return layout, configmod.load(layout)
    except configmod.ConfigError as exc:
        raise CliError(str(exc)) from None


def cmd_run(args) -> int:
    layout, config = _load(args)
    from notebookd import daemon

    return daemon.run(layout, config)


def cmd_check_config(args) -> int:
    layout, config = _load(args)
    from notebookd import checks

    errors, notes = checks.check(config, layout.system, layout.run_dir)
    for line in errors:
        print(f"notebookd: {line}", file=sys.stderr)
    if errors:
        return EXIT_FAIL
    for line in notes:
        print(f"{config.file}: OK: {line}")
    return EXIT_OK


def _ask(args, cmd: str, **kw) -> dict:
    return client.request(paths.client_socket(args.config), cmd, **kw)


def cmd_status(args) -> int:
    data = _ask(args, "status", timeout=10)
    rows = data["servers"]
    if args.users:
        unknown = set(args.users) - {r["name"] for r in rows}
        if unknown:
            raise CliError(f"no server for {', '.join(sorted(unknown))}", EXIT_NOT_RUNNING)
        rows = [r for r in rows if r["name"] in args.users]
    if args.json:
        import json

        print(json.dumps({"daemon": data["daemon"], "servers": rows}, indent=2))
    else:
        print(format_status(data["daemon"], rows))
    all_up = all(r["state"] in ("running", "idle") for r in rows)  # idle: up, started by its next connection
    return EXIT_OK if all_up and (rows or os.geteuid() == 0) else EXIT_NOT_RUNNING


def format_status(daemon: dict, rows: list[dict]) -> str:
    from notebookd.units import format_duration, format_size

    now = time.time()
    header = ("USER", "STATE", "PID", "PORT", "URL", "UPTIME", "RESTARTS", "MEMORY", "KERNELS", "LAST ACTIVE",
              "LAST ERROR")
    table = [header]
    for r in rows:
        table.append((
            r["name"], r["state"], str(r["pid"] or "-"), str(r["port"] or "-"), r["url"] or "-",
            format_duration(now - r["started"]) if r["started"] else "-",
            str(r["restarts"]), format_size(r["memory"]) if r["memory"] else "-",
            "-" if r.get("kernels") is None else str(r["kernels"]),
            _ago(now, r.get("last_activity")),
            _one_line(r["last_error"] or (r["last_exit"] if r["state"] != "running" else None) or "-"),
        ))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in table[:1]]
    for row, r in zip(table[1:], rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
        if r.get("log_tail"):
            lines.append(f"{'':{widths[0]}}  last log line: {_one_line(r['log_tail'][-1], 120)}")
    if len(table) == 1:
        lines = ["no servers" + ("" if daemon.get("mode") == "user" else f" configured in {daemon['config']}")]
    reload = daemon.get("reload") or {}
    if not reload.get("ok", True):
        lines.append(f"last reload FAILED ({time.strftime('%H:%M:%S', time.localtime(reload['at']))}): "
                     f"{reload['error']}")
    lines += [f"warning: {w}" for w in daemon.get("warnings", [])]
    return "\n".join(lines)


# What a server writes may hold terminal escapes: shown to root as visible text, never interpreted.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}
_ESCAPES.update({c: f"\\u{c:04x}" for c in (*range(0x202a, 0x202f), *range(0x2066, 0x206a))})  # bidi


def _ago(now: float, stamp: float | None) -> str:
    from notebookd.units import format_duration

    if not stamp:
        return "-"
    return "now" if now - stamp < 1 else f"{format_duration(now - stamp)} ago"


def _one_line(text: str, limit: int = 100) -> str:
    text = " ".join(text.split()).translate(_ESCAPES)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def cmd_act(args) -> int:
    data = _ask(args, args.command, users=args.users, timeout=300)
    print(f"{args.command}: {', '.join(data['done'])}")
    return EXIT_OK


def cmd_reload(args) -> int:
    data = _ask(args, "reload", timeout=300)
    print(f"reloaded {data['reloaded']}")
    return EXIT_OK


def cmd_shutdown(args) -> int:
    pid = _ask(args, "shutdown", keep_servers=args.keep_servers)["pid"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if _exited(pid):
            print("notebookd exited; servers left running" if args.keep_servers else "notebookd stopped")
            return EXIT_OK
        time.sleep(0.1)
    raise CliError(f"notebookd (pid {pid}) is still running after 300s")


def _exited(pid: int) -> bool:
    """Gone, or a zombie its parent has not reaped yet (it has exited all the same)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):
        return True


def cmd_url(args) -> int:
    urls = _ask(args, "url", users=args.users, local=args.local)["urls"]
    if not urls:
        raise CliError("no server configured for you" if os.geteuid() else "no servers configured", EXIT_NOT_RUNNING)
    for name, url in sorted(urls.items()):
        print(url if len(urls) == 1 else f"{name}\t{url}")
    return EXIT_OK


def cmd_logs(args) -> int:
    users = [args.user] if args.user else []
    data = _ask(args, "logs", users=users)
    unit = next(iter((data.get("journal") or {}).values()), None)
    if unit:
        return _journal(unit, args)
    path = next(iter(data["paths"].values()), None)
    if not path:
        raise CliError("no log for that server yet")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    with fh:
        out = sys.stdout.buffer
        out.writelines(_tail(fh, args.lines))
        out.flush()
        if args.follow:
            _follow(fh, path, out)
    return EXIT_OK


def _journal(unit: str, args) -> int:
    """The systemd backend's logs are in the journal: journalctl shows them (a user can read their
    own server's lines where journald keeps per-user journal files, its default with persistent storage)."""
    argv = ["journalctl", "--unit", unit, "--output", "cat", "--lines", str(max(args.lines, 0)), "--no-pager"]
    if args.follow:
        argv.append("--follow")
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise CliError(f"cannot run journalctl: {exc.strerror}") from None


def _tail(fh, n: int) -> list[bytes]:
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    block, data = 65536, b""
    while end > 0 and data.count(b"\n") <= n:
        start = max(0, end - block)
        fh.seek(start)
        data = fh.read(end - start) + data
        end = start
    fh.seek(0, os.SEEK_END)
    return data.splitlines(keepends=True)[-n:] if n > 0 else []


def _follow(fh, path: str, out) -> None:
    """tail -F: keep reading, and move to the new file when the log is rotated."""
    inode = os.fstat(fh.fileno()).st_ino
    while True:
        chunk = fh.read()
        if chunk:
            out.write(chunk)
            out.flush()
            continue
        time.sleep(0.3)
        try:
            if os.stat(path).st_ino != inode:
                rest = fh.read()
                out.write(rest)
                fh.close()
                fh = open(path, "rb")
                inode = os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            pass


def cmd_token(args) -> int:
    data = _ask(args, "token", user=args.user, rotate=args.rotate, local=args.local, timeout=300)
    if args.rotate:
        print(f"new token for {data['user']}" + (", server restarted" if data["restarted"] else "")
              + (f" (auth is {data['auth']}: the token is not used)" if data["auth"] == "password" else ""),
              file=sys.stderr)
    if data["auth"] != "password":  # stdout stays the token alone: scripts read $(notebookd token)
        print(f"open {data['url']}" + ("" if "?token=" in data["url"] else
                                       " (log in there; the token is for scripts and API clients)"), file=sys.stderr)
    print(data["token"])
    return EXIT_OK


def cmd_passwd(args) -> int:
    from notebookd import passwords

    plain = _read_password()
    try:
        hashed = passwords.hash_password(plain)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    data = _ask(args, "passwd", user=args.user, hash=hashed, timeout=300)
    note = ", server restarted" if data["restarted"] else ""
    if data["auth"] == "token":
        note = f" (auth is token for {data['user']}: set auth: password or both to log in with it)"
    print(f"password set for {data['user']}{note}")
    return EXIT_OK


def _read_password() -> str:
    """Twice without echo from a terminal; else the first line of stdin (a second, if given, must match)."""
    if sys.stdin.isatty():
        import getpass

        first = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != first:
            raise CliError("the passwords do not match; nothing changed")
        return first
    lines = sys.stdin.read().splitlines()
    if not lines or not lines[0]:
        raise CliError("no password on stdin")
    if len(lines) > 1 and lines[1] != lines[0]:
        raise CliError("the passwords do not match; nothing changed")
    return lines[0]


def cmd_render(args) -> int:
    from notebookd import nginx

    sys.stdout.write(nginx.render(_ask(args, "proxy")))
    return EXIT_OK


cmd_start = cmd_stop = cmd_restart = cmd_act
