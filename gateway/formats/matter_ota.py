"""Parse and build Matter OTA software image files (Matter Core § 11.21.1, as made by CHIP's ota_image_tool.py).

Layout, all little-endian::

    u32 FileIdentifier = 0x1BEEF11E
    u64 TotalSize      = 16 + HeaderSize + PayloadSize
    u32 HeaderSize     = length of the header TLV
    Header TLV         anonymous structure, context tags:
                         0 VendorID u16, 1 ProductID u16, 2 SoftwareVersion u32,
                         3 SoftwareVersionString (1..64 bytes UTF-8), 4 PayloadSize u64,
                         5 MinApplicableSoftwareVersion u32 (optional),
                         6 MaxApplicableSoftwareVersion u32 (optional),
                         7 ReleaseNotesURL (1..256 bytes, optional),
                         8 ImageDigestType u8 (IANA Named Information Hash Algorithm Registry ID),
                         9 ImageDigest (digest of the payload)
    Payload

Pure functions over bytes; bad input raises one `OtaFormatError` subclass naming the defect and its offset.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from gateway.formats.errors import (
    BadMagicError,
    DigestMismatchError,
    FieldValueError,
    LengthMismatchError,
    TlvFormatError,
    TruncatedError,
)
from gateway.formats.tlv import TlvElement, TlvType, TlvWriter, decode_one

__all__ = [
    "DIGEST_LENGTHS",
    "DIGEST_TYPES",
    "FIXED_HEADER_SIZE",
    "MATTER_OTA_MAGIC",
    "MatterOtaHeader",
    "MatterOtaImage",
    "build_matter_image",
    "compute_digest",
    "digest_name_to_type",
    "parse_matter_image",
    "parse_matter_prefix",
    "verify_matter_digest",
]

MATTER_OTA_MAGIC = 0x1BEEF11E
_FIXED = struct.Struct("<IQI")
FIXED_HEADER_SIZE = _FIXED.size  # 16

#: IANA "Named Information Hash Algorithm Registry" (RFC 6920) IDs, the values ImageDigestType uses.
DIGEST_TYPES: dict[int, str] = {
    1: "sha-256",
    2: "sha-256-128",
    3: "sha-256-120",
    4: "sha-256-96",
    5: "sha-256-64",
    6: "sha-256-32",
    7: "sha-384",
    8: "sha-512",
    9: "sha3-224",
    10: "sha3-256",
    11: "sha3-384",
    12: "sha3-512",
}

#: Digest length in bytes for each registry ID (the truncated sha-256 forms keep the leftmost bits).
DIGEST_LENGTHS: dict[int, int] = {
    1: 32,
    2: 16,
    3: 15,
    4: 12,
    5: 8,
    6: 4,
    7: 48,
    8: 64,
    9: 28,
    10: 32,
    11: 48,
    12: 64,
}

# Registry ID -> hashlib constructor name.
_HASHLIB_NAMES: dict[int, str] = {
    1: "sha256",
    2: "sha256",
    3: "sha256",
    4: "sha256",
    5: "sha256",
    6: "sha256",
    7: "sha384",
    8: "sha512",
    9: "sha3_224",
    10: "sha3_256",
    11: "sha3_384",
    12: "sha3_512",
}

# Header TLV context tags (names as in the spec, used in error messages).
_TAG_NAMES = {
    0: "VendorID",
    1: "ProductID",
    2: "SoftwareVersion",
    3: "SoftwareVersionString",
    4: "PayloadSize",
    5: "MinApplicableSoftwareVersion",
    6: "MaxApplicableSoftwareVersion",
    7: "ReleaseNotesURL",
    8: "ImageDigestType",
    9: "ImageDigest",
}
_REQUIRED_TAGS = (0, 1, 2, 3, 4, 8, 9)
_UINT_LIMITS = {
    0: 0xFFFF,
    1: 0xFFFF,
    2: 0xFFFF_FFFF,
    4: (1 << 64) - 1,
    5: 0xFFFF_FFFF,
    6: 0xFFFF_FFFF,
    8: 0xFF,
}
_STRING_LIMITS = {3: (1, 64), 7: (1, 256)}


def _norm_digest_name(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


_DIGEST_BY_NORM_NAME = {_norm_digest_name(v): k for k, v in DIGEST_TYPES.items()}


def digest_name_to_type(name: str) -> int:
    """Map a digest name ("sha256", "sha-256", "SHA3-256", "sha3_512", "sha-256-128", ...) to its registry ID.

    A decimal registry ID ("1".."12") is accepted too. Raises `ValueError` naming the accepted names.
    """
    text = name.strip()
    if text.isdigit() and int(text) in DIGEST_TYPES:
        return int(text)
    found = _DIGEST_BY_NORM_NAME.get(_norm_digest_name(text))
    if found is None:
        raise ValueError(f"unknown digest algorithm {name!r} (known: {', '.join(DIGEST_TYPES.values())})")
    return found


def compute_digest(digest_type: int, payload: bytes | memoryview) -> bytes:
    """The ImageDigest of `payload` for registry ID `digest_type` (KeyError if the type is unknown)."""
    digest = hashlib.new(_HASHLIB_NAMES[digest_type], payload).digest()
    return digest[: DIGEST_LENGTHS[digest_type]]


@dataclass(frozen=True)
class MatterOtaHeader:
    """The decoded header TLV."""

    vendor_id: int
    product_id: int
    software_version: int
    software_version_string: str
    payload_size: int
    min_applicable_version: int | None
    max_applicable_version: int | None
    release_notes_url: str | None
    digest_type: int
    digest: bytes

    @property
    def digest_name(self) -> str:
        return DIGEST_TYPES.get(self.digest_type, f"unknown ({self.digest_type})")


@dataclass(frozen=True)
class MatterOtaImage:
    """A parsed image: `header_size` is the header TLV length (the u32 field); payload at `payload_offset`."""

    header: MatterOtaHeader
    header_size: int
    total_size: int
    payload_offset: int

    @property
    def payload_size(self) -> int:
        return self.header.payload_size

    def payload(self, data: bytes) -> memoryview:
        """The payload bytes of the file `data` this image was parsed from (no copy)."""
        return memoryview(data)[self.payload_offset : self.payload_offset + self.header.payload_size]


def _describe(element: TlvElement) -> str:
    return element.type.value


def _header_fields(tlv: bytes, base: int) -> dict[int, TlvElement]:
    top = decode_one(tlv, base_offset=base)
    if top.type is not TlvType.STRUCT:
        raise TlvFormatError(f"header TLV is a {_describe(top)}, expected a structure", top.offset)
    if top.tag is not None:
        raise TlvFormatError("header TLV structure must have an anonymous tag", top.offset)
    assert isinstance(top.value, tuple)
    fields: dict[int, TlvElement] = {}
    for member in top.value:
        # Profile-tagged members and unknown context tags are extensions: skipped, as the spec allows.
        if not isinstance(member.tag, int) or member.tag not in _TAG_NAMES:
            continue
        if member.tag in fields:
            raise TlvFormatError(
                f"duplicate header field {_TAG_NAMES[member.tag]} (tag {member.tag})", member.offset
            )
        fields[member.tag] = member
    for tag in _REQUIRED_TAGS:
        if tag not in fields:
            raise FieldValueError(
                f"header TLV lacks required field {_TAG_NAMES[tag]} (tag {tag})", top.end - 1
            )
    return fields


def _uint_field(fields: dict[int, TlvElement], tag: int) -> int | None:
    element = fields.get(tag)
    if element is None:
        return None
    name = _TAG_NAMES[tag]
    if element.type is not TlvType.UNSIGNED:
        raise FieldValueError(
            f"{name} (tag {tag}) is a {_describe(element)}, expected an unsigned integer", element.offset
        )
    assert isinstance(element.value, int)
    if element.value > _UINT_LIMITS[tag]:
        raise FieldValueError(
            f"{name} (tag {tag}) value {element.value} exceeds its maximum {_UINT_LIMITS[tag]}",
            element.value_offset,
        )
    return element.value


def _str_field(fields: dict[int, TlvElement], tag: int) -> str | None:
    element = fields.get(tag)
    if element is None:
        return None
    name = _TAG_NAMES[tag]
    if element.type is not TlvType.UTF8:
        raise FieldValueError(
            f"{name} (tag {tag}) is a {_describe(element)}, expected a UTF-8 string", element.offset
        )
    assert isinstance(element.value, str)
    low, high = _STRING_LIMITS[tag]
    size = len(element.value.encode("utf-8"))
    if not low <= size <= high:
        raise FieldValueError(
            f"{name} (tag {tag}) is {size} bytes long, allowed {low}..{high}", element.value_offset
        )
    return element.value


def _parse_header(data: bytes) -> tuple[MatterOtaHeader, int, int]:
    """Fixed header + header TLV; returns (header, header_size, total_size). Needs 16 + HeaderSize bytes."""
    if len(data) < 4:
        raise TruncatedError("data ends inside the 4-byte Matter OTA file identifier", len(data))
    (magic,) = struct.unpack_from("<I", data, 0)
    if magic != MATTER_OTA_MAGIC:
        raise BadMagicError(
            f"file identifier 0x{magic:08X} is not the Matter OTA identifier 0x{MATTER_OTA_MAGIC:08X}", 0
        )
    if len(data) < FIXED_HEADER_SIZE:
        raise TruncatedError("data ends inside the 16-byte Matter OTA fixed header", len(data))
    _, total_size, header_size = _FIXED.unpack_from(data, 0)
    if header_size == 0:
        raise LengthMismatchError("header size is 0; the header TLV cannot be empty", 12)
    header_end = FIXED_HEADER_SIZE + header_size
    if header_end > total_size:
        raise LengthMismatchError(f"header size {header_size} runs past the total size {total_size}", 12)
    if len(data) < header_end:
        raise TruncatedError(
            f"data ends inside the {header_size}-byte header TLV (needs {header_end} bytes)", len(data)
        )
    fields = _header_fields(bytes(data[FIXED_HEADER_SIZE:header_end]), FIXED_HEADER_SIZE)

    vendor_id = _uint_field(fields, 0)
    product_id = _uint_field(fields, 1)
    software_version = _uint_field(fields, 2)
    version_string = _str_field(fields, 3)
    payload_size = _uint_field(fields, 4)
    min_version = _uint_field(fields, 5)
    max_version = _uint_field(fields, 6)
    release_notes_url = _str_field(fields, 7)
    digest_type = _uint_field(fields, 8)
    assert vendor_id is not None and product_id is not None and software_version is not None
    assert version_string is not None and payload_size is not None and digest_type is not None

    if min_version is not None and max_version is not None and min_version > max_version:
        raise FieldValueError(
            f"MinApplicableSoftwareVersion {min_version} is greater than "
            f"MaxApplicableSoftwareVersion {max_version}",
            fields[5].offset,
        )
    if digest_type not in DIGEST_TYPES:
        raise FieldValueError(
            f"ImageDigestType {digest_type} is not a known hash algorithm "
            "(IANA Named Information registry IDs 1..12)",
            fields[8].value_offset,
        )
    digest_element = fields[9]
    if digest_element.type is not TlvType.BYTES:
        raise FieldValueError(
            f"ImageDigest (tag 9) is a {_describe(digest_element)}, expected an octet string",
            digest_element.offset,
        )
    assert isinstance(digest_element.value, bytes)
    digest = digest_element.value
    if len(digest) != DIGEST_LENGTHS[digest_type]:
        raise FieldValueError(
            f"ImageDigest is {len(digest)} bytes but {DIGEST_TYPES[digest_type]} digests are "
            f"{DIGEST_LENGTHS[digest_type]} bytes",
            digest_element.value_offset,
        )
    if total_size != header_end + payload_size:
        raise LengthMismatchError(
            f"total size {total_size} != 16 + header size {header_size} + payload size {payload_size}", 4
        )
    header = MatterOtaHeader(
        vendor_id=vendor_id,
        product_id=product_id,
        software_version=software_version,
        software_version_string=version_string,
        payload_size=payload_size,
        min_applicable_version=min_version,
        max_applicable_version=max_version,
        release_notes_url=release_notes_url,
        digest_type=digest_type,
        digest=digest,
    )
    return header, header_size, total_size


def parse_matter_prefix(prefix: bytes) -> MatterOtaImage:
    """Parse the fixed header and header TLV from the first bytes of a file; the payload is not needed.

    Checks everything that can be checked without the payload (sizes agree, fields valid); does not
    check the file length or the digest. `TruncatedError` if `prefix` ends inside the header.
    """
    header, header_size, total_size = _parse_header(prefix)
    return MatterOtaImage(header, header_size, total_size, FIXED_HEADER_SIZE + header_size)


def verify_matter_digest(data: bytes, image: MatterOtaImage) -> None:
    """Check the payload of `data` against the header digest; `DigestMismatchError` if it differs."""
    payload = image.payload(data)
    if len(payload) != image.header.payload_size:
        raise TruncatedError(f"data ends inside the {image.header.payload_size}-byte payload", len(data))
    actual = compute_digest(image.header.digest_type, payload)
    if actual != image.header.digest:
        raise DigestMismatchError(
            f"payload {image.header.digest_name} digest {actual.hex()} does not match "
            f"the header's ImageDigest {image.header.digest.hex()}",
            image.payload_offset,
        )


def parse_matter_image(data: bytes, *, verify_digest: bool = True) -> MatterOtaImage:
    """Parse a complete Matter OTA file and check its sizes and (unless disabled) the payload digest."""
    image = parse_matter_prefix(data)
    if len(data) < image.total_size:
        raise TruncatedError(
            f"file is {len(data)} bytes but its header announces {image.total_size}", len(data)
        )
    if len(data) > image.total_size:
        raise LengthMismatchError(
            f"{len(data) - image.total_size} trailing bytes after the {image.total_size}-byte image",
            image.total_size,
        )
    if verify_digest:
        verify_matter_digest(data, image)
    return image


def _check_range(name: str, value: Any, low: int, high: int, offset: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FieldValueError(f"{name} must be an integer in {low}..{high}, got {value!r}", offset)
    return value


def build_matter_image(
    payload: bytes,
    *,
    vendor_id: int,
    product_id: int,
    software_version: int,
    software_version_string: str,
    min_applicable_version: int | None = None,
    max_applicable_version: int | None = None,
    release_notes_url: str | None = None,
    digest_type: int = 1,
) -> bytes:
    """Build a complete Matter OTA file around `payload` (integers in shortest TLV width, as CHIP does).

    Raises `FieldValueError` for values the format cannot hold (offset: where the header TLV would start).
    """
    at = FIXED_HEADER_SIZE
    _check_range("vendor_id", vendor_id, 0, 0xFFFF, at)
    _check_range("product_id", product_id, 0, 0xFFFF, at)
    _check_range("software_version", software_version, 0, 0xFFFF_FFFF, at)
    if min_applicable_version is not None:
        _check_range("min_applicable_version", min_applicable_version, 0, 0xFFFF_FFFF, at)
    if max_applicable_version is not None:
        _check_range("max_applicable_version", max_applicable_version, 0, 0xFFFF_FFFF, at)
    if (
        min_applicable_version is not None
        and max_applicable_version is not None
        and min_applicable_version > max_applicable_version
    ):
        raise FieldValueError(
            f"min_applicable_version {min_applicable_version} is greater than "
            f"max_applicable_version {max_applicable_version}",
            at,
        )
    if not 1 <= len(software_version_string.encode("utf-8")) <= 64:
        raise FieldValueError("software_version_string must be 1..64 bytes of UTF-8", at)
    if release_notes_url is not None and not 1 <= len(release_notes_url.encode("utf-8")) <= 256:
        raise FieldValueError("release_notes_url must be 1..256 bytes of UTF-8", at)
    if digest_type not in DIGEST_TYPES:
        raise FieldValueError(f"digest_type {digest_type} is not a known hash algorithm (1..12)", at)

    writer = TlvWriter().start_struct()
    writer.put_uint(0, vendor_id).put_uint(1, product_id).put_uint(2, software_version)
    writer.put_utf8(3, software_version_string).put_uint(4, len(payload))
    if min_applicable_version is not None:
        writer.put_uint(5, min_applicable_version)
    if max_applicable_version is not None:
        writer.put_uint(6, max_applicable_version)
    if release_notes_url is not None:
        writer.put_utf8(7, release_notes_url)
    writer.put_uint(8, digest_type).put_bytes(9, compute_digest(digest_type, payload))
    tlv = writer.end_container().to_bytes()
    fixed = _FIXED.pack(MATTER_OTA_MAGIC, FIXED_HEADER_SIZE + len(tlv) + len(payload), len(tlv))
    return b"".join((fixed, tlv, payload))
