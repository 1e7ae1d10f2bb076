"""The contract every backend keeps, so one reconcile step and one `status` serve them all.

A backend keeps the servers it was given alive on its own (restarts, backoff), the way supervisord
or systemd would; the daemon only tells it which servers should exist, with which spec.
"""

from __future__ import annotations

from typing import Protocol

from notebookd.model import ServerSpec, ServerStatus


class BackendError(Exception):
    """The process manager behind a backend refused or could not be reached; one line saying why."""


class Backend(Protocol):
    name: str

    async def open(self) -> None:
        """Get ready (create dirs, connect); called once before anything else."""

    def names(self) -> set[str]:
        """Every server it knows, stopped ones included."""

    def specs(self) -> dict[str, ServerSpec]:
        """The servers it has been told to run and not told to stop, by user."""

    async def start(self, spec: ServerSpec, urgent: bool = False) -> None:
        """Run `spec` and keep it running; return once it is starting (not when it is ready).

        `urgent`: someone asked for it (`notebookd start`): it goes before the starts of a reconcile."""

    async def stop(self, name: str) -> None:
        """Stop the user's server, kernels included; return when nothing of it is left."""

    async def forget(self, name: str) -> None:
        """Stop the user's server and drop it: the user is no longer configured."""

    async def restart(self, spec: ServerSpec, urgent: bool = False) -> None:
        """Stop, then start with `spec` (which may differ from the running one)."""

    def status(self) -> dict[str, ServerStatus]:
        """Every server it knows, stopped ones included; fast, no blocking I/O."""

    def log_path(self, name: str) -> str | None:
        """The current log file of the user's server, if the backend keeps files."""

    # Optional: `journal_unit(name) -> str | None`, the systemd unit whose journal holds the log.
    # Optional: `usage() -> dict[str, usage.Usage]`, memory and CPU of each server's process tree, the
    # read its status rows' memory came from (the metrics take it rather than read /proc again).

    async def close(self) -> None:
        """Stop every server in parallel and release everything (daemon shutdown)."""

    async def detach(self) -> None:
        """Release everything but leave every server running, for the next daemon to adopt (upgrades)."""
