"""`proxy.file`: the daemon keeps nginx's include equal to what `notebookd render nginx` prints.

A server that moves (a Slurm job resubmitted onto another node, or handed over before its time limit)
answers at another address; users added or removed get or lose their location. Whenever the rendered
text differs from what was last written, the file is replaced atomically (written beside it, renamed:
nginx never reads half a file) and `proxy.reload` runs, e.g. `/usr/sbin/nginx -s reload` (nginx's
graceful reload: requests under way finish on the old workers). Pokes that come while a write or a
reload is under way are folded into one more round.

Both come from the root-owned config: root writes where the admin said and runs what the admin said,
nothing a user can change.
"""

from __future__ import annotations

import asyncio
import logging
import os

from notebookd import command
from notebookd.fsutil import write_atomic
from notebookd.procs import describe_exit

log = logging.getLogger("notebookd")

RELOAD_TIMEOUT = 60.0


class ProxyFile:
    def __init__(self, render):
        self.render = render  # () -> (path, reload argv, text)
        self.written: tuple[str, str] | None = None  # (path, text) last written
        self.error: str | None = None  # the last failure, for `status`; None once a round succeeds
        self._due = asyncio.Event()
        self._task: asyncio.Task | None = None

    def poke(self) -> None:
        """Something that may change the rendered text happened (a state change, a reload)."""
        self._due.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="proxy-file")

    async def _loop(self) -> None:
        while True:
            await self._due.wait()
            self._due.clear()
            try:
                await self.update()
            except Exception:  # a bug here must not stop the next rounds
                log.exception("proxy.file: updating it failed")

    async def update(self) -> bool:
        """One round: write and reload if the text changed; True if it did."""
        path, reload, text = self.render()
        if not path or self.written == (path, text):
            return False
        try:
            write_atomic(path, text.encode(), 0o644)
        except OSError as exc:
            self._fail(f"proxy.file: cannot write {path}: {exc.strerror or exc}")
            return False
        self.written = (path, text)
        log.info("proxy.file: %s rendered again", path)
        if reload:
            problem = await _run(reload)
            if problem:
                self.written = None  # tried again at the next change
                self._fail(f"proxy.reload: {' '.join(reload)}: {problem}")
                return False
        self.error = None
        return True

    def _fail(self, message: str) -> None:
        self.error = message
        log.error("%s", message)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


async def _run(argv: tuple[str, ...]) -> str | None:
    """Run the admin's reload command; None if it succeeded, else why not, in one line."""
    try:
        done = await command.run(list(argv), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                                 timeout=RELOAD_TIMEOUT, limit=1 << 16, own_session=True)
    except OSError as exc:
        return f"cannot run it: {exc.strerror or exc}"
    except TimeoutError:
        return f"no end within {RELOAD_TIMEOUT:g}s"
    if done.returncode != 0:
        return " ".join(done.err.decode(errors="replace").split())[-300:] or describe_exit(done.returncode)
    return None


def problems(config) -> list[str]:
    """check-config: the file's directory exists (the daemon makes none for nginx), the reload program runs."""
    proxy, out = config.proxy, []
    if proxy.file and not os.path.isdir(os.path.dirname(proxy.file)):
        out.append(f"{config.file}: proxy.file: {os.path.dirname(proxy.file)} is not a directory")
    if proxy.reload and not (os.path.isfile(proxy.reload[0]) and os.access(proxy.reload[0], os.X_OK)):
        out.append(f"{config.file}: proxy.reload: {proxy.reload[0]} is not an executable file")
    return out
