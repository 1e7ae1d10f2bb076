"""Each command is declared once (notebookd/commands.py); the parser, the daemon's dispatch, the bash
completion and the man page list exactly what is declared, with every option."""

from __future__ import annotations

import os
import re

import pytest

from notebookd import cli, commands
from notebookd.commands import COMMANDS, LOCAL, ROOT, USER
from notebookd.daemon import Daemon

HERE = os.path.dirname(__file__)
COMPLETION = open(os.path.join(HERE, "..", "packaging", "bash-completion", "notebookd")).read()
MAN = open(os.path.join(HERE, "..", "packaging", "notebookd.8")).read()
NAMES = [c.name for c in COMMANDS]


def _man_entries() -> dict[str, str]:
    """COMMANDS section of the man page: each `.TP` entry's command name(s) -> the entry's text."""
    body = MAN.split(".SH COMMANDS\n", 1)[1].split("\n.SH ", 1)[0].replace("\\-", "-")
    entries = {}
    for entry in body.split(".TP\n")[1:]:
        head = entry.split("\n", 1)[0]
        names = re.match(r"\.BR? ([^\"]+)", head).group(1)  # `.BR start | stop | restart " " ...`
        for name in names.replace(" ", "").split("|"):
            entries[name] = entry
    return entries


def _completion_arms() -> dict[str, str]:
    arms = {}
    for names, words in re.findall(r"^\s+([a-z| -]+)\) COMPREPLY=\(\$\(compgen -W \"([^\"]*)\"", COMPLETION, re.M):
        for name in names.split("|"):
            arms[name.strip()] = words
    return arms


def test_the_parser_has_exactly_the_declared_commands():
    parser = cli._parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert list(sub.choices) == NAMES


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_command_runs_somewhere(command):
    assert callable(getattr(cli, "cmd_" + command.name.replace("-", "_")))
    assert command.who in (LOCAL, USER, ROOT) and command.help
    if command.request is not None:
        assert callable(getattr(Daemon, "on_" + command.request))
    assert (command.who == LOCAL) == (command.request is None)


def test_the_daemon_answers_only_declared_requests():
    answered = {name[3:] for name in dir(Daemon) if name.startswith("on_")}
    assert answered == {c.request for c in COMMANDS if c.request}


def test_completion_lists_exactly_the_declared_commands():
    listed = re.search(r'local commands="([^"]*)"', COMPLETION).group(1).split()
    assert listed == NAMES


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_completion_offers_every_option(command):
    words = _completion_arms().get(command.name, "").split()
    assert set(commands.options(command)) <= set(words), command.name
    assert not {w for w in words if w.startswith("-")} - set(commands.options(command)), "undeclared option"


def test_man_page_lists_exactly_the_declared_commands():
    assert sorted(_man_entries()) == sorted(NAMES)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_man_page_shows_every_option(command):
    entry = _man_entries()[command.name]
    for a in command.args:
        if a.flags[0].startswith("-"):
            assert any(flag in entry for flag in a.flags), (command.name, a.flags)


@pytest.mark.parametrize("request_, refused", [
    ("reload", "permission denied: only root may run 'notebookd reload'"),
    ("shutdown", "permission denied: only root may run 'notebookd shutdown'"),
    ("proxy", "permission denied: only root may run 'notebookd render'"),
    ("bogus", "unknown command 'bogus'"),
])
def test_the_daemon_refuses_what_the_declaration_forbids(request_, refused):
    import asyncio

    from notebookd.config import Config
    from notebookd.control import Peer, Refused
    from notebookd.paths import Layout

    layout = Layout(system=True, config="/nonexistent.yaml", config_explicit=True, run_dir="/nonexistent",
                    state_dir="/nonexistent", log_dir="/nonexistent")
    daemon = Daemon(layout, Config(file=layout.config))
    other = os.getuid() + 4242  # neither root nor the daemon's own user
    with pytest.raises(Refused) as exc:
        asyncio.run(daemon.handle(request_, {}, Peer(pid=1, uid=other, gid=other)))
    assert str(exc.value) == refused
    assert daemon.events.empty()  # a refused shutdown queued nothing
