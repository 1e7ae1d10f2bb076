"""Everything jupyter-specific: a ServerSpec becomes argv, environment and a server config file.

jupyter_server 2.x moved auth settings to IdentityProvider classes; Debian's 1.23 keeps them on
ServerApp. The version is read from the interpreter that will run the server: the daemon's own from its
environment, any other by a probe run as the server's user (preflight.py).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
import os
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


@dataclass(frozen=True)
class ServerKind:
    """What the server's interpreter has: jupyter_server's major version and the UI it can serve."""

    major: int = 2
    default_url: str | None = None  # "/lab" with JupyterLab, "/tree" with nbclassic or notebook 7


# Run by the server's own interpreter, as the server's user (preflight.py): finds packages without
# importing them.
PROBE = """
import importlib.metadata as m, importlib.util as u, json
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return ""
notebook = version("notebook").split(".")[0]
print(json.dumps({"server": version("jupyter_server"), "lab": u.find_spec("jupyterlab") is not None,
                  "tree": u.find_spec("nbclassic") is not None or (notebook.isdigit() and int(notebook) >= 7)}))
"""


def kind_from_probe(found: dict | None) -> ServerKind:
    """The probe's answer, checked: it comes from a process the user could have tampered with, so only
    a small major version and one of two known paths are taken from it."""
    try:
        major = int(str(found["server"]).split(".")[0])
        if not 1 <= major <= 9:
            raise ValueError(major)
    except (TypeError, ValueError, KeyError):
        return ServerKind()  # the current major; a wrong guess only costs deprecation warnings in its log
    return ServerKind(major, "/lab" if found.get("lab") is True else "/tree" if found.get("tree") is True else None)


def own_kind(words: list[str]) -> ServerKind | None:
    """The kind of the daemon's own interpreter (the default command), read from its own
    root-installed environment; None for any other interpreter (probed as the user)."""
    if words[0] != sys.executable:
        return None
    return _own_kind()


@functools.cache
def _own_kind() -> ServerKind:
    import importlib.metadata as metadata
    import importlib.util

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return ""

    notebook = version("notebook").split(".")[0]
    tree = importlib.util.find_spec("nbclassic") is not None or (notebook.isdigit() and int(notebook) >= 7)
    return kind_from_probe({"server": version("jupyter_server"), "lab": importlib.util.find_spec("jupyterlab")
                            is not None, "tree": tree})


def server_config(spec: ServerSpec, kind: ServerKind, access=None) -> dict:
    """The traitlets config notebookd writes for this server (no secrets: the token and the password
    hash come by files only the user can read; `access` is an `access.ServerAccess` naming them)."""
    major = kind.major
    config = json.loads(spec.settings.jupyter_config)  # the admin's extras first, ours over them
    app = config.setdefault("ServerApp", {})
    if kind.default_url and "default_url" not in app:
        app["default_url"] = kind.default_url  # the UI there is, rather than a bare "server is running" page
    app.update(
        ip=spec.ip,
        port=spec.port,
        port_retries=0,
        open_browser=False,
        base_url=spec.base_url,
        root_dir=spec.root_dir,
    )
    csp = "frame-ancestors " + " ".join(spec.settings.frame_ancestors)
    tornado = app.setdefault("tornado_settings", {})
    tornado.setdefault("headers", {})["Content-Security-Policy"] = csp
    app.update(disable_check_xsrf=False, allow_origin="", allow_origin_pat="")
    cull = spec.settings.idle.kernels_after
    if cull is not None:  # the same trait names in 1.23 and 2.x
        config.setdefault("MappingKernelManager", {}).update(
            cull_idle_timeout=int(cull), cull_interval=max(1, min(300, int(cull // 4))))
    if major >= 2:
        app["identity_provider_class"] = "jupyter_server.auth.identity.PasswordIdentityProvider"
        config.setdefault("PasswordIdentityProvider", {}).update(allow_password_change=False)
    else:
        # 1.23 silently skips the 2.x sections: these must be on ServerApp there
        app.update(allow_password_change=False)
    if access is not None:
        _access_config(config, major, access)
    return config


def _access_config(config: dict, major: int, access) -> None:
    """Auth and TLS. Behind a reverse proxy on this host the server sees the proxy's Host header:
    `allow_remote_access` lets it through (auth is always on, so the Host check that guards
    auth-less servers against DNS rebinding is not needed), `trust_xheaders` takes the client's
    address and scheme from X-Forwarded-*."""
    app = config["ServerApp"]
    app.update(allow_remote_access=True, trust_xheaders=True)
    auth = config.setdefault("PasswordIdentityProvider", {}) if major >= 2 else app
    hash_key = "hashed_password" if major >= 2 else "password"
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


def password_loader(major: int, path: str) -> str:
    """Python config that reads the hash from `path` (0400, the user's). It exits rather than start a
    server without its password: jupyter would only log a failing config file and run without auth."""
    target = "c.PasswordIdentityProvider.hashed_password" if major >= 2 else "c.ServerApp.password"
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
    (both 0640, owner `uid`, group `gid`: readable by the user, changeable only by root)."""
    config = server_config(spec, kind, access)
    embed.configure(config, spec, os.path.dirname(path))  # the files embed.install wrote beside it
    write_atomic(path, json.dumps(config, indent=1).encode(), 0o640, uid, gid)
    loader = os.path.join(os.path.dirname(path), "jupyter_server_config.py")
    if access is not None and access.password_file:
        write_atomic(loader, password_loader(kind.major, access.password_file).encode(), 0o640, uid, gid)
    else:
        remove(loader)


def argv(spec: ServerSpec, config_path: str, words: list[str]) -> list[str]:
    enforced = server_config(spec, ServerKind())["ServerApp"]
    flags = [f"--ServerApp.{key}={_flag_value(enforced[key])}" for key in _ENFORCED_ON_ARGV]
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
