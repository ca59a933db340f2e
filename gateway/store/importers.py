"""Bulk import into the image store: files and directories, CHIP otaImageList JSON, Zigbee2MQTT OTA indexes.

Every importer returns an `ImportReport` with one `FileResult` per file or list entry (created / exists /
skipped / failed with a one-line message) and never stops at the first bad item. Only a list file that cannot
be read as a whole (bad JSON, wrong top-level shape) raises `ImportListError`.

* Paths: files are imported; directories are walked recursively (symlinked directories are not followed,
  hidden names are ignored, files without a Matter/Zigbee file identifier are reported as skipped).
* CHIP `--otaImageList` (reference 002): `deviceSoftwareVersionModel` entries. `otaURL` is a local path
  (relative paths resolve against the list file's folder; `file://` URLs accepted); remote URLs are reported
  as skipped, never fetched. Each image header is cross-checked against its entry: vendorId, productId,
  softwareVersion, softwareVersionString must equal the header; min/maxApplicableSoftwareVersion must equal the
  header's when the header has them, and restrict the image when only the list has them. A mismatch names the
  entry index and field. `softwareVersionValid: false` stores the entry as invalid (never selected).
  `//` and `/* */` comments are accepted, as in the SDK's example list.
* Zigbee2MQTT index (a JSON list as published in Koenkk/zigbee-OTA): each entry is resolved to a local file
  relative to the index via its `path`, a non-HTTP `url`, or the URL's basename; entries with no local file are
  reported as skipped and never fetched. `sha512` and `fileSize` are checked when present; the header must agree
  with manufacturerCode / imageType / fileVersion. modelId, minFileVersion/maxFileVersion,
  hardwareVersionMin/Max (intersected with the header's range) and releaseNotes are carried into the entry.
  Entries restricted by `manufacturerName` are skipped: a device's manufacturer name is not yet part of
  `DeviceDescriptor`, and ignoring the restriction would offer the image to unrelated devices.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from gateway.config import ImagesConfig
from gateway.formats import MatterOtaImage, OtaFormatError, ZigbeeOtaImage, detect_protocol
from gateway.store.errors import ImageRejectedError, ImportListError, StoreError
from gateway.store.model import CatalogEntry
from gateway.store.store import ImageStore

__all__ = [
    "FileResult",
    "ImportReport",
    "import_configured_sources",
    "import_ota_image_list",
    "import_paths",
    "import_z2m_index",
    "load_json_with_comments",
]

Status = Literal["created", "exists", "skipped", "failed"]


@dataclass(frozen=True, slots=True)
class FileResult:
    """The outcome for one file or list entry. `item` names it (path, or `list.json[3]`)."""

    item: str
    status: Status
    entry: CatalogEntry | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        e = self.entry
        return {
            "item": self.item,
            "status": self.status,
            "message": self.message,
            "image_id": e.image_id if e else None,
            "package_id": e.package_id if e else None,
            "protocol": e.protocol if e else None,
            "vendor_id": e.vendor_id if e else None,
            "product_id": e.product_id if e else None,
            "version": e.numeric_version if e else None,
            "version_string": e.version_string if e else None,
        }


@dataclass
class ImportReport:
    results: list[FileResult] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        """True when nothing failed (skipped items are not failures)."""
        return all(r.status != "failed" for r in self.results)

    def summary(self) -> str:
        return ", ".join(f"{self.count(s)} {s}" for s in ("created", "exists", "skipped", "failed"))


async def _add(store: ImageStore, item: str, path: Path, **kwargs: Any) -> FileResult:
    try:
        res = await store.add_file(path, **kwargs)
    except StoreError as exc:
        return FileResult(item, "failed", message=str(exc))
    return FileResult(item, "created" if res.created else "exists", res.entry)


# ---------------------------------------------------------------------------------------------- paths
def _is_ota_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            detect_protocol(f.read(4))
    except (OSError, OtaFormatError):
        return False
    return True


def _walk(root: Path) -> list[Path]:
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return found


async def import_paths(store: ImageStore, paths: Iterable[Path], *, source: str = "cli") -> ImportReport:
    """Import files and (recursively) directories; explicit files that are not OTA images are failures."""
    report = ImportReport()
    for path in paths:
        path = Path(path)
        if path.is_dir():
            for f in await asyncio.to_thread(_walk, path):
                if not await asyncio.to_thread(_is_ota_file, f):
                    report.results.append(
                        FileResult(str(f), "skipped", message="not a Matter or Zigbee OTA file")
                    )
                    continue
                report.results.append(await _add(store, str(f), f, source=source))
        elif path.exists():
            report.results.append(await _add(store, str(path), path, source=source))
        else:
            report.results.append(
                FileResult(str(path), "failed", message=f"{path}: no such file or directory")
            )
    return report


# ---------------------------------------------------------------------------------------------- JSON
def _strip_json_comments(text: str) -> str:
    """Blank out // and /* */ comments outside strings, keeping line/column positions for error messages."""
    out: list[str] = []
    i, n = 0, len(text)
    in_string = False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                in_string = False
            i += 1
        elif c == '"':
            in_string = True
            out.append(c)
            i += 1
        elif text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:end]))
            i = end
        else:
            out.append(c)
            i += 1
    return "".join(out)


def load_json_with_comments(path: Path) -> Any:
    """Parse a JSON file that may contain // and /* */ comments; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImportListError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ImportListError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        return json.loads(_strip_json_comments(text))
    except json.JSONDecodeError as exc:
        raise ImportListError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None


class _EntryError(Exception):
    """A list entry field that is missing or of the wrong type (reported as that entry's failure)."""


def _field(
    obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str, *, required: bool
) -> Any:
    if key not in obj or obj[key] is None:
        if required:
            raise _EntryError(f"{where}.{key}: missing")
        return None
    value = obj[key]
    # bool is an int in Python but never a valid number in these lists
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        expected = " or ".join(t.__name__ for t in _as_tuple(kind))
        raise _EntryError(f"{where}.{key}: expected {expected}, got {json.dumps(value)}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _uint(obj: Mapping[str, Any], key: str, bits: int, where: str, *, required: bool) -> int | None:
    value = _field(obj, key, int, where, required=required)
    if value is not None and not 0 <= value < (1 << bits):
        raise _EntryError(f"{where}.{key}: {value} is outside 0..{(1 << bits) - 1}")
    return value


_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def _local_target(ref: str, base: Path) -> Path | None:
    """A local path for `ref` (relative to `base`), or None when it is a remote URL."""
    if _SCHEME_RE.match(ref):
        parsed = urlparse(ref)
        if parsed.scheme != "file":
            return None
        return Path(unquote(parsed.path))
    p = Path(ref)
    return p if p.is_absolute() else base / p


# ---------------------------------------------------------------------------------------------- otaImageList
async def import_ota_image_list(store: ImageStore, list_path: Path) -> ImportReport:
    """Import the images of a CHIP ota-provider-app `--otaImageList` file."""
    list_path = Path(list_path)
    doc = await asyncio.to_thread(load_json_with_comments, list_path)
    if not isinstance(doc, dict):
        raise ImportListError(f"{list_path}: (top level): expected an object with deviceSoftwareVersionModel")
    models = doc.get("deviceSoftwareVersionModel")
    if not isinstance(models, list):
        got = "missing" if models is None else f"a {type(models).__name__}"
        raise ImportListError(f"{list_path}: deviceSoftwareVersionModel: expected a list of entries, {got}")
    base = list_path.resolve().parent
    source = f"otaImageList:{list_path.name}"
    report = ImportReport()
    for i, item in enumerate(models):
        where = f"{list_path}: deviceSoftwareVersionModel[{i}]"
        label = f"{list_path.name}[{i}]"
        try:
            if not isinstance(item, dict):
                raise _EntryError(f"{where}: expected an object, got {json.dumps(item)}")
            expect: dict[str, Any] = {
                "vendorId": _uint(item, "vendorId", 16, where, required=True),
                "productId": _uint(item, "productId", 16, where, required=True),
                "softwareVersion": _uint(item, "softwareVersion", 32, where, required=True),
                "softwareVersionString": _field(item, "softwareVersionString", str, where, required=True),
            }
            min_app = _uint(item, "minApplicableSoftwareVersion", 32, where, required=False)
            max_app = _uint(item, "maxApplicableSoftwareVersion", 32, where, required=False)
            _uint(item, "cDVersionNumber", 32, where, required=False)
            valid = _field(item, "softwareVersionValid", bool, where, required=False)
            url = _field(item, "otaURL", str, where, required=True)
        except _EntryError as exc:
            report.results.append(FileResult(label, "failed", message=str(exc)))
            continue
        target = _local_target(url, base)
        if target is None:
            report.results.append(
                FileResult(label, "skipped", message=f"{where}.otaURL: remote URL not fetched: {url}")
            )
            continue
        if not target.is_file():
            report.results.append(
                FileResult(label, "failed", message=f"{where}.otaURL: no such file: {target}")
            )
            continue

        def check(
            image: MatterOtaImage | ZigbeeOtaImage,
            where: str = where,
            expect: dict[str, Any] = expect,
            min_app: int | None = min_app,
            max_app: int | None = max_app,
        ) -> dict[str, Any]:
            if not isinstance(image, MatterOtaImage):
                raise ImageRejectedError(where, "otaURL names a Zigbee OTA file, not a Matter OTA image")
            h = image.header
            actual = {
                "vendorId": h.vendor_id,
                "productId": h.product_id,
                "softwareVersion": h.software_version,
                "softwareVersionString": h.software_version_string,
            }
            for key, want in expect.items():
                if actual[key] != want:
                    raise ImageRejectedError(
                        f"{where}.{key}",
                        f"list says {json.dumps(want)}, image header says {json.dumps(actual[key])}",
                    )
            for key, listed, header in (
                ("minApplicableSoftwareVersion", min_app, h.min_applicable_version),
                ("maxApplicableSoftwareVersion", max_app, h.max_applicable_version),
            ):
                if listed is not None and header is not None and listed != header:
                    raise ImageRejectedError(
                        f"{where}.{key}", f"list says {listed}, image header says {header}"
                    )
            extra: dict[str, Any] = {}
            if min_app is not None:
                extra["min_applicable"] = min_app
            if max_app is not None:
                extra["max_applicable"] = max_app
            return extra

        extra = {"valid": valid} if valid is not None else {}
        report.results.append(await _add(store, label, target, source=source, extra=extra, check=check))
    return report


# ---------------------------------------------------------------------------------------------- zigbee2mqtt
def _file_digest_and_size(path: Path) -> tuple[str, int]:
    h = hashlib.sha512()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _z2m_local_file(item: Mapping[str, Any], url: str, base: Path) -> Path | None:
    candidates: list[Path] = []
    rel = item.get("path")
    if isinstance(rel, str) and rel:
        candidates.append(base / rel if not Path(rel).is_absolute() else Path(rel))
    local = _local_target(url, base)
    if local is not None:
        candidates.append(local)
    name = Path(unquote(urlparse(url).path)).name
    if name:
        candidates.append(base / name)
    return next((c for c in candidates if c.is_file()), None)


async def import_z2m_index(store: ImageStore, index_path: Path) -> ImportReport:
    """Import the locally available images of a Zigbee2MQTT OTA index; nothing is downloaded."""
    index_path = Path(index_path)
    doc = await asyncio.to_thread(load_json_with_comments, index_path)
    if not isinstance(doc, list):
        raise ImportListError(
            f"{index_path}: (top level): expected a list of image entries, got {type(doc).__name__}"
        )
    base = index_path.resolve().parent
    source = f"z2m:{index_path.name}"
    report = ImportReport()
    for i, item in enumerate(doc):
        where = f"{index_path}: [{i}]"
        label = f"{index_path.name}[{i}]"
        try:
            if not isinstance(item, dict):
                raise _EntryError(f"{where}: expected an object, got {json.dumps(item)}")
            expect = {
                "manufacturerCode": _uint(item, "manufacturerCode", 16, where, required=True),
                "imageType": _uint(item, "imageType", 16, where, required=True),
                "fileVersion": _uint(item, "fileVersion", 32, where, required=True),
            }
            url = _field(item, "url", str, where, required=True)
            _field(item, "path", str, where, required=False)
            sha512 = _field(item, "sha512", str, where, required=False)
            if sha512 is not None and not re.fullmatch(r"[0-9a-fA-F]{128}", sha512):
                raise _EntryError(f"{where}.sha512: expected 128 hex digits")
            file_size = _uint(item, "fileSize", 32, where, required=False)
            model_id = _field(item, "modelId", str, where, required=False)
            min_fv = _uint(item, "minFileVersion", 32, where, required=False)
            max_fv = _uint(item, "maxFileVersion", 32, where, required=False)
            hw_min = _uint(item, "hardwareVersionMin", 16, where, required=False)
            hw_max = _uint(item, "hardwareVersionMax", 16, where, required=False)
            notes = _field(item, "releaseNotes", str, where, required=False)
            mfr_names = _field(item, "manufacturerName", list, where, required=False)
        except _EntryError as exc:
            report.results.append(FileResult(label, "failed", message=str(exc)))
            continue
        local = _z2m_local_file(item, url, base)
        if local is None:
            report.results.append(FileResult(label, "skipped", message=f"URL-only entry, not fetched: {url}"))
            continue
        if mfr_names:
            report.results.append(
                FileResult(
                    label,
                    "skipped",
                    message=f"{where}.manufacturerName: restriction to {', '.join(map(str, mfr_names))} "
                    "is not supported yet",
                )
            )
            continue
        try:
            digest, size = await asyncio.to_thread(_file_digest_and_size, local)
        except OSError as exc:
            report.results.append(
                FileResult(label, "failed", message=f"{local}: cannot read: {exc.strerror}")
            )
            continue
        if sha512 is not None and digest != sha512.lower():
            report.results.append(
                FileResult(
                    label, "failed", message=f"{where}.sha512: does not match {local} (sha512 {digest[:16]}…)"
                )
            )
            continue
        if file_size is not None and size != file_size:
            report.results.append(
                FileResult(
                    label, "failed", message=f"{where}.fileSize: index says {file_size}, {local} has {size}"
                )
            )
            continue

        def check(
            image: MatterOtaImage | ZigbeeOtaImage,
            where: str = where,
            expect: dict[str, Any] = expect,
            hw_min: int | None = hw_min,
            hw_max: int | None = hw_max,
        ) -> dict[str, Any]:
            if not isinstance(image, ZigbeeOtaImage):
                raise ImageRejectedError(where, "file is a Matter OTA image, not a Zigbee OTA file")
            h = image.header
            actual = {
                "manufacturerCode": h.manufacturer_code,
                "imageType": h.image_type,
                "fileVersion": h.file_version,
            }
            for key, want in expect.items():
                if actual[key] != want:
                    raise ImageRejectedError(
                        f"{where}.{key}",
                        f"index says {want} (0x{want:X}), image header says {actual[key]} "
                        f"(0x{actual[key]:X})",
                    )
            extra: dict[str, Any] = {}
            # Both ranges must hold, so the stored range is their intersection.
            lo = max((v for v in (hw_min, h.min_hardware_version) if v is not None), default=None)
            hi = min((v for v in (hw_max, h.max_hardware_version) if v is not None), default=None)
            if lo is not None:
                extra["min_hw"] = lo
            if hi is not None:
                extra["max_hw"] = hi
            return extra

        extra: dict[str, Any] = {}
        if model_id:
            extra["model_ids"] = [model_id]
        if min_fv is not None:
            extra["min_applicable"] = min_fv
        if max_fv is not None:
            extra["max_applicable"] = max_fv
        if notes:
            extra["release_notes_url"] = notes
        report.results.append(await _add(store, label, local, source=source, extra=extra, check=check))
    return report


# ---------------------------------------------------------------------------------------------- config
async def import_configured_sources(store: ImageStore, images: ImagesConfig) -> ImportReport:
    """Import everything the `images` config section names (directories, otaImageLists, z2m indexes).

    A list file that cannot be read at all becomes one failed result instead of stopping the others.
    """
    report = ImportReport()
    report.results.extend((await import_paths(store, images.directories, source="config")).results)
    for path, importer in [
        *((p, import_ota_image_list) for p in images.ota_image_lists),
        *((p, import_z2m_index) for p in images.z2m_indexes),
    ]:
        try:
            report.results.extend((await importer(store, path)).results)
        except ImportListError as exc:
            report.results.append(FileResult(str(path), "failed", message=str(exc)))
    return report
