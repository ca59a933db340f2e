"""The image store facade: validated, atomic, idempotent import of OTA files into blobs + catalog.

`ImageStore(data_dir)` owns `<data_dir>/blobs/` (see blobs.py) and `<data_dir>/catalog.db` (see catalog.py).

Import (file, bytes or an upload stream): the content streams into a temp blob file while being hashed, is
parsed and validated by `gateway.formats` (a bad file raises `ImageRejectedError` naming the defect and byte
offset), its payload checked (`gateway.formats.payload_check`: zigpy's EBL/GBL validators for Zigbee; an invalid
payload is rejected like a bad header, a valid or unknown one is recorded on the entry), then committed in this order: blob renamed into its content address, then the catalog row inserted in
one transaction. A crash between the two leaves an orphan blob, which `open()` deletes (with any temp files);
a failure before the row is committed deletes the blob again unless another entry uses it. So a store is
always either without the image or with a complete, verified entry. Importing the same file (with the same
restrictions) again changes nothing and returns `created=False`.

Removal deletes the row first, then the blob once no entry references it.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gateway.clock import Clock, SystemClock
from gateway.config import PolicySelector
from gateway.formats import MatterOtaImage, OtaFormatError, ZigbeeOtaImage, parse_ota_image
from gateway.formats.payload_check import PayloadVerdict, check_payload
from gateway.store.approval import APPROVED, AVAILABLE, selector_json
from gateway.store.blobs import BlobReader, BlobStore, BlobWriter
from gateway.store.catalog import Catalog, make_image_id, make_package_id
from gateway.store.errors import (
    AmbiguousRefError,
    CatalogMismatchError,
    CorruptBlobError,
    ImageNotFoundError,
    ImageRejectedError,
    ImageTooLargeError,
    InvalidFileNameError,
    StoreError,
)
from gateway.store.model import CatalogEntry, ProtocolName
from gateway.store.preflight import content_problem

log = logging.getLogger(__name__)

__all__ = ["EXTRA_KEYS", "ImageCheck", "ImageStore", "ImportResult", "apply_extra", "entry_from_image"]

_COPY_CHUNK = 1 << 20
_REF_RE = re.compile(r"[0-9a-f]{8,64}")

# `extra` keys an importer or API caller may set. Manifest keys only describe the image; restriction keys narrow
# where it applies and make a distinct entry (a "variant") when they differ from what the header says.
_MANIFEST_KEYS: dict[str, type] = {
    "name": str,
    "description": str,
    "license": str,
    "license_url": str,
    "copyright": str,
    "owner": str,
    "packager": str,
    "release_date": str,
    "content_type": str,
    "release_notes_url": str,
}
_RESTRICTION_KEYS = ("valid", "model_ids", "min_applicable", "max_applicable", "min_hw", "max_hw")
EXTRA_KEYS = frozenset(_MANIFEST_KEYS) | frozenset(_RESTRICTION_KEYS)


ImageCheck = Callable[[MatterOtaImage | ZigbeeOtaImage], Mapping[str, Any] | None]


@dataclass(frozen=True, slots=True)
class ImportResult:
    entry: CatalogEntry
    created: bool


def _check_file_name(name: str) -> str:
    if (
        not name
        or name in (".", "..")
        or any(c in name for c in "/\\\x00")
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
        or len(name.encode("utf-8", "surrogatepass")) > 255
    ):
        raise InvalidFileNameError(f"file name {name!r} is not a plain file name")
    return name


def _header_description(raw: bytes) -> str | None:
    """The Zigbee header string when it is text (printable, NUL-padded); some vendors put binary data there."""
    text, _, padding = raw.partition(b"\x00")
    if padding.strip(b"\x00"):
        return None
    try:
        decoded = text.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    return decoded if decoded and decoded.isprintable() else None


def entry_from_image(
    image: MatterOtaImage | ZigbeeOtaImage,
    *,
    sha256: str,
    size: int,
    file_name: str,
    source: str,
    added_at: float,
) -> CatalogEntry:
    """The catalog entry a parsed image yields before any `extra` is applied (variant-free id)."""
    image_id = make_image_id(sha256)
    common: dict[str, Any] = dict(
        image_id=image_id,
        sha256=sha256,
        file_name=file_name,
        manifest_version="1",
        size=size,
        license=None,
        license_url=None,
        copyright=None,
        owner=None,
        packager="otagw",
        release_date=None,
        content_type="application/octet-stream",
        source=source,
        valid=True,
        added_at=added_at,
    )
    if isinstance(image, MatterOtaImage):
        h = image.header
        return CatalogEntry(
            **common,
            package_id=make_package_id(
                "matter", h.vendor_id, h.product_id, h.software_version, None, image_id
            ),
            bucket="matter",
            name=f"Matter {h.vendor_id:04X}:{h.product_id:04X} {h.software_version_string}",
            version=h.software_version_string,
            description=None,
            protocol="matter",
            vendor_id=h.vendor_id,
            product_id=h.product_id,
            numeric_version=h.software_version,
            version_string=h.software_version_string,
            min_applicable=h.min_applicable_version,
            max_applicable=h.max_applicable_version,
            digest_type=h.digest_type,
            digest=h.digest.hex(),
            release_notes_url=h.release_notes_url,
        )
    z = image.header
    version_string = f"0x{z.file_version:08X}"
    return CatalogEntry(
        **common,
        package_id=make_package_id(
            "zigbee", z.manufacturer_code, z.image_type, z.file_version, z.upgrade_file_destination, image_id
        ),
        bucket="zigbee",
        name=f"Zigbee {z.manufacturer_code:04X}:{z.image_type:04X} {version_string}",
        version=version_string,
        description=_header_description(z.header_string),
        protocol="zigbee",
        vendor_id=z.manufacturer_code,
        product_id=z.image_type,
        numeric_version=z.file_version,
        version_string=version_string,
        min_hw=z.min_hardware_version,
        max_hw=z.max_hardware_version,
        destination=z.upgrade_file_destination,
    )


def _check_extra(extra: Mapping[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in extra.items():
        if key in _MANIFEST_KEYS:
            if value is not None and not isinstance(value, str):
                raise StoreError(f"{where}: extra.{key}: expected a string, got {type(value).__name__}")
        elif key == "valid":
            if not isinstance(value, bool):
                raise StoreError(f"{where}: extra.valid: expected true or false, got {value!r}")
        elif key == "model_ids":
            if not isinstance(value, list | tuple) or not all(isinstance(m, str) and m for m in value):
                raise StoreError(
                    f"{where}: extra.model_ids: expected a list of non-empty strings, got {value!r}"
                )
            value = tuple(sorted(set(value)))
        elif key in _RESTRICTION_KEYS:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise StoreError(f"{where}: extra.{key}: expected a non-negative integer, got {value!r}")
        else:
            raise StoreError(
                f"{where}: extra.{key}: unknown key; expected one of: {', '.join(sorted(EXTRA_KEYS))}"
            )
        out[key] = value
    return out


def apply_extra(base: CatalogEntry, extra: Mapping[str, Any], where: str) -> tuple[CatalogEntry, str]:
    """Apply validated `extra` to a header-derived entry; returns the entry (final ids) and its variant key."""
    checked = _check_extra(extra, where)
    entry = replace(base, **checked) if checked else base
    restrictions = {
        k: (list(getattr(entry, k)) if k == "model_ids" else getattr(entry, k))
        for k in _RESTRICTION_KEYS
        if getattr(entry, k) != getattr(base, k)
    }
    variant = json.dumps(restrictions, sort_keys=True, separators=(",", ":")) if restrictions else ""
    image_id = make_image_id(entry.sha256, variant)
    package_id = make_package_id(
        entry.protocol, entry.vendor_id, entry.product_id, entry.numeric_version, entry.destination, image_id
    )
    return replace(entry, image_id=image_id, package_id=package_id), variant


class ImageStore:
    """Blobs + catalog under one data directory. `await open()` before use, `await close()` after."""

    def __init__(self, data_dir: Path, *, clock: Clock | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.catalog = Catalog(self.data_dir / "catalog.db")
        self._clock: Clock = clock or SystemClock()
        self._lock = asyncio.Lock()
        self._content_checked: dict[str, object] = {}  # image id -> identity of the file its check passed on
        self.cleaned_on_open = 0  # temp files + orphan blobs removed by the last open()

    # ---------------------------------------------------------------------------------------- lifecycle
    async def open(self) -> None:
        await asyncio.to_thread(self.data_dir.mkdir, mode=0o700, parents=True, exist_ok=True)
        temps = await asyncio.to_thread(self.blobs.prepare)
        await self.catalog.open()
        known = await self.catalog.all_shas()

        def remove_orphans() -> int:
            orphans = [sha for sha in self.blobs.iter_shas() if sha not in known]
            for sha in orphans:
                self.blobs.remove(sha)
            return len(orphans)

        self.cleaned_on_open = temps + await asyncio.to_thread(remove_orphans)
        await self._check_unchecked()

    async def _check_unchecked(self) -> None:
        """Record the payload verdict of entries imported before the check existed (catalog migration 3)."""
        for sha in await self.catalog.unchecked_shas():

            def verdict(sha: str = sha) -> PayloadVerdict:
                try:
                    data = self.blobs.path_for(sha).read_bytes()
                    return check_payload(data, parse_ota_image(data))
                except (OSError, OtaFormatError) as exc:
                    return PayloadVerdict("invalid", f"stored file cannot be read or parsed: {exc}")

            v = await asyncio.to_thread(verdict)
            await self.catalog.set_payload_check(sha, v.status, v.reason)
            if v.status == "invalid":
                log.warning("image blob %s: payload invalid, never offered: %s", sha[:16], v.reason)

    async def close(self) -> None:
        self.blobs.close_all()
        await self.catalog.close()

    async def __aenter__(self) -> ImageStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---------------------------------------------------------------------------------------- import
    async def add_file(
        self,
        path: Path,
        *,
        source: str = "cli",
        extra: Mapping[str, Any] | None = None,
        check: ImageCheck | None = None,
    ) -> ImportResult:
        """Import one OTA file from the filesystem.

        `check`, if given, sees the parsed image before anything is committed: it raises `StoreError` to reject
        the file (e.g. a header that contradicts an image list) and may return more `extra` keys.
        """
        path = Path(path)
        writer = await asyncio.to_thread(self.blobs.writer)
        try:

            def copy() -> None:
                try:
                    with open(path, "rb") as f:
                        while chunk := f.read(_COPY_CHUNK):
                            writer.write(chunk)
                except IsADirectoryError:
                    raise StoreError(f"{path}: is a directory, not an OTA file") from None
                except OSError as exc:
                    raise StoreError(f"{path}: cannot read: {exc.strerror or exc}") from None

            await asyncio.to_thread(copy)
            return await self._commit(
                writer, where=str(path), file_name=path.name, source=source, extra=extra, check=check
            )
        except BaseException:
            writer.abort()
            raise

    async def add_bytes(
        self, data: bytes, *, file_name: str, source: str = "api", extra: Mapping[str, Any] | None = None
    ) -> ImportResult:
        """Import an OTA file held in memory."""
        _check_file_name(file_name)
        writer = await asyncio.to_thread(self.blobs.writer)
        try:
            await asyncio.to_thread(writer.write, data)
            return await self._commit(
                writer, where=file_name, file_name=file_name, source=source, extra=extra
            )
        except BaseException:
            writer.abort()
            raise

    async def add_stream(
        self,
        chunks: AsyncIterator[bytes],
        *,
        file_name: str,
        source: str = "api",
        max_size: int,
        extra: Mapping[str, Any] | None = None,
    ) -> ImportResult:
        """Import an upload as it arrives; more than `max_size` bytes raises ImageTooLargeError, storing nothing."""
        _check_file_name(file_name)
        writer = await asyncio.to_thread(self.blobs.writer)
        try:
            async for chunk in chunks:
                if writer.size + len(chunk) > max_size:
                    raise ImageTooLargeError(file_name, max_size)
                writer.write(chunk)
            return await self._commit(
                writer, where=file_name, file_name=file_name, source=source, extra=extra
            )
        except BaseException:
            writer.abort()
            raise

    async def _commit(
        self,
        writer: BlobWriter,
        *,
        where: str,
        file_name: str,
        source: str,
        extra: Mapping[str, Any] | None,
        check: ImageCheck | None = None,
    ) -> ImportResult:
        def validate() -> tuple[MatterOtaImage | ZigbeeOtaImage, PayloadVerdict]:
            writer.finish()
            data = writer.read_all()
            try:
                image = parse_ota_image(data)
            except OtaFormatError as exc:
                raise ImageRejectedError(where, exc.defect, exc.offset) from None
            verdict = check_payload(data, image)
            if verdict.status == "invalid":  # never stored, so never offered
                raise ImageRejectedError(where, f"invalid payload: {verdict.reason}", verdict.offset)
            return image, verdict

        image, verdict = await asyncio.to_thread(validate)
        assert writer.sha256 is not None
        merged = dict(extra or {})
        if check is not None:
            merged.update(check(image) or {})
        base = entry_from_image(
            image,
            sha256=writer.sha256,
            size=writer.size,
            file_name=file_name,
            source=source,
            added_at=self._clock.now(),
        )
        entry, variant = apply_extra(base, merged, where)
        entry = replace(entry, payload_check=verdict.status, payload_reason=verdict.reason)
        async with self._lock:
            existing = await self.catalog.find_variant(entry.sha256, variant)
            if existing is not None:
                writer.abort()
                return ImportResult(existing, created=False)
            await asyncio.to_thread(writer.commit)
            try:
                created = await self.catalog.insert(entry, variant)
            except BaseException:
                # Not committed: the blob must not outlive the failed import unless another entry uses it.
                if await self._sha_unreferenced(entry.sha256):
                    await asyncio.to_thread(self.blobs.remove, entry.sha256)
                raise
        if not created:  # pragma: no cover - only with a second writer process on the same catalog
            found = await self.catalog.find_variant(entry.sha256, variant)
            return ImportResult(found or entry, created=False)
        return ImportResult(entry, created=True)

    async def _sha_unreferenced(self, sha256: str) -> bool:
        try:
            return await self.catalog.sha_refs(sha256) == 0
        except Exception:
            return False  # cannot tell: leave the blob; open() removes it if it really is an orphan

    # ---------------------------------------------------------------------------------------- queries
    async def get(self, ref: str) -> CatalogEntry:
        """The entry with image id `ref`, or the one entry whose sha256 / image id starts with `ref` (≥ 8 hex)."""
        norm = ref.strip().lower()
        if not _REF_RE.fullmatch(norm):
            raise ImageNotFoundError(
                f"image {ref!r}: expected an image id or at least 8 hex digits of its sha256"
            )
        exact = await self.catalog.get(norm) if len(norm) == 16 else None
        if exact is not None:
            return exact
        found = await self.catalog.find_prefix(norm)
        if not found:
            raise ImageNotFoundError(f"image {ref!r}: no image with that id or sha256 prefix")
        if len(found) > 1:
            ids = ", ".join(e.image_id for e in found[:5])
            raise AmbiguousRefError(f"image {ref!r}: matches {len(found)} images ({ids}); give the image id")
        return found[0]

    async def remove(self, ref: str) -> CatalogEntry:
        """Delete an entry (and its blob once no other entry references it); returns what was removed."""
        async with self._lock:
            entry = await self.get(ref)
            await self.catalog.delete(entry.image_id)
            if await self.catalog.sha_refs(entry.sha256) == 0:
                await asyncio.to_thread(self.blobs.remove, entry.sha256)
        return entry

    async def approve(
        self,
        ref: str,
        *,
        selector: PolicySelector | dict[str, Any] | None = None,
        by: str = "cli",
    ) -> CatalogEntry:
        """Approve an entry for every device, or only those `selector` matches; returns the updated entry."""
        try:
            approved_for = selector_json(selector)
        except ValueError as exc:
            raise StoreError(f"image {ref!r}: bad device filter: {exc}") from None
        async with self._lock:
            entry = await self.get(ref)
            now = self._clock.now()
            await self.catalog.set_approval(
                entry.image_id, APPROVED, approved_for=approved_for, approved_by=by, approved_at=now
            )
        return replace(entry, approval=APPROVED, approved_for=approved_for, approved_by=by, approved_at=now)

    async def revoke(self, ref: str, *, by: str = "cli") -> CatalogEntry:
        """Return an entry to `available`: no longer offered without a rollout."""
        async with self._lock:
            entry = await self.get(ref)
            now = self._clock.now()
            await self.catalog.set_approval(entry.image_id, AVAILABLE, approved_by=by, approved_at=now)
        return replace(entry, approval=AVAILABLE, approved_for=None, approved_by=by, approved_at=now)

    async def approve_for_rollout(self, image_id: str, selector: PolicySelector, rollout_id: str) -> bool:
        """A rollout is an approval for its own devices (they keep the image once it completes). An approval a
        person gave, or one for every device, is never narrowed; returns True when the rollout's was recorded."""
        async with self._lock:
            entry = await self.catalog.get(image_id)
            if entry is None:
                return False
            if entry.approval == APPROVED and (
                entry.approved_for is None or not (entry.approved_by or "").startswith("rollout ")
            ):
                return False
            await self.catalog.set_approval(
                image_id,
                APPROVED,
                approved_for=selector_json(selector),
                approved_by=f"rollout {rollout_id}",
                approved_at=self._clock.now(),
            )
        return True

    async def revoke_approval_of(self, image_id: str, approver: str, *, by: str) -> bool:
        """Revoke the entry's approval only if `approver` gave it (an aborted rollout withdraws its own, never
        a person's); False when the entry is gone or someone else approved it."""
        async with self._lock:
            entry = await self.catalog.get(image_id)
            if entry is None or entry.approval != APPROVED or entry.approved_by != approver:
                return False
            await self.catalog.set_approval(
                image_id, AVAILABLE, approved_by=by, approved_at=self._clock.now()
            )
        return True

    async def mark_invalid(self, image_id: str, reason: str) -> None:
        """Never offer the entry again: its blob no longer matches its digest (`reason` says how it was found).

        The entry stays listed (marked invalid) so an operator sees it and removes it; selection refuses it."""
        async with self._lock:
            if not await self.catalog.mark_invalid(image_id):
                log.info("mark_invalid: image %s is no longer in the catalog (%s)", image_id, reason)

    async def entries_for(
        self, protocol: ProtocolName, vendor_id: int, product_id: int
    ) -> builtins.list[CatalogEntry]:
        """Candidates for a device with this identity (Zigbee: 0xFFFF wildcard images included)."""
        return await self.catalog.candidates(protocol, vendor_id, product_id)

    async def catalog_version(self) -> int:
        """Changes when another process (`otagw image add/approve` from the CLI) committed to the catalog."""
        return await self.catalog.data_version()

    def open_reader(self, entry: CatalogEntry) -> BlobReader:
        """A shared, verified reader of the entry's file; raises CorruptBlobError rather than serve bad bytes.

        Verified twice: the blob hashes to its name (BlobStore), and the content passes the pre-flight check
        for this entry (gateway/store/preflight.py; CatalogMismatchError when only the entry disagrees). Both
        are cached by the file's identity, so re-opening an unchanged file costs a stat."""
        reader = self.blobs.open_reader(entry.sha256)
        identity = reader.identity
        if self._content_checked.get(entry.image_id) == identity:
            return reader
        try:
            found = content_problem(entry, reader.read(0, reader.size))
        except BaseException:
            reader.close()
            raise
        if found is not None:
            reader.close()
            problem, entry_only = found
            path = str(self.blobs.path_for(entry.sha256))
            if entry_only:
                raise CatalogMismatchError(entry.sha256, path, problem)
            raise CorruptBlobError(entry.sha256, path, problem)
        self._content_checked[entry.image_id] = identity
        return reader

    async def verify(self, entry: CatalogEntry) -> bool:
        """Re-hash the entry's blob now (off the event loop)."""
        return await asyncio.to_thread(self.blobs.check, entry.sha256)

    async def list(self, protocol: ProtocolName | None = None) -> builtins.list[CatalogEntry]:
        """All entries, ordered by protocol, vendor, product, version."""
        return await self.catalog.entries(protocol)
