"""Every `notebookd` command, declared once: its name, arguments, who may call it and its help.

The CLI's argparse parser, the daemon's dispatch and permission check come from this table, and
tests/test_commands.py holds the bash completion and the man page (packaging/) to it. Adding a
command: one `Command` here, a `cmd_<name>` in cli.py and, if the daemon answers it, an
`on_<request>` in daemon.py; then its line in the completion and its entry in the man page.

Imported by every CLI call: plain tuples, nothing else.
"""

from __future__ import annotations

from collections import namedtuple

# argparse's add_argument(*flags, **options)
Arg = namedtuple("Arg", "flags options")

# who: LOCAL runs in the CLI process (no daemon asked); USER: anyone, for their own server (root and the
# daemon's own user: any server); ROOT: the daemon refuses everyone else.
# request: what the CLI asks the daemon (None: nothing); several commands may share one.
Command = namedtuple("Command", "name help args who request")
LOCAL, USER, ROOT = "local", "user", "root"


def arg(*flags: str, **options) -> Arg:
    return Arg(flags, options)


def _users(required: bool) -> Arg:
    return arg("users", nargs="+" if required else "*", metavar="USER")


def _local() -> Arg:
    return arg("--local", action="store_true",
               help="the server's own address (loopback), not nginx's public one from proxy:")


def _one_user() -> Arg:
    return arg("user", nargs="?", metavar="USER", help="default: yourself (root: name one)")


COMMANDS = (
    Command("run", "run the daemon in the foreground (as root: every configured user; as a user: your own server)",
            (), LOCAL, None),
    Command("status", "show every server (exit 0: all running, 3: not all, 4: no daemon)",
            (arg("--json", action="store_true", help="machine-readable output"), _users(False)), USER, "status"),
    Command("check-config", "check the config file and this machine against it", (), LOCAL, None),
    Command("start", "start the servers of these users", (_users(True),), USER, "start"),
    Command("stop", "stop the servers of these users", (_users(True),), USER, "stop"),
    Command("restart", "restart the servers of these users", (_users(True),), USER, "restart"),
    Command("reload", "re-read the config and apply the difference", (), ROOT, "reload"),
    Command("shutdown", "stop every server and the daemon",
            (arg("--keep-servers", action="store_true",
                 help="exit leaving every server running, for a restart or upgrade of notebookd: "
                      "the next daemon adopts them"),), ROOT, "shutdown"),
    Command("logs", "show a user's server log",
            (arg("user", nargs="?", metavar="USER", help="default: yourself"),
             arg("-f", "--follow", action="store_true", help="keep printing new lines"),
             arg("-n", "--lines", type=int, default=50, metavar="N", help="last N lines (default 50)")),
            USER, "logs"),
    Command("url", "print the URL with token of your server (root: any or all): nginx's with proxy: configured",
            (_local(), _users(False)), USER, "url"),
    Command("token", "print your server's token (and its URL on stderr); --rotate replaces it and restarts the server",
            (_one_user(), arg("--rotate", action="store_true", help="make a new token (the old one stops working)"),
             _local()),
            USER, "token"),
    Command("passwd", "set the password of your server (asked twice; or one line on stdin)", (_one_user(),),
            USER, "passwd"),
    Command("render", "print config for a reverse proxy in front of the servers",
            (arg("what", choices=["nginx"], help="the proxy (nginx)"),), ROOT, "proxy"),
)

BY_NAME = {c.name: c for c in COMMANDS}
# what the daemon answers, by request; the command says who may ask it
REQUESTS = {c.request: c for c in reversed(COMMANDS) if c.request is not None}


def options(command: Command) -> list[str]:
    """The command's options (`--json`, `-f`, ...), as the completion and the man page must show them."""
    return [flag for a in command.args for flag in a.flags if flag.startswith("-")]
