"""A running gateway's presence in the fleet: register at start, heartbeat while serving, leave at stop.

Only with `store.backend: postgres`. The heartbeat carries the gateway's device and transfer counts, which is
what `otagw fleet status` shows; a gateway that stops heartbeating (killed) is shown dead once its lease runs out
and its transfer slots stop counting against the fleet budgets (gateway/fleet/budget.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.clock import Clock
from gateway.config import Config
from gateway.fleet.budget import FleetMember
from gateway.fleet.db import connect_pool, migrate_fleet

if TYPE_CHECKING:
    import asyncpg

__all__ = ["HEARTBEAT_FRACTION", "FleetPresence"]

log = logging.getLogger("otagw.fleet")

HEARTBEAT_FRACTION = 1 / 3  # heartbeat three times per lease: one lost beat does not expire it


class FleetPresence:
    """Membership row + heartbeat task of this gateway (see module docstring)."""

    def __init__(
        self, config: Config, clock: Clock, counts: Callable[[], tuple[int, int]], lease_s: float = 15.0
    ) -> None:
        self.config, self.clock, self.counts, self.lease_s = config, clock, counts, lease_s
        self.pool: asyncpg.Pool | None = None
        self.member: FleetMember | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.pool = await connect_pool(self.config.store, max_size=2)
        await migrate_fleet(self.pool)
        gw = self.config.gateway
        self.member = FleetMember(self.pool, gw.id, gw.site, __version__, self.lease_s)
        await self.member.register()
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def beat_once(self) -> bool:
        assert self.member is not None
        devices, transfers = self.counts()
        alive = await self.member.heartbeat(devices, transfers)
        if not alive:
            log.warning("fleet lease had expired; re-registered (transfer slots were released)")
        return alive

    async def _beat(self) -> None:
        while True:
            await self.clock.sleep(self.lease_s * HEARTBEAT_FRACTION)
            try:
                await self.beat_once()
            except Exception as exc:  # the database may be restarting: keep trying, the lease tells the truth
                log.warning("fleet heartbeat failed: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.member is not None:
            with contextlib.suppress(Exception):
                await self.member.leave()
            self.member = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
