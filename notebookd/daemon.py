"""`notebookd run`: the event loop that owns the backend, the control socket and systemd's view.

Signal handlers only put an event on a queue; one loop takes events and control requests that
change anything go through the same lock, so reconcile steps never interleave.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import pwd
import signal
import time
from collections import Counter

from notebookd import (__version__, config as configmod, desired as desiredmod, fds, kernelspecs, launch, metrics,
                       nginx, publicurl, reconcile)
from notebookd.access import uses_password, uses_token
from notebookd.activity import ActivityBook
from notebookd.backends import factory
from notebookd.backends.base import Backend, BackendError
from notebookd.commands import REQUESTS, ROOT
from notebookd.control import Peer, Refused, serve
from notebookd.frontdoor.door import FrontDoor
from notebookd.fsutil import ensure_dir, remove
from notebookd.model import ServerStatus
from notebookd.listeners import SocketBook
from notebookd.notify import Notifier, listen_fds
from notebookd.passwords import PasswordStore, is_hash
from notebookd.paths import Layout
from notebookd.stats import Stats
from notebookd.ports import PortBookError
from notebookd.proxyfile import ProxyFile
from notebookd.reconcile import ApplyError
from notebookd.tokens import TokenStore

log = logging.getLogger("notebookd")

# Exit status of `notebookd shutdown --keep-servers`: the unit's RestartForceExitStatus= makes systemd
# start the (new) daemon again at once, and KillMode=process keeps the servers alive meanwhile.
EXIT_DETACHED = 75


class Daemon:
    def __init__(self, layout: Layout, config: configmod.Config):
        self.layout = layout
        self.config = config
        self.desired = desiredmod.Desired({}, {})
        self.held: set[str] = set()  # users an admin stopped; they stay stopped until started
        self.notifier = Notifier()
        self.events: asyncio.Queue[str] = asyncio.Queue()
        self.lock = asyncio.Lock()
        self.started = time.time()
        self.last_reload: dict = {"ok": True, "at": None, "error": None}
        self.backend: Backend | None = None
        self.stats = Stats()  # replaced by the backend's own (it counts its restarts, health failures, starts)
        self.activity: ActivityBook | None = None
        self.metrics = metrics.Service(self._snapshot)
        self.door: FrontDoor | None = None
        self.proxy_file = ProxyFile(self._rendered)  # proxy.file: render nginx, kept up to date
        self._status_pending = False

    # -- lifecycle --
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig, event in ((signal.SIGHUP, "reload"), (signal.SIGTERM, "stop"), (signal.SIGINT, "stop"),
                           (signal.SIGUSR2, "detach")):
            loop.add_signal_handler(sig, self.events.put_nowait, event)
        ensure_dir(self.layout.run_dir, 0o755)
        lock = _lock_run_dir(self.layout.run_dir)
        if lock is None:
            return 1
        soft, _ = fds.raise_nofile()
        log.debug("open-file limit %d", soft)
        ensure_dir(self.config.state_dir, 0o755)
        self.tokens = TokenStore(self.config.state_dir)
        self.passwords = PasswordStore(self.config.state_dir)
        self.activity = ActivityBook(self.tokens, self.config.metrics.activity_interval)
        try:
            book = self._socket_book()
            self.backend = factory.make(self.config, self.layout, self.tokens, self._changed, book)
            if getattr(self.backend, "sockets", None) is not book:
                book.release_others(set())  # a backend that holds no ports: a port kept for the native one is free
            await self.backend.open()
        except BackendError as exc:
            log.error("backend %s: %s", self.config.backend, exc)
            return 1
        self.stats = getattr(self.backend, "stats", None) or self.stats
        control = await serve(self.layout.socket, self.handle)
        await self.metrics.apply(self.config.metrics)
        activity = self.activity.run_idle(self._activity_targets)  # every activity_interval when nobody scrapes
        self.door = FrontDoor(self.layout.run_dir, self.tokens, lambda: self.desired.specs)
        try:
            async with self.lock:
                await self._reconcile()
        except PortBookError as exc:  # refuse rather than give every user a new port
            log.error("%s", exc)
            control.close()
            self.door.close()
            await self.backend.detach()  # whatever an earlier daemon left running stays for the next one
            os.close(lock)
            return 1
        except Exception:  # noqa: BLE001 - the servers that could start run; the error is in the log
            log.exception("the first reconcile failed")
        self.proxy_file.poke()
        self.notifier.ready(self._summary())
        log.info("notebookd %s running: %s (config %s, control %s)", __version__, self._summary(),
                 self.config.file, self.layout.socket)
        watchdog = asyncio.create_task(self._watchdog())
        renewal = asyncio.create_task(self._renew_certificates())
        event = "stop"
        try:
            while True:
                event = await self.events.get()
                if event == "reload":
                    try:
                        await self.reload()
                    except Refused:
                        pass  # logged and shown in status; the running config stays
                    except Exception:  # noqa: BLE001 - only an explicit stop ends the servers
                        log.exception("reload failed")
                elif event in ("stop", "detach"):
                    break
        finally:
            self.notifier.stopping()
            control.close()
            self.door.close()
            self.proxy_file.close()
            watchdog.cancel()
            renewal.cancel()
            activity.cancel()
            async with self.lock:
                if event == "detach":
                    log.info("exiting for a restart: every server keeps running, the next notebookd adopts them")
                    await self.backend.detach()
                else:
                    log.info("stopping: every server, in parallel")
                    await self.backend.close()
                    if self.config.metrics.textfile:
                        await self.metrics.write_textfile()  # every server stopped: not left looking up
            await self.metrics.close()
            remove(self.layout.socket)
            os.close(lock)
        if event == "detach":
            return EXIT_DETACHED
        log.info("stopped")
        return 0

    def _socket_book(self) -> SocketBook:
        """Users' listening sockets, kept in systemd's fd store (when it runs us) so that no restart of
        the daemon frees a port; what the last daemon stored comes back here (LISTEN_FDS)."""
        inherited = listen_fds()
        if inherited:
            log.info("took %d listening socket(s) back from systemd's fd store", sum(map(len, inherited.values())))
        return SocketBook(self.notifier if self.notifier.enabled else None, inherited)

    async def _reconcile(self) -> None:
        self.desired = desiredmod.build(self.config, self.layout.system)
        for warning in self.desired.warnings:
            log.warning("%s", warning)
        for name, problem in self.desired.problems.items():
            log.error("%s: %s", name, problem)
        self.held &= self.desired.specs.keys()
        try:
            kernelspecs.install(self.layout.run_dir, self.config.kernels)
        except OSError as exc:
            log.error("cannot write the shared kernelspecs: %s", exc)
        step = reconcile.plan(self.desired.specs, frozenset(self.held), self.backend.specs(),
                              self.backend.names())
        if step:
            log.info("reconcile: %s", step.describe())
        for spec in step.restart:
            self.stats.restarted(spec.name, "reload")
        try:
            await self.door.follow(self.config)
        except OSError as exc:
            log.error("front door: cannot listen on %s: %s", self.door.path, exc)
        await reconcile.apply(step, self.backend)
        hold = getattr(self.backend, "hold_sockets", None)  # backends whose daemon holds users' ports
        if hold is not None:
            for name, problem in hold(self.desired.specs).items():
                log.error("%s: %s", name, problem)
            for name in self.backend.sockets.release_others(set(self.desired.specs)):
                log.info("%s: no longer configured; its port, kept while no notebookd ran, is free", name)

    async def reload(self) -> None:
        """Re-read the config; a bad file changes nothing (the running config stays)."""
        self.notifier.reloading()
        try:
            new = configmod.load(self.layout)
        except configmod.ConfigError as exc:
            self.last_reload = {"ok": False, "at": time.time(), "error": str(exc)}
            log.error("reload failed, keeping the running config: %s", exc)
            self.notifier.ready(self._summary())
            raise Refused(f"reload failed, running config kept: {exc}") from None
        fixed = configmod.restart_only_changes(self.config, new)
        if fixed:
            error = f"{new.file}: {', '.join(fixed)}: take effect only when notebookd is restarted"
            self.last_reload = {"ok": False, "at": time.time(), "error": error}
            log.error("reload failed, keeping the running config: %s", error)
            self.notifier.ready(self._summary())
            raise Refused(f"reload failed, running config kept: {error}")
        async with self.lock:
            self.config = new
            try:
                await self._reconcile()
            except Exception as exc:  # noqa: BLE001 - e.g. a logs.dir that cannot be made, a full disk
                error = f"{new.file}: applying the new config failed: {exc}"
                self.last_reload = {"ok": False, "at": time.time(), "error": error}
                if isinstance(exc, (ApplyError, OSError)):  # a known kind, said in one line
                    log.error("reload: %s", error)
                else:
                    log.exception("reload: %s", error)
                self.notifier.ready(self._summary())
                raise Refused(error) from None
        self.proxy_file.poke()  # users added or removed, proxy: keys changed
        await self.metrics.apply(new.metrics)
        self.activity.min_age = new.metrics.activity_interval
        self.last_reload = {"ok": True, "at": time.time(), "error": None}
        log.info("reloaded %s", new.file)
        self.notifier.ready(self._summary())

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _changed(self) -> None:
        """A server changed state (or moved): refresh systemd's STATUS= once this loop iteration is done,
        and proxy.file (a server on another node)."""
        if self.config.proxy.file and self.door is not None:
            self.proxy_file.poke()
        if self.notifier.enabled and not self._status_pending:
            self._status_pending = True

            def push() -> None:
                self._status_pending = False
                self.notifier.send(f"STATUS={self._summary()}")

            asyncio.get_running_loop().call_soon(push)

    def _summary(self) -> str:
        counts = Counter(row.state for row in self._rows())
        if not counts:
            return "no servers configured"
        return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))

    # -- control requests --
    def _rows(self) -> list[ServerStatus]:
        rows = self.backend.status() if self.backend else {}
        for name, problem in self.desired.problems.items():
            rows[name] = ServerStatus(name=name, state="error", last_error=problem)
        public = publicurl.of(self.config.proxy)
        specs = self.backend.specs() if self.backend else {}
        for name, row in rows.items():
            row.local_url = row.url
            if public and row.url and name in specs:
                row.url = public + specs[name].base_url
        if self.activity is not None:
            for name, row in rows.items():
                seen = self.activity.get(name)
                row.kernels, row.connections, row.last_activity = seen.kernels, seen.connections, seen.last_activity
        return [rows[n] for n in sorted(rows)]

    def _activity_targets(self) -> tuple[dict, set[str]]:
        """Who the activity probe asks: the running servers; and who is still configured."""
        specs = self.backend.specs()
        running = {n: specs[n] for n, r in self.backend.status().items() if r.state == "running" and n in specs}
        return running, set(self.desired.specs) | set(self.desired.problems)

    async def _snapshot(self) -> metrics.Snapshot:
        await self.activity.refresh(*self._activity_targets())
        return metrics.snapshot_of(metrics.snapshot_rows(self._rows(), self.activity), self.stats,
                                   self.config.backend, self.last_reload, self.started)

    def _caller(self, peer: Peer) -> str | None:
        """None for a caller who may do everything, else the user name they may act for."""
        if peer.uid == 0 or peer.uid == os.getuid():
            return None
        try:
            return pwd.getpwuid(peer.uid).pw_name
        except KeyError:
            return f"#{peer.uid}"

    def _names(self, args: dict, caller: str | None, default_all: bool) -> list[str]:
        names = [str(n) for n in args.get("users") or []]
        if caller is not None:
            if not names:
                return [caller]
            others = sorted(set(names) - {caller})
            if others:
                raise Refused(f"permission denied: you may act only on your own server ({caller}), "
                              f"not {', '.join(others)}")
            return names
        if not names and default_all:
            return sorted(self.desired.specs)
        if not names:
            raise Refused("name at least one user")
        unknown = sorted(set(names) - self.desired.specs.keys() - self.desired.problems.keys())
        if unknown:
            raise Refused(f"not configured: {', '.join(unknown)}")
        return names

    async def handle(self, cmd: str, args: dict, peer: Peer):
        """One control request: `commands.REQUESTS` says who may ask it, `on_<request>` answers it."""
        command = REQUESTS.get(cmd)
        if command is None:
            raise Refused(f"unknown command {cmd!r}")
        caller = self._caller(peer)
        if command.who == ROOT and caller is not None:
            raise Refused(f"permission denied: only root may run 'notebookd {command.name}'")
        return await getattr(self, f"on_{cmd}")(cmd, args, caller)

    async def on_status(self, cmd: str, args: dict, caller: str | None) -> dict:
        rows = [r.to_dict() for r in self._rows() if caller is None or r.name == caller]
        return {"daemon": self._daemon_info(), "servers": rows}

    async def on_url(self, cmd: str, args: dict, caller: str | None) -> dict:
        names = [n for n in self._names(args, caller, default_all=True) if n in self.desired.specs]
        local = bool(args.get("local"))
        return {"urls": dict(zip(names, await asyncio.gather(*(self._url(n, local) for n in names))))}

    async def on_logs(self, cmd: str, args: dict, caller: str | None) -> dict:
        names = self._names(args, caller, default_all=False)
        journal = getattr(self.backend, "journal_unit", lambda n: None)
        return {"paths": {n: self.backend.log_path(n) for n in names},
                "journal": {n: unit for n in names if (unit := journal(n))}}

    async def on_start(self, cmd: str, args: dict, caller: str | None) -> dict:
        names = self._names(args, caller, default_all=False)
        missing = [n for n in names if n not in self.desired.specs]
        if missing:
            raise Refused("; ".join(f"{n}: {self.desired.problems.get(n, 'not configured')}" for n in missing))
        async with self.lock:
            await self._act(cmd, names)
        return {"done": names}

    on_stop = on_restart = on_start

    async def on_token(self, cmd: str, args: dict, caller: str | None) -> dict:
        return await self._token(args, caller)

    async def on_passwd(self, cmd: str, args: dict, caller: str | None) -> dict:
        return await self._passwd(args, caller)

    async def on_proxy(self, cmd: str, args: dict, caller: str | None) -> dict:
        return self._proxy()

    async def on_reload(self, cmd: str, args: dict, caller: str | None) -> dict:
        await self.reload()
        return {"reloaded": self.config.file}

    async def on_shutdown(self, cmd: str, args: dict, caller: str | None) -> dict:
        self.events.put_nowait("detach" if args.get("keep_servers") else "stop")
        return {"pid": os.getpid()}

    async def _act(self, cmd: str, names: list[str]) -> None:
        specs = [self.desired.specs[n] for n in names]
        if cmd == "stop":
            self.held.update(names)
            await asyncio.gather(*(self.backend.stop(n) for n in names))
        elif cmd == "start":
            self.held.difference_update(names)
            await asyncio.gather(*(self.backend.start(s, urgent=True) for s in specs))
        else:
            self.held.difference_update(names)
            for name in set(names) & self.backend.specs().keys():  # a stopped server is only started
                self.stats.restarted(name, "requested")
            await asyncio.gather(*(self.backend.restart(s, urgent=True) for s in specs))

    async def _url(self, name: str, local: bool = False) -> str:
        """The link a user opens: the server's UI (Lab, or the classic notebook) at nginx's public
        address if `proxy:` names one (publicurl.py), else (and with `local`) at the server's own; with
        the token unless the user logs in with a password only, or at the front door."""
        spec = self.desired.specs[name]
        path = json.loads(spec.settings.jupyter_config).get("ServerApp", {}).get("default_url")
        if path is None:
            # asked as the user (launch.server_kind): root runs nothing of the user's for a link
            path = (await launch.server_kind(spec, self.layout.run_dir, self.layout.system)).default_url
        public = None if local else publicurl.of(self.config.proxy)
        url = f"{public + spec.base_url if public else spec.url(self._address(name))}{(path or '/').lstrip('/')}"
        if not uses_token(spec):
            return url  # password only: the login page asks for it
        if public and self.config.front_door.enabled:
            return url  # the browser logs in there; a ?token= link would end at the login page
        return f"{url}?token={self.tokens.get(name)}"

    # -- access: tokens, passwords, the proxy, certificates --
    def _one_configured(self, args: dict, caller: str | None) -> str:
        names = self._names({"users": [args["user"]] if args.get("user") else []}, caller, default_all=False)
        name = names[0]
        if name not in self.desired.specs:
            raise Refused(f"{name}: {self.desired.problems.get(name, 'not configured')}")
        return name

    async def _restart_if_wanted(self, name: str) -> bool:
        """Restart a server that should be up (running, starting, backing off) so it takes new
        credentials; a server an admin stopped stays stopped and takes them at its next start.

        Decided under the lock: an admin's stop or removal queued before this request wins."""
        async with self.lock:
            spec = self.desired.specs.get(name)
            if spec is None or name in self.held or name not in self.backend.specs():
                return False
            self.stats.restarted(name, "requested")
            await self.backend.restart(spec)
        return True

    async def _token(self, args: dict, caller: str | None) -> dict:
        name = self._one_configured(args, caller)
        restarted = False
        if args.get("rotate"):
            self.tokens.rotate(name)
            self.backend.access.end_sessions(name)
            log.info("%s: token rotated", name)
            if uses_token(self.desired.specs[name]):
                restarted = await self._restart_if_wanted(name)
        url = await self._url(name, bool(args.get("local")))
        return {"user": name, "token": self.tokens.get(name), "url": url, "restarted": restarted,
                "auth": self.desired.specs[name].settings.auth}

    async def _passwd(self, args: dict, caller: str | None) -> dict:
        name = self._one_configured(args, caller)
        hashed = str(args.get("hash") or "")
        if not is_hash(hashed):
            raise Refused("not an argon2id password hash (notebookd passwd makes one)")
        self.passwords.set(name, hashed)
        spec = self.desired.specs[name]
        if uses_password(spec):
            self.backend.access.end_sessions(name)
        log.info("%s: password set", name)
        restarted = uses_password(spec) and await self._restart_if_wanted(name)
        return {"user": name, "auth": spec.settings.auth, "restarted": restarted}

    def _address(self, name: str) -> str | None:
        """Where the server answers if not on its spec's ip: the node of its Slurm job."""
        return getattr(self.backend, "address", lambda n: None)(name)

    def _proxy(self) -> dict:
        servers = [{"name": n, "ip": self._address(n) or s.ip, "port": s.port, "base_url": s.base_url,
                    "tls": s.tls.enabled}
                   for n, s in sorted(self.desired.specs.items())]
        proxy = self.config.proxy
        return {"config": self.config.file, "servers": servers,
                "proxy": {"listen": proxy.listen, "server_name": proxy.server_name,
                          "cert": proxy.cert, "key": proxy.key},
                "front_door": {"enabled": self.config.front_door.enabled, "socket": self.door.path}}

    def _rendered(self) -> tuple[str, tuple[str, ...], str]:
        """What proxy.file should hold: `notebookd render nginx`'s text, from the same answer."""
        proxy = self.config.proxy
        return proxy.file, proxy.reload, nginx.render(self._proxy()) if proxy.file else ""

    async def _renew_certificates(self) -> None:
        """Renew the self-signed certificate before it expires, and restart the servers that use it
        (a server reads its certificate once, at start)."""
        while True:
            tls = self.config.tls
            await asyncio.sleep(max(60.0, min(tls.renew_before / 4, 6 * 3600.0)))
            tls = self.config.tls
            if tls.mode != "self-signed":
                continue
            certs = self.backend.access.certificates
            try:
                certs.ensure(tls, self.config.listen.ip)  # the host's, for nginx: it reads it on its reload
                names = [n for n, s in self.backend.specs().items() if s.tls.mode == "self-signed"
                         and certs.ensure(tls, self.config.listen.ip, certs.user_pair(n))]
            except OSError as exc:
                log.error("cannot renew a self-signed certificate: %s", exc)
                continue
            if names:
                log.info("self-signed certificates renewed; restarting %s", ", ".join(names))
                async with self.lock:
                    specs = self.backend.specs()
                    for name in set(names) & specs.keys():
                        self.stats.restarted(name, "reload")
                    await asyncio.gather(*(self.backend.restart(specs[n]) for n in names if n in specs))

    def _daemon_info(self) -> dict:
        return {
            "pid": os.getpid(), "version": __version__, "backend": self.config.backend,
            "config": self.config.file, "since": self.started, "mode": "system" if self.layout.system else "user",
            "reload": self.last_reload,
            "warnings": list(self.desired.warnings) + ([self.proxy_file.error] if self.proxy_file.error else []),
            "metrics": {"listen": metrics.address(self.config.metrics),
                        "textfile": self.config.metrics.textfile or None, "error": self.metrics.error},
        }


def _lock_run_dir(run_dir: str) -> int | None:
    """Hold `notebookd.lock` in the run dir for as long as this daemon lives; None (logged) if another
    daemon holds it: a second `notebookd run` must not take over the first one's socket and servers."""
    path = os.path.join(run_dir, "notebookd.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        log.error("another notebookd (pid %s) is running with run dir %s; not starting a second one",
                  holder, run_dir)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def run(layout: Layout, config: configmod.Config) -> int:
    logging.basicConfig(
        level=logging.INFO,
        # under systemd the journal adds the time itself
        format="%(levelname)s %(message)s" if os.environ.get("JOURNAL_STREAM") else
        "%(asctime)s %(levelname)s %(message)s",
    )
    return asyncio.run(Daemon(layout, config).run())
