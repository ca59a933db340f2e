"""Blob store: content addressing, atomic writes, shared verified readers, corruption detection."""

from __future__ import annotations

import hashlib
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import gateway.store.blobs as blobs_mod
from gateway.store.blobs import BlobStore
from gateway.store.errors import CorruptBlobError


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    s = BlobStore(tmp_path / "blobs")
    s.prepare()
    return s


def _data(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) & 0xFF for i in range(n))


def _count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = blobs_mod._hash_fd

    def counting(fd: int, size: int) -> str:
        out = real(fd, size)
        calls.append(out)
        return out

    monkeypatch.setattr(blobs_mod, "_hash_fd", counting)
    return calls


def test_put_is_content_addressed_read_only_and_idempotent(store: BlobStore) -> None:
    data = _data(5000)
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    path = store.root / sha[:2] / sha
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.put(data) == sha
    assert list(store.iter_shas()) == [sha]
    assert list(store.tmp_dir.iterdir()) == []


def test_writer_abort_and_failed_write_leave_nothing(store: BlobStore) -> None:
    w = store.writer()
    w.write(b"partial")
    assert w.temp_path.exists()
    w.abort()
    assert not w.temp_path.exists()
    assert list(store.iter_shas()) == []
    with pytest.raises(ValueError):
        w.write(b"more")


def test_prepare_removes_crash_debris_in_tmp(store: BlobStore) -> None:
    (store.tmp_dir / "blob-x.part").write_bytes(b"half")
    (store.tmp_dir / "blob-y.part").write_bytes(b"")
    assert store.prepare() == 2
    assert list(store.tmp_dir.iterdir()) == []


def test_reader_reads_ranges_and_rejects_outside(store: BlobStore) -> None:
    data = _data(10_000)
    sha = store.put(data)
    with store.open_reader(sha) as r:
        assert r.size == 10_000
        assert r.read(0, 16) == data[:16]
        assert r.read(9_990, 100) == data[9_990:]  # short only at the end
        assert r.read(10_000, 5) == b""
        assert r.read(1234, 0) == b""
        for bad in ((-1, 4), (10_001, 1), (0, -1)):
            with pytest.raises(ValueError, match="outside the image"):
                r.read(*bad)
    assert r.closed
    with pytest.raises(ValueError, match="closed"):
        r.read(0, 1)


def test_readers_share_one_fd_refcounted(store: BlobStore) -> None:
    sha = store.put(_data(100))
    a = store.open_reader(sha)
    b = store.open_reader(sha)
    assert store.open_fd_count() == 1
    assert a._shared is b._shared
    a.close()
    a.close()  # idempotent, must not drop b's reference
    assert store.open_fd_count() == 1
    assert b.read(0, 100) == _data(100)
    b.close()
    assert store.open_fd_count() == 0


def test_concurrent_readers_have_no_shared_position(store: BlobStore) -> None:
    data = os.urandom(1 << 20)
    sha = store.put(data)
    readers = [store.open_reader(sha) for _ in range(8)]
    assert store.open_fd_count() == 1

    def transfer(i: int) -> bytes:
        r = readers[i]
        block = 1000 + i * 7
        out = bytearray()
        off = 0
        while off < r.size:
            chunk = r.read(off, block)
            out += chunk
            off += len(chunk)
        return bytes(out)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(transfer, range(8)))
    assert all(res == data for res in results)
    for r in readers:
        r.close()
    assert store.open_fd_count() == 0


def test_verified_once_then_again_after_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s1 = BlobStore(tmp_path / "blobs")
    s1.prepare()
    sha = s1.put(_data(4096))
    calls = _count_hashes(monkeypatch)
    s1.open_reader(sha).close()
    assert calls == []  # verified while written

    s2 = BlobStore(tmp_path / "blobs")  # a restart: nothing known yet
    s2.open_reader(sha).close()
    assert len(calls) == 1
    s2.open_reader(sha).close()
    assert len(calls) == 1  # unchanged file: no re-hash
    path = s2.path_for(sha)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    s2.open_reader(sha).close()
    assert len(calls) == 2  # mtime changed: verified again


def _tamper(path: Path, data: bytes) -> None:
    # File timestamps are kernel-tick coarse: move mtime explicitly so the change is visible to stat.
    before = path.stat().st_mtime_ns
    os.chmod(path, 0o644)
    path.write_bytes(data)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_corrupt_blob_is_never_served(tmp_path: Path) -> None:
    s = BlobStore(tmp_path / "blobs")
    s.prepare()
    good = _data(2048)
    sha = s.put(good)
    bad = bytearray(good)
    bad[1000] ^= 0x01  # one flipped bit, same size
    _tamper(s.path_for(sha), bytes(bad))
    with pytest.raises(CorruptBlobError, match="not to its name") as err:
        s.open_reader(sha)
    assert err.value.sha256 == sha
    assert s.open_fd_count() == 0
    assert not s.check(sha)
    # and after a restart too
    with pytest.raises(CorruptBlobError):
        BlobStore(tmp_path / "blobs").open_reader(sha)


def test_corruption_after_readers_closed_is_detected_on_next_open(store: BlobStore) -> None:
    good = _data(3000)
    sha = store.put(good)
    store.open_reader(sha).close()
    _tamper(store.path_for(sha), good[:-1] + b"\x00")
    with pytest.raises(CorruptBlobError):
        store.open_reader(sha)


def test_missing_blob(store: BlobStore) -> None:
    sha = "ab" * 32
    with pytest.raises(CorruptBlobError, match="missing"):
        store.open_reader(sha)
    with pytest.raises(ValueError):
        store.path_for("../etc/passwd")


def test_truncated_under_open_reader_raises(store: BlobStore) -> None:
    data = _data(5000)
    sha = store.put(data)
    r = store.open_reader(sha)
    os.chmod(store.path_for(sha), 0o644)
    os.truncate(store.path_for(sha), 100)
    with pytest.raises(CorruptBlobError, match="truncated"):
        r.read(4000, 100)
    r.close()


def test_remove_keeps_open_readers_working(store: BlobStore) -> None:
    data = _data(777)
    sha = store.put(data)
    r = store.open_reader(sha)
    assert store.remove(sha)
    assert not store.exists(sha)
    assert r.read(0, 777) == data
    r.close()
    assert not store.remove(sha)


def test_commit_repairs_a_corrupt_existing_blob(store: BlobStore) -> None:
    data = _data(1500)
    sha = store.put(data)
    _tamper(store.path_for(sha), b"x" * 1500)
    assert store.put(data) == sha
    assert store.path_for(sha).read_bytes() == data
    with store.open_reader(sha) as r:
        assert r.read(0, 1500) == data


def test_close_all_invalidates_readers_without_double_close(store: BlobStore) -> None:
    sha = store.put(_data(10))
    r = store.open_reader(sha)
    store.close_all()
    with pytest.raises(ValueError):
        r.read(0, 1)
    r.close()  # must not close an fd number that may have been reused
    assert store.open_fd_count() == 0
