"""A start gate: at most `slots` starts at once, and requested starts go before bulk ones.

Starting a jupyter_server costs seconds of CPU; letting every server start at once makes all of
them wait for the slowest. The gate lets `slots` through at a time (one per core by default).
Among those waiting, *urgent* starts (a `notebookd start`/`restart`, a restart after a crash or
failed health checks) go before *bulk* ones (the initial and reload reconcile), first come first
served within each class. A start that is already through is never interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools

URGENT, BULK = 0, 1


class PriorityGate:
    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        self.slots = slots
        self.busy = 0
        self._waiting: list[tuple[int, int, asyncio.Future]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def slot(self, urgent: bool = False):
        await self.acquire(URGENT if urgent else BULK)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, priority: int = BULK) -> None:
        if self.busy < self.slots and not self._waiting:
            self.busy += 1
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), fut))
        try:
            await fut  # release() counted us in already when it resolved this future
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        self.busy -= 1
        while self._waiting:
            _, _, fut = heapq.heappop(self._waiting)
            if not fut.done():  # skip waiters that were cancelled meanwhile
                self.busy += 1
                fut.set_result(None)
                return

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, fut in self._waiting if not fut.done())
