"""Content-addressed blob files: atomic writes, verified shared random-access readers.

Layout under the store root (`<data_dir>/blobs`):

    <sha[:2]>/<sha>     one immutable, read-only file per distinct content, named by its SHA-256
    tmp/                 files being written; anything here at start-up is debris from a crash and is removed

A write goes to a temp file in `tmp/` (the same filesystem as the final place, so the rename is atomic),
hashed while written, fsynced, renamed into place, then the shard directory is fsynced, so after a crash a
blob either exists complete under its name or not at all.

Readers: every transfer of one blob shares a single read-only fd (refcounted; closed with its last reader) and
reads with `os.pread`, so there is no per-transfer copy and no shared file position. Before a blob's first
read, and again whenever its inode, size or mtime change, its SHA-256 is recomputed; a blob whose content no
longer matches its name raises `CorruptBlobError` and is never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from gateway.store.errors import CorruptBlobError

__all__ = ["BlobReader", "BlobStore", "BlobWriter", "is_sha256"]

_SHA_RE = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20


def is_sha256(text: str) -> bool:
    """True for exactly 64 lower-case hex digits (the only names a blob can have)."""
    return _SHA_RE.fullmatch(text) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_fd(fd: int, size: int) -> str:
    h = hashlib.sha256()
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(_HASH_CHUNK, size - offset), offset)
        if not chunk:
            break
        h.update(chunk)
        offset += len(chunk)
    return h.hexdigest()


_StatKey = tuple[int, int, int, int]  # (st_dev, st_ino, st_size, st_mtime_ns)


def _key(st: os.stat_result) -> _StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class BlobWriter:
    """One blob being written: `write` chunks (hashed on the way), then `finish`, then `commit` or `abort`.

    Nothing is visible under a blob name until `commit`; `abort` (or any failure) removes the temp file.
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        fd, name = tempfile.mkstemp(dir=store.tmp_dir, prefix="blob-", suffix=".part")
        self._fd: int | None = fd
        self._fd_lock = threading.Lock()
        self.temp_path = Path(name)
        self._hash = hashlib.sha256()
        self.size = 0
        self.sha256: str | None = None

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._fd is None or self.sha256 is not None:
            raise ValueError("blob writer is closed")
        view = memoryview(chunk)
        self._hash.update(view)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.size += len(chunk)

    def finish(self) -> str:
        """Flush to disk and return the SHA-256; the content is then final (still in the temp file)."""
        if self._fd is None:
            raise ValueError("blob writer is closed")
        if self.sha256 is None:
            os.fchmod(self._fd, 0o444)
            os.fsync(self._fd)
            self.sha256 = self._hash.hexdigest()
        return self.sha256

    def read_all(self) -> bytes:
        """The finished content (for validation before commit)."""
        if self._fd is None or self.sha256 is None:
            raise ValueError("blob writer not finished")
        return os.pread(self._fd, self.size, 0)

    def commit(self) -> Path:
        """Move the finished temp file to its content address; returns the blob path.

        If a blob of that name already exists and verifies, the temp file is dropped; a corrupt one is replaced.
        """
        sha = self.finish()
        final = self._store.path_for(sha)
        shard_new = not final.parent.exists()
        final.parent.mkdir(mode=0o700, exist_ok=True)
        if shard_new:
            _fsync_dir(self._store.root)
        if final.exists() and self._store.check(sha):
            self.abort()
            return final
        os.replace(self.temp_path, final)
        _fsync_dir(final.parent)
        self._close_fd()
        self._store._note_verified(sha, final)
        return final

    def abort(self) -> None:
        """Drop the temp file (idempotent)."""
        self._close_fd()
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()

    def _close_fd(self) -> None:
        # A cancelled import may abort while its commit still runs in a worker thread: close exactly once.
        with self._fd_lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


@dataclass(eq=False)
class _SharedFd:
    sha256: str
    fd: int
    size: int
    key: _StatKey
    refs: int = 0


class BlobReader:
    """Random access to one verified blob. Cheap to open: all readers of a blob share one fd.

    Satisfies `gateway.core.interface.ImageReader` (`size`, `read`). Close it (or use `with`) when done.
    """

    def __init__(self, store: BlobStore, shared: _SharedFd) -> None:
        self._store = store
        self._shared: _SharedFd | None = shared
        self.sha256 = shared.sha256
        self.size = shared.size

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end). Raises ValueError outside the image."""
        shared = self._shared
        if shared is None or shared.fd < 0:
            raise ValueError("blob reader is closed")
        if offset < 0 or length < 0 or offset > self.size:
            raise ValueError(
                f"read of {length} bytes at offset {offset} is outside the image (size {self.size})"
            )
        want = min(length, self.size - offset)
        parts: list[bytes] = []
        got = 0
        while got < want:
            chunk = os.pread(shared.fd, want - got, offset + got)
            if not chunk:
                # The immutable file shrank under us: never serve what is left.
                raise CorruptBlobError(self.sha256, str(self._store.path_for(self.sha256)), "file truncated")
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @property
    def closed(self) -> bool:
        return self._shared is None

    @property
    def identity(self) -> object:
        """The verified file this reader reads (device, inode, size, mtime): equal for readers of the same file."""
        return self._shared.key if self._shared is not None else None

    def close(self) -> None:
        if self._shared is not None:
            self._store._release(self._shared)
            self._shared = None

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class BlobStore:
    """The blob directory: writers, verified shared readers, removal and crash-debris cleanup."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self._lock = threading.Lock()
        self._open: dict[str, _SharedFd] = {}
        self._verified: dict[str, _StatKey] = {}

    # ---------------------------------------------------------------------------------------- layout
    def prepare(self) -> int:
        """Create the directories and remove temp files left by a crash; returns how many were removed."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.tmp_dir.mkdir(mode=0o700, exist_ok=True)
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            if entry.is_file(follow_symlinks=False) or entry.is_symlink():
                os.unlink(entry.path)
                removed += 1
        return removed

    def path_for(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def iter_shas(self) -> Iterator[str]:
        """Names of all blobs on disk (files in shard directories that look like a sha256)."""
        for shard in os.scandir(self.root):
            if not shard.is_dir(follow_symlinks=False) or len(shard.name) != 2:
                continue
            for entry in os.scandir(shard.path):
                if is_sha256(entry.name) and entry.name[:2] == shard.name:
                    yield entry.name

    # ---------------------------------------------------------------------------------------- writing
    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def put(self, data: bytes) -> str:
        """Store `data` atomically; returns its sha256."""
        w = self.writer()
        try:
            w.write(data)
            w.commit()
        except BaseException:
            w.abort()
            raise
        assert w.sha256 is not None
        return w.sha256

    def remove(self, sha256: str) -> bool:
        """Delete a blob (open readers keep working on their fd); True if it existed."""
        path = self.path_for(sha256)
        with self._lock:
            self._verified.pop(sha256, None)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(path.parent)
        return True

    # ---------------------------------------------------------------------------------------- verification
    def check(self, sha256: str) -> bool:
        """Recompute a blob's digest now: True if present and matching its name."""
        path = self.path_for(sha256)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            st = os.fstat(fd)
            ok = _hash_fd(fd, st.st_size) == sha256
        finally:
            os.close(fd)
        with self._lock:
            if ok:
                self._verified[sha256] = _key(st)
            else:
                self._verified.pop(sha256, None)
        return ok

    def _note_verified(self, sha256: str, path: Path) -> None:
        st = os.stat(path)
        with self._lock:
            self._verified[sha256] = _key(st)

    # ---------------------------------------------------------------------------------------- reading
    def open_reader(self, sha256: str) -> BlobReader:
        """A reader on the blob, sharing the fd of other open readers when the file is unchanged.

        Raises CorruptBlobError when the blob is missing or its content does not hash to its name.
        """
        path = self.path_for(sha256)
        with self._lock:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise CorruptBlobError(sha256, str(path), "blob file missing") from None
            shared = self._open.get(sha256)
            if shared is not None and shared.key == _key(st):
                shared.refs += 1
                return BlobReader(self, shared)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                key = _key(os.fstat(fd))
                if self._verified.get(sha256) != key:
                    actual = _hash_fd(fd, key[2])
                    if actual != sha256:
                        self._verified.pop(sha256, None)
                        raise CorruptBlobError(
                            sha256, str(path), f"content hashes to {actual[:16]}, not to its name"
                        )
                    self._verified[sha256] = key
            except BaseException:
                os.close(fd)
                raise
            # Readers of an older version of the file keep their own fd until they close.
            shared = _SharedFd(sha256=sha256, fd=fd, size=key[2], key=key, refs=1)
            self._open[sha256] = shared
            return BlobReader(self, shared)

    def open_fd_count(self) -> int:
        """How many shared fds are open (for tests and metrics)."""
        with self._lock:
            return len(self._open)

    def _release(self, shared: _SharedFd) -> None:
        with self._lock:
            shared.refs -= 1
            if shared.refs > 0:
                return
            if self._open.get(shared.sha256) is shared:
                del self._open[shared.sha256]
            if shared.fd >= 0:
                os.close(shared.fd)
                shared.fd = -1

    def close_all(self) -> None:
        """Close every shared fd (at shutdown); readers still open become unusable."""
        with self._lock:
            for shared in self._open.values():
                if shared.fd >= 0:
                    os.close(shared.fd)
                    shared.fd = -1
            self._open.clear()
