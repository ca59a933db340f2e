"""Shared helpers for the image-store tests: generated OTA files and hand-made catalog entries."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.formats import build_matter_image, build_zigbee_image
from gateway.store.catalog import make_image_id, make_package_id
from gateway.store.model import CatalogEntry

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "zigbee"


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 131 + seed * 7 + 1) & 0xFF for i in range(n))


def matter_image(
    vid: int = 0xFFF1, pid: int = 0x8001, version: int = 1, vs: str | None = None, size: int = 2000, **kw: Any
) -> bytes:
    return build_matter_image(
        payload(size, version),
        vendor_id=vid,
        product_id=pid,
        software_version=version,
        software_version_string=vs if vs is not None else f"1.0.{version}",
        **kw,
    )


def zigbee_image(
    mfr: int = 0x117C, itype: int = 0x2811, version: int = 0x100, size: int = 2000, **kw: Any
) -> bytes:
    return build_zigbee_image(
        payload(size, version), manufacturer_code=mfr, image_type=itype, file_version=version, **kw
    )


def entry(
    protocol: str = "matter", vendor_id: int = 0xFFF1, product_id: int = 0x8001, version: int = 1, **kw: Any
) -> CatalogEntry:
    """A catalog entry without a file behind it (for catalog and selection tests)."""
    seed = f"{protocol}/{vendor_id}/{product_id}/{version}/{sorted(kw.items())}"
    sha = hashlib.sha256(seed.encode()).hexdigest()
    image_id = make_image_id(sha)
    e = CatalogEntry(
        image_id=image_id,
        sha256=sha,
        package_id=make_package_id(protocol, vendor_id, product_id, version, kw.get("destination"), image_id),
        bucket=protocol,
        file_name=f"{protocol}-{version}.ota",
        manifest_version="1",
        name=f"test {version}",
        version=str(version),
        description=None,
        size=1000,
        license=None,
        license_url=None,
        copyright=None,
        owner=None,
        packager="test",
        release_date=None,
        content_type="application/octet-stream",
        protocol=protocol,  # type: ignore[arg-type]
        vendor_id=vendor_id,
        product_id=product_id,
        numeric_version=version,
        version_string=str(version),
    )
    return replace(e, **kw) if kw else e
