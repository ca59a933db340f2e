"""`RecordsRepository` over PostgreSQL (asyncpg): the fleet backend, same schema and behaviour as SQLite.

The schema comes from the same `MIGRATIONS` list as SQLite (gateway/core/schema.py), rendered for PostgreSQL;
the applied version lives in `otagw_schema` and migrations run under a transaction-scoped advisory lock, so
several gateways starting at once migrate exactly once. Writes are group-committed like SQLite's: concurrent
callers' rows go to the server in one transaction on one pooled connection. Rollout steps and commands are the
same compare-and-set UPDATEs; under READ COMMITTED PostgreSQL re-checks the WHERE clause after taking the row
lock, so two gateways (or a gateway and a CLI) cannot both apply a step.

asyncpg is an optional dependency (`pip install otagw[postgres]`); it is imported when a repository is opened.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from gateway.config import StoreConfig
from gateway.core.records import DeviceRecord, HistoryEntry, StateDBError
from gateway.core.repository import (
    _COLUMNS,
    _HISTORY_INSERT,
    _INSERT_EVENT,
    _INSERT_ROLLOUT,
    _SELECT_ROLLOUTS,
    GroupCommitWriter,
    RolloutChange,
    record_from_row,
    rename_network_sql,
    rollout_cas_statement,
    rollout_from_row,
    rollout_row,
)
from gateway.core.rollouts import Rollout
from gateway.core.schema import MIGRATIONS, OVERRIDE_COLUMNS, SCHEMA_VERSION, qmark_to_dollar, render

if TYPE_CHECKING:
    import asyncpg

__all__ = ["MIGRATION_LOCK_KEY", "PostgresRecordsRepository", "fence_condition", "ssl_context"]

# pg_advisory_xact_lock key held while migrating ("otagw" + schema, as a stable 63-bit number)
MIGRATION_LOCK_KEY = 0x6F7461677700_0001

# the SQLite upsert plus the owner columns: the last gateway to write a device's record owns it
_UPSERT_PG = qmark_to_dollar(
    f"INSERT INTO devices ({', '.join(_COLUMNS)}, gateway_id, site) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)}, ?, ?) ON CONFLICT(device_id) DO UPDATE SET "
    + ", ".join(f"{c}=EXCLUDED.{c}" for c in [*_COLUMNS, "gateway_id", "site"] if c != "device_id")
)
_HISTORY_INSERT_PG = qmark_to_dollar(_HISTORY_INSERT)
_INSERT_ROLLOUT_PG = qmark_to_dollar(_INSERT_ROLLOUT)
_INSERT_EVENT_PG = qmark_to_dollar(_INSERT_EVENT)


def ssl_context(cfg: StoreConfig) -> ssl.SSLContext | str | None:
    """The TLS setting asyncpg gets: a verifying context when a CA file is given, else the sslmode string."""
    if cfg.tls_mode == "disable":
        return None
    if cfg.tls_ca_file is None and cfg.tls_cert_file is None:
        return cfg.tls_mode
    ctx = ssl.create_default_context(cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None)
    if cfg.tls_mode != "verify-full":
        ctx.check_hostname = False
    if cfg.tls_mode in ("prefer", "require"):
        ctx.verify_mode = ssl.CERT_NONE if cfg.tls_ca_file is None else ssl.CERT_REQUIRED
    if cfg.tls_cert_file is not None:
        ctx.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file) if cfg.tls_key_file else None)
    return ctx


def fence_condition(first_param: int) -> str:
    """SQL true only while a leader lease (params from `$first_param`: name, holder, epoch) is held, unexpired."""
    n = first_param
    return (
        f"EXISTS (SELECT 1 FROM fleet_leases WHERE name = ${n} AND holder = ${n + 1} AND epoch = ${n + 2} "
        "AND lease_until > clock_timestamp())"
    )


class PostgresRecordsRepository(GroupCommitWriter):
    """`RecordsRepository` over a PostgreSQL database reached through an asyncpg pool."""

    def __init__(self, cfg: StoreConfig, gateway_id: str = "gw-1", site: str = "home") -> None:
        super().__init__()
        self.cfg = cfg
        # this gateway's identity: stamped on every record it writes (it owns them) and the filter of its loads
        self.gateway_id, self.site = gateway_id, site
        self._pool: asyncpg.Pool | None = None
        # (lease name, holder, epoch) every rollout change must still hold (gateway/fleet/leader.py); None: a
        # single gateway or the operator's CLI, whose changes are compare-and-set only
        self.fence: tuple[str, str, int] | None = None

    @property
    def where(self) -> str:
        """The DSN without its password, for error messages."""
        dsn = self.cfg.dsn or ""
        if "@" in dsn and "://" in dsn:
            scheme, rest = dsn.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            return f"{scheme}://{creds.split(':', 1)[0]}@{host}"
        return dsn

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("PostgreSQL repository is not open")
        return self._pool

    async def open(self) -> None:
        import asyncpg

        try:
            self._pool = await asyncpg.create_pool(
                self.cfg.dsn,
                min_size=1,
                max_size=self.cfg.pool_size,
                ssl=ssl_context(self.cfg),
                timeout=self.cfg.connect_timeout_s,
                command_timeout=self.cfg.command_timeout_s,
            )
            await self._migrate()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StateDBError(f"{self.where}: cannot open device state database: {exc}") from None

    async def _migrate(self) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # one migrator at a time across the fleet; the lock ends with the transaction
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            # no DDL when the schema is current: a gateway's least-privilege role may not create tables
            if await conn.fetchval("SELECT to_regclass('otagw_schema') IS NULL"):
                await conn.execute("CREATE TABLE otagw_schema (version BIGINT NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM otagw_schema") or 0
            if version > SCHEMA_VERSION:
                raise StateDBError(
                    f"{self.where}: schema version {version} is newer than this otagw understands "
                    f"({SCHEMA_VERSION})"
                )
            for target, stmts in MIGRATIONS:
                if target <= version:
                    continue
                for stmt in stmts:
                    await conn.execute(render(stmt, "postgres"))
                await conn.execute("INSERT INTO otagw_schema (version) VALUES ($1)", target)

    async def close(self) -> None:
        await self._drain()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def schema_version(self) -> int:
        return int(await self.pool.fetchval("SELECT max(version) FROM otagw_schema") or 0)

    async def data_version(self) -> int:
        """Changes whenever a rollout changes (every rollout write appends a rollout_events row)."""
        return int(await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM rollout_events"))

    # ------------------------------------------------------------------------------------------ writes
    async def _commit(
        self,
        devices: list[tuple[Any, ...]],
        history: list[tuple[Any, ...]],
        sql: list[tuple[str, tuple[Any, ...]]],
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if devices:
                owner = (self.gateway_id, self.site)
                await conn.executemany(_UPSERT_PG, [(*r, *owner) for r in devices])
            if history:
                await conn.executemany(_HISTORY_INSERT_PG, history)
            for stmt, params in sql:
                await conn.execute(qmark_to_dollar(stmt), *params)

    # ------------------------------------------------------------------------------------------- reads
    async def load_devices(self) -> list[DeviceRecord]:
        """The records of the devices this gateway serves (other gateways' records are theirs)."""
        rows = await self.pool.fetch(
            f"SELECT {', '.join(_COLUMNS)} FROM devices WHERE gateway_id = $1", self.gateway_id
        )
        return [record_from_row(tuple(r), _COLUMNS) for r in rows]

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        row = await self.pool.fetchrow(
            f"SELECT {', '.join(_COLUMNS)} FROM devices WHERE device_id = $1", device_id
        )
        return record_from_row(tuple(row), _COLUMNS) if row else None

    async def history(self, device_id: str, limit: int | None = None) -> list[HistoryEntry]:
        """Transitions of one device, oldest first (the newest `limit` when given)."""
        q = (
            'SELECT device_id, at, old_state, new_state, reason, image_id, version, "offset" FROM history '
            "WHERE device_id = $1 ORDER BY id DESC"
        )
        params: tuple[Any, ...] = (device_id,)
        if limit is not None:
            q += " LIMIT $2"
            params += (limit,)
        rows = await self.pool.fetch(q, *params)
        return [HistoryEntry(*r) for r in reversed(rows)]

    async def prune_history(self, before: float) -> None:
        await self.write(sql=[("DELETE FROM history WHERE at < ?", (before,))])

    async def lift_block(self, device_id: str) -> bool:
        """As `SQLiteRecordsRepository.lift_block`: a person lifts a parked device (block, attempts, back-off)."""
        status = await self.pool.execute(
            "UPDATE devices SET blocked_image_id = NULL, blocked_reason = NULL, blocked_at = NULL, failures = 0,"
            " next_retry_at = NULL WHERE device_id = $1",
            device_id,
        )
        return int(status.rsplit(" ", 1)[1]) > 0

    async def parked_devices(self) -> set[str]:
        """Ids of this gateway's devices whose stored record is parked (has a blocked image)."""
        rows = await self.pool.fetch(
            "SELECT device_id FROM devices WHERE blocked_image_id IS NOT NULL AND gateway_id = $1",
            self.gateway_id,
        )
        return {r[0] for r in rows}

    async def set_overrides(self, device_id: str, values: dict[str, Any]) -> bool:
        """Write owner overrides (OVERRIDE_COLUMNS only) of one device; False when there is no such device."""
        bad = set(values) - set(OVERRIDE_COLUMNS)
        if bad:
            raise ValueError(f"not an override column: {sorted(bad)}")
        if not values:
            return await self.get_device(device_id) is not None
        cols = sorted(values)
        params = [int(values[c]) if isinstance(values[c], bool) else values[c] for c in cols]
        sets = ", ".join(f"{c} = ${i}" for i, c in enumerate(cols, start=1))
        status = await self.pool.execute(
            f"UPDATE devices SET {sets} WHERE device_id = ${len(cols) + 1}", *params, device_id
        )
        return int(status.rsplit(" ", 1)[1]) > 0

    async def load_overrides(self) -> dict[str, dict[str, Any]]:
        """Owner overrides of this gateway's devices (merged into its records when another process commits)."""
        rows = await self.pool.fetch(
            f"SELECT device_id, {', '.join(OVERRIDE_COLUMNS)} FROM devices WHERE gateway_id = $1",
            self.gateway_id,
        )
        return {r[0]: {"name": r[1], "pinned_version": r[2], "excluded": bool(r[3])} for r in rows}

    async def rename_network(self, protocol: str, old: str, new: str) -> None:
        """The network-identity migration step, the same statements as on SQLite (`rename_network_sql`)."""
        await self.write(sql=rename_network_sql(protocol, old, new))

    # ---------------------------------------------------------------------------------------- rollouts
    async def load_rollouts(self) -> list[Rollout]:
        return [rollout_from_row(tuple(r)) for r in await self.pool.fetch(_SELECT_ROLLOUTS)]

    async def insert_rollout(self, r: Rollout, event: str, reason: str) -> None:
        await self.write(
            sql=[
                (_INSERT_ROLLOUT, rollout_row(r)),
                (_INSERT_EVENT, (r.rollout_id, r.created_at, event, r.current_wave, reason)),
            ]
        )

    async def update_rollout_if(self, change: RolloutChange) -> bool:
        """Compare-and-set, exactly as `SQLiteRecordsRepository.update_rollout_if` (same statement text)."""
        stmt, params = rollout_cas_statement(change)
        stmt = qmark_to_dollar(stmt)
        if self.fence is not None:
            # fenced: a deposed leader's late step matches no row (the lease has a new epoch or expired)
            stmt += " AND " + fence_condition(len(params) + 1)
            params += self.fence
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute(stmt, *params)
            changed = int(status.rsplit(" ", 1)[1])
            if changed:
                await conn.execute(
                    _INSERT_EVENT_PG,
                    change.rollout_id,
                    change.at,
                    change.event,
                    change.current_wave,
                    change.event_reason,
                )
        return changed > 0

    async def rollout_events(self, rollout_id: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT at, event, wave, reason FROM rollout_events WHERE rollout_id=$1 ORDER BY id", rollout_id
        )
        return [{"at": a, "event": e, "wave": w, "reason": why} for a, e, w, why in rows]
