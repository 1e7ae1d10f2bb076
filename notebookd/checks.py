"""`notebookd check-config`: the config against this machine (users, ports, directories, command)."""

from __future__ import annotations

import asyncio
import os

from notebookd import desired as desiredmod, launch, proxyfile
from notebookd.config import Config
from notebookd.preflight import PreflightError


async def _user_side(specs: list, run_dir: str, system: bool) -> list[str]:
    """root_dir and command, checked as each user (preflight.py): root resolves no path of a user's."""
    async def one(where: str, spec) -> str | None:
        try:
            await launch.check(spec, run_dir, system)
        except PreflightError as exc:
            return f"{where}: {exc.reason}"
        return None

    found = await asyncio.gather(*(one(w, s) for w, s in specs))
    return [e for e in found if e]


def check(config: Config, system: bool, run_dir: str = "/run/notebookd") -> tuple[list[str], list[str]]:
    """(errors, notes): every problem found, each one line naming the file/line and the user."""
    errors: list[str] = []
    notes: list[str] = []
    users, warnings = desiredmod.entries(config, system)
    errors += warnings
    errors += access_problems(config)

    def where(entry) -> str:
        return f"{config.file}:{entry.line}: users.{entry.name}" if entry.line else f"{config.file}: {entry.name} (from groups)"

    explicit: dict[int, str] = {}
    auto = 0
    specs = []
    for entry in users:
        try:
            acc = desiredmod.account(entry.name)
        except KeyError as exc:
            errors.append(f"{where(entry)}: {exc.args[0]}")
            continue
        if acc.uid == 0:
            errors.append(f"{where(entry)}: uid 0: servers never run as root")
            continue
        if entry.port is None:
            auto += 1
        else:
            explicit[entry.port] = entry.name
        specs.append((where(entry), desiredmod.spec_for(config, entry, acc, entry.port or 0)))
    errors += asyncio.run(_user_side(specs, run_dir, system))
    errors += _backend_problems(config) + _metrics_problems(config)
    if config.backend == "slurm":
        from notebookd.backends import slurm

        errors += slurm.check(config, specs)
    errors += proxyfile.problems(config)
    low, high = config.listen.ports
    free = sum(1 for p in range(low, high + 1) if p not in explicit)
    if auto > free:
        errors.append(f"{config.file}: listen.ports: {auto} users need an automatic port but {low}-{high} "
                      f"has only {free} left")
    notes.append(f"{len(users)} user(s), backend {config.backend}, "
                 f"{len(explicit)} explicit port(s), {auto} automatic from {low}-{high}")
    return errors, notes


def _backend_problems(config: Config) -> list[str]:
    """What the chosen backend needs on this machine (the daemon checks it again when it starts)."""
    import stat

    where = f"{config.file}: backend {config.backend}"
    if config.backend == "supervisor":
        problems = []
        try:
            if not stat.S_ISSOCK(os.stat(config.supervisor.socket).st_mode):
                problems.append(f"{where}: supervisor.socket {config.supervisor.socket} is not a socket")
        except OSError:
            problems.append(f"{where}: supervisor.socket {config.supervisor.socket} does not exist (is supervisord running?)")
        if not os.path.isdir(config.supervisor.conf_d):
            problems.append(f"{where}: supervisor.conf_d {config.supervisor.conf_d} is not a directory")
        return problems
    if config.backend == "systemd":
        from notebookd.backends.systemd import TEMPLATE

        dirs = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
        if not any(os.path.exists(os.path.join(d, TEMPLATE)) for d in dirs):
            return [f"{where}: {TEMPLATE} is not installed (copy units/{TEMPLATE} to /etc/systemd/system)"]
    return []


def _metrics_problems(config: Config) -> list[str]:
    """`metrics:` needs prometheus_client and, for the textfile, an existing directory."""
    m = config.metrics
    if not m.enabled:
        return []
    from notebookd.metrics import available

    problems = [f"{config.file}: {reason}"] if (reason := available()) else []
    if m.textfile and not os.path.isdir(os.path.dirname(m.textfile)):
        problems.append(f"{config.file}: metrics.textfile: {os.path.dirname(m.textfile)} is not a directory")
    return problems


def access_problems(config: Config) -> list[str]:
    """Files the access settings name: TLS certificate and key, kernel programs."""
    errors = []
    pairs = [("tls", config.tls.cert, config.tls.key)] if config.tls.mode == "files" else []
    if config.proxy.cert:
        pairs.append(("proxy", config.proxy.cert, config.proxy.key))
    for section, cert, key in pairs:
        for name, path in (("cert", cert), ("key", key)):
            if not os.access(path, os.R_OK):
                errors.append(f"{config.file}: {section}.{name}: cannot read {path}")
    for kernel in config.kernels:
        program = kernel.argv[0]
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            errors.append(f"{config.file}: kernels.{kernel.name}: {program} is not an executable file")
    return errors
