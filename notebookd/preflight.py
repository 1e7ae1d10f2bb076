"""What only the server's user may look at, looked at as that user, before a start.

Root must not resolve a path a user controls (a symlink in a home can point anywhere root may go,
and on NFS with root_squash root may not enter a 0700 home at all), nor execute or read a program a
user can write (a `.pth` file in a user's venv runs with the rights of whoever starts that Python).
So the things a start needs from the user's world are asked of a short helper that runs as
the user, with the server's own clean environment, cwd `/`, and a deadline:

- can the user enter `root_dir`? (the server's own chdir happens later, as the user, in every
  spawn path; this check is what turns a failure into a one-line error naming user and path)
- which file in the server's PATH is the command (only if argv[0] is not absolute)?
- is `jupyter SUB` the `jupyter-SUB` script beside it (what jupyter would exec, and what must run
  under the launcher to be handed the socket)?
- which Python does the command run, and what does it run (the module after -m, or the script's
  console_scripts entry point), with which versions of jupyter_server, notebook, JupyterLab and
  nbclassic? That decides the application notebookd drives (jupyter.kind_from_probe): ServerApp,
  notebook 6's NotebookApp, or neither, and then the start is refused with one line. Only for a
  command other than the daemon's own interpreter, whose answer the daemon reads from its own,
  root-installed environment without running anything of a user's.

The helper's answer is the user's word, so it is checked before use: the command must be one of the
paths the daemon itself derived from the admin's PATH, the jupyter-SUB path is the daemon's own join
(the user only says yes), the application one of two names, the version a small integer, the UI one
of two known paths. Nothing is cached: an answer is used for that user's next start only, so a user
who forges one (they may ptrace their own helper) changes nothing but their own server's config
keys and landing page, which they could set in their own ~/.jupyter anyway, and which application class
the launcher hands the socket to (a wrong one fails the start: the launcher lets nothing else bind).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass

from notebookd import command, jupyter
from notebookd.access import NotReady
from notebookd.model import ServerSpec

TIMEOUT = 30.0  # a helper that never answers (SIGSTOPped by its user) costs that user's start only
MAX_ANSWER = 1 << 16

# Runs as the user under the daemon's interpreter with -I -S: imports nothing of a user's. Prints one
# JSON line; then, when asked to probe, execs the server's interpreter on jupyter.PROBE, which prints
# the second line.
HELPER = r"""
import json, os, sys
req = json.loads(sys.argv[1])
def say(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()
try:
    os.chdir(req["root_dir"])
except OSError as e:
    say(error="cannot enter root_dir %s: %s" % (req["root_dir"], e.strerror or e))
    sys.exit(0)
os.chdir("/")
argv0, found = req["argv0"], None
for i, cand in enumerate(req["candidates"]):
    if os.path.isfile(cand) and os.access(cand, os.X_OK):
        found = i
        break
if req["candidates"] and found is None:
    say(error="command %r not found in PATH %s" % (argv0, req["path"]))
    sys.exit(0)
if found is not None:
    argv0 = req["candidates"][found]
rest, sub, python, target = req["rest"], False, None, req["target"]
if os.path.basename(argv0) == "jupyter" and rest and not rest[0].startswith("-"):
    # `jupyter lab` execs jupyter-lab: the script beside it is what runs (and takes the socket)
    script = os.path.join(os.path.dirname(argv0), "jupyter-" + rest[0])
    if os.path.isfile(script):
        argv0, sub = script, True
if req["probe"]:
    if os.path.basename(argv0).startswith("python"):
        python = argv0
    else:
        target = {"script": argv0}
        try:
            with open(argv0, "rb") as fh:
                first = fh.readline(256)
        except OSError:
            first = b""
        if first.startswith(b"#!"):
            words = first[2:].decode(errors="replace").split()
            if words and os.path.basename(words[0]) == "env" and len(words) > 1:
                for d in req["path"].split(os.pathsep):
                    c = os.path.join(d, words[1])
                    if d and os.path.isfile(c) and os.access(c, os.X_OK):
                        python = c
                        break
            elif words:
                python = words[0]
say(found=found, python=python, sub=sub)
if python is not None:
    try:
        os.execv(python, [python, "-I", "-c", req["code"], json.dumps(target)])
    except OSError:
        pass
"""


class PreflightError(NotReady):
    """The user's side is not ready for a start; the message names the user and the path."""

    def __init__(self, user: str, reason: str):
        super().__init__(f"{user}: {reason}")
        self.user, self.reason = user, reason


@dataclass(frozen=True)
class Preflight:
    argv0: str
    kind: jupyter.ServerKind
    python: str | None = None  # the interpreter argv0 runs (itself, or its #! line's), as the user found it
    words: tuple[str, ...] = ()  # the command to run: argv0 found in PATH, `jupyter SUB` as the jupyter-SUB beside it


def candidates(spec: ServerSpec, word: str) -> list[str]:
    """Where argv[0] may be, from the admin's PATH: the user's helper only picks one of these."""
    if os.path.isabs(word):
        return []
    return [os.path.join(d, word) for d in spec.settings.path.split(os.pathsep) if d]


async def check(spec: ServerSpec, env: dict[str, str], identity: bool, root_dir: bool = True) -> Preflight:
    """Ask the user's side; `identity`: run as the server's user (False when the daemon is not root).
    `root_dir`: check it (a spawn path that reports its own failed chdir may skip it).
    Raises PreflightError, also for a command whose application notebookd cannot drive (it is never
    started to see what it does)."""
    words = jupyter.command(spec)
    acc = spec.account
    shown = f"command {shlex.join(words)!r}"
    try:
        own = jupyter.own_kind(words)
    except jupyter.Undrivable as exc:
        raise PreflightError(acc.name, str(exc)) from None
    cands = candidates(spec, words[0])
    if own is not None and not cands and not root_dir:
        return Preflight(words[0], own, words[0], tuple(words))  # nothing of the user's to look at
    request = {"root_dir": spec.root_dir if root_dir else "/", "argv0": words[0], "candidates": cands,
               "path": spec.settings.path, "probe": own is None, "code": jupyter.PROBE, "rest": words[1:],
               "target": jupyter.target(words)}
    lines = await _run(spec, [sys.executable, "-I", "-S", "-c", HELPER, json.dumps(request)], env, identity)
    first = _parse(lines[0] if lines else "")
    if first is None:
        raise PreflightError(acc.name, f"the check run as {acc.name} gave no answer")
    if "error" in first:
        raise PreflightError(acc.name, _one_line(str(first["error"])))
    found = first.get("found")
    argv0 = words[0]
    if cands:
        if not isinstance(found, int) or not 0 <= found < len(cands):
            raise PreflightError(acc.name, f"command {words[0]!r} not found in PATH {spec.settings.path}")
        argv0 = cands[found]
    run = [argv0, *words[1:]]
    if first.get("sub") is True and os.path.basename(argv0) == "jupyter" and len(run) > 1:
        run = [os.path.join(os.path.dirname(argv0), f"jupyter-{run[1]}"), *run[2:]]  # our path, the user's yes
    python = words[0] if own is not None else _plain_path(first.get("python"))
    if own is not None:
        kind = own
    elif python is None:
        kind = jupyter.ServerKind()  # not run by Python (a shell wrapper): nothing to ask; it binds itself
    else:
        try:
            kind = jupyter.kind_from_probe(_parse(lines[1]) if len(lines) > 1 else None, shown)
        except jupyter.Undrivable as exc:
            raise PreflightError(acc.name, _one_line(str(exc))) from None
    return Preflight(argv0, kind, python, tuple(run))


def _plain_path(value) -> str | None:
    """The user's answer for an interpreter path, if it is one: absolute, printable, no blanks (it is
    run as the user only, but may be written into a job script)."""
    if not isinstance(value, str) or not value.startswith("/") or not value.isprintable():
        return None
    return None if any(c.isspace() for c in value) else value


async def _run(spec: ServerSpec, argv: list[str], env: dict[str, str], identity: bool) -> list[str]:
    acc = spec.account
    ids = dict(user=acc.uid, group=acc.gid, extra_groups=list(acc.groups)) if identity else {}
    try:
        done = await command.run(argv, env=env, timeout=TIMEOUT, limit=MAX_ANSWER, own_session=True,
                                 umask=0o077, **ids)
    except OSError as exc:
        raise PreflightError(acc.name, f"cannot run the check as {acc.name}: {exc.strerror or exc}") from None
    except TimeoutError:
        raise PreflightError(acc.name, f"the check run as {acc.name} did not answer within {TIMEOUT:g}s") from None
    return done.out.decode(errors="replace").splitlines()


def _parse(line: str) -> dict | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:300]
