"""The one launch path: a server's files on disk, and the argv, environment and cwd it runs with.

Every backend (native exec and fork, supervisor, systemd) and the bench call `prepare`. In
`<run_dir>/servers/USER/` (root-owned, group the user's, 0750) it writes the jupyter config (0640),
the `migrated` marker, embed.py's files (when another site may frame the server), and what access.py hands the user (token, password hash, TLS key, cookie
secret), except the token when the manager delivers it itself (systemd's LoadCredential=). What it
needs from the user's world (root_dir, the command in PATH, the interpreter's versions) it asks of
preflight.py, which looks as the user. argv and environment come from `jupyter.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

from notebookd import embed, jupyter, kernelspecs, preflight
from notebookd.access import Access
from notebookd.fsutil import ensure_dir, write_atomic
from notebookd.model import ServerSpec


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str  # entered as the user, after the identity change, by every spawn path
    marker: str  # NOTEBOOKD_SERVER: how every process of the server (kernels too) is found
    kind: jupyter.ServerKind = jupyter.ServerKind()
    words: int = 0  # argv[:words] is the command itself; the fork template runs what follows `-m jupyter_server`
    python: str | None = None  # the interpreter the command runs (the launcher runs in it: launcher.wrap)

    @property
    def args(self) -> tuple[str, ...]:
        return self.argv[self.words:]


# Enters the server's directory as the user: Popen's cwd= (and any chdir in the daemon) happens as root,
# before the identity change. $1 is the directory, the rest the server's argv; the shell's PWD/OLDPWD
# are dropped so the server gets exactly jupyter.environment.
ENTER = ('cd -- "$1" 2>/dev/null || { echo "notebookd: $USER cannot enter root_dir $1" >&2; exit 2; }; '
         'unset PWD OLDPWD; shift; exec "$@"')


def enter(cwd: str) -> list[str]:
    """The words in front of a server's argv that change into `cwd` after the identity change."""
    return ["/bin/sh", "-c", ENTER, "notebookd-enter", cwd]


def marker(name: str, run_dir: str) -> str:
    return f"{name}@{run_dir}"


def server_dir(run_dir: str, name: str) -> str:
    return os.path.join(run_dir, "servers", name)


def _files(run_dir: str, name: str, runtime_dir: str | None = None) -> dict[str, str]:
    base = server_dir(run_dir, name)
    return {"config": os.path.join(base, "jupyter_server_config.json"),
            "token": os.path.join(base, "token"),
            "runtime": runtime_dir or os.path.join(base, "runtime"),
            "share": kernelspecs.share_dir(run_dir)}  # shared kernels (kernelspecs.py)


async def server_kind(spec: ServerSpec, run_dir: str, system: bool = True) -> jupyter.ServerKind:
    """What the server's interpreter has (for the link `notebookd url` prints), asked as the user with
    the server's environment; writes nothing. The default when the user's side does not answer."""
    env = jupyter.environment(spec, _files(run_dir, spec.name), marker(spec.name, run_dir))
    try:
        return (await preflight.check(spec, env, identity=system, root_dir=False)).kind
    except preflight.PreflightError:
        return jupyter.ServerKind()


async def check(spec: ServerSpec, run_dir: str, system: bool = True) -> None:
    """What `prepare` asks of the user's side, alone (`notebookd check-config`). Raises PreflightError."""
    env = jupyter.environment(spec, _files(run_dir, spec.name), marker(spec.name, run_dir))
    await preflight.check(spec, env, identity=system)


async def prepare(spec: ServerSpec, run_dir: str, access: Access, *, system: bool = True,
                  token_file: str | None = None, runtime_dir: str | None = None,
                  check_root_dir: bool = True) -> Launch:
    """Write the server's files and compute how it is run.

    `system`: the daemon is root; the files are root's (the user reads, never changes them) and the
    preflight runs as the user. `access` (access.py) writes what lets the user in, each the user's own
    0400 file. `token_file`: where the server finds its token if the manager delivers it itself
    (systemd's credential); notebookd's copy is then removed. `runtime_dir`: JUPYTER_RUNTIME_DIR, if the
    manager creates it (else a 0700 dir beside the config). `check_root_dir=False`: the spawn path
    reports a root_dir the user cannot enter itself (the fork template). Raises NotReady (password auth
    and no password yet; preflight.PreflightError: the user's side) and OSError."""
    acc = spec.account
    owner = 0 if system else -1
    base = server_dir(run_dir, spec.name)
    ensure_dir(os.path.join(run_dir, "servers"), 0o755)
    ensure_dir(base, 0o750, owner, acc.gid)
    # jupyter_core migrates ~/.ipython config once and marks that by writing this file into the
    # config dir, which is ours and read-only to the user: without it every start after the first
    # kernel (which creates ~/.ipython) would fail.
    migrated = os.path.join(base, "migrated")
    if not os.path.exists(migrated):
        write_atomic(migrated, b"", 0o644, owner, acc.gid)
    files = _files(run_dir, spec.name, runtime_dir)
    granted = access.install(spec, base, owner)
    embed.install(spec, base, owner)  # in-frame opening when another site may embed the server
    if token_file is not None and granted.token_file is not None:
        os.unlink(granted.token_file)
        granted = replace(granted, token_file=token_file)
    if runtime_dir is None:
        ensure_dir(files["runtime"], 0o700, acc.uid, acc.gid)
    mark = marker(spec.name, run_dir)
    env = jupyter.environment(spec, files, mark, granted)
    found = await preflight.check(spec, env, identity=system, root_dir=check_root_dir)
    words = list(found.words)
    jupyter.write_config(files["config"], spec, found.kind, granted, owner, acc.gid)
    return Launch(tuple(jupyter.argv(spec, files["config"], words, found.kind)), env, spec.root_dir, mark,
                  found.kind, len(words), found.python)
