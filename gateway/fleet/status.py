"""What `otagw fleet status` (and the API) shows: gateways with liveness and counts, the leader, budget use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.fleet.budget import FleetBudget
from gateway.fleet.leader import ROLLOUT_ENGINE_LEASE

if TYPE_CHECKING:
    import asyncpg

__all__ = ["fleet_status"]


async def fleet_status(pool: asyncpg.Pool) -> dict[str, Any]:
    rows = await pool.fetch(
        """SELECT g.gateway_id, g.site, g.version, g.devices, g.transfers,
                  g.lease_until > clock_timestamp() AS alive,
                  extract(epoch FROM g.heartbeat_at) AS heartbeat_at,
                  (SELECT count(*) FROM fleet_slots s WHERE s.gateway_id = g.gateway_id) AS slots
           FROM fleet_gateways g ORDER BY g.site, g.gateway_id"""
    )
    leader = await pool.fetchrow(
        "SELECT holder, epoch, lease_until > clock_timestamp() AS alive FROM fleet_leases WHERE name = $1",
        ROLLOUT_ENGINE_LEASE,
    )
    limits = {
        r["scope"]: int(r["max_slots"])
        for r in await pool.fetch("SELECT scope, max_slots FROM fleet_budgets")
    }
    used = await FleetBudget(pool, "", "").used()
    return {
        "gateways": [
            {
                "id": r["gateway_id"],
                "site": r["site"],
                "version": r["version"],
                "alive": bool(r["alive"]),
                "devices": int(r["devices"]),
                "transfers": int(r["transfers"]),
                "slots": int(r["slots"]),
                "heartbeat_at": float(r["heartbeat_at"]),
            }
            for r in rows
        ],
        "leader": (
            {"id": leader["holder"], "epoch": int(leader["epoch"]), "alive": bool(leader["alive"])}
            if leader
            else None
        ),
        "budgets": {
            scope: {"limit": limit, "used": used.get(scope, 0)} for scope, limit in sorted(limits.items())
        },
    }
