"""The systemd backend: one `notebookd-user@USER.service` per user, driven with systemctl.

`units/notebookd-user@.service` holds what every server shares (User=%i, restart policy, hardening);
notebookd writes what is per user into a runtime drop-in, `/run/systemd/system/UNIT.d/50-notebookd.conf`:
ExecStart (port, base_url), Environment, WorkingDirectory, the home and root_dir made writable,
limits, timeouts, and `LoadCredential=token:<state_dir>/tokens/USER` (the token never appears in the
unit text: the server reads it from `%d/token`, the credential directory systemd makes for it).

Each systemctl call is one small function; every return code is checked and a failure raises
BackendError with systemctl's own message. Logs are in the journal.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time

from notebookd import launch, procs
from notebookd.access import Access
from notebookd.backends.base import BackendError
from notebookd.backends.managed import ManagedBackend, Observed
from notebookd.backends.tools import run_tool
from notebookd.fsutil import write_atomic
from notebookd.model import ServerSpec
from notebookd.procs import MARKER_VAR
from notebookd.tokens import TokenStore

TEMPLATE = "notebookd-user@.service"
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


def dropin_path(name: str) -> str:
    return os.path.join(DROPIN_ROOT, unit(name) + ".d", DROPIN_NAME)


# ---- systemctl, one function per call ----

async def _systemctl(*args: str, timeout: float = 120) -> str:
    return await run_tool([SYSTEMCTL, *args], env=SYSTEMCTL_ENV, timeout=timeout, what=f"systemctl {' '.join(args)}")


async def daemon_reload() -> None:
    await _systemctl("daemon-reload")


async def start(name: str) -> None:
    await _systemctl("start", unit(name))


async def stop(name: str) -> None:
    await _systemctl("stop", unit(name))


async def reset_failed(name: str) -> None:
    """Clears `failed` and the start rate limit, so a start after a crash loop is not refused."""
    await _systemctl("reset-failed", unit(name))


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


def dropin(spec: ServerSpec, run: launch.Launch, token_source: str) -> str:
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
        "",
        "[Service]",
        "ExecStart=",
        "ExecStart=" + " ".join(_exec_word(w) for w in run.argv),
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


class SystemdManager:
    name = "systemd"

    def __init__(self, run_dir: str, state_dir: str):
        self.run_dir = run_dir
        self.state_dir = state_dir
        self._lock = asyncio.Lock()

    async def open(self) -> set[str]:
        info = (await show([unit("notebookd-check")], ("LoadState", "FragmentPath")))[0]
        if info.get("LoadState") != "loaded":
            raise BackendError(f"{TEMPLATE} is not installed (LoadState={info.get('LoadState')}): copy "
                               f"units/{TEMPLATE} to /etc/systemd/system and run systemctl daemon-reload")
        found = set()
        if os.path.isdir(DROPIN_ROOT):
            for entry in os.listdir(DROPIN_ROOT):
                m = re.fullmatch(r"notebookd-user@(.+)\.service\.d", entry)
                if m and os.path.exists(os.path.join(DROPIN_ROOT, entry, DROPIN_NAME)):
                    found.add(m.group(1))
        return found

    async def install(self, spec: ServerSpec, access: Access) -> bool:
        access.tokens.get(spec.name)  # make sure the credential's source exists
        run = await launch.prepare(spec, self.run_dir, access, token_file=TOKEN_FILE,
                             runtime_dir=f"/run/notebookd-user/{spec.name}")
        assert run.env[MARKER_VAR] == run.marker
        text = dropin(spec, run, os.path.join(access.tokens.dir, spec.name))
        path = dropin_path(spec.name)
        async with self._lock:
            try:
                with open(path) as fh:
                    if fh.read() == text:
                        return False
            except FileNotFoundError:
                pass
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            write_atomic(path, text.encode(), 0o644)
            await daemon_reload()
        return True

    async def uninstall(self, name: str) -> None:
        async with self._lock:
            shutil.rmtree(os.path.dirname(dropin_path(name)), ignore_errors=True)
            await daemon_reload()

    async def start(self, name: str) -> None:
        if await self._failed(name):
            await reset_failed(name)
        try:
            await start(name)
        except BackendError:
            if not await self._failed(name):  # e.g. refused by the start rate limit: clear it, once
                raise
            await reset_failed(name)
            await start(name)

    async def _failed(self, name: str) -> bool:
        return (await show([unit(name)], ("ActiveState",)))[0].get("ActiveState") == "failed"

    async def stop(self, name: str) -> None:
        await stop(name)

    async def observe(self, names: list[str]) -> dict[str, Observed]:
        blocks = await show([unit(n) for n in names])
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
        pass


def backend(config, run_dir: str, tokens: TokenStore, on_change) -> ManagedBackend:
    return ManagedBackend(SystemdManager(run_dir, config.state_dir), run_dir, config.state_dir, tokens, on_change)
