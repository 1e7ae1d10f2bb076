"""Everything jupyter-specific: a ServerSpec becomes argv, environment and a server config file.

Two applications are driven: jupyter_server's ServerApp (1.23 from Debian, 2.x from PyPI, and what runs
on it: JupyterLab 3+, notebook 7, nbclassic) and the classic notebook 6's own NotebookApp (Debian 12's
python3-notebook). jupyter_server 2.x moved auth settings to IdentityProvider classes; 1.23 and
notebook 6 keep them on the application. What a command runs is read from the interpreter that will
run it: the daemon's own from its environment, any other by a probe run as the server's user
(preflight.py). Anything else is refused before a start (`Undrivable`): a server notebookd cannot
tell its port would pick one of its own.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
import os
import shlex
import sys

from notebookd import embed
from notebookd.fsutil import remove, write_atomic
from notebookd.model import ServerSpec

# Settings that decide where a server listens and who may talk to it. They go on the command
# line as well as into the config file: command-line traits beat every config file, so nothing in
# a user's ~/.jupyter can move the port or switch auth off.
_ENFORCED_ON_ARGV = ("ip", "port", "port_retries", "base_url", "open_browser")


def command(spec: ServerSpec) -> list[str]:
    """The server's command words. A relative argv[0] is looked up in the server's PATH by
    preflight.py, as the user: root never resolves it."""
    # -I: the user's ~/.local site-packages and PYTHON* variables do not reach the server process
    return list(spec.settings.command) or [sys.executable, "-I", "-m", "jupyter_server"]


SERVER_APP = "ServerApp"  # jupyter_server 1.23/2.x, and what runs on it: JupyterLab 3+, notebook 7, nbclassic
NOTEBOOK_APP = "NotebookApp"  # the classic notebook 6 (Debian 12's python3-notebook): its own server

INSTEAD = ("use python -m jupyter_server, jupyter lab (JupyterLab 3+), jupyter notebook (notebook 6.4+ or 7) "
           "or jupyter nbclassic")


@dataclass(frozen=True)
class ServerKind:
    """What the command runs: the application class notebookd drives (its traitlets section too),
    the major version of its package (jupyter_server's; notebook's for NotebookApp), the UI it serves."""

    major: int = 2
    default_url: str | None = None  # "/lab" with JupyterLab, "/tree" with nbclassic or notebook 6/7
    app: str = SERVER_APP

    @property
    def identity_provider(self) -> bool:
        """Auth settings on IdentityProvider classes (jupyter_server 2.x), not on the application."""
        return self.app == SERVER_APP and self.major >= 2


class Undrivable(Exception):
    """The command runs an application notebookd cannot drive; the message says what and what instead."""


# Run by the server's own interpreter, as the server's user (preflight.py), or by the daemon on its
# own interpreter: finds packages without importing them. `answer(target)` looks up what the command
# runs: `{"module": M}` for `python -m M`, `{"script": PATH}` for a script, whose console_scripts entry
# point names the module.
PROBE = """
import importlib.metadata as m, json, os, sys
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return ""
def entry_module(script):
    name, eps = os.path.basename(script), m.entry_points()
    eps = eps.select(group="console_scripts") if hasattr(eps, "select") else eps.get("console_scripts", [])
    for ep in eps:
        if ep.name == name:
            return ep.value.split(":")[0].strip()
    return ""
def answer(target):
    module = target.get("module") or (entry_module(target["script"]) if target.get("script") else "")
    return {"module": module, "server": version("jupyter_server"), "notebook": version("notebook"),
            "lab": version("jupyterlab"), "nbclassic": version("nbclassic")}
if __name__ == "__main__":
    print(json.dumps(answer(json.loads(sys.argv[1]))))
"""


def _major(text) -> int | None:
    """A version's major number, if it is a plausible one (the answer is the user's word)."""
    head = str(text).split(".")[0]
    return int(head) if head.isdigit() and 1 <= int(head) <= 99 else None


def _minor(text) -> int:
    parts = str(text).split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def kind_from_probe(found: dict | None, what: str) -> ServerKind:
    """The probe's answer → the kind notebookd drives, or Undrivable naming what `what` (the command,
    as the admin wrote it) runs. The answer comes from a process the user could have tampered with:
    only an application of two known names, a small major version and one of two known paths come
    from it, and a forged answer changes only that user's own server."""
    if not isinstance(found, dict):
        raise Undrivable(f"{what}: its interpreter did not say what it runs; {INSTEAD}")
    module = found.get("module") if isinstance(found.get("module"), str) else ""
    top = module.split(".")[0]
    server, notebook, lab = _major(found.get("server")), _major(found.get("notebook")), _major(found.get("lab"))
    tree = "/tree" if found.get("nbclassic") or (notebook or 0) >= 7 else None
    shown = "".join(c for c in module if c.isprintable())[:80] or "no known module"
    if top == "notebook" and notebook is not None and notebook < 7:
        if (notebook, _minor(found.get("notebook"))) < (6, 4):
            raise Undrivable(f"{what}: runs notebook {notebook}.{_minor(found.get('notebook'))} (notebookd drives "
                             f"notebook 6.4 and later); {INSTEAD}")
        return ServerKind(notebook, "/tree", NOTEBOOK_APP)
    if top == "jupyterlab" and (lab or 0) < 3:
        raise Undrivable(f"{what}: runs JupyterLab {lab or '?'} on the notebook server (notebookd drives JupyterLab 3 "
                         f"and later); {INSTEAD}")
    if top not in ("jupyter_server", "jupyterlab", "nbclassic", "notebook"):
        raise Undrivable(f"{what}: runs {shown}, not a Jupyter server notebookd can drive; {INSTEAD}")
    if server is None:
        raise Undrivable(f"{what}: runs {shown} but its interpreter has no jupyter_server; {INSTEAD}")
    default = {"jupyterlab": "/lab", "nbclassic": "/tree", "notebook": "/tree"}.get(top)
    return ServerKind(server, default or ("/lab" if lab else tree))


def target(words: list[str]) -> dict:
    """What `answer` looks up for a command run by Python: the module after -m, else the script."""
    if os.path.basename(words[0]).startswith("python"):
        for i, word in enumerate(words[1:], 1):
            if word == "-m":
                return {"module": words[i + 1] if i + 1 < len(words) else ""}
            if word == "-c":
                return {}  # code on the command line: no module to name
            if not word.startswith("-"):
                return {"script": word}
        return {}
    return {"script": words[0]}


def own_kind(words: list[str]) -> ServerKind | None:
    """The kind of the daemon's own interpreter (the default command), read from its own
    root-installed environment; None for any other interpreter (probed as the user).
    Raises Undrivable."""
    if words[0] != sys.executable:
        return None
    return kind_from_probe(_own_answer(json.dumps(target(words))), f"command {shlex.join(words)!r}")


@functools.cache
def _own_answer(request: str) -> dict:
    namespace: dict = {"__name__": "notebookd.probe"}
    exec(compile(PROBE, "<notebookd probe>", "exec"), namespace)  # noqa: S102 - our own text, our own interpreter
    return namespace["answer"](json.loads(request))


def server_config(spec: ServerSpec, kind: ServerKind, access=None) -> dict:
    """The traitlets config notebookd writes for this server (no secrets: the token and the password
    hash come by files only the user can read; `access` is an `access.ServerAccess` naming them).
    Its application section is `kind.app`: notebook 6 took the same trait names as ServerApp (which
    was forked from it), except root_dir, which it calls notebook_dir."""
    config = json.loads(spec.settings.jupyter_config)  # the admin's extras first, ours over them
    app = config.setdefault(kind.app, {})
    if kind.app != SERVER_APP:  # the admin writes ServerApp keys; notebook 6 reads its own section only
        app.update({k: v for k, v in config.pop(SERVER_APP, {}).items() if k not in app})
    if kind.default_url and "default_url" not in app:
        app["default_url"] = kind.default_url  # the UI there is, rather than a bare "server is running" page
    app.update(
        ip=spec.ip,
        port=spec.port,
        port_retries=0,
        open_browser=False,
        base_url=spec.base_url,
    )
    app["root_dir" if kind.app == SERVER_APP else "notebook_dir"] = spec.root_dir
    csp = "frame-ancestors " + " ".join(spec.settings.frame_ancestors)
    tornado = app.setdefault("tornado_settings", {})
    tornado.setdefault("headers", {})["Content-Security-Policy"] = csp
    app.update(disable_check_xsrf=False, allow_origin="", allow_origin_pat="")
    cull = spec.settings.idle.kernels_after
    if cull is not None:  # the same trait names in notebook 6, 1.23 and 2.x
        config.setdefault("MappingKernelManager", {}).update(
            cull_idle_timeout=int(cull), cull_interval=max(1, min(300, int(cull // 4))))
    if kind.identity_provider:
        app["identity_provider_class"] = "jupyter_server.auth.identity.PasswordIdentityProvider"
        config.setdefault("PasswordIdentityProvider", {}).update(allow_password_change=False)
    else:
        # 1.23 and notebook 6 silently skip the 2.x sections: these must be on the application there
        app.update(allow_password_change=False)
    if access is not None:
        _access_config(config, kind, access)
    return config


def _access_config(config: dict, kind: ServerKind, access) -> None:
    """Auth and TLS. Behind a reverse proxy on this host the server sees the proxy's Host header:
    `allow_remote_access` lets it through (auth is always on, so the Host check that guards
    auth-less servers against DNS rebinding is not needed), `trust_xheaders` takes the client's
    address and scheme from X-Forwarded-*."""
    app = config[kind.app]
    app.update(allow_remote_access=True, trust_xheaders=True)
    auth = config.setdefault("PasswordIdentityProvider", {}) if kind.identity_provider else app
    hash_key = "hashed_password" if kind.identity_provider else "password"
    auth.pop(hash_key, None)  # the password hash only ever comes from the user's own file
    if access.password_file is None:
        auth[hash_key] = ""
    if access.token_file is None:
        auth["token"] = ""  # password only: no token, none generated either
    for key in ("certfile", "keyfile"):
        app.pop(key, None)
    if access.certfile:
        app.update(certfile=access.certfile, keyfile=access.keyfile)
    if access.cookie_secret_file:  # notebookd's, so a token rotation or a new password logs browsers out
        app["cookie_secret_file"] = access.cookie_secret_file


def password_loader(kind: ServerKind, path: str) -> str:
    """Python config that reads the hash from `path` (0400, the user's). It exits rather than start a
    server without its password: jupyter would only log a failing config file and run without auth.
    notebook 6.4 checks argon2 hashes too (notebook.auth.security.passwd_check)."""
    target = "c.PasswordIdentityProvider.hashed_password" if kind.identity_provider else f"c.{kind.app}.password"
    return (
        "# Written by notebookd: the password hash, from a file only this server's user can read.\n"
        f"_path = {path!r}\n"
        "try:\n"
        "    with open(_path, encoding='ascii') as _fh:\n"
        "        _hash = _fh.read().strip()\n"
        "except OSError as _exc:\n"
        "    raise SystemExit(f'notebookd: cannot read the password hash {_path}: {_exc}')\n"
        "if not _hash.startswith('argon2:'):\n"
        "    raise SystemExit(f'notebookd: {_path} holds no argon2 hash')\n"
        f"{target} = _hash\n"
    )


def write_config(path: str, spec: ServerSpec, kind: ServerKind, access, uid: int, gid: int) -> None:
    """The JSON config at `path` and, when the server takes a password, the loader beside it
    (both 0640, owner `uid`, group `gid`: readable by the user, changeable only by root). Both
    applications load them by `--config=path` (the .py beside the .json too)."""
    config = server_config(spec, kind, access)
    embed.configure(config, spec, os.path.dirname(path))  # the files embed.install wrote beside it
    write_atomic(path, json.dumps(config, indent=1).encode(), 0o640, uid, gid)
    loader = os.path.join(os.path.dirname(path), "jupyter_server_config.py")
    if access is not None and access.password_file:
        write_atomic(loader, password_loader(kind, access.password_file).encode(), 0o640, uid, gid)
    else:
        remove(loader)


def argv(spec: ServerSpec, config_path: str, words: list[str], kind: ServerKind = ServerKind()) -> list[str]:
    """The server's argv: `words` (the command), our config, and the listening settings again as
    `--<App>.key=value` of the application it runs (notebook 6 ignores --ServerApp.* and rejects a
    bare --port_retries)."""
    enforced = server_config(spec, kind)[kind.app]
    flags = [f"--{kind.app}.{key}={_flag_value(enforced[key])}" for key in _ENFORCED_ON_ARGV]
    return [*words, f"--config={config_path}", *flags, *spec.settings.args]


def _flag_value(value: object) -> str:
    return str(value) if not isinstance(value, bool) else ("True" if value else "False")


def environment(spec: ServerSpec, files: dict[str, str], marker: str, access=None) -> dict[str, str]:
    """A clean environment: nothing of the daemon's own leaks to the user's server."""
    acc = spec.account
    lab = os.path.join(acc.home, ".jupyter", "lab")
    env = {
        "HOME": acc.home,
        "USER": acc.name,
        "LOGNAME": acc.name,
        "SHELL": acc.shell,
        "PATH": spec.settings.path,
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        **dict(spec.settings.env),
        "JUPYTER_TOKEN_FILE": files["token"],
        # The root-owned directory of the config notebookd wrote: ~/.jupyter/*config* (which may
        # be Python code) is not read, so it cannot move the port or turn auth off. JupyterLab's
        # own settings and workspaces stay in the home, where the user can change them.
        "JUPYTER_CONFIG_DIR": os.path.dirname(files["config"]),
        "JUPYTERLAB_SETTINGS_DIR": os.path.join(lab, "user-settings"),
        "JUPYTERLAB_WORKSPACES_DIR": os.path.join(lab, "workspaces"),
        # runtime files (connection files, jpserver-*.json with the token) on local tmpfs, 0700,
        # not in a home that may be on NFS or may not exist
        "JUPYTER_RUNTIME_DIR": files["runtime"],
        # inherited by kernels, which start their own sessions: how a stop finds every process
        "NOTEBOOKD_SERVER": marker,
    }
    if access is not None and access.token_file is None:
        del env["JUPYTER_TOKEN_FILE"]  # password only
    elif access is not None:
        env["JUPYTER_TOKEN_FILE"] = access.token_file
    if files.get("share"):  # shared kernels (kernelspecs.py) first, then the admin's JUPYTER_PATH
        env["JUPYTER_PATH"] = os.pathsep.join(p for p in (files["share"], env.get("JUPYTER_PATH")) if p)
    return env
