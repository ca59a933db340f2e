"""Fixtures for the update core: a catalog double, device helpers and an UpdateCore factory on a ManualClock."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gateway.clock import ManualClock
from gateway.config import Config, parse_config
from gateway.core.interface import DeviceInfo, DeviceKey
from gateway.core.service import UpdateCore
from gateway.store.errors import ImageNotFoundError
from gateway.store.model import CatalogEntry

# 2023-11-14 22:13:20 UTC, a Tuesday
T0 = 1_700_000_000.0


def make_entry(
    protocol: str = "matter",
    vendor: int = 0xFFF1,
    product: int = 0x8001,
    version: int = 2,
    size: int = 10_000,
    **kw: Any,
) -> CatalogEntry:
    sha = hashlib.sha256(f"{protocol}{vendor}{product}{version}{kw}".encode()).hexdigest()
    base: dict[str, Any] = dict(
        image_id=sha[:16],
        sha256=sha,
        package_id=f"{protocol}:{vendor:04x}:{product:04x}:{version}:{sha[:16]}",
        bucket=protocol,
        file_name=f"fw-{version}.ota",
        manifest_version="1",
        name="fw",
        version=f"{version}.0",
        description=None,
        size=size,
        license=None,
        license_url=None,
        copyright=None,
        owner=None,
        packager="test",
        release_date=None,
        content_type="application/octet-stream",
        protocol=protocol,
        vendor_id=vendor,
        product_id=product,
        numeric_version=version,
        version_string=f"{version}.0",
    )
    base.update(kw)
    return CatalogEntry(**base)


class MemReader:
    def __init__(self, size: int) -> None:
        self.size = size
        self.closed = False
        self.data = bytes(i % 251 for i in range(size))

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset > self.size:
            raise ValueError("outside")
        return self.data[offset : offset + length]

    def close(self) -> None:
        self.closed = True


class FakeStore:
    """The three ImageStore calls the core uses, over in-memory entries."""

    def __init__(self, entries: list[CatalogEntry] | None = None) -> None:
        self.entries: dict[str, CatalogEntry] = {e.image_id: e for e in entries or []}
        self.opened = 0

    def add(self, e: CatalogEntry) -> CatalogEntry:
        self.entries[e.image_id] = e
        return e

    async def list(self, protocol: str | None = None) -> list[CatalogEntry]:
        return [e for e in self.entries.values() if protocol is None or e.protocol == protocol]

    async def get(self, ref: str) -> CatalogEntry:
        if ref in self.entries:
            return self.entries[ref]
        raise ImageNotFoundError(f"image {ref!r}: no image with that id or sha256 prefix")

    def open_reader(self, entry: CatalogEntry) -> MemReader:
        self.opened += 1
        return MemReader(entry.size)

    async def mark_invalid(self, image_id: str, reason: str) -> None:
        if image_id in self.entries:
            self.entries[image_id] = replace(self.entries[image_id], valid=False)

    async def catalog_version(self) -> int:
        return 0  # the tests change entries in this process and call core.catalog_changed()


def matter_dev(
    node: int,
    version: int = 1,
    *,
    vendor: int = 0xFFF1,
    product: int = 0x8001,
    sleepy: bool | None = False,
    fabric: str = "fabric:aa",
    **kw: Any,
) -> DeviceInfo:
    return DeviceInfo(
        DeviceKey("matter", fabric, f"{node:016X}", 0),
        vendor_id=vendor,
        product_id=product,
        current_version=version,
        current_version_string=f"{version}.0",
        sleepy=sleepy,
        **kw,
    )


def zigbee_dev(
    n: int,
    version: int = 1,
    *,
    manuf: int = 0x117C,
    itype: int = 0x2811,
    pan: str = "pan:1a2b",
    sleepy: bool | None = False,
    **kw: Any,
) -> DeviceInfo:
    ieee = ":".join(f"{b:02x}" for b in n.to_bytes(8, "big"))
    return DeviceInfo(
        DeviceKey("zigbee", pan, ieee, 1),
        vendor_id=manuf,
        product_id=itype,
        current_version=version,
        sleepy=sleepy,
        **kw,
    )


def config(tmp: Path, **policy: Any) -> Config:
    # These tests exercise policy, not approval: images are offered as soon as they are in the catalog.
    return parse_config({"data_dir": str(tmp), "policy": {"auto_approve": True, **policy}})


CoreFactory = Callable[..., Awaitable[UpdateCore]]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore([make_entry(version=2), make_entry(version=3, valid=True, size=20_000)])


@pytest.fixture
async def make_core(tmp_path: Path, clock: ManualClock, store: FakeStore) -> AsyncIterator[CoreFactory]:
    cores: list[UpdateCore] = []
    counter = iter(range(1, 10**9))

    async def factory(
        *, data_dir: Path | None = None, st: Any = None, role: str = "gateway", **policy: Any
    ) -> UpdateCore:
        cfg = config(data_dir or tmp_path, **policy)
        core = UpdateCore(
            cfg,
            st or store,
            clock,
            role=role,
            auto_sweep=False,  # type: ignore[arg-type]
            token_factory=lambda: next(counter).to_bytes(16, "big"),
        )
        await core.start()
        cores.append(core)
        return core

    yield factory
    for c in cores:
        if c._started:
            await c.stop()
