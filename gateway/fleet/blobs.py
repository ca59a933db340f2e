"""Image blobs shared by a fleet: a content-addressed blob store in PostgreSQL, and each gateway's verified cache.

`SharedBlobs` is the seam: what a fleet needs of a shared blob store (publish a local blob, tell whether one is
there, fetch one into a local `BlobStore`). `PostgresBlobs` implements it on the fleet database; an
S3-compatible implementation would go behind the same protocol (none is shipped: it could not be tested here
against a real server).

Blobs travel in chunks (`CHUNK_SIZE`, 256 KiB): publishing reads the local file chunk by chunk and inserts each
chunk as it goes; fetching reads one chunk at a time through a server-side cursor and writes it to a temp file
of the local store. Neither side holds a whole image in memory. Integrity: a published blob's chunks are hashed
on the way in and its `fleet_blobs` row is inserted (same transaction) only if the digest matches the name; a
fetched blob is hashed on the way out and committed into the local cache only if its digest matches - a
mismatch (corrupted rows, a tampering database) raises `CorruptBlobError` and nothing is cached. The local
store verifies again before serving (gateway/store/blobs.py), so a blob whose digest does not match is never
served.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import TYPE_CHECKING, Protocol

from gateway.store.blobs import BlobStore, is_sha256
from gateway.store.errors import CorruptBlobError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["CHUNK_SIZE", "PostgresBlobs", "SharedBlobs", "ensure_cached"]

CHUNK_SIZE = 256 * 1024


class SharedBlobs(Protocol):
    """A fleet-wide content-addressed blob store (PostgreSQL here; the seam for an S3-compatible one)."""

    async def has(self, sha256: str) -> bool: ...

    async def publish(self, local: BlobStore, sha256: str) -> bool:
        """Upload a local blob; False when it was already there."""
        ...

    async def fetch(self, sha256: str, local: BlobStore) -> None:
        """Download into `local`, verified; CorruptBlobError (nothing cached) on a digest mismatch."""
        ...


class PostgresBlobs:
    """`SharedBlobs` in the fleet database (tables fleet_blobs, fleet_blob_chunks)."""

    def __init__(self, pool: asyncpg.Pool, chunk_size: int = CHUNK_SIZE) -> None:
        self.pool, self.chunk_size = pool, chunk_size

    async def has(self, sha256: str) -> bool:
        return bool(await self.pool.fetchval("SELECT 1 FROM fleet_blobs WHERE sha256 = $1", sha256))

    async def publish(self, local: BlobStore, sha256: str) -> bool:
        if not is_sha256(sha256):
            raise ValueError(f"blob name {sha256!r}: expected 64 lower-case hex digits")
        if await self.has(sha256):
            return False
        path = local.path_for(sha256)
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            digest = hashlib.sha256()
            async with self.pool.acquire() as conn, conn.transaction():
                # concurrent publishers of one blob: the second waits here, then finds it present
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", sha256)
                if await conn.fetchval("SELECT 1 FROM fleet_blobs WHERE sha256 = $1", sha256):
                    return False
                await conn.execute("DELETE FROM fleet_blob_chunks WHERE sha256 = $1", sha256)  # debris
                seq, offset = 0, 0
                while offset < size or seq == 0:
                    chunk = await asyncio.to_thread(os.pread, fd, self.chunk_size, offset)
                    if not chunk and offset < size:
                        raise CorruptBlobError(sha256, str(path), "file shrank while publishing")
                    digest.update(chunk)
                    await conn.execute(
                        "INSERT INTO fleet_blob_chunks (sha256, seq, data) VALUES ($1, $2, $3)",
                        sha256,
                        seq,
                        chunk,
                    )
                    seq, offset = seq + 1, offset + len(chunk)
                    if not chunk:
                        break
                if digest.hexdigest() != sha256:
                    raise CorruptBlobError(
                        sha256, str(path), "local content does not match its name; not published"
                    )
                await conn.execute(
                    "INSERT INTO fleet_blobs (sha256, size, chunk_size, chunks, created_at) "
                    "VALUES ($1, $2, $3, $4, clock_timestamp())",
                    sha256,
                    size,
                    self.chunk_size,
                    seq,
                )
            return True
        finally:
            os.close(fd)

    async def fetch(self, sha256: str, local: BlobStore) -> None:
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            meta = await conn.fetchrow("SELECT size, chunks FROM fleet_blobs WHERE sha256 = $1", sha256)
            if meta is None:
                raise FileNotFoundError(f"blob {sha256}: not in the fleet blob store")
            writer = local.writer()
            try:
                expected_seq = 0
                cursor = conn.cursor(
                    "SELECT seq, data FROM fleet_blob_chunks WHERE sha256 = $1 ORDER BY seq",
                    sha256,
                    prefetch=1,
                )
                async for row in cursor:
                    if row["seq"] != expected_seq:
                        raise CorruptBlobError(sha256, "fleet_blob_chunks", f"chunk {expected_seq} missing")
                    await asyncio.to_thread(writer.write, row["data"])
                    expected_seq += 1
                got = await asyncio.to_thread(writer.finish)
                if got != sha256 or writer.size != meta["size"] or expected_seq != meta["chunks"]:
                    raise CorruptBlobError(
                        sha256,
                        "fleet_blob_chunks",
                        f"fetched content has sha256 {got} ({writer.size} bytes, {expected_seq} chunks); not cached",
                    )
                await asyncio.to_thread(writer.commit)
            except BaseException:
                writer.abort()
                raise


async def ensure_cached(shared: SharedBlobs, local: BlobStore, sha256: str) -> bool:
    """Make the blob present and verified in the local cache; True when it had to be fetched."""
    if local.exists(sha256) and await asyncio.to_thread(local.check, sha256):
        return False
    await shared.fetch(sha256, local)
    return True
