"""Transfer budgets held across a fleet of gateways, enforced atomically in PostgreSQL, with leases.

A transfer slot is a `fleet_slots` row. It counts against every scope it falls in - `global`, `site:<site>`,
`protocol:<protocol>` and `network:<site>/<network>` (a Zigbee PAN id or Matter fabric is only unique within a
site) - while its gateway's membership lease (`fleet_gateways.lease_until`) is in the future.

Why the budget is never exceeded, under any interleaving: the only operations that can raise a scope's count
are `acquire` (a new row) and a heartbeat that would revive an expired lease. Both run inside a transaction
holding the one fleet-wide advisory lock `SLOT_LOCK_KEY`; acquire counts the live slots of each scope under
that lock and inserts only when every scope has room. Releases and lease expiry only lower counts, so they need
no lock. A heartbeat that finds its lease already expired does not revive it: it deletes the gateway's slots,
re-registers, and tells the gateway it lost them (the gateway then pauses those transfers to re-acquire).

One lock serialises acquisitions across the fleet. An acquisition is one short transaction (well under a
millisecond of lock hold on a local server), and acquisitions happen once per transfer, not per block;
bench/bench_fleet.py measures the rate one primary sustains. Per-scope locks are the next step if it is the
bottleneck.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncpg

__all__ = ["SLOT_LOCK_KEY", "FleetBudget", "FleetMember", "SlotRequest", "scopes_of"]

SLOT_LOCK_KEY = 0x6F7461677700_0002


@dataclass(frozen=True, slots=True)
class SlotRequest:
    device_id: str
    protocol: str
    network: str


def scopes_of(site: str, protocol: str, network: str) -> list[str]:
    return ["global", f"site:{site}", f"protocol:{protocol}", f"network:{site}/{network}"]


class FleetMember:
    """This gateway's row in `fleet_gateways`: registration and the heartbeat that keeps its lease alive."""

    def __init__(self, pool: asyncpg.Pool, gateway_id: str, site: str, version: str, lease_s: float) -> None:
        self.pool, self.gateway_id, self.site, self.version, self.lease_s = (
            pool,
            gateway_id,
            site,
            version,
            lease_s,
        )

    async def register(self) -> None:
        """Join (or rejoin) the fleet with a fresh lease. Slots left by an earlier life of this id are dropped."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SLOT_LOCK_KEY)
            await conn.execute("DELETE FROM fleet_slots WHERE gateway_id = $1", self.gateway_id)
            await conn.execute(
                """INSERT INTO fleet_gateways (gateway_id, site, version, started_at, heartbeat_at, lease_until,
                                               lease_s)
                   VALUES ($1, $2, $3, clock_timestamp(), clock_timestamp(),
                           clock_timestamp() + make_interval(secs => $4), $4)
                   ON CONFLICT (gateway_id) DO UPDATE SET site = EXCLUDED.site, version = EXCLUDED.version,
                       started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at,
                       lease_until = EXCLUDED.lease_until, lease_s = EXCLUDED.lease_s""",
                self.gateway_id,
                self.site,
                self.version,
                self.lease_s,
            )

    async def heartbeat(self, devices: int = 0, transfers: int = 0) -> bool:
        """Extend the lease; False when it had already expired (the gateway's slots are gone: re-acquire)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SLOT_LOCK_KEY)
            renewed = await conn.execute(
                """UPDATE fleet_gateways SET heartbeat_at = clock_timestamp(),
                       lease_until = clock_timestamp() + make_interval(secs => lease_s), devices = $2, transfers = $3
                   WHERE gateway_id = $1 AND lease_until > clock_timestamp()""",
                self.gateway_id,
                devices,
                transfers,
            )
        if renewed.endswith(" 1"):
            return True
        await self.register()
        return False

    async def leave(self) -> None:
        """Orderly shutdown: release every slot and end the lease now."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM fleet_slots WHERE gateway_id = $1", self.gateway_id)
            await conn.execute(
                "UPDATE fleet_gateways SET lease_until = clock_timestamp() WHERE gateway_id = $1",
                self.gateway_id,
            )


class FleetBudget:
    """Acquire and release transfer slots against the fleet-wide limits (see module docstring)."""

    def __init__(self, pool: asyncpg.Pool, gateway_id: str, site: str) -> None:
        self.pool, self.gateway_id, self.site = pool, gateway_id, site

    async def set_limits(self, limits: dict[str, int]) -> None:
        """Set scope limits (an operator/leader action; gateways' roles cannot write this table)."""
        async with self.pool.acquire() as conn:
            await conn.executemany(
                "INSERT INTO fleet_budgets (scope, max_slots) VALUES ($1, $2) "
                "ON CONFLICT (scope) DO UPDATE SET max_slots = EXCLUDED.max_slots",
                list(limits.items()),
            )

    async def acquire(self, req: SlotRequest) -> tuple[bool, str]:
        """Take a slot for `req.device_id` if every scope it falls in has room; (granted, why not)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SLOT_LOCK_KEY)
            holder = await conn.fetchval(
                """SELECT s.gateway_id FROM fleet_slots s JOIN fleet_gateways g USING (gateway_id)
                   WHERE s.device_id = $1 AND g.lease_until > clock_timestamp()""",
                req.device_id,
            )
            if holder == self.gateway_id:
                return True, ""
            if holder is not None:
                return False, f"slot held by gateway {holder}"
            full = await conn.fetchval(
                """WITH live AS (
                       SELECT s.* FROM fleet_slots s JOIN fleet_gateways g USING (gateway_id)
                       WHERE g.lease_until > clock_timestamp()
                   ), used AS (
                       SELECT 'global' AS scope, count(*) AS n FROM live
                       UNION ALL SELECT 'site:' || $1, count(*) FROM live WHERE site = $1
                       UNION ALL SELECT 'protocol:' || $2, count(*) FROM live WHERE protocol = $2
                       UNION ALL SELECT 'network:' || $1 || '/' || $3, count(*) FROM live
                                 WHERE site = $1 AND network = $3
                   )
                   SELECT b.scope FROM used JOIN fleet_budgets b USING (scope)
                   WHERE used.n >= b.max_slots ORDER BY b.scope LIMIT 1""",
                self.site,
                req.protocol,
                req.network,
            )
            if full is not None:
                return False, f"fleet budget {full} is full"
            # a stale row (its gateway's lease expired) may still name the device: replace it
            await conn.execute(
                """INSERT INTO fleet_slots (device_id, gateway_id, site, protocol, network, acquired_at)
                   VALUES ($1, $2, $3, $4, $5, clock_timestamp())
                   ON CONFLICT (device_id) DO UPDATE SET gateway_id = EXCLUDED.gateway_id, site = EXCLUDED.site,
                       protocol = EXCLUDED.protocol, network = EXCLUDED.network,
                       acquired_at = EXCLUDED.acquired_at""",
                req.device_id,
                self.gateway_id,
                self.site,
                req.protocol,
                req.network,
            )
        return True, ""

    async def release(self, device_id: str) -> None:
        await self.pool.execute(
            "DELETE FROM fleet_slots WHERE device_id = $1 AND gateway_id = $2", device_id, self.gateway_id
        )

    async def used(self) -> dict[str, int]:
        """Live slots per scope, from one snapshot (for status and for checking the invariant)."""
        rows = await self.pool.fetch(
            """SELECT s.site, s.protocol, s.network FROM fleet_slots s JOIN fleet_gateways g USING (gateway_id)
               WHERE g.lease_until > clock_timestamp()"""
        )
        out: dict[str, int] = {}
        for site, protocol, network in rows:
            for scope in scopes_of(site, protocol, network):
                out[scope] = out.get(scope, 0) + 1
        return out

    async def reap(self) -> int:
        """Delete slot rows of gateways whose lease expired (housekeeping: they already count for nothing)."""
        status = await self.pool.execute(
            """DELETE FROM fleet_slots s USING fleet_gateways g
               WHERE s.gateway_id = g.gateway_id AND g.lease_until <= clock_timestamp()"""
        )
        return int(status.rsplit(" ", 1)[1])
