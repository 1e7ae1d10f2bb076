"""The systemd backend: one `notebookd-user@USER.service` per user, driven with systemctl.

`units/notebookd-user@.service` holds what every server shares (User=%i, restart policy, hardening);
notebookd writes what is per user into a runtime drop-in, `/run/systemd/system/UNIT.d/50-notebookd.conf`:
ExecStart (port, base_url), Environment, WorkingDirectory, the home and root_dir made writable,
limits, timeouts, and `LoadCredential=token:<state_dir>/tokens/USER` (the token never appears in the
unit text: the server reads it from `%d/token`, the credential directory systemd makes for it).

The user's port belongs to `notebookd-user@USER.socket` (template units/notebookd-user@.socket, the
address in its own runtime drop-in): systemd binds it when notebookd first starts the user and holds
it while the server is down, crashed, restarting, stopped for idleness or waiting for its first
connection (`start: on-demand`), and across restarts of notebookd itself. The server is handed it as
fd 3 (LISTEN_FDS) and runs under notebookd's launcher, which accepts on it and never binds. A server
command that is not run by Python cannot be handed a socket: it binds its port itself, without a
socket unit.

Each systemctl call is one small function; every return code is checked and a failure raises
BackendError with systemctl's own message. Logs are in the journal.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import socket
import time

from notebookd import launch, launcher, listeners, procs
from notebookd.access import Access
from notebookd.backends.base import BackendError
from notebookd.backends.managed import ManagedBackend, Observed
from notebookd.backends.tools import run_tool
from notebookd.fsutil import write_atomic
from notebookd.model import ServerSpec
from notebookd.ports import in_use
from notebookd.procs import MARKER_VAR
from notebookd.tokens import TokenStore

log = logging.getLogger("notebookd")

TEMPLATE = "notebookd-user@.service"
SOCKET_TEMPLATE = "notebookd-user@.socket"
DROPIN_ROOT = "/run/systemd/system"  # runtime drop-ins: gone at reboot, written again by notebookd
DROPIN_NAME = "50-notebookd.conf"
TOKEN_FILE = "%d/token"  # %d: the unit's credentials directory
SYSTEMCTL = shutil.which("systemctl") or "/usr/bin/systemctl"
SYSTEMCTL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}

PROPS = ("Id", "ActiveState", "SubState", "MainPID", "Result", "ExecMainCode", "ExecMainStatus",
         "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic", "StateChangeTimestampMonotonic",
         "MemoryCurrent")
_UNSET = 2**64 - 1  # what systemctl shows for a counter it does not have ("[not set]" in newer ones)


def unit(name: str) -> str:
    return f"notebookd-user@{name}.service"


def socket_unit(name: str) -> str:
    return f"notebookd-user@{name}.socket"


def dropin_path(name: str) -> str:
    return os.path.join(DROPIN_ROOT, unit(name) + ".d", DROPIN_NAME)


def socket_dropin_path(name: str) -> str:
    return os.path.join(DROPIN_ROOT, socket_unit(name) + ".d", DROPIN_NAME)


# ---- systemctl, one function per call ----

async def _systemctl(*args: str, timeout: float = 120) -> str:
    return await run_tool([SYSTEMCTL, *args], env=SYSTEMCTL_ENV, timeout=timeout, what=f"systemctl {' '.join(args)}")


async def daemon_reload() -> None:
    await _systemctl("daemon-reload")


async def start(*units: str) -> None:
    await _systemctl("start", *units)


async def stop(*units: str) -> None:
    await _systemctl("stop", *units)


async def reset_failed(*units: str) -> None:
    """Clears `failed` and the start rate limit, so a start after a crash loop is not refused."""
    await _systemctl("reset-failed", *units)


async def show(units: list[str], props: tuple[str, ...] = PROPS) -> list[dict[str, str]]:
    out = await _systemctl("show", "--property=" + ",".join(props), *units)
    blocks = []
    for block in out.strip("\n").split("\n\n"):
        blocks.append(dict(line.split("=", 1) for line in block.splitlines() if "=" in line))
    return blocks


# ---- unit text ----

def _exec_word(word: str) -> str:
    """One ExecStart= word: quoted, with specifiers (%) and variable expansion ($) disabled."""
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def _quoted(text: str) -> str:
    """A value in double quotes for Environment=, ReadWritePaths= and the like; no specifiers."""
    if "\n" in text or "\r" in text:
        raise BackendError(f"a line break cannot go into a unit file: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def _path(path: str) -> str:
    """A path for WorkingDirectory=, ReadWritePaths=, LoadCredential=: specifiers disabled; paths with
    blanks, quotes or backslashes are refused (each of those settings unquotes differently)."""
    if re.search(r'[\s"\'\\]', path):
        raise BackendError(f"the systemd backend cannot use a path with blanks, quotes or backslashes: {path!r}")
    return path.replace("%", "%%")


def socket_dropin(spec: ServerSpec) -> str:
    """The user's address for their socket unit: exactly the configured one (`::` is IPv6 only)."""
    host = f"[{spec.ip}]" if ":" in spec.ip else spec.ip
    return "\n".join([f"# Written by notebookd for {spec.name}; changes here are overwritten.", "[Socket]",
                      "ListenStream=", f"ListenStream={host}:{spec.port}"]) + "\n"


def socketed_argv(spec: ServerSpec, run: launch.Launch) -> list[str] | None:
    """The server's argv under the launcher, accepting on fd 3 (the socket unit's, LISTEN_FDS), or None
    if its command is not run by Python (then it binds its port itself)."""
    if run.python is None:
        return None
    return launcher.wrap(list(run.argv), 3, launcher.drain_for(spec.settings.stop_timeout), run.python, run.kind.app)


def dropin(spec: ServerSpec, run: launch.Launch, token_source: str, argv: list[str] | None = None) -> str:
    """The service's drop-in; `argv`: the command under the launcher (socketed_argv), bound to the
    user's socket unit, else `run.argv` as it is."""
    home = spec.account.home
    env = []
    for key, value in sorted(run.env.items()):
        item = _quoted(f"{key}={value}")
        if key == "JUPYTER_TOKEN_FILE":
            item = item.replace("%%d/", "%d/")  # the one specifier we want
        env.append(f"Environment={item}")
    writable = [home] + ([spec.root_dir] if not (spec.root_dir + "/").startswith(home.rstrip("/") + "/") else [])
    lines = [
        f"# Written by notebookd for {spec.name}; changes here are overwritten.",
        "[Unit]",
        f"StartLimitBurst={spec.restart.crashloop_after}",
        *([f"Requires={socket_unit(spec.name)}", f"After={socket_unit(spec.name)}"] if argv is not None else []),
        "",
        "[Service]",
        "ExecStart=",
        "ExecStart=" + " ".join(_exec_word(w) for w in (argv if argv is not None else run.argv)),
        # entered after User= applies (systemd >= 240, "core: apply WorkingDirectory after enforce_user"),
        # so it is resolved as the user
        f"WorkingDirectory={_path(run.cwd)}",
        *env,
        f"LoadCredential=token:{_path(token_source)}",
        *(f"ReadWritePaths=-{_path(path)}" for path in writable),
        f"RestartSec={spec.restart.backoff_min:g}s",
        f"TimeoutStopSec={spec.settings.stop_timeout:g}s",
    ]
    if spec.limits.memory_max is not None:
        lines.append(f"MemoryMax={spec.limits.memory_max}")
    if spec.limits.cpu_quota is not None:
        lines.append(f"CPUQuota={spec.limits.cpu_quota}%")
    return "\n".join(lines) + "\n"


def _describe_exit(code: str, status: str) -> str:
    """systemd's ExecMainCode (CLD_EXITED 1, CLD_KILLED 2, CLD_DUMPED 3) and ExecMainStatus, in procs' words."""
    try:
        number = int(status)
    except ValueError:
        return procs.describe_exit(None)
    return procs.describe_exit(number if code == "1" else -number, core=code == "3")


def _write_if_changed(path: str, text: str | None) -> bool:
    """The drop-in at `path` holds `text` (None: there is none); True if that changed anything."""
    try:
        with open(path) as fh:
            if fh.read() == text:
                return False
    except FileNotFoundError:
        if text is None:
            return False
    if text is None:
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        return True
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    write_atomic(path, text.encode(), 0o644)
    return True


class SystemdManager:
    name = "systemd"
    holds_sockets = True  # socket units hold users' ports: on-demand starts, idle stops (ManagedBackend)

    def __init__(self, run_dir: str, state_dir: str):
        self.run_dir = run_dir
        self.state_dir = state_dir
        self._lock = asyncio.Lock()
        self._socketed: set[str] = set()  # users whose port a socket unit holds
        self._moved: set[str] = set()  # their socket unit's address changed: restarted at the next start
        self._address: dict[str, tuple[str, int]] = {}  # for the message when systemd cannot bind it
        self._kept: dict[str, socket.socket] = {}  # sockets of stopped users, taken from systemd before it let go

    async def open(self) -> set[str]:
        for template, name in ((TEMPLATE, unit("notebookd-check")), (SOCKET_TEMPLATE, socket_unit("notebookd-check"))):
            state = (await show([name], ("LoadState",)))[0].get("LoadState")
            # an instance of the socket template without notebookd's drop-in has no address: "bad-setting"
            if state == "not-found" or (template == TEMPLATE and state != "loaded"):
                raise BackendError(f"{template} is not installed (LoadState={state}): copy units/{template} "
                                   "to /etc/systemd/system and run systemctl daemon-reload")
        found = set()
        if os.path.isdir(DROPIN_ROOT):
            for entry in os.listdir(DROPIN_ROOT):
                m = re.fullmatch(r"notebookd-user@(.+)\.(service|socket)\.d", entry)
                if m and os.path.exists(os.path.join(DROPIN_ROOT, entry, DROPIN_NAME)):
                    (found if m.group(2) == "service" else self._socketed).add(m.group(1))
        self._socketed &= found
        return found

    async def install(self, spec: ServerSpec, access: Access) -> bool:
        access.tokens.get(spec.name)  # make sure the credential's source exists
        run = await launch.prepare(spec, self.run_dir, access, token_file=TOKEN_FILE,
                             runtime_dir=f"/run/notebookd-user/{spec.name}")
        assert run.env[MARKER_VAR] == run.marker
        try:
            argv = socketed_argv(spec, run)
        except ValueError as exc:
            raise BackendError(str(exc)) from None
        text = dropin(spec, run, os.path.join(access.tokens.dir, spec.name), argv)
        async with self._lock:
            if argv is None and spec.name in self._socketed:  # now a command that binds its port itself
                await stop(socket_unit(spec.name))
            moved = _write_if_changed(socket_dropin_path(spec.name), socket_dropin(spec) if argv is not None else None)
            changed = _write_if_changed(dropin_path(spec.name), text)
            (self._socketed.add if argv is not None else self._socketed.discard)(spec.name)
            self._address[spec.name] = (spec.ip, spec.port)
            if moved and argv is not None:
                self._moved.add(spec.name)
            if moved or changed:
                await daemon_reload()
        return moved or changed

    async def uninstall(self, name: str) -> None:
        async with self._lock:
            if name in self._socketed:
                await stop(socket_unit(name), unit(name))  # the port is free the moment the user is removed
            self._let_go(name)
            shutil.rmtree(os.path.dirname(socket_dropin_path(name)), ignore_errors=True)
            shutil.rmtree(os.path.dirname(dropin_path(name)), ignore_errors=True)
            self._socketed.discard(name)
            await daemon_reload()

    def _units(self, name: str) -> list[str]:
        return [socket_unit(name), unit(name)] if name in self._socketed else [unit(name)]

    async def start(self, name: str) -> None:
        await self._start(name, self._units(name))

    async def listen(self, name: str) -> bool:
        """Only the user's socket unit (`start: on-demand`): its first connection starts the server.
        False if the user has none (a command that binds its port itself): start it instead."""
        if name not in self._socketed:
            return False
        await self._start(name, [socket_unit(name)])
        return True

    async def unlisten(self, name: str) -> None:
        """An admin's stop: no connection may start the server, so the socket unit stops; but first the
        daemon takes its own copy of the listening socket from systemd (pidfd_getfd on PID 1), so the
        port stays held (connections wait, unanswered) until the next start hands it back to systemd."""
        if name not in self._socketed:
            return
        if name not in self._kept and name in self._address:
            kept = listeners.take_from(1, *self._address[name])
            if kept is not None:
                self._kept[name] = kept
            else:
                log.warning("%s: cannot take its socket from systemd; its port is free while it is stopped", name)
        await stop(socket_unit(name))

    def _let_go(self, name: str) -> None:
        """Close the daemon's copy: systemd binds the port again (a start), or nobody should (removed)."""
        kept = self._kept.pop(name, None)
        if kept is not None:
            kept.close()

    async def _start(self, name: str, units: list[str]) -> None:
        self._let_go(name)  # the port is free from here until systemd binds it, a few milliseconds
        if name in self._moved:  # the address changed: the old one is let go of, the new one bound
            self._moved.discard(name)
            await stop(*units)
        if await self._failed(units):
            await reset_failed(*units)
        try:
            try:
                await start(*units)
            except BackendError:
                if not await self._failed(units):  # e.g. refused by the start rate limit: clear it, once
                    raise
                await reset_failed(*units)
                await start(*units)
        except BackendError as exc:
            raise BackendError(self._why_not_bound(name) or str(exc)) from None

    def _why_not_bound(self, name: str) -> str | None:
        """"port N on ADDR is in use by pid P (…)" when the socket unit could not bind the user's port
        (systemd's own message only says the job failed)."""
        if name not in self._socketed or name not in self._address:
            return None
        return in_use(*self._address[name])

    async def _failed(self, units: list[str]) -> bool:
        return any(b.get("ActiveState") == "failed" for b in await show(units, ("ActiveState",)))

    async def stop(self, name: str) -> None:
        await stop(unit(name))  # the server only: its socket unit keeps the port (and the backlog)

    async def observe(self, names: list[str]) -> dict[str, Observed]:
        socketed = [n for n in names if n in self._socketed]
        shown = await show([unit(n) for n in names] + [socket_unit(n) for n in socketed])
        by_id = {b.get("Id"): b for b in shown}
        blocks = [by_id.get(unit(n), {}) for n in names]
        listening = {n for n in socketed if by_id.get(socket_unit(n), {}).get("ActiveState") == "active"}
        now_wall, now_mono = time.time(), time.monotonic()

        def wall(mono: str) -> float | None:
            usec = int(mono or 0)
            return now_wall - (now_mono - usec / 1e6) if usec else None

        seen = {}
        for name, info in zip(names, blocks):
            active, sub = info.get("ActiveState"), info.get("SubState")
            if active in ("active", "reloading"):
                state = "up"
            elif active == "activating":
                state = "backoff" if sub == "auto-restart" else "starting"
            elif active == "deactivating":
                state = "stopping"
            elif active == "failed":
                state = "gave_up"
            else:
                state = "stopped"
            if state == "stopped" and name in listening:
                state = "idle"  # no process, the port held: the next connection starts it
            pid = int(info.get("MainPID") or 0) or None
            exit_ = None
            if state != "up" and int(info.get("ExecMainExitTimestampMonotonic") or 0):
                exit_ = _describe_exit(info.get("ExecMainCode", ""), info.get("ExecMainStatus", ""))
            result = info.get("Result", "success")
            if result in ("success", "exit-code", "signal", "core-dump"):  # last_exit says it better
                result = "success"
            memory = info.get("MemoryCurrent", "")
            seen[name] = Observed(
                state=state, pid=pid if state == "up" else None,
                since=wall(info.get("ExecMainStartTimestampMonotonic", "")) if state == "up" else
                wall(info.get("StateChangeTimestampMonotonic", "")),
                last_exit=exit_, error=f"systemd: {result}" if result != "success" and state != "up" else None,
                memory=int(memory) if memory.isdigit() and int(memory) != _UNSET else None,
            )
        return seen

    def log_path(self, name: str) -> str | None:
        return None

    def journal_unit(self, name: str) -> str | None:
        return unit(name)

    async def close(self) -> None:
        for name in list(self._kept):  # the daemon exits: a stopped user's port is not held any more
            self._let_go(name)


def backend(config, run_dir: str, tokens: TokenStore, on_change) -> ManagedBackend:
    return ManagedBackend(SystemdManager(run_dir, config.state_dir), run_dir, config.state_dir, tokens, on_change)
