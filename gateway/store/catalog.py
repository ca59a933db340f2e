"""The SQLite image catalog: one row per `CatalogEntry`, versioned schema with ordered migrations.

Database: `<data_dir>/catalog.db`, WAL journal, `synchronous=FULL`, one aiosqlite connection. Every write is one
explicit transaction, so a crash leaves a row complete or absent.

Schema versioning: table `schema_migrations(version, name, applied_at)` records each applied migration.
`MIGRATIONS` is the ordered list (versions 1..N, contiguous); on open every migration newer than the recorded
version runs in its own transaction together with its `schema_migrations` row. A database recording a version
newer than this code knows raises `CatalogSchemaError` instead of being touched.

Identity (documented here because the CLI, API and core rely on it):

* **image id**: 16 lower-case hex digits. For an entry imported with no source-supplied restriction (the usual
  case) it is `sha256[:16]` of the file. Index files can list one file several times with different
  restrictions (Zigbee2MQTT lists one Lumi file per modelId); such an entry has a non-empty *variant* (canonical
  JSON of the restricting fields: model ids, applicability/hardware ranges, valid flag) and its id is
  `sha256(sha256_hex + "\\n" + variant)[:16]`. Ids are deterministic, so re-importing finds the same entry.
  `(sha256, variant)` is unique: importing the same file with the same restrictions again is a no-op.
* **package id** (reference 003 "Package ID"): `<protocol identity>:<image id>`, all hex lower-case:

      matter:<vendor id hex4>:<product id hex4>:<software version, decimal>:<image id>
          e.g. matter:fff1:8001:10:3fa2c1d09e8b7766
      zigbee:<manufacturer hex4>:<image type hex4>:<file version hex8>[:<destination IEEE, 16 hex>]:<image id>
          e.g. zigbee:117c:2811:10015c55:5be1d8d0a6f3e2c4
               zigbee:1135:0000:201000a0:00124b0001abcdef:0c77a9e4d1b25f60   (device-specific file)

  Everything before the last component names what the image *is*; the image id (which starts with the file's
  sha prefix for plain entries) tells apart different files, or different restrictions, with the same identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from gateway.store.errors import CatalogSchemaError
from gateway.store.model import CatalogEntry

__all__ = [
    "MIGRATIONS",
    "Catalog",
    "Migration",
    "make_image_id",
    "make_package_id",
    "sql_migration",
]

ZIGBEE_WILDCARD = 0xFFFF


def make_image_id(sha256: str, variant: str = "") -> str:
    """The entry's short id (see module docstring)."""
    if not variant:
        return sha256[:16]
    return hashlib.sha256(f"{sha256}\n{variant}".encode()).hexdigest()[:16]


def make_package_id(
    protocol: str,
    vendor_id: int,
    product_id: int,
    numeric_version: int,
    destination: str | None,
    image_id: str,
) -> str:
    """The reference-003 package id of an entry (see module docstring)."""
    if protocol == "matter":
        return f"matter:{vendor_id:04x}:{product_id:04x}:{numeric_version}:{image_id}"
    dest = f":{destination.replace(':', '').lower()}" if destination else ""
    return f"zigbee:{vendor_id:04x}:{product_id:04x}:{numeric_version:08x}{dest}:{image_id}"


# ------------------------------------------------------------------------------------------ migrations
@dataclass(frozen=True)
class Migration:
    """One schema step. `apply` runs inside the migration's transaction (it must not commit)."""

    version: int
    name: str
    apply: Callable[[aiosqlite.Connection], Awaitable[None]]


def sql_migration(version: int, name: str, *statements: str) -> Migration:
    """A migration made of SQL statements executed one by one (never executescript: it would commit)."""

    async def apply(db: aiosqlite.Connection) -> None:
        for stmt in statements:
            await db.execute(stmt)

    return Migration(version, name, apply)


_ENTRY_FIELDS = tuple(f.name for f in dataclasses.fields(CatalogEntry))

MIGRATIONS: tuple[Migration, ...] = (
    sql_migration(
        1,
        "images table",
        """
        CREATE TABLE images (
            image_id          TEXT PRIMARY KEY,
            sha256            TEXT NOT NULL,
            variant           TEXT NOT NULL DEFAULT '',
            package_id        TEXT NOT NULL UNIQUE,
            bucket            TEXT NOT NULL,
            file_name         TEXT NOT NULL,
            manifest_version  TEXT NOT NULL,
            name              TEXT NOT NULL,
            version           TEXT NOT NULL,
            description       TEXT,
            size              INTEGER NOT NULL,
            license           TEXT,
            license_url       TEXT,
            copyright         TEXT,
            owner             TEXT,
            packager          TEXT NOT NULL,
            release_date      TEXT,
            content_type      TEXT NOT NULL,
            protocol          TEXT NOT NULL CHECK (protocol IN ('matter', 'zigbee')),
            vendor_id         INTEGER NOT NULL,
            product_id        INTEGER NOT NULL,
            numeric_version   INTEGER NOT NULL,
            version_string    TEXT NOT NULL,
            min_applicable    INTEGER,
            max_applicable    INTEGER,
            min_hw            INTEGER,
            max_hw            INTEGER,
            destination       TEXT,
            digest_type       INTEGER,
            digest            TEXT,
            release_notes_url TEXT,
            source            TEXT NOT NULL,
            valid             INTEGER NOT NULL,
            model_ids         TEXT NOT NULL DEFAULT '[]',
            added_at          REAL NOT NULL,
            UNIQUE (sha256, variant)
        )
        """,
        "CREATE INDEX images_lookup ON images (protocol, vendor_id, product_id, numeric_version)",
        "CREATE INDEX images_sha ON images (sha256)",
    ),
    # Approval (issue 18). Rows that existed before this migration were imported when every image was offered
    # (auto_approve was the default), so they keep that behaviour: DEFAULT 'approved' fills them. New rows always
    # name their state explicitly (CatalogEntry.approval defaults to 'available').
    sql_migration(
        2,
        "image approval",
        "ALTER TABLE images ADD COLUMN approval TEXT NOT NULL DEFAULT 'approved'"
        " CHECK (approval IN ('available', 'approved'))",
        "ALTER TABLE images ADD COLUMN approved_for TEXT",
        "ALTER TABLE images ADD COLUMN approved_by TEXT",
        "ALTER TABLE images ADD COLUMN approved_at REAL",
        "UPDATE images SET approved_by = 'migration: imported before approval existed'",
    ),
    # Pre-flight payload check (issue 18). Rows imported before it are "unchecked": `ImageStore.open()` checks
    # their blobs and records the verdict (selection treats "unchecked" like "unknown" until then).
    sql_migration(
        3,
        "payload check",
        "ALTER TABLE images ADD COLUMN payload_check TEXT NOT NULL DEFAULT 'unchecked'"
        " CHECK (payload_check IN ('valid', 'invalid', 'unknown', 'unchecked'))",
        "ALTER TABLE images ADD COLUMN payload_reason TEXT",
    ),
)


def _check_migrations(migrations: Sequence[Migration]) -> None:
    for i, m in enumerate(migrations, start=1):
        if m.version != i:
            raise ValueError(
                f"migrations must be numbered 1..N in order; position {i} has version {m.version}"
            )


# ------------------------------------------------------------------------------------------ row mapping
def _to_row(entry: CatalogEntry, variant: str) -> dict[str, Any]:
    row = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    row["valid"] = 1 if entry.valid else 0
    row["model_ids"] = json.dumps(list(entry.model_ids))
    row["variant"] = variant
    return row


def _from_row(row: aiosqlite.Row) -> CatalogEntry:
    values = {name: row[name] for name in _ENTRY_FIELDS}
    values["valid"] = bool(values["valid"])
    values["model_ids"] = tuple(json.loads(values["model_ids"]))
    return CatalogEntry(**values)


_COLUMNS = (*_ENTRY_FIELDS, "variant")
_INSERT_SQL = f"INSERT INTO images ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)})"
_SELECT = f"SELECT {', '.join(_ENTRY_FIELDS)} FROM images"


class Catalog:
    """Async CRUD of catalog entries over one aiosqlite connection."""

    def __init__(self, path: Path, *, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        _check_migrations(migrations)
        self.path = Path(path)
        self._migrations = tuple(migrations)
        self._db: aiosqlite.Connection | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("catalog is not open")
        return self._db

    # ---------------------------------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        if self._db is not None:
            return
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # owner-only, like the data dir
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=5000")
            self._db = db
            await self._migrate()
        except BaseException:
            self._db = None
            await db.close()
            raise
        self.path.chmod(0o600)

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            await db.close()

    async def data_version(self) -> int:
        """Changes whenever another connection (the CLI, another process) commits to catalog.db."""
        async with self.db.execute("PRAGMA data_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def schema_version(self) -> int:
        async with self.db.execute("SELECT MAX(version) FROM schema_migrations") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    async def _migrate(self) -> None:
        db = self.db
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        current = await self.schema_version()
        latest = len(self._migrations)
        if current > latest:
            raise CatalogSchemaError(
                f"{self.path}: catalog schema version {current} is newer than this otagw supports ({latest})"
            )
        for m in self._migrations[current:]:
            await db.execute("BEGIN IMMEDIATE")
            try:
                await m.apply(db)
                await db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, time.time()),
                )
                await db.execute(f"PRAGMA user_version={m.version}")
                await db.commit()
            except BaseException:
                await db.rollback()
                raise

    # ---------------------------------------------------------------------------------------- writes
    async def insert(self, entry: CatalogEntry, variant: str = "") -> bool:
        """Add `entry` in one transaction; False (and no change) when (sha256, variant) is already there."""
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute(
                "SELECT 1 FROM images WHERE sha256 = ? AND variant = ?", (entry.sha256, variant)
            ) as cur:
                exists = await cur.fetchone() is not None
            if not exists:
                await db.execute(_INSERT_SQL, _to_row(entry, variant))
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        return not exists

    async def _update_one(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one UPDATE/DELETE in its own write transaction (rolled back on any failure); rows changed."""
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            cur = await db.execute(sql, params)
            changed = cur.rowcount
            await cur.close()
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        return changed

    async def set_approval(
        self,
        image_id: str,
        approval: str,
        *,
        approved_for: str | None = None,
        approved_by: str | None = None,
        approved_at: float | None = None,
    ) -> bool:
        """Set one entry's approval state in one transaction; False when there is no such entry."""
        changed = await self._update_one(
            "UPDATE images SET approval = ?, approved_for = ?, approved_by = ?, approved_at = ? WHERE image_id = ?",
            (approval, approved_for, approved_by, approved_at, image_id),
        )
        return changed > 0

    async def set_payload_check(self, sha256: str, status: str, reason: str | None) -> int:
        """Record the payload verdict of every entry of blob `sha256` in one transaction; returns rows changed."""
        return await self._update_one(
            "UPDATE images SET payload_check = ?, payload_reason = ? WHERE sha256 = ?",
            (status, reason, sha256),
        )

    async def unchecked_shas(self) -> list[str]:
        """Blobs with entries whose payload was never checked (imported before the check existed)."""
        async with self.db.execute(
            "SELECT DISTINCT sha256 FROM images WHERE payload_check = 'unchecked'"
        ) as cur:
            rows = await cur.fetchall()
        return [r[0] for r in rows]

    async def delete(self, image_id: str) -> bool:
        return await self._update_one("DELETE FROM images WHERE image_id = ?", (image_id,)) > 0

    async def mark_invalid(self, image_id: str) -> bool:
        """Set the entry's `valid` flag to false (its blob is corrupt); False when there is no such entry."""
        return await self._update_one("UPDATE images SET valid = 0 WHERE image_id = ?", (image_id,)) > 0

    # ---------------------------------------------------------------------------------------- reads
    async def _query(self, sql: str, params: Iterable[Any] = ()) -> list[CatalogEntry]:
        async with self.db.execute(sql, tuple(params)) as cur:
            rows = await cur.fetchall()
        return [_from_row(r) for r in rows]

    async def get(self, image_id: str) -> CatalogEntry | None:
        found = await self._query(f"{_SELECT} WHERE image_id = ?", (image_id,))
        return found[0] if found else None

    async def find_variant(self, sha256: str, variant: str) -> CatalogEntry | None:
        found = await self._query(f"{_SELECT} WHERE sha256 = ? AND variant = ?", (sha256, variant))
        return found[0] if found else None

    async def find_prefix(self, prefix: str) -> list[CatalogEntry]:
        """Entries whose image id or sha256 starts with `prefix` (lower-case hex)."""
        # GLOB with a hex-only prefix is an exact prefix match and can use the primary-key index.
        return await self._query(
            f"{_SELECT} WHERE image_id GLOB ? OR sha256 GLOB ? ORDER BY added_at, image_id",
            (prefix + "*", prefix + "*"),
        )

    async def entries(self, protocol: str | None = None) -> list[CatalogEntry]:
        order = "ORDER BY protocol, vendor_id, product_id, numeric_version, image_id"
        if protocol is None:
            return await self._query(f"{_SELECT} {order}")
        return await self._query(f"{_SELECT} WHERE protocol = ? {order}", (protocol,))

    async def candidates(self, protocol: str, vendor_id: int, product_id: int) -> list[CatalogEntry]:
        """Entries that could apply to a device with this identity (Zigbee: 0xFFFF images included)."""
        if protocol == "zigbee":
            return await self._query(
                f"{_SELECT} WHERE protocol = 'zigbee' AND vendor_id IN (?, ?) AND product_id IN (?, ?)",
                (vendor_id, ZIGBEE_WILDCARD, product_id, ZIGBEE_WILDCARD),
            )
        return await self._query(
            f"{_SELECT} WHERE protocol = ? AND vendor_id = ? AND product_id = ?",
            (protocol, vendor_id, product_id),
        )

    async def sha_refs(self, sha256: str) -> int:
        async with self.db.execute("SELECT COUNT(*) FROM images WHERE sha256 = ?", (sha256,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def all_shas(self) -> set[str]:
        async with self.db.execute("SELECT DISTINCT sha256 FROM images") as cur:
            rows = await cur.fetchall()
        return {r[0] for r in rows}
