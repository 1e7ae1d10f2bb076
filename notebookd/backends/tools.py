"""Running a process manager's own tools (systemctl; squeue, sbatch, scancel, sinfo), the one way for
every backend: every return code checked, a failure is a BackendError carrying the tool's own message."""

from __future__ import annotations

import os

from notebookd import command
from notebookd.procs import describe_exit
from notebookd.backends.base import BackendError


async def run_tool(argv: list[str], *, env: dict[str, str], timeout: float, input: bytes | None = None,
                   what: str | None = None, **popen) -> str:
    """The standard output of `argv`. `what` names the call in messages (default: the tool's name);
    `popen`: the identity to run it as (user=, group=, extra_groups=, umask=)."""
    what = what or os.path.basename(argv[0])
    try:
        done = await command.run(argv, env=env, timeout=timeout, input=input, **popen)
    except OSError as exc:
        raise BackendError(f"cannot run {what}: {exc.strerror or exc}") from None
    except TimeoutError as exc:
        raise BackendError(f"{what}: {exc}") from None
    if done.returncode != 0:
        message = " ".join(done.err.decode(errors="replace").split()) or describe_exit(done.returncode)
        raise BackendError(f"{what}: {message}")
    if done.overflow:
        raise BackendError(f"{what}: said more than can be read; its answer is not used")
    return done.out.decode(errors="replace")
