"""What a backend hands its process manager: a server's files on disk and its argv, env and cwd.

The files are the same as the native backend's (see docs/architecture.md, "Spawn"): in
`<run_dir>/servers/USER/` (root-owned, group the user's, 0750) the jupyter config (0640), the
`migrated` marker, and what access.py hands the user (token, password hash, TLS key, cookie secret),
except the token when the manager delivers it itself (systemd's LoadCredential=). argv and
environment come from `jupyter.py`, unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from notebookd import jupyter, kernelspecs
from notebookd.access import Access
from notebookd.fsutil import ensure_dir, write_atomic
from notebookd.model import ServerSpec


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str
    marker: str  # NOTEBOOKD_SERVER: how every process of the server (kernels too) is found


def marker(name: str, run_dir: str) -> str:
    return f"{name}@{run_dir}"


def server_dir(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, "servers", name)


def prepare(spec: ServerSpec, run_dir: str, access: Access, *, token_file: str | None = None,
            runtime_dir: str | None = None) -> Launch:
    """Write the server's files and compute how it is run.

    `access` (access.py) writes what lets the user in: token, password hash, TLS key, cookie secret, each
    the user's own 0400 file. `token_file`: where the server finds its token if the manager delivers it
    itself (systemd's credential); notebookd's copy is then removed. `runtime_dir`: JUPYTER_RUNTIME_DIR, if
    the manager creates it (else a 0700 dir beside the config). Raises NotReady (e.g. password auth and no
    password yet) and OSError."""
    acc = spec.account
    base = server_dir(run_dir, spec.name)
    ensure_dir(os.path.join(run_dir, "servers"), 0o755)
    ensure_dir(base, 0o750, 0, acc.gid)
    migrated = os.path.join(base, "migrated")  # see NativeBackend.server_files
    if not os.path.exists(migrated):
        write_atomic(migrated, b"", 0o644, 0, acc.gid)
    files = {"config": os.path.join(base, "jupyter_server_config.json"),
             "token": os.path.join(base, "token"),
             "runtime": runtime_dir or os.path.join(base, "runtime"),
             "share": kernelspecs.share_dir(run_dir)}  # shared kernels (kernelspecs.py)
    words = jupyter.command(spec)
    granted = access.install(spec, base, 0)
    if token_file is not None and granted.token_file is not None:
        os.unlink(granted.token_file)
        granted = replace(granted, token_file=token_file)
    jupyter.write_config(files["config"], spec, jupyter.server_kind(words), granted, 0, acc.gid)
    if runtime_dir is None:
        ensure_dir(files["runtime"], 0o700, acc.uid, acc.gid)
    mark = marker(spec.name, run_dir)
    return Launch(tuple(jupyter.argv(spec, files["config"], words)),
                  jupyter.environment(spec, files, mark, granted), spec.root_dir, mark)
