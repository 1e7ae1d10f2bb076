"""The supervisor backend: a running supervisord keeps the servers alive.

notebookd writes one `[program:notebookd-USER]` section per user into `<conf_d>/notebookd-users.conf`
(root-only: it holds each server's environment) and applies changes through supervisord's XML-RPC
socket the way `supervisorctl update NAME` does: reloadConfig, then remove/add only the groups of
ours that changed. Other programs of that supervisord are never touched.

supervisord passes its own environment to children; `env -i` in front of the command gives the
server the clean environment jupyter.py computes, and nothing of root's.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time

from notebookd import launch, procs
from notebookd.access import Access
from notebookd.backends import xmlrpc
from notebookd.backends.base import BackendError
from notebookd.backends.managed import ManagedBackend, Observed
from notebookd.config import Supervisor
from notebookd.fsutil import ensure_dir, grant_only, write_atomic
from notebookd.model import ServerSpec
from notebookd.tokens import TokenStore

PREFIX = "notebookd-"
CONF_NAME = "notebookd-users.conf"
ENV = "/usr/bin/env"

# supervisor's Faults (supervisor/xmlrpc.py)
BAD_NAME, ALREADY_STARTED, NOT_RUNNING, ALREADY_ADDED = 10, 60, 70, 90

# EXITED: autorestart=true makes supervisord start it again at once
_STATES = {"STOPPED": "stopped", "EXITED": "backoff", "UNKNOWN": "stopped", "STARTING": "up", "RUNNING": "up",
           "BACKOFF": "backoff", "STOPPING": "stopping", "FATAL": "gave_up"}


def program(name: str) -> str:
    return PREFIX + name


def _conf_value(word: str) -> str:
    """A command word for supervisor: shlex-quoted, % doubled (its config does %(...)s expansion)."""
    if "\n" in word or "\r" in word:
        raise BackendError(f"supervisor cannot run a command with a line break in {word!r}")
    return shlex.quote(word).replace("%", "%%")


def section(spec: ServerSpec, run: launch.Launch, logfile: str) -> str:
    env = [f"{k}={v}" for k, v in sorted(run.env.items())]
    command = " ".join(_conf_value(w) for w in [ENV, "-i", *env, *run.argv])
    lines = [
        f"[program:{program(spec.name)}]",
        f"command={command}",
        # supervisord changes into it after dropping privileges (process.py `_spawn_as_child`: set_uid,
        # then chdir), so it is resolved as the user
        f"directory={run.cwd.replace('%', '%%')}",
        f"user={spec.account.name}",
        "umask=077",
        # notebookd starts it (and starts it again if it was stopped behind its back)
        "autostart=false",
        "autorestart=true",
        "startsecs=1",
        # after this many quick exits supervisord gives up (FATAL): notebookd shows crashloop and
        # retries every restart.backoff_max, so a server is never given up for good
        f"startretries={spec.restart.crashloop_after}",
        "stopsignal=TERM",
        f"stopwaitsecs={max(1, round(spec.settings.stop_timeout))}",
        # the server's process group; kernels (own sessions) are ended by notebookd after the stop
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={logfile.replace('%', '%%')}",
        f"stdout_logfile_maxbytes={spec.logs.max_size}",
        f"stdout_logfile_backups={spec.logs.keep}",
    ]
    return "\n".join(lines) + "\n"


class SupervisorManager:
    name = "supervisor"

    def __init__(self, settings: Supervisor, run_dir: str):
        self.socket = settings.socket
        self.conf = os.path.join(settings.conf_d, CONF_NAME)
        self.run_dir = run_dir
        self.sections: dict[str, str] = {}
        self.logs: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def _call(self, method: str, *params, ok: tuple[int, ...] = (), timeout: float = 120):
        try:
            return await xmlrpc.call(self.socket, f"supervisor.{method}", *params, timeout=timeout)
        except xmlrpc.Fault as fault:
            if fault.faultCode in ok:
                return None
            raise BackendError(f"supervisord: {method}{params!r}: {fault.faultString}") from None
        except xmlrpc.RPCError as exc:
            raise BackendError(f"supervisord: {exc}") from None

    async def open(self) -> set[str]:
        state = await self._call("getState")
        if state.get("statename") != "RUNNING":
            raise BackendError(f"supervisord on {self.socket} is {state.get('statename')}")
        if not os.path.isdir(os.path.dirname(self.conf)):
            raise BackendError(f"supervisor.conf_d {os.path.dirname(self.conf)} does not exist")
        self.sections = self._read_conf()
        for name, text in self.sections.items():
            m = re.search(r"^stdout_logfile=(.*)$", text, re.M)
            if m:
                self.logs[name] = m.group(1).replace("%%", "%")
        await self._update()  # a file edited while no notebookd ran
        return set(self.sections)

    def _read_conf(self) -> dict[str, str]:
        try:
            with open(self.conf) as fh:
                text = fh.read()
        except FileNotFoundError:
            return {}
        sections = {}
        for part in re.split(r"^(?=\[program:)", text, flags=re.M):
            m = re.match(r"\[program:" + re.escape(PREFIX) + r"([^\]]+)\]\n", part)
            if m:
                sections[m.group(1)] = part
        return sections

    def _write_conf(self) -> None:
        body = "".join(self.sections[n] + "\n" for n in sorted(self.sections))
        head = ("; Written by notebookd, one program per user; edits are overwritten.\n"
                "; Root-only: it holds each server's environment.\n\n")
        write_atomic(self.conf, (head + body).encode(), 0o600)

    async def _update(self) -> set[str]:
        """What `supervisorctl update` does, for our groups only; returns the groups replaced."""
        self._write_conf()
        added, changed, removed = (await self._call("reloadConfig"))[0]
        ours = lambda names: [n for n in names if n.startswith(PREFIX)]  # noqa: E731
        for group in ours(removed) + ours(changed):
            await self._call("stopProcessGroup", group, True, ok=(BAD_NAME, NOT_RUNNING))
            await self._call("removeProcessGroup", group, ok=(BAD_NAME,))
        for group in ours(added) + ours(changed):
            await self._call("addProcessGroup", group, ok=(ALREADY_ADDED,))
        return {g[len(PREFIX):] for g in ours(added) + ours(changed)}

    async def install(self, spec: ServerSpec, access: Access) -> bool:
        run = await launch.prepare(spec, self.run_dir, access)
        # supervisord creates and rotates the log files itself, mode 0644: a 0750 directory per user,
        # root's, that only the user may enter besides root (an ACL: not the user's whole group)
        logdir = os.path.join(spec.logs.dir, spec.name)
        ensure_dir(spec.logs.dir, 0o755)
        ensure_dir(logdir, 0o750, 0, 0)
        fd = os.open(logdir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            grant_only(fd, spec.account.uid, 0o5)
        finally:
            os.close(fd)
        logfile = os.path.join(logdir, f"{spec.name}.log")
        text = section(spec, run, logfile)
        async with self._lock:
            self.logs[spec.name] = logfile
            if self.sections.get(spec.name) == text:
                return False
            self.sections[spec.name] = text
            return spec.name in await self._update()

    async def uninstall(self, name: str) -> None:
        async with self._lock:
            if self.sections.pop(name, None) is not None:
                await self._update()
            self.logs.pop(name, None)

    async def start(self, name: str) -> None:
        await self._call("startProcess", program(name), False, ok=(ALREADY_STARTED,))

    async def stop(self, name: str) -> None:
        await self._call("stopProcess", program(name), True, ok=(NOT_RUNNING, BAD_NAME))

    async def observe(self, names: list[str]) -> dict[str, Observed]:
        infos = {i["name"]: i for i in await self._call("getAllProcessInfo") if i["group"] == i["name"]}
        now = time.time()
        seen = {}
        for name in names:
            info = infos.get(program(name))
            if info is None:
                seen[name] = Observed("stopped")
                continue
            state = _STATES.get(info["statename"], "stopped")
            exit_ = None
            # a quick exit (before startsecs) has no exit status in supervisord, only its spawnerr
            if info["stop"] and state != "up" and not info["spawnerr"]:
                exit_ = procs.describe_exit(info["exitstatus"] if info["exitstatus"] >= 0 else None)
            seen[name] = Observed(
                state=state, pid=info["pid"] or None if state == "up" else None,
                since=info["start"] or now, last_exit=exit_, error=info["spawnerr"] or None,
            )
        return seen

    def log_path(self, name: str) -> str | None:
        return self.logs.get(name)

    def journal_unit(self, name: str) -> str | None:
        return None

    async def close(self) -> None:
        pass


def backend(config, run_dir: str, tokens: TokenStore, on_change) -> ManagedBackend:
    return ManagedBackend(SupervisorManager(config.supervisor, run_dir), run_dir, config.state_dir, tokens, on_change)
