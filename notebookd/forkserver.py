"""`spawn: fork`: start servers by forking a template that has imported jupyter_server once.

A plain start of jupyter_server spends most of its CPU importing (jupyter_events and the
jsonschema format checkers it pulls in build parsers at import). The template process pays that
once; each server is then a fork of it, which starts in a fraction of the time and shares the
imported code's memory with its siblings (copy on write).

The template (`python -I -u -m notebookd.forkserver FD`, started by the daemon with a clean
environment, cwd /, its own session) runs no threads, holds no token, no config and no user's data:
it only receives, per server, the argv *after* `-m jupyter_server`, the environment (the token is in
it only as a file path), the cwd, the identity, and the two log FIFO fds (SCM_RIGHTS). Per request:

  fork → child: own session; stdin /dev/null, stdout/stderr the log FIFO, fd 3 its read end;
  every other fd closed; setgroups, setresgid, setresuid (real, effective and saved ids), then
  checks that the ids and groups are exactly the user's and that setuid(0) fails; dumpable again
  (an exec'd server is); cwd, umask 077, the clean environment of `jupyter.environment`;
  then `ServerApp.launch_instance(argv)` in the same interpreter.

The child reports the end of its setup over a close-on-exec pipe (an error text, or EOF when it
is about to run the server), so a failed chdir or setuid is a spawn error, as with exec. The
template polls every pending child's pipe together with its socket, each under a deadline: a child
that never reports (its user can SIGSTOP it once it has the user's ids) is killed and its start
answered with an error, and every other start goes on meanwhile. The daemon in turn waits for the
template's answer under a deadline of its own, and replaces a template that gives none.

Exit status: the servers are the template's children, so the template reaps them (SIGCHLD, a
wakeup fd, no threads) and reports `{"exit": pid, "status": code}` on the socket, with Popen's
convention (negative: killed by that signal). The daemon watches them like adopted processes
otherwise (pidfd, `procs.stop_tree`). If the template dies, its servers keep running (re-parented
to init); the daemon falls back to pidfds for them (exit status unknown) and starts a new template
on the next fork.

PR_SET_NO_NEW_PRIVS is *not* set: the dropped ids cannot be regained anyway (checked), and an
exec'd server does not have it either; setting it would break sudo/su in a user's terminals only
under `spawn: fork`.

Wire format: SOCK_SEQPACKET, one JSON object per packet.
"""

from __future__ import annotations

import array
import asyncio
import atexit
import ctypes
import fcntl
import gc
import itertools
import json
import logging
import os
import select
import signal
import socket
import sys
import time

from notebookd.procs import ServerProcess, watch_pid

log = logging.getLogger("notebookd")

MAX_PACKET = 1 << 16
REPORT_TIMEOUT = 20.0  # a child's setup (ids, fds, chdir) takes milliseconds; generous for a loaded machine
ANSWER_GRACE = 10.0  # the daemon waits this much longer than the template's own deadline
STARTUP_TIMEOUT = 300.0  # the template's imports: seconds, minutes on a machine busy starting many servers
PR_SET_DUMPABLE = 4
PR_SET_MM = 35
PR_SET_MM_ARG_START, PR_SET_MM_ARG_END, PR_SET_MM_ENV_START, PR_SET_MM_ENV_END = 8, 9, 10, 11
_blocks = []  # the argv/environment blocks /proc shows: must live as long as the process


class ForkError(Exception):
    """The template could not start a server (the message says why)."""


class SetupError(Exception):
    """A forked child's setup failed in a way its message says fully."""


# ---------------------------------------------------------------- the daemon's side

class ForkServer:
    """The daemon's handle on the template: started on first use, restarted if it dies."""

    def __init__(self, python: str = sys.executable, report_timeout: float = REPORT_TIMEOUT,
                 stop_uid: int | None = None):
        self.python = python
        self.report_timeout = report_timeout
        self.stop_uid = stop_uid  # tests only: see _child
        self.proc = None
        self.sock: socket.socket | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future] = {}
        self._exits: dict[int, asyncio.Future] = {}
        self._ready: asyncio.Future | None = None  # the template has imported what it preloads

    def _ensure(self) -> None:
        if self.sock is not None:
            return
        import subprocess

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [self.python, "-I", "-u", "-m", "notebookd.forkserver", str(theirs.fileno()),
                 repr(self.report_timeout), *([str(self.stop_uid)] if self.stop_uid is not None else [])],
                pass_fds=(theirs.fileno(),), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/",
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock = ours
        self._ready = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().add_reader(ours.fileno(), self._readable)
        log.info("fork server: template pid %d started", self.proc.pid)

    async def spawn(self, argv: list[str], env: dict[str, str], cwd: str, identity: tuple[int, int, list[int]] | None,
                    out: int, keep: int, listen: int, drain: float) -> "ForkedProcess":
        """Fork a server; `argv` is what follows `python -m jupyter_server`, `listen` the listening
        socket it accepts on (notebookd/launcher.py). Returns once it runs."""
        self._ensure()
        ready = self._ready
        try:  # its imports take seconds (more on a loaded machine); the per-start deadline starts after them
            await asyncio.wait_for(asyncio.shield(ready), STARTUP_TIMEOUT)
        except asyncio.TimeoutError:
            self._lost(f"not ready within {STARTUP_TIMEOUT:g}s", kill=True)
            raise ForkError("fork server: the template did not start; a new one starts with the next fork") from None
        if "error" in ready.result():
            raise ForkError(ready.result()["error"])
        rid = next(self._ids)
        request = {"id": rid, "argv": argv, "env": env, "cwd": cwd, "drain": drain,
                   "identity": list(identity[:2]) + [list(identity[2])] if identity else None}
        fut = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        try:
            self.sock.sendmsg([json.dumps(request).encode()],
                              [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [out, keep, listen]))])
        except OSError as exc:
            self._replies.pop(rid, None)
            self._lost(f"cannot reach the template: {exc}")
            raise ForkError(f"fork server: {exc}") from None
        try:  # the template answers within its own deadline for the child; a template that does not is broken
            reply = await asyncio.wait_for(fut, self.report_timeout + ANSWER_GRACE)
        except asyncio.TimeoutError:
            self._replies.pop(rid, None)
            self._lost(f"no answer within {self.report_timeout + ANSWER_GRACE:g}s", kill=True)
            raise ForkError("fork server: the template did not answer; a new one starts with the next fork") from None
        if "error" in reply:
            raise ForkError(reply["error"])
        return ForkedProcess(reply["pid"], reply["exit_future"])

    def _readable(self) -> None:
        while self.sock is not None:
            try:
                data = self.sock.recv(MAX_PACKET)
            except BlockingIOError:
                return
            except OSError as exc:
                return self._lost(str(exc))
            if not data:
                return self._lost("it exited")
            msg = json.loads(data)
            if "ready" in msg:
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(msg)
            elif "exit" in msg:
                fut = self._exits.pop(msg["exit"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg["status"])
            else:
                if "pid" in msg:
                    # registered here, not when spawn() resumes: the exit of a server that ends at once
                    # may be in the same read as this reply, before spawn() runs again
                    msg["exit_future"] = self._exits[msg["pid"]] = asyncio.get_running_loop().create_future()
                fut = self._replies.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    def _lost(self, why: str, kill: bool = False) -> None:
        """The template is gone (or wedged: `kill`): fail waiting spawns; its servers live on, watched by pidfd."""
        log.warning("fork server: lost the template (%s); a new one starts with the next fork", why)
        if kill and self.proc is not None:
            self.proc.kill()
        ready, self._ready = self._ready, None
        self._disconnect()
        if ready is not None and not ready.done():
            ready.set_result({"error": f"fork server lost: {why}"})
        for fut in self._replies.values():
            if not fut.done():
                fut.set_result({"error": f"fork server lost: {why}"})
        self._replies.clear()
        for pid, fut in self._exits.items():
            _resolve_by_pidfd(pid, fut)
        self._exits.clear()

    def _disconnect(self) -> None:
        if self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            proc, self.proc = self.proc, None
            try:
                proc.wait(5)  # EOF on its socket ends it; the servers it forked keep running
            except Exception:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """End the template (not the servers: the daemon stops those itself)."""
        ready, self._ready = self._ready, None
        if ready is not None and not ready.done():
            ready.set_result({"error": "fork server: closed"})
        self._disconnect()
        for fut in self._exits.values():
            if not fut.done():
                fut.set_result(None)
        self._exits.clear()


def _resolve_by_pidfd(pid: int, fut: asyncio.Future) -> None:
    """Resolve `fut` with None (status unknown) when `pid` ends."""
    if not fut.done():
        watch_pid(pid, lambda: fut.done() or fut.set_result(None))


class ForkedProcess(ServerProcess):
    """A server forked by the template: not our child; its exit status comes from the template."""

    def __init__(self, pid: int, status: asyncio.Future):
        super().__init__(pid)
        self._status = status

    def watch(self, on_exit) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()

        def finish(status: asyncio.Future) -> None:
            self.returncode = status.result()
            self.done = True
            on_exit()
            if not fut.done():
                fut.set_result(self.returncode)

        self._status.add_done_callback(finish)
        return fut


# ---------------------------------------------------------------- the template

def preload() -> None:
    """Import what every server imports, once: jupyter_server, its handlers, enabled extensions."""
    import jupyter_server.serverapp as serverapp

    for locations in serverapp.JUPYTER_SERVICE_HANDLERS.values():
        for name in locations or ():
            __import__(name)
    __import__("jupyter_server.base.handlers")
    for name in _enabled_extensions():
        try:
            from jupyter_server.extension.manager import ExtensionPackage

            ExtensionPackage(name=name, enabled=True)  # imports the package and its extension points
        except Exception as exc:  # a broken extension breaks the server, not the template
            print(f"notebookd fork server: cannot preload extension {name}: {exc}", file=sys.stderr)


def _enabled_extensions() -> list[str]:
    """Server extensions enabled in the system and environment config (never a user's)."""
    from jupyter_core.paths import SYSTEM_CONFIG_PATH, ENV_CONFIG_PATH

    enabled: dict[str, bool] = {}
    for base in [*SYSTEM_CONFIG_PATH[::-1], *ENV_CONFIG_PATH[::-1]]:
        folder = os.path.join(base, "jupyter_server_config.d")
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for entry in names:
            if not entry.endswith(".json"):
                continue
            try:
                with open(os.path.join(folder, entry)) as fh:
                    enabled.update(json.load(fh).get("ServerApp", {}).get("jpserver_extensions", {}))
            except (OSError, ValueError, AttributeError):
                continue
    return [name for name, on in enabled.items() if on]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


class _Pending:
    """A forked child whose setup report (its status pipe) has not come in yet."""

    def __init__(self, rid, pid: int, status_r: int, deadline: float):
        self.rid, self.pid, self.fd, self.deadline = rid, pid, status_r, deadline
        self.chunks: list[bytes] = []
        self.exit: int | None = None  # reaped before its report was answered


def serve(sock: socket.socket, report_timeout: float = REPORT_TIMEOUT, stop_uid: int | None = None) -> None:
    """The template's loop. Never blocks on one child: each child's status pipe is polled with the rest,
    under a deadline, so a child its user SIGSTOPs before its report costs that start only."""
    preload()
    gc.collect()
    gc.freeze()  # keep imported objects out of the collector: their pages stay shared after fork
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    private = [sock.fileno(), wake_r, wake_w]
    _send(sock, {"ready": True})  # the daemon's per-start deadlines count from here
    pending: dict[int, _Pending] = {}  # by status pipe fd
    failed: set[int] = set()  # children whose start was answered with an error: their exit is not news

    def answer(p: _Pending, error: str | None) -> None:
        poller.unregister(p.fd)
        os.close(p.fd)
        del pending[p.fd]
        if error is not None:
            failed.add(p.pid)
            _send(sock, {"id": p.rid, "error": error})
            return
        _send(sock, {"id": p.rid, "pid": p.pid})
        if p.exit is not None:  # the reply goes first: the daemon learns the pid before its exit
            _send(sock, {"exit": p.pid, "status": p.exit})

    while True:
        now = time.monotonic()
        timeout = min((p.deadline for p in pending.values()), default=None)
        events = poller.poll(None if timeout is None else max(0, int((timeout - now) * 1000) + 1))
        for fd, _ in events:
            if fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
            elif fd in pending:
                p = pending[fd]
                try:
                    chunk = os.read(fd, 4096)
                except BlockingIOError:
                    continue
                if chunk and sum(map(len, p.chunks)) < 4000:
                    p.chunks.append(chunk)
                    continue
                text = b"".join(p.chunks).decode(errors="replace")
                answer(p, "cannot start the server: " + text if text else None)
            elif fd == sock.fileno():
                data, ancdata, _, _ = sock.recvmsg(MAX_PACKET, socket.CMSG_SPACE(3 * 4))
                if not data:
                    return  # the daemon closed its end: leave; the servers keep running
                fds = []
                for level, kind, payload in ancdata:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
                started = _fork(json.loads(data), fds, sock, private, stop_uid)
                if isinstance(started, dict):
                    _send(sock, started)
                else:
                    rid, pid, status_r = started
                    pending[status_r] = _Pending(rid, pid, status_r, time.monotonic() + report_timeout)
                    poller.register(status_r, select.POLLIN)
        now = time.monotonic()
        for p in [p for p in pending.values() if p.deadline <= now]:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            answer(p, f"cannot start the server: its setup did not report within {report_timeout:g}s "
                      "(stopped or stuck between the identity change and the start; killed)")
        _reap(sock, pending, failed)


def _send(sock: socket.socket, msg: dict) -> None:
    try:
        sock.send(json.dumps(msg).encode())
    except OSError:
        pass  # the daemon is gone; serve() sees EOF next


def _reap(sock: socket.socket, pending: dict[int, _Pending], failed: set[int]) -> None:
    by_pid = {p.pid: p for p in pending.values()}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        if pid in by_pid:
            by_pid[pid].exit = code  # told after the reply that names the pid
        elif pid in failed:
            failed.discard(pid)
        else:
            _send(sock, {"exit": pid, "status": code})


def _fork(req: dict, fds: list[int], sock: socket.socket, private: list[int], stop_uid: int | None):
    """Fork a child for `req`: (id, pid, status pipe read end), or an error reply."""
    rid = req.get("id")
    if len(fds) != 3:
        for fd in fds:
            os.close(fd)
        return {"id": rid, "error": "fork server: expected two log fds and a listening socket with the request"}
    if _threads() != 1:
        for fd in fds:
            os.close(fd)
        return {"id": rid, "error": f"fork server: refusing to fork with {_threads()} threads running"}
    sys.stdout.flush()
    sys.stderr.flush()
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 127
        try:
            os.close(status_r)
            sock.detach()  # its fd is closed below; the object must never close a reused number
            code = _child(req, fds[0], fds[1], fds[2], status_w, stop_uid)
        except BaseException as exc:  # never return into the template's loop
            text = str(exc) if isinstance(exc, SetupError) else f"{type(exc).__name__}: {exc}"
            for fd in (status_w, 4):  # once _child has moved its fds, the status pipe is fd 4
                try:
                    os.write(fd, text.encode()[:4000])
                    break
                except OSError:
                    continue
        finally:
            os._exit(code)
    os.close(status_w)
    for fd in fds:
        os.close(fd)
    os.set_blocking(status_r, False)
    return rid, pid, status_r


def _show_in_proc(argv: list[str], env: dict[str, str]) -> None:
    """Make /proc/PID/cmdline and /proc/PID/environ show the server's own argv and environment.

    A fork keeps the template's blocks there; `ps`, and `procs` looking for the NOTEBOOKD_SERVER
    marker, read them. Needs CAP_SYS_RESOURCE, so it runs before the privileges are dropped; best
    effort (the server runs either way)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    for words, start, end in ((argv, PR_SET_MM_ARG_START, PR_SET_MM_ARG_END),
                              ([f"{k}={v}" for k, v in env.items()], PR_SET_MM_ENV_START, PR_SET_MM_ENV_END)):
        data = b"".join(w.encode() + b"\0" for w in words)
        block = ctypes.create_string_buffer(data, len(data))
        _blocks.append(block)
        addr = ctypes.addressof(block)
        # the kernel checks start <= end after each call: move the end first when moving up
        first, second = ((end, addr + len(data)), (start, addr))
        for option, value in (first, second) if addr >= _current(start) else (second, first):
            if libc.prctl(PR_SET_MM, option, value, 0, 0) != 0:
                return


def _current(option: int) -> int:
    """Where the kernel has the argv or environ block now (from /proc/self/stat)."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    # fields[0] is field 3 of proc(5): arg_start is field 48, env_start field 50
    return int(fields[{PR_SET_MM_ARG_START: 45, PR_SET_MM_ENV_START: 47}[option]])


def drop_privileges(uid: int, gid: int, groups: list[int]) -> None:
    """Become uid/gid with exactly `groups` for good (real, effective, saved ids), or raise."""
    os.setgroups(groups)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) \
            or sorted(set(os.getgroups()) - {gid}) != sorted(set(groups) - {gid}):
        raise PermissionError("the identity change did not take")
    if uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            pass
        else:
            raise PermissionError("could regain root after dropping privileges")
    # creds changed, so the kernel made us non-dumpable; an exec'd server is dumpable (its /proc
    # files belong to the user). Nothing in the template's memory is secret.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


def _child(req: dict, out: int, keep: int, listen: int, status_w: int, stop_uid: int | None = None) -> int:
    """In the forked child: become the user, exactly as the exec path does, then run the server."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # fds: 0 /dev/null, 1+2 the log FIFO, 3 its read end (never EPIPE), 4 the status pipe, 5 the
    # listening socket (close-on-exec: kernels and terminals never get it); nothing else
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 6) for fd in (out, keep, status_w, listen)]
    devnull = os.open("/dev/null", os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(high[0], 1)
    os.dup2(high[0], 2)
    os.dup2(high[1], 3)
    os.dup2(high[2], 4, inheritable=False)
    os.dup2(high[3], 5, inheritable=False)
    os.closerange(6, max(os.sysconf("SC_OPEN_MAX"), 1 << 16))
    os.set_inheritable(3, False)  # a kernel the server starts does not need it

    import jupyter_server.__main__ as main_module  # preloaded; its path is the server's argv[0]

    _show_in_proc([sys.executable, "-I", "-m", "jupyter_server", *req["argv"]], req["env"])
    identity = req.get("identity")
    if identity is not None:
        drop_privileges(identity[0], identity[1], list(identity[2]))
        if identity[0] == stop_uid:
            # tests only (NOTEBOOKD_TEST_FORK_STOP_UID): what the user can do to their own child from
            # here on by racing it, made deterministic: stop before the report
            os.kill(os.getpid(), signal.SIGSTOP)

    try:  # as the user: a symlink of theirs reaches only what they may enter anyway
        os.chdir(req["cwd"])
    except OSError as exc:
        user = req["env"].get("USER", "?")
        raise SetupError(f"{user} cannot enter root_dir {req['cwd']} ({exc.strerror})") from None
    os.umask(0o077)
    os.environ.clear()
    os.environ.update(req["env"])

    sys.argv = [main_module.__file__, *req["argv"]]
    from jupyter_server.serverapp import ServerApp

    from notebookd import launcher

    launcher.install(launcher.listening_socket(5), float(req.get("drain", launcher.DEFAULT_DRAIN)))
    os.close(4)  # setup done: the template answers the daemon with our pid
    code = 0
    try:
        ServerApp.launch_instance(req["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    return code


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[1]))
    if sock.type != socket.SOCK_SEQPACKET:
        print("notebookd.forkserver: expects the fd of a SOCK_SEQPACKET unix socket", file=sys.stderr)
        return 2
    sock.setblocking(True)
    serve(sock, float(argv[2]) if len(argv) > 2 else REPORT_TIMEOUT, int(argv[3]) if len(argv) > 3 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
