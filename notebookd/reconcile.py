"""The one reconcile step: desired state (config + admin holds) against what the backend runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from notebookd.model import ServerSpec


@dataclass(frozen=True)
class Plan:
    start: tuple[ServerSpec, ...] = ()
    restart: tuple[ServerSpec, ...] = ()   # running with another spec
    stop: tuple[str, ...] = ()             # configured but held stopped by an admin
    forget: tuple[str, ...] = ()           # no longer configured at all

    def __bool__(self) -> bool:
        return bool(self.start or self.restart or self.stop or self.forget)

    def describe(self) -> str:
        parts = [f"{verb} {', '.join(names)}" for verb, names in (
            ("start", [s.name for s in self.start]), ("restart", [s.name for s in self.restart]),
            ("stop", list(self.stop)), ("remove", list(self.forget))) if names]
        return "; ".join(parts) or "nothing to do"


def plan(desired: dict[str, ServerSpec], held: frozenset[str], running: dict[str, ServerSpec],
         known: set[str]) -> Plan:
    """What to do so that the backend runs exactly `desired` minus `held`.

    `running` maps the servers the backend keeps up to their spec; `known` is every server it has,
    stopped ones included."""
    start, restart, stop = [], [], []
    for name, spec in sorted(desired.items()):
        if name in held:
            if name in running:
                stop.append(name)
        elif name not in running:
            start.append(spec)
        elif running[name] != spec:
            restart.append(spec)
    forget = sorted(known - desired.keys())
    return Plan(tuple(start), tuple(restart), tuple(stop), tuple(forget))


class ApplyError(Exception):
    """Some servers could not be changed; every other server's change was carried out."""


async def apply(plan: Plan, backend) -> None:
    """Carry out a plan; independent servers are handled in parallel, and one server's failure
    neither stops nor cuts short the others' (all finish before the errors are raised, as one)."""
    names = [*plan.forget, *plan.stop, *(s.name for s in plan.restart), *(s.name for s in plan.start)]
    results = await asyncio.gather(
        *(backend.forget(name) for name in plan.forget),
        *(backend.stop(name) for name in plan.stop),
        *(backend.restart(spec) for spec in plan.restart),
        *(backend.start(spec) for spec in plan.start),
        return_exceptions=True,
    )
    errors = [f"{name}: {exc}" for name, exc in zip(names, results) if isinstance(exc, Exception)]
    for exc in results:
        if isinstance(exc, BaseException) and not isinstance(exc, Exception):
            raise exc  # cancellation and the like are not a server's failure
    if errors:
        raise ApplyError("; ".join(errors))
