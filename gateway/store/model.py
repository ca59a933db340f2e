"""The catalog's data model: one `CatalogEntry` per stored image, and what selection needs of a device.

`CatalogEntry` carries the neutral package manifest of reference 003 (package id ... sha256) plus the
protocol fields the adapters and selection need. It is shared by the store, the core and the API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

ProtocolName = Literal["matter", "zigbee"]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    # --- identity -------------------------------------------------------------------------------
    image_id: str  # short id for CLI/API: sha256[:16], or a variant id (see gateway/store/catalog.py)
    sha256: str  # 64 hex chars: the blob's content address
    # --- neutral package manifest (reference 003) ------------------------------------------------
    package_id: str  # see gateway/store/catalog.py docstring for the scheme
    bucket: str  # "matter" or "zigbee" (protocol bucket)
    file_name: str
    manifest_version: str  # "1"
    name: str
    version: str  # human version string
    description: str | None
    size: int  # bytes of the whole OTA file
    license: str | None
    license_url: str | None
    copyright: str | None
    owner: str | None  # vendor / manufacturer name where known
    packager: str  # "otagw" or the importer that brought it
    release_date: str | None  # ISO 8601
    content_type: str  # MIME type
    # --- protocol fields -------------------------------------------------------------------------
    protocol: ProtocolName
    vendor_id: int  # Matter VendorID or Zigbee manufacturer code
    product_id: int  # Matter ProductID or Zigbee image type
    numeric_version: int  # Matter SoftwareVersion or Zigbee file version
    version_string: str
    min_applicable: int | None = None  # Matter MinApplicableSoftwareVersion / z2m minFileVersion
    max_applicable: int | None = None  # Matter MaxApplicableSoftwareVersion / z2m maxFileVersion
    min_hw: int | None = None  # Zigbee min hardware version
    max_hw: int | None = None  # Zigbee max hardware version
    destination: str | None = None  # Zigbee upgrade file destination IEEE "aa:bb:..:hh", device-specific
    digest_type: int | None = None  # Matter image digest type
    digest: str | None = None  # Matter payload digest, hex
    release_notes_url: str | None = None
    source: str = "local"  # "cli", "api", "otaImageList:<file>", "z2m:<file>", ...
    valid: bool = True
    model_ids: tuple[str, ...] = field(default_factory=tuple)  # optional model restriction (z2m modelId)
    added_at: float = 0.0
    # --- approval (gateway/store/approval.py) --------------------------------------------------
    approval: str = "available"  # "available" (not offered without a rollout) or "approved"
    approved_for: str | None = None  # JSON PolicySelector the approval is limited to; None = every device
    approved_by: str | None = None  # "cli", "api", "rollout r1a2b3c4", "policy.auto_approve_sources", ...
    approved_at: float | None = None
    # --- pre-flight payload check (gateway/formats/payload_check.py) -----------------------------
    # "valid", "invalid" (never offered), "unknown" (format without a validator: offered only where
    # policy.allow_unvalidated_payload allows) or "unchecked" (catalog rows older than the check, until the
    # store re-checks them on open; treated like "unknown")
    payload_check: str = "unchecked"
    payload_reason: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceDescriptor:
    """What version selection needs to know about one device endpoint."""

    protocol: ProtocolName
    vendor_id: int  # Matter VendorID / Zigbee manufacturer code
    product_id: int  # Matter ProductID / Zigbee image type
    current_version: int
    hardware_version: int | None = None
    ieee: str | None = None  # Zigbee IEEE "aa:bb:cc:dd:ee:ff:00:11"
    model: str | None = None
