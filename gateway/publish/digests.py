"""The checksums each consuming client verifies, computed once per blob and cached on disk.

Zigbee2MQTT/zigbee-herdsman check SHA-512 (hex), zigpy's own provider format requires "sha3-256:<hex>", and
python-matter-server compares base64(SHA-256) with DCL's otaChecksumType 1. Blobs are content-addressed and
immutable, so a digest keyed by the blob's SHA-256 never goes stale; the cache file
(`<data_dir>/publish-digests.json`, owner-only) keeps index generation from re-hashing 5,000 files per request.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

CACHE_FILE = "publish-digests.json"
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Digests:
    sha512_hex: str
    sha3_256_hex: str
    sha256_b64: str


def compute(path: Path) -> Digests:
    """Hash one file with the three algorithms in a single read."""
    h512, h3, h256 = hashlib.sha512(), hashlib.sha3_256(), hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h512.update(chunk)
            h3.update(chunk)
            h256.update(chunk)
    return Digests(h512.hexdigest(), h3.hexdigest(), base64.b64encode(h256.digest()).decode("ascii"))


class DigestCache:
    """sha256 -> Digests, in memory and in an owner-only JSON file next to the catalog."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / CACHE_FILE
        self._lock = threading.Lock()
        self._mem: dict[str, Digests] = {}
        self._dirty = False
        try:
            raw = json.loads(self.path.read_bytes())
            self._mem = {k: Digests(*v) for k, v in raw.items() if isinstance(v, list) and len(v) == 3}
        except (OSError, ValueError, TypeError):
            self._mem = {}  # absent or unreadable: recomputed on demand, rewritten on the next flush

    def get(self, sha256: str, blob_path: Path) -> Digests:
        with self._lock:
            hit = self._mem.get(sha256)
        if hit is not None:
            return hit
        d = compute(blob_path)
        with self._lock:
            self._mem[sha256] = d
            self._dirty = True
        return d

    def flush(self) -> None:
        """Write the cache if it grew (atomic replace, mode 0600)."""
        with self._lock:
            if not self._dirty:
                return
            doc = {k: [d.sha512_hex, d.sha3_256_hex, d.sha256_b64] for k, d in self._mem.items()}
            self._dirty = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".publish-digests.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
