"""Catalog (SQLite, migrations, CRUD) and the ImageStore facade: atomic, idempotent import; removal; crashes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiosqlite
import pytest
from store_helpers import entry, matter_image, zigbee_image

from gateway.clock import ManualClock
from gateway.store.catalog import MIGRATIONS, Catalog, Migration, sql_migration
from gateway.store.errors import (
    AmbiguousRefError,
    CatalogSchemaError,
    CorruptBlobError,
    ImageNotFoundError,
    ImageRejectedError,
    ImageTooLargeError,
    InvalidFileNameError,
    StoreError,
)
from gateway.store.store import ImageStore

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- catalog
async def test_fresh_catalog_is_wal_with_migration_record(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "catalog.db")
    await cat.open()
    try:
        assert await cat.schema_version() == len(MIGRATIONS) == 3
        async with cat.db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone())[0] == "wal"  # type: ignore[index]
        async with cat.db.execute("SELECT version, name FROM schema_migrations") as cur:
            assert [tuple(r) for r in await cur.fetchall()] == [
                (1, "images table"),
                (2, "image approval"),
                (3, "payload check"),
            ]
    finally:
        await cat.close()
    assert (tmp_path / "catalog.db").stat().st_mode & 0o077 == 0


async def test_upgrade_keeps_rows(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    n = len(MIGRATIONS)
    v1 = Catalog(db)
    await v1.open()
    e = entry(version=7)
    assert await v1.insert(e)
    await v1.close()

    next_migration = sql_migration(
        n + 1, "image notes", "ALTER TABLE images ADD COLUMN notes TEXT DEFAULT 'none'"
    )
    v2 = Catalog(db, migrations=(*MIGRATIONS, next_migration))
    await v2.open()
    try:
        assert await v2.schema_version() == n + 1
        assert await v2.get(e.image_id) == e
        async with v2.db.execute("SELECT notes FROM images") as cur:
            assert [r[0] for r in await cur.fetchall()] == ["none"]
    finally:
        await v2.close()
    # Re-opening with the same list runs nothing twice.
    again = Catalog(db, migrations=(*MIGRATIONS, next_migration))
    await again.open()
    assert await again.schema_version() == n + 1
    await again.close()
    # Older code refuses a newer database instead of touching it.
    with pytest.raises(CatalogSchemaError, match=f"schema version {n + 1} is newer"):
        await Catalog(db).open()


async def test_approval_migration_keeps_existing_images_approved(tmp_path: Path) -> None:
    """A catalog written before approval existed: its images stay approved, new imports start available."""
    db = tmp_path / "catalog.db"
    v1 = Catalog(db, migrations=MIGRATIONS[:1])
    await v1.open()
    old = entry(version=7)
    row_cols = [c for c in old.__dataclass_fields__ if not c.startswith(("approv", "payload"))]
    values = {c: getattr(old, c) for c in row_cols}
    values["model_ids"] = "[]"
    values["valid"] = 1
    await v1.db.execute(
        f"INSERT INTO images ({', '.join(row_cols)}) VALUES ({', '.join('?' for _ in row_cols)})",
        tuple(values[c] for c in row_cols),
    )
    await v1.db.commit()
    await v1.close()

    cat = Catalog(db)
    await cat.open()
    try:
        migrated = await cat.get(old.image_id)
        assert migrated is not None and migrated.approval == "approved" and migrated.approved_for is None
        assert migrated.approved_by == "migration: imported before approval existed"
        new = entry(version=8)
        assert await cat.insert(new)
        got = await cat.get(new.image_id)
        assert got is not None and got.approval == "available"
        assert await cat.set_approval(new.image_id, "approved", approved_by="cli", approved_at=5.0)
        got = await cat.get(new.image_id)
        assert got is not None and (got.approval, got.approved_by, got.approved_at) == (
            "approved",
            "cli",
            5.0,
        )
        assert not await cat.set_approval("0" * 16, "approved")
    finally:
        await cat.close()


async def test_failing_migration_rolls_back_completely(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    await (c := Catalog(db)).open()
    await c.close()

    async def half_then_fail(conn: aiosqlite.Connection) -> None:
        await conn.execute("CREATE TABLE scratch (x INTEGER)")
        raise RuntimeError("migration bug")

    with pytest.raises(RuntimeError, match="migration bug"):
        await Catalog(
            db, migrations=(*MIGRATIONS, Migration(len(MIGRATIONS) + 1, "broken", half_then_fail))
        ).open()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() == (len(MIGRATIONS),)
        assert conn.execute("SELECT name FROM sqlite_master WHERE name='scratch'").fetchone() is None
    finally:
        conn.close()


def test_migrations_must_be_contiguous(tmp_path: Path) -> None:
    n = len(MIGRATIONS)
    with pytest.raises(ValueError, match=f"position {n + 1} has version {n + 2}"):
        Catalog(tmp_path / "c.db", migrations=(*MIGRATIONS, sql_migration(n + 2, "gap", "SELECT 1")))


async def test_catalog_crud_and_candidates(tmp_path: Path) -> None:
    cat = Catalog(tmp_path / "catalog.db")
    await cat.open()
    try:
        m1 = entry("matter", 0xFFF1, 0x8001, 1)
        m2 = entry("matter", 0xFFF1, 0x8001, 2, model_ids=("a", "b"), valid=False, min_applicable=1)
        other = entry("matter", 0xFFF1, 0x8002, 3)
        z_exact = entry("zigbee", 0x117C, 0x2811, 10, destination="00:12:4b:00:01:ab:cd:ef")
        z_wild = entry("zigbee", 0xFFFF, 0x2811, 11)
        z_both = entry("zigbee", 0xFFFF, 0xFFFF, 12)
        z_other = entry("zigbee", 0x1234, 0x2811, 13)
        for e in (m1, m2, other, z_exact, z_wild, z_both, z_other):
            assert await cat.insert(e)
        assert not await cat.insert(m1)  # same (sha256, variant): no-op
        assert await cat.insert(replace(m1, image_id="f" * 16, package_id="p2"), variant='{"valid":false}')

        assert await cat.get(m2.image_id) == m2
        assert await cat.get("0" * 16) is None
        assert await cat.find_prefix(m1.sha256[:10]) == [m1, replace(m1, image_id="f" * 16, package_id="p2")]
        assert {e.image_id for e in await cat.candidates("matter", 0xFFF1, 0x8001)} == {
            m1.image_id,
            m2.image_id,
            "f" * 16,
        }
        assert {e.image_id for e in await cat.candidates("zigbee", 0x117C, 0x2811)} == {
            z_exact.image_id,
            z_wild.image_id,
            z_both.image_id,
        }
        assert [e.numeric_version for e in await cat.entries("zigbee")] == [10, 13, 11, 12]
        assert len(await cat.entries()) == 8
        assert await cat.sha_refs(m1.sha256) == 2
        assert await cat.delete(m1.image_id)
        assert not await cat.delete(m1.image_id)
        assert await cat.sha_refs(m1.sha256) == 1
    finally:
        await cat.close()


# ------------------------------------------------------------------------------------------- store
@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ImageStore]:
    s = ImageStore(tmp_path / "data", clock=ManualClock(1_700_000_000.0))
    await s.open()
    yield s
    await s.close()


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


async def test_add_file_creates_complete_entry_and_is_idempotent(store: ImageStore, tmp_path: Path) -> None:
    data = matter_image(version=3, min_applicable_version=1, max_applicable_version=2)
    f = tmp_path / "fw.ota"
    f.write_bytes(data)
    res = await store.add_file(f)
    assert res.created
    e = res.entry
    sha = hashlib.sha256(data).hexdigest()
    assert (e.sha256, e.image_id, e.size, e.file_name) == (sha, sha[:16], len(data), "fw.ota")
    assert e.package_id == f"matter:fff1:8001:3:{sha[:16]}"
    assert (e.protocol, e.vendor_id, e.product_id, e.numeric_version, e.version_string) == (
        "matter",
        0xFFF1,
        0x8001,
        3,
        "1.0.3",
    )
    assert (e.min_applicable, e.max_applicable, e.digest_type, e.source, e.added_at) == (
        1,
        2,
        1,
        "cli",
        1_700_000_000.0,
    )
    assert len(e.digest or "") == 64
    with store.open_reader(e) as r:
        assert r.read(0, len(data)) == data

    again = await store.add_file(f)
    assert not again.created and again.entry == e
    same_bytes = await store.add_bytes(data, file_name="other-name.ota", source="api")
    assert not same_bytes.created and same_bytes.entry == e
    assert await store.list() == [e]
    assert _files(store.blobs.root) == [f"{sha[:2]}/{sha}"]


async def test_zigbee_entry_fields(store: ImageStore) -> None:
    data = zigbee_image(
        0x1135,
        0x0000,
        0x201000A0,
        header_string="FLS-PP3 RGBW",
        destination="00:12:4b:00:01:ab:cd:ef",
        min_hw=1,
        max_hw=3,
    )
    e = (await store.add_bytes(data, file_name="z.zigbee", source="api")).entry
    assert e.package_id == f"zigbee:1135:0000:201000a0:00124b0001abcdef:{e.sha256[:16]}"
    assert (e.version_string, e.description, e.destination, e.min_hw, e.max_hw) == (
        "0x201000A0",
        "FLS-PP3 RGBW",
        "00:12:4b:00:01:ab:cd:ef",
        1,
        3,
    )
    assert await store.entries_for("zigbee", 0x1135, 0) == [e]
    assert await store.entries_for("zigbee", 0x1135, 1) == []


async def test_invalid_image_is_rejected_with_offset_and_leaves_nothing(store: ImageStore) -> None:
    data = bytearray(matter_image())
    data[-1] ^= 0xFF  # payload no longer matches its digest
    with pytest.raises(ImageRejectedError, match=r"^bad\.ota: .*digest.* at byte \d+") as err:
        await store.add_bytes(bytes(data), file_name="bad.ota")
    assert err.value.offset is not None
    with pytest.raises(ImageRejectedError, match="neither Matter OTA"):
        await store.add_bytes(b"not an ota file at all", file_name="x.bin")
    assert await store.list() == []
    assert _files(store.blobs.root) == []


async def test_add_stream_commits_valid_upload(store: ImageStore) -> None:
    data = zigbee_image(size=300_000)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    res = await store.add_stream(chunks(), file_name="up.ota", source="api", max_size=len(data))
    assert res.created and res.entry.size == len(data)
    with store.open_reader(res.entry) as r:
        assert r.read(0, len(data)) == data


async def test_add_stream_oversize_or_broken_leaves_nothing(store: ImageStore) -> None:
    data = zigbee_image(size=10_000)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1000):
            yield data[i : i + 1000]

    with pytest.raises(
        ImageTooLargeError, match=rf"up.ota: image larger than the maximum of {len(data) - 1} bytes"
    ):
        await store.add_stream(chunks(), file_name="up.ota", source="api", max_size=len(data) - 1)
    assert _files(store.blobs.root) == []

    async def dies() -> AsyncIterator[bytes]:
        yield data[:5000]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.add_stream(dies(), file_name="up.ota", source="api", max_size=1 << 20)
    assert _files(store.blobs.root) == []
    assert await store.list() == []


@pytest.mark.parametrize("name", ["", ".", "..", "../x.ota", "a/b", "c\\d", "nul\x00", "tab\tname"])
async def test_bad_upload_file_names(store: ImageStore, name: str) -> None:
    with pytest.raises(InvalidFileNameError):
        await store.add_bytes(matter_image(), file_name=name)


async def test_extra_overrides_and_variants(store: ImageStore) -> None:
    data = zigbee_image(0x115F, 0x0101, 30)
    plain = (await store.add_bytes(data, file_name="l.ota")).entry
    a = await store.add_bytes(data, file_name="l.ota", extra={"model_ids": ["lumi.a"], "description": "A"})
    b = await store.add_bytes(data, file_name="l.ota", extra={"model_ids": ["lumi.b"]})
    a2 = await store.add_bytes(data, file_name="l.ota", extra={"model_ids": ["lumi.a"]})
    assert a.created and b.created and not a2.created
    assert a2.entry == a.entry
    assert a.entry.model_ids == ("lumi.a",) and a.entry.description == "A"
    assert len({plain.image_id, a.entry.image_id, b.entry.image_id}) == 3
    assert plain.image_id == plain.sha256[:16]
    assert a.entry.package_id.endswith(":" + a.entry.image_id)
    # One blob serves all three entries.
    assert len(_files(store.blobs.root)) == 1
    assert await store.get(plain.image_id) == plain
    with pytest.raises(AmbiguousRefError, match="matches 3 images"):
        await store.get(plain.sha256[:12])
    # Removing entries keeps the blob until the last one goes.
    await store.remove(a.entry.image_id)
    await store.remove(plain.image_id)
    assert store.blobs.exists(plain.sha256)
    removed = await store.remove(b.entry.image_id)
    assert removed == b.entry
    assert not store.blobs.exists(plain.sha256)
    assert await store.list() == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"colour": "red"}, "extra.colour: unknown key"),
        ({"valid": "yes"}, "extra.valid: expected true or false"),
        ({"min_hw": -1}, "extra.min_hw: expected a non-negative integer"),
        ({"model_ids": "lumi.a"}, "extra.model_ids: expected a list"),
        ({"name": 5}, "extra.name: expected a string"),
    ],
)
async def test_bad_extra_is_rejected(store: ImageStore, extra: dict[str, object], message: str) -> None:
    with pytest.raises(StoreError, match=message):
        await store.add_bytes(matter_image(), file_name="m.ota", extra=extra)
    assert _files(store.blobs.root) == []


async def test_get_and_remove_refs(store: ImageStore) -> None:
    e = (await store.add_bytes(matter_image(), file_name="m.ota")).entry
    assert await store.get(e.sha256[:8]) == e
    assert await store.get(e.sha256.upper()) == e
    for bad in ("abc", "zzzzzzzzzz", "../../etc"):
        with pytest.raises(ImageNotFoundError, match="at least 8 hex digits"):
            await store.get(bad)
    with pytest.raises(ImageNotFoundError, match="no image with that id"):
        await store.remove("0123456789abcdef")
    await store.remove(e.sha256[:10])
    with pytest.raises(ImageNotFoundError):
        await store.get(e.image_id)


async def test_corrupt_blob_is_detected_through_the_store(tmp_path: Path) -> None:
    data = matter_image(size=5000)
    async with ImageStore(tmp_path / "d") as s:
        e = (await s.add_bytes(data, file_name="m.ota")).entry
        path = s.blobs.path_for(e.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    async with ImageStore(tmp_path / "d") as s:
        assert not await s.verify(e)
        with pytest.raises(CorruptBlobError):
            s.open_reader(e)


async def test_open_cleans_orphans_and_temp_files(tmp_path: Path) -> None:
    async with ImageStore(tmp_path / "d") as s:
        kept = (await s.add_bytes(matter_image(version=1), file_name="a.ota")).entry
        orphan = s.blobs.put(b"left by a crash between rename and commit")
        (s.blobs.tmp_dir / "blob-1.part").write_bytes(b"half an upload")
    async with ImageStore(tmp_path / "d") as s:
        assert s.cleaned_on_open == 2
        assert not s.blobs.exists(orphan)
        assert s.blobs.exists(kept.sha256)
        assert await s.list() == [kept]


async def test_failure_at_rename_leaves_nothing(store: ImageStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        await store.add_bytes(matter_image(), file_name="m.ota")
    monkeypatch.undo()
    assert _files(store.blobs.root) == []
    assert await store.list() == []


async def test_failure_at_commit_removes_new_blob_but_keeps_shared_one(
    store: ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = zigbee_image()

    async def broken_commit(self: aiosqlite.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(aiosqlite.Connection, "commit", broken_commit)
    with pytest.raises(sqlite3.OperationalError):
        await store.add_bytes(data, file_name="z.ota")
    monkeypatch.undo()
    assert _files(store.blobs.root) == []
    assert await store.list() == []

    first = (await store.add_bytes(data, file_name="z.ota")).entry
    monkeypatch.setattr(aiosqlite.Connection, "commit", broken_commit)
    with pytest.raises(sqlite3.OperationalError):
        await store.add_bytes(data, file_name="z.ota", extra={"model_ids": ["m"]})
    monkeypatch.undo()
    assert store.blobs.exists(first.sha256)  # still referenced by the first entry
    assert await store.list() == [first]


# ------------------------------------------------------------------------------------------- hard crashes
_CRASHER = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    import aiosqlite
    import gateway.store.blobs as blobs
    from gateway.store.store import ImageStore

    data_dir, src, step = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def die(*_a, **_k):
        os._exit(77)

    def after(real):
        def wrapped(*a, **k):
            real(*a, **k)
            os._exit(77)
        return wrapped

    async def main():
        store = ImageStore(data_dir)
        await store.open()
        if step == "write":
            real_write = blobs.BlobWriter.write
            def write(self, chunk):
                real_write(self, chunk[: len(chunk) // 2])
                os._exit(77)
            blobs.BlobWriter.write = write
        elif step == "fsync-file":
            os.fsync = die
        elif step == "before-rename":
            os.replace = die
        elif step == "after-rename":
            os.replace = after(os.replace)
        elif step == "dir-fsync":  # the shard directory's fsync, right after the rename
            real_fsync_dir = blobs._fsync_dir
            blobs._fsync_dir = lambda p: die() if len(Path(p).name) == 2 else real_fsync_dir(p)
        elif step == "before-commit":
            aiosqlite.Connection.commit = lambda self: die()
        elif step == "after-commit":
            real_commit = aiosqlite.Connection.commit
            async def commit(self):
                await real_commit(self)
                os._exit(77)
            aiosqlite.Connection.commit = commit
        await store.add_file(src)
        os._exit(0)

    asyncio.run(main())
    """
)

_STEPS = [
    "write",
    "fsync-file",
    "before-rename",
    "after-rename",
    "dir-fsync",
    "before-commit",
    "after-commit",
]


@pytest.mark.parametrize("step", _STEPS)
async def test_crash_at_any_step_leaves_nothing_or_a_complete_entry(tmp_path: Path, step: str) -> None:
    data = matter_image(size=200_000)
    src = tmp_path / "fw.ota"
    src.write_bytes(data)
    data_dir = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _CRASHER, str(data_dir), str(src), step],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 77, proc.stderr.decode()

    async with ImageStore(data_dir) as s:
        entries = await s.list()
        files = _files(s.blobs.root)
        if step == "after-commit":
            assert len(entries) == 1
        if entries:
            (e,) = entries
            assert files == [f"{e.sha256[:2]}/{e.sha256}"]
            with s.open_reader(e) as r:
                assert r.read(0, r.size) == data
        else:
            assert files == []  # no temp file, no orphan blob
        # Whatever happened, importing again yields exactly one complete entry.
        res = await s.add_file(src)
        assert res.created == (not entries)
        assert await s.list() == [res.entry]


async def test_concurrent_imports_of_one_file_create_one_entry(store: ImageStore) -> None:
    data = zigbee_image(size=50_000)
    results = await asyncio.gather(*(store.add_bytes(data, file_name=f"{i}.ota") for i in range(6)))
    assert sorted(r.created for r in results) == [False] * 5 + [True]
    assert len({r.entry for r in results}) == 1
    assert len(_files(store.blobs.root)) == 1
