"""Render the published images in the formats the consuming controllers read. Pure: entries + digests in, JSON out.

* Zigbee2MQTT (`ota.zigbee_ota_override_index_location`) and ZHA's `type: z2m` provider: the Koenkk/zigbee-OTA
  `index.json` array (fileVersion, fileSize, manufacturerCode, imageType, sha512, url, modelId, otaHeaderString,
  minFileVersion/maxFileVersion, hardwareVersionMin/Max, releaseNotes) — zigbee-herdsman takes the first match,
  so entries come newest first.
* ZHA's `type: zigpy` provider (zigpy `RemoteZigpyProvider`): `{"firmwares": [...]}` with snake_case fields,
  `binary_url` and `checksum: "sha3-256:<hex>"` (its JSON schema allows no other algorithm).
* python-matter-server's local update directory: one `<vid>-<pid>.json` per model holding a DCL
  `{"modelVersion": {...}}` document (vid, pid, softwareVersion(String), otaUrl, otaFileSize,
  otaChecksum = base64(SHA-256), otaChecksumType 1, min/maxApplicableSoftwareVersion, ...), which its
  `load_local_updates` reads and its provider verifies after download.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from gateway.publish.digests import Digests
from gateway.store.model import CatalogEntry

DigestsOf = Callable[[CatalogEntry], Digests]
UrlOf = Callable[[CatalogEntry], str]


def image_path(entry: CatalogEntry) -> str:
    """The path below a controller's URL root that serves `entry` (the file name last: matter-server keeps it)."""
    return f"images/{entry.sha256}/{quote(entry.file_name, safe='')}"


def z2m_index(entries: Sequence[CatalogEntry], digests: DigestsOf, url: UrlOf) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in entries:
        item: dict[str, Any] = {
            "fileVersion": e.numeric_version,
            "fileSize": e.size,
            "manufacturerCode": e.vendor_id,
            "imageType": e.product_id,
            "sha512": digests(e).sha512_hex,
            "url": url(e),
        }
        if len(e.model_ids) == 1:
            item["modelId"] = e.model_ids[0]
        if e.description:
            item["otaHeaderString"] = e.description
        if e.min_applicable is not None:
            item["minFileVersion"] = e.min_applicable
        if e.max_applicable is not None:
            item["maxFileVersion"] = e.max_applicable
        if e.min_hw is not None:
            item["hardwareVersionMin"] = e.min_hw
        if e.max_hw is not None:
            item["hardwareVersionMax"] = e.max_hw
        if e.release_notes_url:
            item["releaseNotes"] = e.release_notes_url
        out.append(item)
    return out


def zigpy_index(entries: Sequence[CatalogEntry], digests: DigestsOf, url: UrlOf) -> dict[str, Any]:
    firmwares: list[dict[str, Any]] = []
    for e in entries:
        fw: dict[str, Any] = {
            "binary_url": url(e),
            "file_version": e.numeric_version,
            "file_size": e.size,
            "image_type": e.product_id,
            "manufacturer_id": e.vendor_id,
            "checksum": "sha3-256:" + digests(e).sha3_256_hex,
        }
        if e.model_ids:
            fw["model_names"] = list(e.model_ids)
        if e.min_applicable is not None:
            fw["min_current_file_version"] = e.min_applicable
        if e.max_applicable is not None:
            fw["max_current_file_version"] = e.max_applicable
        if e.min_hw is not None:
            fw["min_hardware_version"] = e.min_hw
        if e.max_hw is not None:
            fw["max_hardware_version"] = e.max_hw
        if e.release_notes_url:
            fw["release_url"] = e.release_notes_url
        firmwares.append(fw)
    return {"firmwares": firmwares}


def matter_file_name(entry: CatalogEntry) -> str:
    return f"{entry.vendor_id:04x}-{entry.product_id:04x}.json"


def matter_model_version(entry: CatalogEntry, digests: DigestsOf, url: UrlOf) -> dict[str, Any]:
    """One DCL-shaped `{"modelVersion": ...}` document (one per VID/PID: matter-server keys its updates so)."""
    return {
        "modelVersion": {
            "vid": entry.vendor_id,
            "pid": entry.product_id,
            "softwareVersion": entry.numeric_version,
            "softwareVersionString": entry.version_string,
            "cdVersionNumber": 1,
            "firmwareInformation": "",
            "softwareVersionValid": True,
            "otaUrl": url(entry),
            "otaFileSize": str(entry.size),  # DCL encodes uint64 as a JSON string
            "otaChecksum": digests(entry).sha256_b64,
            "otaChecksumType": 1,  # SHA-256 (DCL / matter-server CHECKSUM_TYPES)
            "minApplicableSoftwareVersion": entry.min_applicable or 0,
            "maxApplicableSoftwareVersion": (
                entry.max_applicable
                if entry.max_applicable is not None
                else max(entry.numeric_version - 1, 0)
            ),
            "releaseNotesUrl": entry.release_notes_url or "",
            "creator": "otagw",
        }
    }


def matter_documents(
    entries: Sequence[CatalogEntry], digests: DigestsOf, url: UrlOf
) -> dict[str, dict[str, Any]]:
    """File name -> document for the matter-server update directory (newest per VID/PID)."""
    out: dict[str, dict[str, Any]] = {}
    for e in entries:
        name = matter_file_name(e)
        if name not in out:  # entries come newest first per identity
            out[name] = matter_model_version(e, digests, url)
    return out
