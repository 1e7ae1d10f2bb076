"""The start gate: a pure unit test (no processes, no root)."""

from __future__ import annotations

import asyncio

import pytest

from notebookd.gate import PriorityGate


def run(coro):
    return asyncio.run(coro)


def test_at_most_slots_at_once_and_urgent_before_bulk():
    async def main():
        gate = PriorityGate(2)
        order, inside, peak = [], [], [0]
        release = asyncio.Event()

        async def start(name, urgent):
            async with gate.slot(urgent):
                inside.append(name)
                peak[0] = max(peak[0], len(inside))
                order.append(name)
                await release.wait()
                inside.remove(name)

        tasks = [asyncio.create_task(start(f"bulk{i}", False)) for i in range(5)]
        await asyncio.sleep(0)
        tasks += [asyncio.create_task(start(f"urgent{i}", True)) for i in range(2)]
        await asyncio.sleep(0)
        assert order == ["bulk0", "bulk1"] and gate.waiting == 5
        release.set()
        await asyncio.gather(*tasks)
        assert peak[0] == 2
        # the two urgent starts overtook the three bulk starts still waiting, each class in order
        assert order == ["bulk0", "bulk1", "urgent0", "urgent1", "bulk2", "bulk3", "bulk4"]
        assert gate.busy == 0

    run(main())


def test_a_cancelled_waiter_gives_its_turn_away():
    async def main():
        gate = PriorityGate(1)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        second = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        gate.release()
        await asyncio.wait_for(second, 1)
        assert gate.busy == 1
        gate.release()
        assert gate.busy == 0

    run(main())


def test_cancelled_just_after_being_handed_a_slot():
    async def main():
        gate = PriorityGate(1)
        await gate.acquire()
        waiter = asyncio.create_task(gate.acquire())
        await asyncio.sleep(0)
        gate.release()       # hands the slot to `waiter` ...
        waiter.cancel()      # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert gate.busy == 0  # the slot was given back, not leaked
        await asyncio.wait_for(gate.acquire(), 1)

    run(main())


def test_needs_a_slot():
    with pytest.raises(ValueError):
        PriorityGate(0)
