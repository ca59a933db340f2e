"""Parse and build Zigbee OTA Upgrade image files (ZCL § 11.4, "OTA Upgrade File Format").

Header layout, all little-endian::

    0  u32 OTA upgrade file identifier = 0x0BEEF11E
    4  u16 header version (0x0100)
    6  u16 header length (56 + optional fields)
    8  u16 header field control: bit 0 security credential version, bit 1 device specific file
                                 (upgrade file destination), bit 2 hardware versions present
    10 u16 manufacturer code
    12 u16 image type
    14 u32 file version
    18 u16 Zigbee stack version
    20 32 bytes header string
    52 u32 total image size (header + all sub-elements)
    56 [u8  security credential version]
       [EUI64 upgrade file destination]
       [u16 minimum hardware version, u16 maximum hardware version]

followed by sub-elements: u16 tag, u32 length, data. Pure functions over bytes; bad input raises one
`OtaFormatError` subclass naming the defect and its offset.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from gateway.formats.errors import (
    BadMagicError,
    FieldValueError,
    LengthMismatchError,
    SubElementError,
    TruncatedError,
)

__all__ = [
    "FIELD_CONTROL_DEVICE_SPECIFIC",
    "FIELD_CONTROL_HARDWARE_VERSIONS",
    "FIELD_CONTROL_SECURITY_CREDENTIAL",
    "IMAGE_TYPE_SPECIAL",
    "MIN_HEADER_LENGTH",
    "SUBELEMENT_TAGS",
    "ZIGBEE_OTA_MAGIC",
    "SubElement",
    "ZigbeeOtaHeader",
    "ZigbeeOtaImage",
    "build_zigbee_image",
    "parse_zigbee_image",
    "parse_zigbee_prefix",
    "unwrap_zigbee_container",
]

ZIGBEE_OTA_MAGIC = 0x0BEEF11E
_FIXED = struct.Struct("<IHHHHHIH32sI")
MIN_HEADER_LENGTH = _FIXED.size  # 56
_SUB_HEADER = struct.Struct("<HI")

FIELD_CONTROL_SECURITY_CREDENTIAL = 0x0001
FIELD_CONTROL_DEVICE_SPECIFIC = 0x0002
FIELD_CONTROL_HARDWARE_VERSIONS = 0x0004
_KNOWN_FIELD_CONTROL = (
    FIELD_CONTROL_SECURITY_CREDENTIAL | FIELD_CONTROL_DEVICE_SPECIFIC | FIELD_CONTROL_HARDWARE_VERSIONS
)

#: Sub-element tag identifiers (ZCL OTA "Tag Identifiers"); 0xF000..0xFFFF are manufacturer specific.
SUBELEMENT_TAGS: dict[int, str] = {
    0: "upgrade image",
    1: "ECDSA signature (suite 1)",
    2: "ECDSA signing certificate (suite 1)",
    3: "image integrity code",
    4: "picture data",
    5: "ECDSA signature (suite 2)",
    6: "ECDSA signing certificate (suite 2)",
}

#: Image types with a meaning fixed by the spec (0x0000..0xFFBF are manufacturer specific).
IMAGE_TYPE_SPECIAL: dict[int, str] = {
    0xFFC0: "client security credentials",
    0xFFC1: "client configuration",
    0xFFC2: "server log",
    0xFFC3: "picture",
    0xFFFF: "wildcard",
}


@dataclass(frozen=True)
class ZigbeeOtaHeader:
    """The decoded OTA header; optional fields are None when their field-control bit is clear."""

    header_version: int
    header_length: int
    field_control: int
    manufacturer_code: int
    image_type: int
    file_version: int
    stack_version: int
    header_string: bytes
    total_image_size: int
    security_credential_version: int | None
    upgrade_file_destination: str | None
    min_hardware_version: int | None
    max_hardware_version: int | None

    @property
    def header_text(self) -> str:
        """The header string as text: up to the first NUL, undecodable bytes replaced."""
        return self.header_string.split(b"\x00", 1)[0].decode("utf-8", errors="replace")

    @property
    def image_type_name(self) -> str | None:
        return IMAGE_TYPE_SPECIAL.get(self.image_type)


@dataclass(frozen=True)
class SubElement:
    """One sub-element; `offset` is where its data starts (after the 6-byte tag + length)."""

    tag: int
    offset: int
    length: int

    @property
    def name(self) -> str:
        known = SUBELEMENT_TAGS.get(self.tag)
        if known is not None:
            return known
        if self.tag >= 0xF000:
            return f"manufacturer specific (0x{self.tag:04x})"
        return f"reserved (0x{self.tag:04x})"

    def data(self, image_bytes: bytes) -> memoryview:
        """This sub-element's data within the file bytes it was parsed from (no copy)."""
        return memoryview(image_bytes)[self.offset : self.offset + self.length]


@dataclass(frozen=True)
class ZigbeeOtaImage:
    header: ZigbeeOtaHeader
    subelements: tuple[SubElement, ...]
    # "zcl": spec sub-elements; "hue-sbl": Hue's SBL images (a valid header, then no sub-elements);
    # "telink": Telink's encrypted sub-element 0xF000 carries 2 bytes of tag info after its length.
    variant: str = "zcl"

    @property
    def total_size(self) -> int:
        return self.header.total_image_size


def _eui64_to_str(raw: bytes) -> str:
    # On the wire an EUI64 is little-endian; people (and zigpy) write it most significant byte first.
    return ":".join(f"{b:02x}" for b in reversed(raw))


def _eui64_from_str(text: str, offset: int) -> bytes:
    cleaned = text.strip().replace(":", "").replace("-", "")
    if len(cleaned) != 16:
        raise FieldValueError(f"destination {text!r} is not an EUI64 like aa:bb:cc:dd:ee:ff:00:11", offset)
    try:
        raw = bytes.fromhex(cleaned)
    except ValueError:
        raise FieldValueError(f"destination {text!r} is not hexadecimal", offset) from None
    return raw[::-1]


def _expected_header_length(field_control: int) -> int:
    length = MIN_HEADER_LENGTH
    if field_control & FIELD_CONTROL_SECURITY_CREDENTIAL:
        length += 1
    if field_control & FIELD_CONTROL_DEVICE_SPECIFIC:
        length += 8
    if field_control & FIELD_CONTROL_HARDWARE_VERSIONS:
        length += 4
    return length


def parse_zigbee_prefix(prefix: bytes) -> ZigbeeOtaHeader:
    """Parse the OTA header from the first bytes of a file (at least `header_length` bytes).

    Checks the identifier, the field control, that the header length matches the fields present and
    that the total image size can hold the header; does not look at sub-elements or the file length.
    """
    if len(prefix) < 4:
        raise TruncatedError("data ends inside the 4-byte Zigbee OTA file identifier", len(prefix))
    (magic,) = struct.unpack_from("<I", prefix, 0)
    if magic != ZIGBEE_OTA_MAGIC:
        raise BadMagicError(
            f"file identifier 0x{magic:08X} is not the Zigbee OTA identifier 0x{ZIGBEE_OTA_MAGIC:08X}", 0
        )
    if len(prefix) < MIN_HEADER_LENGTH:
        raise TruncatedError(
            f"data ends inside the {MIN_HEADER_LENGTH}-byte fixed Zigbee OTA header", len(prefix)
        )
    (
        _,
        header_version,
        header_length,
        field_control,
        manufacturer_code,
        image_type,
        file_version,
        stack_version,
        header_string,
        total_image_size,
    ) = _FIXED.unpack_from(prefix, 0)
    if field_control & ~_KNOWN_FIELD_CONTROL:
        raise FieldValueError(
            f"header field control 0x{field_control:04x} sets reserved bits "
            f"0x{field_control & ~_KNOWN_FIELD_CONTROL:04x}",
            8,
        )
    expected = _expected_header_length(field_control)
    if header_length != expected:
        raise LengthMismatchError(
            f"header length {header_length} does not match the {expected} bytes of fields announced by "
            f"field control 0x{field_control:04x}",
            6,
        )
    if total_image_size < header_length:
        raise LengthMismatchError(
            f"total image size {total_image_size} is smaller than the header length {header_length}", 52
        )
    if len(prefix) < header_length:
        raise TruncatedError(f"data ends inside the {header_length}-byte Zigbee OTA header", len(prefix))

    pos = MIN_HEADER_LENGTH
    security_credential_version: int | None = None
    destination: str | None = None
    min_hw: int | None = None
    max_hw: int | None = None
    if field_control & FIELD_CONTROL_SECURITY_CREDENTIAL:
        security_credential_version = prefix[pos]
        pos += 1
    if field_control & FIELD_CONTROL_DEVICE_SPECIFIC:
        destination = _eui64_to_str(bytes(prefix[pos : pos + 8]))
        pos += 8
    if field_control & FIELD_CONTROL_HARDWARE_VERSIONS:
        min_hw, max_hw = struct.unpack_from("<HH", prefix, pos)
        if min_hw > max_hw:
            raise FieldValueError(
                f"minimum hardware version 0x{min_hw:04x} is greater than maximum 0x{max_hw:04x}", pos
            )
        pos += 4
    return ZigbeeOtaHeader(
        header_version=header_version,
        header_length=header_length,
        field_control=field_control,
        manufacturer_code=manufacturer_code,
        image_type=image_type,
        file_version=file_version,
        stack_version=stack_version,
        header_string=bytes(header_string),
        total_image_size=total_image_size,
        security_credential_version=security_credential_version,
        upgrade_file_destination=destination,
        min_hardware_version=min_hw,
        max_hardware_version=max_hw,
    )


def parse_zigbee_image(data: bytes) -> ZigbeeOtaImage:
    """Parse a complete Zigbee OTA file: header, file length, and every sub-element inside the image."""
    header = parse_zigbee_prefix(data)
    total = header.total_image_size
    if len(data) < total:
        raise TruncatedError(f"file is {len(data)} bytes but its header announces {total}", len(data))
    if len(data) > total:
        raise LengthMismatchError(f"{len(data) - total} trailing bytes after the {total}-byte image", total)
    if header.manufacturer_code == HUE_MANUFACTURER and data[header.header_length :].startswith(
        HUE_SBL_MAGIC
    ):
        # Like zigpy, Hue's SBL layout is recognised before sub-elements are tried: its payload is not made of them.
        return ZigbeeOtaImage(header=header, subelements=(), variant="hue-sbl")
    try:
        return ZigbeeOtaImage(header=header, subelements=_subelements(data, header, telink=False))
    except SubElementError as plain_error:
        try:
            return ZigbeeOtaImage(
                header=header, subelements=_subelements(data, header, telink=True), variant="telink"
            )
        except SubElementError:
            raise plain_error from None


HUE_MANUFACTURER = 0x100B
HUE_SBL_MAGIC = b"\x2a\x00\x01"
TELINK_ENCRYPTED_TAG = 0xF000


def _subelements(data: bytes, header: ZigbeeOtaHeader, *, telink: bool) -> tuple[SubElement, ...]:
    """The sub-elements; with `telink`, tag 0xF000 has 2 bytes of tag info between its length and its data."""
    total = header.total_image_size
    subelements: list[SubElement] = []
    pos = header.header_length
    while pos < total:
        if total - pos < _SUB_HEADER.size:
            raise SubElementError(
                f"{total - pos} bytes left at the end of the image, too few for a 6-byte sub-element header",
                pos,
            )
        tag, length = _SUB_HEADER.unpack_from(data, pos)
        data_offset = pos + _SUB_HEADER.size + (2 if telink and tag == TELINK_ENCRYPTED_TAG else 0)
        if data_offset + length > total:
            raise SubElementError(
                f"sub-element 0x{tag:04x} length {length} runs {data_offset + length - total} bytes past "
                f"the end of the {total}-byte image",
                pos,
            )
        subelements.append(SubElement(tag=tag, offset=data_offset, length=length))
        pos = data_offset + length
    if telink and not any(e.tag == TELINK_ENCRYPTED_TAG for e in subelements):
        raise SubElementError("no Telink encrypted sub-element (0xF000)", header.header_length)
    return tuple(subelements)


def unwrap_zigbee_container(data: bytes) -> tuple[bytes, str | None]:
    """The OTA image inside a vendor container, and the container's name (None: `data` is not wrapped).

    The layouts zigpy unwraps before parsing: Legrand (u32 unwrapped size prefix, 17-byte suffix), Third Reality
    (152-byte header starting with SHA-512 of everything after byte 64) and IKEA's signed "NGIS" container (image
    at the u32 offset/size in bytes 16..24). Devices are sent the inner image.
    """
    if len(data) > 4 and int.from_bytes(data[0:4], "little") + 21 == len(data):
        return data[4:-17], "legrand"
    if (
        len(data) > 152
        and int.from_bytes(data[68:72], "little") + 64 == len(data)
        and data.startswith(hashlib.sha512(data[64:]).digest())
    ):
        return data[152:], "thirdreality"
    if data.startswith(b"NGIS"):
        if len(data) <= 24:
            raise TruncatedError(
                f"IKEA container of {len(data)} bytes is too short for its 24-byte header", len(data)
            )
        offset = int.from_bytes(data[16:20], "little")
        size = int.from_bytes(data[20:24], "little")
        if len(data) <= offset + size:
            raise TruncatedError(
                f"IKEA container announces an image at {offset}+{size} but has {len(data)} bytes", len(data)
            )
        return data[offset : offset + size], "ikea"
    return data, None


def _check_range(name: str, value: Any, low: int, high: int, offset: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise FieldValueError(f"{name} must be an integer in {low}..{high}, got {value!r}", offset)
    return value


def build_zigbee_image(
    payload: bytes | list[tuple[int, bytes]],
    *,
    manufacturer_code: int,
    image_type: int,
    file_version: int,
    stack_version: int = 2,
    header_string: bytes | str = b"",
    security_credential_version: int | None = None,
    destination: str | None = None,
    min_hw: int | None = None,
    max_hw: int | None = None,
    header_version: int = 0x0100,
) -> bytes:
    """Build a Zigbee OTA file: `payload` bytes become one upgrade-image (tag 0) sub-element, or pass a
    list of (tag, data) sub-elements. Raises `FieldValueError` for values the format cannot hold
    (offset: where the field would be written)."""
    _check_range("header_version", header_version, 0, 0xFFFF, 4)
    _check_range("manufacturer_code", manufacturer_code, 0, 0xFFFF, 10)
    _check_range("image_type", image_type, 0, 0xFFFF, 12)
    _check_range("file_version", file_version, 0, 0xFFFF_FFFF, 14)
    _check_range("stack_version", stack_version, 0, 0xFFFF, 18)
    raw_string = header_string.encode("utf-8") if isinstance(header_string, str) else bytes(header_string)
    if len(raw_string) > 32:
        raise FieldValueError(f"header string is {len(raw_string)} bytes, at most 32 fit", 20)
    if (min_hw is None) != (max_hw is None):
        raise FieldValueError("min_hw and max_hw must be given together", MIN_HEADER_LENGTH)

    field_control = 0
    optional = bytearray()
    if security_credential_version is not None:
        _check_range("security_credential_version", security_credential_version, 0, 0xFF, MIN_HEADER_LENGTH)
        field_control |= FIELD_CONTROL_SECURITY_CREDENTIAL
        optional.append(security_credential_version)
    if destination is not None:
        field_control |= FIELD_CONTROL_DEVICE_SPECIFIC
        optional += _eui64_from_str(destination, MIN_HEADER_LENGTH + len(optional))
    if min_hw is not None and max_hw is not None:
        at = MIN_HEADER_LENGTH + len(optional)
        _check_range("min_hw", min_hw, 0, 0xFFFF, at)
        _check_range("max_hw", max_hw, 0, 0xFFFF, at + 2)
        if min_hw > max_hw:
            raise FieldValueError(f"min_hw 0x{min_hw:04x} is greater than max_hw 0x{max_hw:04x}", at)
        field_control |= FIELD_CONTROL_HARDWARE_VERSIONS
        optional += struct.pack("<HH", min_hw, max_hw)

    elements = [(0, payload)] if isinstance(payload, bytes | bytearray | memoryview) else list(payload)
    header_length = MIN_HEADER_LENGTH + len(optional)
    body = bytearray()
    for tag, element in elements:
        _check_range("sub-element tag", tag, 0, 0xFFFF, header_length + len(body))
        if len(element) > 0xFFFF_FFFF:
            raise FieldValueError("sub-element longer than 2^32-1 bytes", header_length + len(body))
        body += _SUB_HEADER.pack(tag, len(element))
        body += element
    total = header_length + len(body)
    if total > 0xFFFF_FFFF:
        raise FieldValueError(f"image of {total} bytes does not fit the 32-bit total image size", 52)
    fixed = _FIXED.pack(
        ZIGBEE_OTA_MAGIC,
        header_version,
        header_length,
        field_control,
        manufacturer_code,
        image_type,
        file_version,
        stack_version,
        raw_string.ljust(32, b"\x00"),
        total,
    )
    return b"".join((fixed, bytes(optional), bytes(body)))
