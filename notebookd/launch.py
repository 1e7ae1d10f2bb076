"""What a backend hands its process manager: a server's files on disk and its argv, env and cwd.

The files are the same for every backend (see docs/architecture.md, "Spawn"): in
`<run_dir>/servers/USER/` (root-owned, group the user's, 0750) the jupyter config (0640), the
`migrated` marker and, unless the manager delivers it itself (systemd's LoadCredential=), the
user's 0400 copy of the token. argv and environment come from `jupyter.py`, unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from notebookd import jupyter
from notebookd.fsutil import ensure_dir, write_atomic
from notebookd.model import ServerSpec
from notebookd.tokens import TokenStore


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


def prepare(spec: ServerSpec, run_dir: str, tokens: TokenStore, *, token_file: str | None = None,
            runtime_dir: str | None = None) -> Launch:
    """Write the server's files and compute how it is run.

    `token_file`: where the server will find its token, if the manager puts it there (else
    notebookd writes the user's 0400 copy). `runtime_dir`: JUPYTER_RUNTIME_DIR, if the manager
    creates it (else a 0700 dir beside the config)."""
    acc = spec.account
    base = server_dir(run_dir, spec.name)
    ensure_dir(os.path.join(run_dir, "servers"), 0o755)
    ensure_dir(base, 0o750, 0, acc.gid)
    migrated = os.path.join(base, "migrated")  # see NativeBackend.server_files
    if not os.path.exists(migrated):
        write_atomic(migrated, b"", 0o644, 0, acc.gid)
    files = {"config": os.path.join(base, "jupyter_server_config.json"),
             "token": token_file or os.path.join(base, "token"),
             "runtime": runtime_dir or os.path.join(base, "runtime")}
    words = jupyter.command(spec)
    config = jupyter.server_config(spec, jupyter.server_kind(words))
    write_atomic(files["config"], json.dumps(config, indent=1).encode(), 0o640, 0, acc.gid)
    if token_file is None:
        write_atomic(files["token"], tokens.get(acc.name).encode(), 0o400, acc.uid, acc.gid)
    if runtime_dir is None:
        ensure_dir(files["runtime"], 0o700, acc.uid, acc.gid)
    mark = marker(spec.name, run_dir)
    return Launch(tuple(jupyter.argv(spec, files["config"], words)), jupyter.environment(spec, files, mark),
                  spec.root_dir, mark)
