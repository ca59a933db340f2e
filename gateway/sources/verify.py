"""Verify a downloaded file against its `SourceEntry`, field by field; only a file that passes enters the store.

Order: size (of the file, or of the image inside a vendor container when the index says so), the source's checksum
(any hashlib algorithm the index names: sha256, sha512, sha3_256, ...), the container (IKEA's signed container by
zigpy's own block-hash validator), then the OTA header parsed by gateway.formats against the entry: manufacturer /
vendor, image type / product, version, hardware range (Zigbee), applicable range and version string (Matter).
The first mismatch raises `VerificationError(entry, field, message)`.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import zigpy.ota.providers as zp

from gateway.formats import MatterOtaImage, OtaFormatError, ZigbeeOtaImage, parse_ota_image
from gateway.formats.zigbee_ota import unwrap_zigbee_container
from gateway.sources.model import SourceEntry, VerificationError

__all__ = ["Verified", "verify_download"]


@dataclass(frozen=True)
class Verified:
    data: bytes  # what devices are sent (the inner image of a vendor container)
    image: MatterOtaImage | ZigbeeOtaImage
    container: str | None


def _expect(entry: SourceEntry, name: str, got: Any, want: Any, fmt: str = "{}") -> None:
    if want is not None and got != want:
        raise VerificationError(
            entry, name, f"the file says {fmt.format(got)}, the index says {fmt.format(want)}"
        )


async def verify_download(entry: SourceEntry, data: bytes) -> Verified:
    if entry.size is not None and entry.size_of == "file" and len(data) != entry.size:
        raise VerificationError(entry, "size", f"downloaded {len(data)} bytes, the index says {entry.size}")
    if entry.checksum is not None and entry.checksum_type is not None:
        try:
            hasher = hashlib.new(entry.checksum_type)
        except ValueError:
            raise VerificationError(
                entry, "checksum_type", f"unknown hash algorithm {entry.checksum_type!r}"
            ) from None
        await asyncio.to_thread(hasher.update, data)
        if hasher.hexdigest() != entry.checksum:
            raise VerificationError(
                entry,
                entry.checksum_type,
                f"checksum of the download is {hasher.hexdigest()}, the index says {entry.checksum}",
            )
    if entry.container == "ikea-signed":
        meta = zp.SignedIkeaRemoteOtaImageMetadata(
            file_version=entry.version,
            manufacturer_id=entry.vendor_id,
            image_type=entry.product_id,
            file_size=entry.size,
            url=entry.url,
        )
        try:
            await meta._validate(data)
        except ValueError as exc:
            raise VerificationError(entry, "container", f"IKEA signed container: {exc}") from None
    try:
        inner, container = unwrap_zigbee_container(data) if entry.protocol == "zigbee" else (data, None)
        if entry.size is not None and entry.size_of == "image" and len(inner) != entry.size:
            raise VerificationError(
                entry, "size", f"the contained image is {len(inner)} bytes, the index says {entry.size}"
            )
        image = await asyncio.to_thread(parse_ota_image, inner)
    except OtaFormatError as exc:
        raise VerificationError(entry, "file", f"not a valid OTA file: {exc}") from None
    if isinstance(image, ZigbeeOtaImage):
        if entry.protocol != "zigbee":
            raise VerificationError(
                entry, "protocol", "the file is a Zigbee OTA file, the index lists Matter"
            )
        h = image.header
        _expect(entry, "manufacturer", h.manufacturer_code, entry.vendor_id, "0x{:04X}")
        _expect(entry, "image_type", h.image_type, entry.product_id, "0x{:04X}")
        _expect(entry, "version", h.file_version, entry.version, "0x{:08X}")
        if h.min_hardware_version is not None:
            _expect(entry, "min_hardware_version", h.min_hardware_version, entry.min_hw)
            _expect(entry, "max_hardware_version", h.max_hardware_version, entry.max_hw)
    else:
        if entry.protocol != "matter":
            raise VerificationError(
                entry, "protocol", "the file is a Matter OTA file, the index lists Zigbee"
            )
        m = image.header
        _expect(entry, "vendor_id", m.vendor_id, entry.vendor_id, "0x{:04X}")
        _expect(entry, "product_id", m.product_id, entry.product_id, "0x{:04X}")
        _expect(entry, "version", m.software_version, entry.version)
        _expect(entry, "version_string", m.software_version_string, entry.version_string, "{!r}")
        if m.min_applicable_version is not None:
            _expect(entry, "min_applicable", m.min_applicable_version, entry.min_applicable)
        if m.max_applicable_version is not None:
            _expect(entry, "max_applicable", m.max_applicable_version, entry.max_applicable)
    return Verified(inner, image, container)
