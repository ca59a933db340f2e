"""`otagw store migrate --to postgres`: move one gateway's SQLite state (state.db) into PostgreSQL, verified.

Every table of the records schema is copied in key order, in chunks (never the whole database in memory), inside
one PostgreSQL transaction: either everything lands or nothing does. Row ids are kept (history and rollout
events are ordered by them) and the identity sequences moved past them. Then both sides are read back in the
same order and hashed value by value (type-tagged, bytes as bytes, floats by their exact bits): the migration
succeeds only if every table's digest and row count match. The target must be empty (a second gateway's
records would otherwise be mixed with or overwritten by this one's).

Image blobs are not moved: the catalog stays in data_dir (a PostgreSQL catalog is not part of this branch yet).
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import StoreConfig
from gateway.core.pg_repository import PostgresRecordsRepository
from gateway.core.records import StateDBError
from gateway.core.repository import _COLUMNS, ROLLOUT_COLUMNS, SQLiteRecordsRepository
from gateway.core.schema import SCHEMA_VERSION, qmark_to_dollar

__all__ = ["TABLES", "MigrationReport", "migrate_sqlite_to_postgres"]

CHUNK_ROWS = 1000

# table -> (columns in copy order, ordering key, identity column to move past)
TABLES: dict[str, tuple[list[str], str, str | None]] = {
    "devices": (list(_COLUMNS), "device_id", None),
    "history": (
        ["id", "device_id", "at", "old_state", "new_state", "reason", "image_id", "version", '"offset"'],
        "id",
        "id",
    ),
    "rollouts": (list(ROLLOUT_COLUMNS), "rollout_id", None),
    "rollout_events": (["id", "rollout_id", "at", "event", "wave", "reason"], "id", "id"),
}


@dataclass(frozen=True, slots=True)
class MigrationReport:
    rows: dict[str, int]
    digests: dict[str, str]


def _canonical(value: Any) -> bytes:
    """One value, type-tagged, so 1 and 1.0 and b'1' and '1' never hash alike."""
    if value is None:
        return b"N"
    if isinstance(value, bool):
        return b"I" + str(int(value)).encode()
    if isinstance(value, int):
        return b"I" + str(value).encode()
    if isinstance(value, float):
        return b"F" + struct.pack(">d", value)
    if isinstance(value, bytes | bytearray | memoryview):
        return b"B" + str(len(bytes(value))).encode() + b":" + bytes(value)
    text = str(value).encode()
    return b"T" + str(len(text)).encode() + b":" + text


def _digest(rows: Iterable[Iterable[Any]]) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    for row in rows:
        n += 1
        for v in row:
            h.update(_canonical(v))
        h.update(b"\n")
    return n, h.hexdigest()


async def _adigest(rows: AsyncIterator[Any]) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    async for row in rows:
        n += 1
        for v in row:
            h.update(_canonical(v))
        h.update(b"\n")
    return n, h.hexdigest()


def _sqlite_rows(conn: sqlite3.Connection, table: str) -> Iterator[tuple[Any, ...]]:
    cols, key, _ = TABLES[table]
    cur = conn.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {key}")
    while chunk := cur.fetchmany(CHUNK_ROWS):
        yield from chunk


async def migrate_sqlite_to_postgres(
    state_db: Path, target: StoreConfig, gateway_id: str, site: str
) -> MigrationReport:
    """Copy `state_db` into the (empty) PostgreSQL database `target` names, then verify (see docstring).

    The device records become owned by `gateway_id` at `site` (this gateway, as configured)."""
    if not state_db.is_file():
        raise StateDBError(f"{state_db}: no device state database to migrate")
    # opening through the repository upgrades an older state.db to the current schema first
    lite = SQLiteRecordsRepository(state_db)
    await lite.open()
    await lite.close()
    src = sqlite3.connect(f"file:{state_db}?mode=ro", uri=True)
    pg = PostgresRecordsRepository(target)
    await pg.open()
    try:
        version = src.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            raise StateDBError(f"{state_db}: schema version {version}, expected {SCHEMA_VERSION}")
        async with pg.pool.acquire() as conn, conn.transaction():
            for table in TABLES:
                n = await conn.fetchval(f"SELECT count(*) FROM {table}")
                if n:
                    raise StateDBError(
                        f"{pg.where}: table {table} already holds {n} rows; migrate into an empty database"
                    )
            for table, (cols, _, identity) in TABLES.items():
                owner: tuple[Any, ...] = (gateway_id, site) if table == "devices" else ()
                all_cols = [*cols, "gateway_id", "site"] if owner else cols
                insert = qmark_to_dollar(
                    f"INSERT INTO {table} ({', '.join(all_cols)}) VALUES ({', '.join('?' for _ in all_cols)})"
                )
                chunk: list[tuple[Any, ...]] = []
                for row in _sqlite_rows(src, table):
                    chunk.append((*row, *owner))
                    if len(chunk) >= CHUNK_ROWS:
                        await conn.executemany(insert, chunk)
                        chunk = []
                if chunk:
                    await conn.executemany(insert, chunk)
                if identity:
                    await conn.execute(
                        f"SELECT setval(pg_get_serial_sequence('{table}', '{identity}'), "
                        f"coalesce((SELECT max({identity}) FROM {table}), 0) + 1, false)"
                    )
        rows: dict[str, int] = {}
        digests: dict[str, str] = {}
        async with pg.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            for table, (cols, key, _) in TABLES.items():
                n_src, d_src = _digest(_sqlite_rows(src, table))
                cursor = conn.cursor(
                    f"SELECT {', '.join(cols)} FROM {table} ORDER BY {key}", prefetch=CHUNK_ROWS
                )
                n_dst, d_dst = await _adigest(cursor.__aiter__())
                if (n_src, d_src) != (n_dst, d_dst):
                    raise StateDBError(
                        f"{pg.where}: table {table} differs after migration "
                        f"({n_src} rows sha256 {d_src[:16]} in SQLite, {n_dst} rows sha256 {d_dst[:16]} in PostgreSQL)"
                    )
                rows[table], digests[table] = n_src, d_src
        return MigrationReport(rows, digests)
    finally:
        src.close()
        await pg.close()
