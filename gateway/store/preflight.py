"""Pre-flight check of a stored image against its catalog entry, run whenever a reader is opened for a transfer.

The blob store proves the file is the one imported (SHA-256); this module proves it is still fit to send:
a Zigbee payload passes its payload check again (zigpy's EBL/GBL validators, `gateway.formats.payload_check`),
and a Matter header agrees with the catalog entry that decided who gets it (payload size, vendor/product,
version number and string, applicable range). A problem is named precisely; the caller refuses the image.
"""

from __future__ import annotations

from gateway.formats import OtaFormatError, parse_matter_prefix, parse_zigbee_image
from gateway.formats.payload_check import check_payload
from gateway.store.model import CatalogEntry

__all__ = ["content_problem", "matter_mismatch"]


def content_problem(entry: CatalogEntry, data: bytes) -> tuple[str, bool] | None:
    """(problem, entry_only) when `data` (the whole stored file) must not be sent for `entry`, else None.
    `entry_only` is True when the file is sound and only this catalog entry disagrees with it."""
    if entry.protocol == "matter":
        problem = matter_mismatch(entry, data)
        return (problem, True) if problem is not None else None
    try:
        verdict = check_payload(data, parse_zigbee_image(data))
    except OtaFormatError as exc:
        return f"stored file no longer parses: {exc}", False
    if verdict.status == "invalid":
        at = f" (sub-element data at byte {verdict.offset})" if verdict.offset is not None else ""
        return f"invalid payload: {verdict.reason}{at}", False
    return None


def matter_mismatch(entry: CatalogEntry, data: bytes) -> str | None:
    """What in a Matter image's header disagrees with its catalog entry (None: they agree). The catalog decides
    who gets an image; the header is what the device checks, so a disagreement must never reach a device."""
    try:
        image = parse_matter_prefix(data)
    except OtaFormatError as exc:
        return f"header no longer parses: {exc}"
    h = image.header
    problems: list[str] = []
    if image.total_size != len(data) or h.payload_size != len(data) - image.payload_offset:
        problems.append(
            f"header declares a {h.payload_size}-byte payload, the stored file holds "
            f"{len(data) - image.payload_offset}"
        )
    if entry.size != len(data):
        problems.append(f"catalog size {entry.size} but the file has {len(data)} bytes")
    if (h.vendor_id, h.product_id) != (entry.vendor_id, entry.product_id):
        problems.append(
            f"header is for {h.vendor_id:04X}:{h.product_id:04X}, catalog says "
            f"{entry.vendor_id:04X}:{entry.product_id:04X}"
        )
    if h.software_version != entry.numeric_version or h.software_version_string != entry.version_string:
        problems.append(
            f"header version {h.software_version_string!r} ({h.software_version}), catalog "
            f"{entry.version_string!r} ({entry.numeric_version})"
        )
    # a list may narrow an image without bounds (importers.py), never contradict bounds the header has
    for name, header_v, entry_v in (
        ("MinApplicableSoftwareVersion", h.min_applicable_version, entry.min_applicable),
        ("MaxApplicableSoftwareVersion", h.max_applicable_version, entry.max_applicable),
    ):
        if header_v is not None and header_v != entry_v:
            problems.append(f"header {name} {header_v}, catalog {entry_v}")
    return "; ".join(problems) or None
