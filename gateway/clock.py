"""Injected time: the real clock for the running gateway and a manual clock for tests.

Everything that waits, times out or stamps a record takes a `Clock` so tests never sleep.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time (for records and windows) and monotonic time (for timeouts), plus an awaitable sleep."""

    def now(self) -> float:
        """Seconds since the Unix epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """A clock that only moves when a test calls `advance`; sleepers wake in deadline order."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall = start
        self._mono = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._cancelled = 0

    def now(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + max(0.0, seconds), next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            # Timeouts cancel most sleeps long before they fire: drop dead entries once they dominate the heap,
            # so long tests don't accumulate them.
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._sleepers):
                self._sleepers = [entry for entry in self._sleepers if not entry[2].done()]
                heapq.heapify(self._sleepers)
                self._cancelled = 0
            raise

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper whose deadline passes, in order."""
        target = self._mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._wall += deadline - self._mono
            self._mono = deadline
            if not fut.done():
                fut.set_result(None)
            # let the woken task run before the next deadline fires
            for _ in range(5):
                await asyncio.sleep(0)
        self._wall += target - self._mono
        self._mono = target
        for _ in range(5):
            await asyncio.sleep(0)
