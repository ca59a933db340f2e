"""The records repository: the ONLY place with SQL for device records, transition history and rollouts.

`RecordsRepository` is the interface the core uses (async); `SQLiteRecordsRepository` implements it over
`<data_dir>/state.db` and `PostgresRecordsRepository` (gateway/core/pg_repository.py) over a shared PostgreSQL
database, from the same migration list (gateway/core/schema.py) and the same statement texts.

`state.db` is SQLite in WAL mode, shared by the running gateway (writer of device records) and the CLI (reader, and
writer of rollout commands). The schema is versioned with `PRAGMA user_version` and upgraded by the ordered
`MIGRATIONS`; a database written by a newer otagw is refused rather than guessed at.

`write` is a group commit: concurrent callers' rows are written in one transaction, which keeps decisions per
second high while every decision is durable before it is answered. Rollout steps and commands are compare-and-set
UPDATEs on (status, current wave), so the gateway and a CLI never overwrite each other's change.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from gateway.config import Config, PolicySelector
from gateway.core.records import DeviceRecord, HistoryEntry, StateDBError
from gateway.core.rollouts import Rollout, RolloutStatus, parse_waves
from gateway.core.schema import MIGRATIONS, OVERRIDE_COLUMNS, SCHEMA_VERSION, render
from gateway.core.states import DeviceState

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "GroupCommitWriter",
    "RecordsRepository",
    "RolloutChange",
    "SQLiteRecordsRepository",
    "StateDB",
    "StateDBError",
    "make_repository",
    "rename_network_sql",
    "rollout_cas_statement",
]

_COLUMNS = [f.name for f in fields(DeviceRecord)]
_UPSERT = (
    f"INSERT INTO devices ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)}) "
    f"ON CONFLICT(device_id) DO UPDATE SET "
    + ", ".join(f"{c}=excluded.{c}" for c in _COLUMNS if c != "device_id")
)
_HISTORY_INSERT = (
    'INSERT INTO history (device_id, at, old_state, new_state, reason, image_id, version, "offset") '
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def record_row(rec: DeviceRecord) -> tuple[Any, ...]:
    """A snapshot of the record as a row (taken when queued, so later mutation cannot leak into a write)."""
    out: list[Any] = []
    for c in _COLUMNS:
        v = getattr(rec, c)
        if c == "tags":
            v = json.dumps(list(v))
        elif c == "extra":
            v = json.dumps(v, default=str, sort_keys=True)
        elif isinstance(v, DeviceState):
            v = v.value
        elif isinstance(v, bool):
            v = int(v)
        out.append(v)
    return tuple(out)


def record_from_row(row: sqlite3.Row | Sequence[Any], names: Sequence[str]) -> DeviceRecord:
    d = dict(zip(names, row, strict=True))
    d["tags"] = tuple(json.loads(d["tags"] or "[]"))
    d["extra"] = json.loads(d["extra"] or "{}")
    d["state"] = DeviceState(d["state"])
    d["resume_state"] = DeviceState(d["resume_state"]) if d["resume_state"] else None
    d["sleepy"] = None if d["sleepy"] is None else bool(d["sleepy"])
    d["present"] = bool(d["present"])
    d["excluded"] = bool(d["excluded"])
    return DeviceRecord(**{k: d[k] for k in _COLUMNS})


@dataclass(slots=True)
class _Pending:
    devices: list[tuple[Any, ...]]
    history: list[tuple[Any, ...]]
    sql: list[tuple[str, tuple[Any, ...]]]
    fut: asyncio.Future[None]


class GroupCommitWriter:
    """Group commit, shared by both engines: concurrent `write` calls queue their snapshots and one task commits
    everything queued in one transaction (`_commit`, the engine's part), then answers every caller."""

    def __init__(self) -> None:
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def write(
        self,
        devices: Iterable[DeviceRecord] = (),
        history: Iterable[HistoryEntry] = (),
        sql: Iterable[tuple[str, tuple[Any, ...]]] = (),
    ) -> None:
        """Persist snapshots of `devices`, append `history`, run `sql` (`?` placeholders); returns once committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(
            _Pending([record_row(d) for d in devices], [h.row() for h in history], list(sql), fut)
        )
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        await fut

    async def _drain(self) -> None:
        """Wait for queued writes (before closing)."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _commit(
        self,
        devices: list[tuple[Any, ...]],
        history: list[tuple[Any, ...]],
        sql: list[tuple[str, tuple[Any, ...]]],
    ) -> None:
        raise NotImplementedError

    async def _rollback(self) -> None:
        """After a failed `_commit` (an engine whose transaction is not self-cleaning undoes it here)."""

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._commit(
                    [r for p in batch for r in p.devices],
                    [r for p in batch for r in p.history],
                    [s for p in batch for s in p.sql],
                )
            except BaseException as exc:
                await self._rollback()
                for p in batch:
                    if not p.fut.done():
                        p.fut.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
            else:
                for p in batch:
                    if not p.fut.done():
                        p.fut.set_result(None)


class SQLiteRecordsRepository(GroupCommitWriter):
    """`RecordsRepository` over state.db (SQLite, WAL): schema, group-committed writes, reads, rollout CAS."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def conn(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("StateDB is not open")
        return self._conn

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Device records name every device on the network: owner-only, like the rest of the data dir.
        # SQLite gives the -wal/-shm files the main file's permissions.
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        try:
            self._conn = await aiosqlite.connect(self.path)
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute("PRAGMA synchronous=NORMAL")
            await self._conn.execute("PRAGMA busy_timeout=5000")
            await self._migrate()
        except sqlite3.DatabaseError as exc:
            await self.close()
            raise StateDBError(f"{self.path}: cannot open device state database: {exc}") from None

    async def _migrate(self) -> None:
        # BEGIN IMMEDIATE first: a gateway and a CLI starting together must not both run a migration
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            async with self.conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StateDBError(
                    f"{self.path}: schema version {version} is newer than this otagw understands ({SCHEMA_VERSION})"
                )
            for target, stmts in MIGRATIONS:
                if target <= version:
                    continue
                for stmt in stmts:
                    await self.conn.execute(render(stmt, "sqlite"))
                await self.conn.execute(f"PRAGMA user_version={target}")
            await self.conn.commit()
        except BaseException:
            await self.conn.rollback()
            raise

    async def close(self) -> None:
        await self._drain()
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def data_version(self) -> int:
        """Changes whenever another connection (the CLI, another process) commits to state.db."""
        async with self.conn.execute("PRAGMA data_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def lift_block(self, device_id: str) -> bool:
        """A person lifts a parked device (`otagw devices retry` from another process): clears its block,
        attempts and back-off in one transaction; False when there is no such device. The gateway picks it up
        through `parked_devices` when `data_version` changes."""
        async with self._lock:
            cur = await self.conn.execute(
                "UPDATE devices SET blocked_image_id = NULL, blocked_reason = NULL, blocked_at = NULL, failures = 0,"
                " next_retry_at = NULL WHERE device_id = ?",
                (device_id,),
            )
            changed = cur.rowcount > 0
            await cur.close()
            await self.conn.commit()
        return changed

    async def parked_devices(self) -> set[str]:
        """Ids of the devices whose stored record is parked (has a blocked image)."""
        async with self.conn.execute(
            "SELECT device_id FROM devices WHERE blocked_image_id IS NOT NULL"
        ) as cur:
            rows = await cur.fetchall()
        return {r[0] for r in rows}

    # ------------------------------------------------------------------------------------------ writes
    async def _commit(
        self,
        devices: list[tuple[Any, ...]],
        history: list[tuple[Any, ...]],
        sql: list[tuple[str, tuple[Any, ...]]],
    ) -> None:
        async with self._lock:
            conn = self.conn
            if devices:
                await conn.executemany(_UPSERT, devices)
            if history:
                await conn.executemany(_HISTORY_INSERT, history)
            for stmt, params in sql:
                await conn.execute(stmt, params)
            await conn.commit()

    async def _rollback(self) -> None:
        if self._conn is not None:
            await self._conn.rollback()

    async def _execute_cas(
        self, stmt: str, params: tuple[Any, ...], extra: Iterable[tuple[str, tuple[Any, ...]]] = ()
    ) -> int:
        """Run one conditional UPDATE (compare-and-set) plus follow-ups in a transaction; rows changed."""
        async with self._lock:
            cur = await self.conn.execute(stmt, params)
            changed = cur.rowcount
            await cur.close()
            if changed:
                for s, p in extra:
                    await self.conn.execute(s, p)
            await self.conn.commit()
            return changed

    # ------------------------------------------------------------------------------------------- reads
    async def load_devices(self) -> list[DeviceRecord]:
        async with self.conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM devices") as cur:
            rows = await cur.fetchall()
        return [record_from_row(r, _COLUMNS) for r in rows]

    async def get_device(self, device_id: str) -> DeviceRecord | None:
        async with self.conn.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM devices WHERE device_id = ?", (device_id,)
        ) as cur:
            row = await cur.fetchone()
        return record_from_row(row, _COLUMNS) if row else None

    async def history(self, device_id: str, limit: int | None = None) -> list[HistoryEntry]:
        """Transitions of one device, oldest first (the newest `limit` when given)."""
        q = (
            'SELECT device_id, at, old_state, new_state, reason, image_id, version, "offset" FROM history '
            "WHERE device_id = ? ORDER BY id DESC"
        )
        params: tuple[Any, ...] = (device_id,)
        if limit is not None:
            q += " LIMIT ?"
            params += (limit,)
        async with self.conn.execute(q, params) as cur:
            rows = await cur.fetchall()
        return [HistoryEntry(*r) for r in reversed(list(rows))]

    async def prune_history(self, before: float) -> None:
        await self.write(sql=[("DELETE FROM history WHERE at < ?", (before,))])

    async def set_overrides(self, device_id: str, values: dict[str, Any]) -> bool:
        """Write owner overrides (OVERRIDE_COLUMNS only) of one device; False when there is no such device."""
        bad = set(values) - set(OVERRIDE_COLUMNS)
        if bad:
            raise ValueError(f"not an override column: {sorted(bad)}")
        if not values:
            return await self.get_device(device_id) is not None
        cols = sorted(values)
        params = tuple(int(values[c]) if isinstance(values[c], bool) else values[c] for c in cols)
        stmt = f"UPDATE devices SET {', '.join(c + ' = ?' for c in cols)} WHERE device_id = ?"
        return await self._execute_cas(stmt, (*params, device_id)) > 0

    async def load_overrides(self) -> dict[str, dict[str, Any]]:
        """Owner overrides of every device (the gateway merges another process's changes into its records)."""
        async with self.conn.execute(f"SELECT device_id, {', '.join(OVERRIDE_COLUMNS)} FROM devices") as cur:
            rows = await cur.fetchall()
        return {r[0]: {"name": r[1], "pinned_version": r[2], "excluded": bool(r[3])} for r in rows}

    # ---------------------------------------------------------------------------------------- rollouts
    async def load_rollouts(self) -> list[Rollout]:
        async with self.conn.execute(_SELECT_ROLLOUTS) as cur:
            rows = await cur.fetchall()
        return [rollout_from_row(r) for r in rows]

    async def insert_rollout(self, r: Rollout, event: str, reason: str) -> None:
        await self.write(
            sql=[
                (_INSERT_ROLLOUT, rollout_row(r)),
                (_INSERT_EVENT, (r.rollout_id, r.created_at, event, r.current_wave, reason)),
            ]
        )

    async def update_rollout_if(self, change: RolloutChange) -> bool:
        """Compare-and-set: write `change` only if the rollout is still as expected.

        A progress step (expect_wave given) writes status and wave fields, conditional on (status, wave); an
        operator command (expect_wave None) writes the status only, conditional on the status - plus, when
        resuming a halted rollout, a fresh wave clock and no failure thresholds.
        """
        stmt, params = rollout_cas_statement(change)
        n = await self._execute_cas(
            stmt,
            params,
            [
                (
                    _INSERT_EVENT,
                    (change.rollout_id, change.at, change.event, change.current_wave, change.event_reason),
                )
            ],
        )
        return n > 0

    # ------------------------------------------------------------------- migration: network identity renames
    async def rename_network(self, protocol: str, old: str, new: str) -> None:
        """Migration step "network identity" (e.g. Zigbee `pan:<16-bit>` -> `epid:<extended PAN id>`): move every
        record of network `old` and its history to `new`, rewriting device ids `<protocol>:<old>:...` to
        `<protocol>:<new>:...`. A record whose new id already exists stays where it is (the newer identity wins),
        with its history. Queued behind pending writes, one transaction."""
        await self.write(sql=rename_network_sql(protocol, old, new))

    async def rollout_events(self, rollout_id: str) -> list[dict[str, Any]]:
        async with self.conn.execute(
            "SELECT at, event, wave, reason FROM rollout_events WHERE rollout_id=? ORDER BY id", (rollout_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [{"at": a, "event": e, "wave": w, "reason": why} for a, e, w, why in rows]


def rollout_cas_statement(change: RolloutChange) -> tuple[str, tuple[Any, ...]]:
    """The compare-and-set UPDATE for `change` (`?` placeholders; both backends run this text)."""
    if change.expect_wave is not None:
        sets = (
            "status=?, status_reason=?, current_wave=?, wave_opened_at=?, wave_completed_at=?, updated_at=?"
        )
        params: tuple[Any, ...] = (
            change.status.value,
            change.status_reason,
            change.current_wave,
            change.wave_opened_at,
            change.wave_completed_at,
            change.at,
            change.rollout_id,
            change.expect_status.value,
            change.expect_wave,
        )
        where = " WHERE rollout_id=? AND status=? AND current_wave=?"
    else:
        sets = "status=?, status_reason=?, updated_at=?"
        params = (change.status.value, change.status_reason, change.at)
        if change.clear_thresholds:
            sets += ", wave_opened_at=?, wave_completed_at=NULL, max_failures=NULL, max_failure_rate=NULL"
            params += (change.wave_opened_at,)
        params += (change.rollout_id, change.expect_status.value)
        where = " WHERE rollout_id=? AND status=?"
    return f"UPDATE rollouts SET {sets}{where}", params


StateDB = SQLiteRecordsRepository  # the name the CLI and older tests know


@dataclass(frozen=True, slots=True)
class RolloutChange:
    """One compare-and-set change of a rollout row plus the event row that explains it."""

    rollout_id: str
    expect_status: RolloutStatus
    expect_wave: int | None  # None: any wave (operator commands)
    status: RolloutStatus
    status_reason: str
    current_wave: int
    wave_opened_at: float | None
    wave_completed_at: float | None
    at: float
    event: str
    event_reason: str
    clear_thresholds: bool = False  # resuming a halted rollout: the operator accepted its failures


class RecordsRepository(Protocol):
    """What the core needs of the device-state store (SQLite or PostgreSQL behind the same interface)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def data_version(self) -> int:
        """Changes whenever another process commits (the CLI's rollout commands)."""
        ...

    async def write(
        self,
        devices: Iterable[DeviceRecord] = (),
        history: Iterable[HistoryEntry] = (),
        sql: Iterable[tuple[str, tuple[Any, ...]]] = (),
    ) -> None:
        """Persist snapshots of `devices`, append `history`, run `sql` (`?` placeholders); once durable."""
        ...

    async def load_devices(self) -> list[DeviceRecord]: ...

    async def lift_block(self, device_id: str) -> bool: ...

    async def parked_devices(self) -> set[str]: ...

    async def get_device(self, device_id: str) -> DeviceRecord | None: ...

    async def history(self, device_id: str, limit: int | None = None) -> list[HistoryEntry]: ...

    async def set_overrides(self, device_id: str, values: dict[str, Any]) -> bool: ...

    async def load_overrides(self) -> dict[str, dict[str, Any]]: ...

    async def prune_history(self, before: float) -> None: ...

    async def load_rollouts(self) -> list[Rollout]: ...

    async def insert_rollout(self, r: Rollout, event: str, reason: str) -> None: ...

    async def update_rollout_if(self, change: RolloutChange) -> bool: ...

    async def rollout_events(self, rollout_id: str) -> list[dict[str, Any]]: ...

    async def rename_network(self, protocol: str, old: str, new: str) -> None: ...


def rename_network_sql(protocol: str, old: str, new: str) -> list[tuple[str, tuple[Any, ...]]]:
    """The network-identity migration step's statements (`?` placeholders, both engines): records of network `old`
    and their history move to `new`; a record whose new id already exists stays (the newer identity wins)."""
    old_prefix, new_prefix = f"{protocol}:{old}:", f"{protocol}:{new}:"
    tail = len(old_prefix) + 1  # SQL substr is 1-based
    return [
        (
            "UPDATE devices SET network = ?, device_id = ? || substr(device_id, ?) "
            "WHERE protocol = ? AND network = ? AND substr(device_id, 1, ?) = ? "
            "AND NOT EXISTS (SELECT 1 FROM devices AS d WHERE d.device_id = ? || substr(devices.device_id, ?))",
            (new, new_prefix, tail, protocol, old, len(old_prefix), old_prefix, new_prefix, tail),
        ),
        (
            "UPDATE history SET device_id = ? || substr(device_id, ?) WHERE substr(device_id, 1, ?) = ? "
            "AND NOT EXISTS (SELECT 1 FROM devices AS d WHERE d.device_id = history.device_id)",
            (new_prefix, tail, len(old_prefix), old_prefix),
        ),
    ]


def make_repository(config: Config) -> RecordsRepository:
    """The repository `config.store` names: SQLite under data_dir (the default) or PostgreSQL."""
    if config.store.backend == "postgres":
        from gateway.core.pg_repository import PostgresRecordsRepository  # asyncpg: optional extra

        return PostgresRecordsRepository(config.store, config.gateway.id, config.gateway.site)
    return SQLiteRecordsRepository(config.data_dir / "state.db")


# ------------------------------------------------------------------------------------------ rollout rows
ROLLOUT_COLUMNS = (
    "rollout_id",
    "name",
    "image_id",
    "image_sha256",
    "protocol",
    "vendor_id",
    "product_id",
    "numeric_version",
    "version_string",
    "selector",
    "waves",
    "soak_s",
    "max_failures",
    "max_failure_rate",
    "wave_deadline_s",
    "status",
    "status_reason",
    "current_wave",
    "wave_opened_at",
    "wave_completed_at",
    "created_at",
    "updated_at",
)


def rollout_row(r: Rollout) -> tuple[Any, ...]:
    d = {c: getattr(r, c) for c in ROLLOUT_COLUMNS}
    d["selector"] = json.dumps(r.selector.model_dump(exclude_none=True), sort_keys=True)
    d["waves"] = json.dumps([str(w) for w in r.waves])
    d["status"] = r.status.value
    return tuple(d[c] for c in ROLLOUT_COLUMNS)


def rollout_from_row(row: Sequence[Any]) -> Rollout:
    d = dict(zip(ROLLOUT_COLUMNS, row, strict=True))
    d["selector"] = PolicySelector.model_validate(json.loads(d["selector"]))
    d["waves"] = parse_waves(json.loads(d["waves"]))
    d["status"] = RolloutStatus(d["status"])
    return Rollout(**d)


_INSERT_ROLLOUT = (
    f"INSERT INTO rollouts ({', '.join(ROLLOUT_COLUMNS)}) VALUES ({', '.join('?' for _ in ROLLOUT_COLUMNS)})"
)
_SELECT_ROLLOUTS = f"SELECT {', '.join(ROLLOUT_COLUMNS)} FROM rollouts ORDER BY created_at, rollout_id"
_INSERT_EVENT = "INSERT INTO rollout_events (rollout_id, at, event, wave, reason) VALUES (?, ?, ?, ?, ?)"
