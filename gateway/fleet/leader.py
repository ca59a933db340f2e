"""One gateway of the fleet runs the rollout engine: a lease row in `fleet_leases`, with failover and fencing.

`LeaderLease.campaign` takes the named lease when it is free or expired (or renews it when this gateway already
holds it). Every change of holder increments `epoch`, a fencing token: writes a leader makes on the rollout
tables are conditional on `fence_condition` (gateway/core/pg_repository.py) (the lease still held, by this gateway, at this epoch, unexpired),
so a leader that was paused past its lease (GC, SIGSTOP, network partition) and comes back cannot advance a wave
its successor already owns. Together with the compare-and-set on (status, wave) this is why no wave advances
twice and no timer fires twice.

Time is the database server's clock (`clock_timestamp()`), like membership leases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

__all__ = ["ROLLOUT_ENGINE_LEASE", "Fence", "LeaderLease"]

ROLLOUT_ENGINE_LEASE = "rollout-engine"


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof of leadership a write carries: lease name, holder and the epoch it was granted at."""

    name: str
    holder: str
    epoch: int


class LeaderLease:
    """Campaign for, renew and resign a named lease (see module docstring)."""

    def __init__(
        self, pool: asyncpg.Pool, holder: str, lease_s: float, name: str = ROLLOUT_ENGINE_LEASE
    ) -> None:
        self.pool, self.holder, self.lease_s, self.name = pool, holder, lease_s, name
        self.fence: Fence | None = None

    async def campaign(self) -> Fence | None:
        """Hold the lease after this call (renewed or newly won), or None when another live gateway holds it."""
        row = await self.pool.fetchrow(
            """INSERT INTO fleet_leases AS l (name, holder, epoch, lease_until)
               VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3))
               ON CONFLICT (name) DO UPDATE SET
                   holder = EXCLUDED.holder,
                   epoch = CASE WHEN l.holder = EXCLUDED.holder AND l.lease_until > clock_timestamp()
                                THEN l.epoch ELSE l.epoch + 1 END,
                   lease_until = EXCLUDED.lease_until
               WHERE l.holder = EXCLUDED.holder OR l.lease_until <= clock_timestamp()
               RETURNING epoch""",
            self.name,
            self.holder,
            self.lease_s,
        )
        self.fence = Fence(self.name, self.holder, int(row["epoch"])) if row else None
        return self.fence

    async def resign(self) -> None:
        """Give the lease up now (orderly shutdown): a follower takes over at its next campaign."""
        await self.pool.execute(
            "UPDATE fleet_leases SET lease_until = clock_timestamp() WHERE name = $1 AND holder = $2",
            self.name,
            self.holder,
        )
        self.fence = None

    async def current(self) -> tuple[str, int, bool] | None:
        """(holder, epoch, alive) of the lease, for status displays."""
        row = await self.pool.fetchrow(
            "SELECT holder, epoch, lease_until > clock_timestamp() AS alive FROM fleet_leases WHERE name = $1",
            self.name,
        )
        return (row["holder"], int(row["epoch"]), bool(row["alive"])) if row else None
