"""The desired state: from the config and the system's user database to one ServerSpec per user."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass, field

from notebookd.config import USERNAME, Config, UserEntry
from notebookd.model import Account, ServerSpec
from notebookd.ports import PortBook


@dataclass(frozen=True)
class Desired:
    specs: dict[str, ServerSpec]
    problems: dict[str, str]                 # user -> why no server can be made for them
    warnings: tuple[str, ...] = field(default=())  # not about one user (e.g. a missing group)


def account(name: str) -> Account:
    """Look a user up; KeyError with a readable message if they do not exist."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise KeyError(f"no such user {name!r}") from None
    groups = sorted({g.gr_gid for g in grp.getgrall() if name in g.gr_mem} - {pw.pw_gid})
    return Account(name, pw.pw_uid, pw.pw_gid, tuple(groups), pw.pw_dir, pw.pw_shell or "/bin/sh")


def group_members(name: str) -> list[str]:
    """Members of a Unix group: listed members and users whose primary group it is."""
    gr = grp.getgrnam(name)
    members = set(gr.gr_mem)
    members.update(pw.pw_name for pw in pwd.getpwall() if pw.pw_gid == gr.gr_gid)
    return sorted(members)


def entries(config: Config, system: bool) -> tuple[list[UserEntry], list[str]]:
    """Who should have a server: the listed users and the members of listed groups.

    In single-user mode that is only the caller, with their listed settings if any.
    """
    if not system:
        me = pwd.getpwuid(os.getuid()).pw_name
        return [config.entry_for(me)], []
    listed = {u.name: u for u in config.users}
    warnings = []
    for group in config.groups:
        try:
            members = group_members(group.name)
        except KeyError:
            warnings.append(f"{config.file}:{group.line}: groups: no such group {group.name!r}")
            continue
        for member in members:
            if member in listed or member == "root":
                continue
            if not USERNAME.fullmatch(member):  # the same rule as for listed users: names reach paths and units
                warnings.append(f"{config.file}:{group.line}: groups: {group.name}: member {member!r} "
                                "is not a valid user name; no server for it")
                continue
            listed[member] = config.entry_for(member)
    return [listed[n] for n in sorted(listed)], warnings


def build(config: Config, system: bool) -> Desired:
    users, warnings = entries(config, system)
    problems: dict[str, str] = {}
    accounts: dict[str, Account] = {}
    for entry in users:
        try:
            acc = account(entry.name)
        except KeyError as exc:
            problems[entry.name] = exc.args[0]
            continue
        if acc.uid == 0:
            problems[entry.name] = "servers never run as root (uid 0)"
            continue
        accounts[entry.name] = acc

    by_name = {u.name: u for u in users}
    explicit = {n: by_name[n].port for n in accounts if by_name[n].port is not None}
    auto = [n for n in accounts if by_name[n].port is None]
    ports, port_problems = PortBook(config.state_dir).assign(auto, explicit, config.listen.ports, config.listen.ip)
    problems.update(port_problems)

    specs = {}
    for name, acc in accounts.items():
        port = explicit.get(name) or ports.get(name)
        if port is None:
            continue
        specs[name] = spec_for(config, by_name[name], acc, port)
    if config.limits and config.backend != "systemd":
        warnings.append(f"{config.file}: limits: only the systemd backend enforces them (backend is {config.backend})")
    return Desired(specs, problems, tuple(warnings))


def spec_for(config: Config, entry: UserEntry, acc: Account, port: int) -> ServerSpec:
    s = entry.settings
    root = s.root_dir.replace("{user}", acc.name)
    if root == "~" or root.startswith("~/"):
        root = acc.home + root[1:]
    return ServerSpec(
        account=acc,
        ip=config.listen.ip,
        port=port,
        base_url=s.base_url.replace("{user}", acc.name),
        root_dir=os.path.normpath(root),
        settings=s,
        restart=config.restart,
        health=config.health,
        logs=config.logs,
        limits=config.limits,
        tls=config.tls,
    )
