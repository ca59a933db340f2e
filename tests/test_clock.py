"""The injected ManualClock: ordered wake-ups, wall/monotonic in step, cancelled sleeps don't pile up."""

from __future__ import annotations

import asyncio
import contextlib

from gateway.clock import ManualClock


async def test_sleepers_wake_in_deadline_order_and_time_moves_only_on_advance() -> None:
    clock = ManualClock(start=1000.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper("b", 2)), asyncio.create_task(sleeper("a", 1))]
    await asyncio.sleep(0)
    assert woke == [] and clock.now() == 1000.0
    await clock.advance(1.5)
    assert woke == [("a", 1.0)]
    await clock.advance(1.0)
    assert woke == [("a", 1.0), ("b", 2.0)]
    assert clock.now() == 1002.5 and clock.monotonic() == 2.5
    await asyncio.gather(*tasks)


async def test_cancelled_sleeps_are_compacted() -> None:
    clock = ManualClock()
    for _ in range(500):
        task = asyncio.create_task(clock.sleep(60))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert len(clock._sleepers) < 200
