"""The fleet coordination tables on PostgreSQL, and the connection pool the fleet services share.

These tables exist only when gateways share a PostgreSQL database (SQLite serves one gateway, whose budgets and
rollout engine stay in its process), so they have their own ordered migration list and version table
(`otagw_fleet_schema`), applied under the same advisory lock as the records schema.

Time in these tables is the database server's clock (`clock_timestamp()`): gateways' clocks differ, the
server's is the one every lease is judged by.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import StoreConfig
from gateway.core.pg_repository import MIGRATION_LOCK_KEY, ssl_context
from gateway.core.records import StateDBError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["FLEET_MIGRATIONS", "FLEET_SCHEMA_VERSION", "connect_pool", "migrate_fleet"]

FLEET_MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            # membership: a gateway is alive while lease_until is in the future (heartbeats push it)
            """CREATE TABLE fleet_gateways (
                gateway_id TEXT PRIMARY KEY, site TEXT NOT NULL, version TEXT NOT NULL,
                started_at TIMESTAMPTZ NOT NULL, heartbeat_at TIMESTAMPTZ NOT NULL,
                lease_until TIMESTAMPTZ NOT NULL, lease_s DOUBLE PRECISION NOT NULL,
                devices BIGINT NOT NULL DEFAULT 0, transfers BIGINT NOT NULL DEFAULT 0
            )""",
            # budget limits by scope: 'global', 'site:<site>', 'protocol:<p>', 'network:<site>/<network>'
            "CREATE TABLE fleet_budgets (scope TEXT PRIMARY KEY, max_slots BIGINT NOT NULL CHECK (max_slots >= 0))",
            # one row per transfer in flight anywhere in the fleet; counts only while its gateway's lease lives
            """CREATE TABLE fleet_slots (
                device_id TEXT PRIMARY KEY,
                gateway_id TEXT NOT NULL REFERENCES fleet_gateways(gateway_id) ON DELETE CASCADE,
                site TEXT NOT NULL, protocol TEXT NOT NULL, network TEXT NOT NULL,
                acquired_at TIMESTAMPTZ NOT NULL
            )""",
            "CREATE INDEX fleet_slots_gateway ON fleet_slots(gateway_id)",
            # named leases (the rollout engine's leader); epoch grows at every change of holder (a fencing token)
            """CREATE TABLE fleet_leases (
                name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL,
                lease_until TIMESTAMPTZ NOT NULL
            )""",
        ],
    ),
    (
        2,
        [
            # database role -> the gateway it is and the site it may see (gateway/fleet/roles.py)
            """CREATE TABLE fleet_roles (
                role_name TEXT PRIMARY KEY, gateway_id TEXT NOT NULL UNIQUE, site TEXT NOT NULL
            )""",
        ],
    ),
    (
        3,
        [
            # the shared content-addressed blob store (gateway/fleet/blobs.py): a blob row appears only once all
            # of its chunks are in and their digest matched its name
            """CREATE TABLE fleet_blobs (
                sha256 TEXT PRIMARY KEY CHECK (sha256 ~ '^[0-9a-f]{64}$'), size BIGINT NOT NULL,
                chunk_size INTEGER NOT NULL, chunks INTEGER NOT NULL, created_at TIMESTAMPTZ NOT NULL
            )""",
            """CREATE TABLE fleet_blob_chunks (
                sha256 TEXT NOT NULL, seq INTEGER NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (sha256, seq)
            )""",
        ],
    ),
]
FLEET_SCHEMA_VERSION = FLEET_MIGRATIONS[-1][0]


async def connect_pool(cfg: StoreConfig, max_size: int | None = None) -> asyncpg.Pool:
    """A pool to the fleet database `cfg` names (precise StateDBError when it cannot be reached)."""
    import asyncpg

    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            cfg.dsn,
            min_size=1,
            max_size=max_size or cfg.pool_size,
            ssl=ssl_context(cfg),
            timeout=cfg.connect_timeout_s,
            command_timeout=cfg.command_timeout_s,
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StateDBError(f"fleet database: cannot connect: {exc}") from None
    return pool


async def migrate_fleet(pool: asyncpg.Pool) -> None:
    """Create or upgrade the fleet tables (once, whichever gateway gets the lock first)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        if await conn.fetchval("SELECT to_regclass('otagw_fleet_schema') IS NULL"):  # no DDL when current
            await conn.execute("CREATE TABLE otagw_fleet_schema (version BIGINT NOT NULL)")
        version = await conn.fetchval("SELECT max(version) FROM otagw_fleet_schema") or 0
        if version > FLEET_SCHEMA_VERSION:
            raise StateDBError(
                f"fleet schema version {version} is newer than this otagw understands ({FLEET_SCHEMA_VERSION})"
            )
        for target, stmts in FLEET_MIGRATIONS:
            if target <= version:
                continue
            for stmt in stmts:
                await conn.execute(stmt)
            await conn.execute("INSERT INTO otagw_fleet_schema (version) VALUES ($1)", target)
