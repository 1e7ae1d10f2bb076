"""The backend named by `backend:` in the config; the only place that knows all three."""

from __future__ import annotations

from notebookd.backends.base import BackendError
from notebookd.config import Config
from notebookd.paths import Layout
from notebookd.tokens import TokenStore


def make(config: Config, layout: Layout, tokens: TokenStore, on_change, sockets=None):
    """`sockets`: the daemon's socket book (listeners.SocketBook), for the backends that hold users' ports."""
    if config.backend != "native" and not layout.system:
        raise BackendError(f"backend {config.backend} runs servers as other users: only root's notebookd "
                           "can use it (single-user mode: backend: native)")
    if config.backend == "supervisor":
        from notebookd.backends import supervisor

        return supervisor.backend(config, layout.run_dir, tokens, on_change)
    if config.backend == "systemd":
        from notebookd.backends import systemd

        return systemd.backend(config, layout.run_dir, tokens, on_change)
    if config.backend == "slurm":
        from notebookd.backends import slurm

        return slurm.backend(config, layout.run_dir, tokens, on_change)
    from notebookd.backends.native import NativeBackend

    return NativeBackend(layout.run_dir, config.state_dir, layout.system, tokens, on_change=on_change,
                         sockets=sockets)
