"""The fleet's shared blob store on a real PostgreSQL server: chunked publish and fetch, verified local cache,
a tampered blob is never cached or served, and a gateway role cannot write blobs."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateway.config import StoreConfig
from gateway.core.pg_repository import PostgresRecordsRepository
from gateway.fleet.blobs import PostgresBlobs, ensure_cached
from gateway.fleet.db import connect_pool, migrate_fleet
from gateway.fleet.roles import install_row_security, provision_gateway
from gateway.store.blobs import BlobStore
from gateway.store.errors import CorruptBlobError


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await connect_pool(StoreConfig(backend="postgres", dsn=pg_dsn, tls_mode="disable"), max_size=3)
    await migrate_fleet(p)
    yield p
    await p.close()


def _store(path: Path) -> BlobStore:
    s = BlobStore(path)
    s.prepare()
    return s


async def test_publish_then_fetch_into_another_gateways_cache(pool: asyncpg.Pool, tmp_path: Path) -> None:
    data = os.urandom(3 * 256 * 1024 + 12345)  # several chunks and a partial last one
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    sha = a.put(data)
    shared = PostgresBlobs(pool, chunk_size=256 * 1024)
    results = await asyncio.gather(*(shared.publish(a, sha) for _ in range(3)))  # racing publishers
    assert sorted(results) == [False, False, True]
    assert await pool.fetchval("SELECT chunks FROM fleet_blobs WHERE sha256 = $1", sha) == 4
    assert await pool.fetchval("SELECT max(length(data)) FROM fleet_blob_chunks") == 256 * 1024
    assert await ensure_cached(shared, b, sha)
    assert b.path_for(sha).read_bytes() == data
    assert not await ensure_cached(shared, b, sha)  # verified cache hit: no fetch
    with b.open_reader(sha) as r:
        assert r.read(0, 10) == data[:10]
    empty = a.put(b"")
    assert await shared.publish(a, empty)
    assert await ensure_cached(shared, b, empty) and b.path_for(empty).read_bytes() == b""


async def test_tampered_blob_is_never_cached(pool: asyncpg.Pool, tmp_path: Path) -> None:
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    data = os.urandom(600_000)
    sha = a.put(data)
    shared = PostgresBlobs(pool, chunk_size=100_000)
    await shared.publish(a, sha)
    await pool.execute(
        "UPDATE fleet_blob_chunks SET data = overlay(data placing '\\x00'::bytea from 5) WHERE sha256 = $1 AND seq = 3",
        sha,
    )
    with pytest.raises(CorruptBlobError, match="fetched content has sha256"):
        await ensure_cached(shared, b, sha)
    assert not b.exists(sha) and list((tmp_path / "b" / "tmp").iterdir()) == []
    await pool.execute("DELETE FROM fleet_blob_chunks WHERE sha256 = $1 AND seq = 2", sha)
    with pytest.raises(CorruptBlobError, match="chunk 2 missing"):
        await shared.fetch(sha, b)
    with pytest.raises(FileNotFoundError):
        await shared.fetch(hashlib.sha256(b"nope").hexdigest(), b)


async def test_a_corrupt_local_cache_entry_is_refetched(pool: asyncpg.Pool, tmp_path: Path) -> None:
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    data = os.urandom(300_000)
    sha = a.put(data)
    shared = PostgresBlobs(pool)
    await shared.publish(a, sha)
    await ensure_cached(shared, b, sha)
    p = b.path_for(sha)
    os.chmod(p, 0o644)
    p.write_bytes(b"x" + data[1:])  # bit rot in the cache
    assert await ensure_cached(shared, b, sha)
    assert p.read_bytes() == data


async def test_publishing_a_file_that_does_not_match_its_name_is_refused(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    a = _store(tmp_path / "a")
    sha = a.put(b"hello")
    p = a.path_for(sha)
    os.chmod(p, 0o644)
    p.write_bytes(b"jello")
    with pytest.raises(CorruptBlobError, match="does not match its name"):
        await PostgresBlobs(pool).publish(a, sha)
    assert await pool.fetchval("SELECT count(*) FROM fleet_blob_chunks") == 0  # rolled back


async def test_gateway_role_reads_but_cannot_write_blobs(
    pool: asyncpg.Pool, pg_dsn: str, tmp_path: Path
) -> None:
    repo = PostgresRecordsRepository(StoreConfig(backend="postgres", dsn=pg_dsn, tls_mode="disable"))
    await repo.open()
    await repo.close()
    a, b = _store(tmp_path / "a"), _store(tmp_path / "b")
    sha = a.put(b"firmware" * 1000)
    await PostgresBlobs(pool).publish(a, sha)
    async with pool.acquire() as conn:
        await install_row_security(conn)
        role = await provision_gateway(conn, "gw-blob", "west", "pw-blob")
    gw_dsn = f"postgresql://{role}:pw-blob@{pg_dsn.split('@', 1)[1]}"
    gw_pool = await connect_pool(StoreConfig(backend="postgres", dsn=gw_dsn, tls_mode="disable"), max_size=1)
    try:
        await ensure_cached(PostgresBlobs(gw_pool), b, sha)
        assert b.path_for(sha).read_bytes() == b"firmware" * 1000
        other = a.put(b"malware")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await PostgresBlobs(gw_pool).publish(a, other)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await gw_pool.execute("UPDATE fleet_blob_chunks SET data = 'x'")
    finally:
        await gw_pool.close()
