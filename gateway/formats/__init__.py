"""OTA file codecs: detect the protocol of an image and parse or build Matter and Zigbee OTA files.

Pure functions over bytes (no I/O). Every malformed input raises one `OtaFormatError` subclass that names
the defect and its byte offset.
"""

from __future__ import annotations

import struct
from typing import Literal

from gateway.formats.errors import (
    BadMagicError,
    DigestMismatchError,
    FieldValueError,
    LengthMismatchError,
    OtaFormatError,
    SubElementError,
    TlvFormatError,
    TruncatedError,
)
from gateway.formats.matter_ota import (
    DIGEST_LENGTHS,
    DIGEST_TYPES,
    MATTER_OTA_MAGIC,
    MatterOtaHeader,
    MatterOtaImage,
    build_matter_image,
    compute_digest,
    digest_name_to_type,
    parse_matter_image,
    parse_matter_prefix,
    verify_matter_digest,
)
from gateway.formats.zigbee_ota import (
    IMAGE_TYPE_SPECIAL,
    SUBELEMENT_TAGS,
    ZIGBEE_OTA_MAGIC,
    SubElement,
    ZigbeeOtaHeader,
    ZigbeeOtaImage,
    build_zigbee_image,
    parse_zigbee_image,
    parse_zigbee_prefix,
)

__all__ = [
    "DIGEST_LENGTHS",
    "DIGEST_TYPES",
    "IMAGE_TYPE_SPECIAL",
    "MATTER_OTA_MAGIC",
    "SUBELEMENT_TAGS",
    "ZIGBEE_OTA_MAGIC",
    "BadMagicError",
    "DigestMismatchError",
    "FieldValueError",
    "LengthMismatchError",
    "MatterOtaHeader",
    "MatterOtaImage",
    "OtaFormatError",
    "OtaImage",
    "Protocol",
    "SubElement",
    "SubElementError",
    "TlvFormatError",
    "TruncatedError",
    "ZigbeeOtaHeader",
    "ZigbeeOtaImage",
    "build_matter_image",
    "build_zigbee_image",
    "compute_digest",
    "detect_protocol",
    "digest_name_to_type",
    "parse_matter_image",
    "parse_matter_prefix",
    "parse_ota_image",
    "parse_zigbee_image",
    "parse_zigbee_prefix",
    "verify_matter_digest",
]

OtaImage = MatterOtaImage | ZigbeeOtaImage
Protocol = Literal["matter", "zigbee"]


def detect_protocol(prefix: bytes) -> Protocol:
    """Tell a Matter from a Zigbee OTA file by its 4-byte file identifier."""
    if len(prefix) < 4:
        raise TruncatedError("data ends inside the 4-byte OTA file identifier", len(prefix))
    (magic,) = struct.unpack_from("<I", prefix, 0)
    if magic == MATTER_OTA_MAGIC:
        return "matter"
    if magic == ZIGBEE_OTA_MAGIC:
        return "zigbee"
    raise BadMagicError(
        f"file identifier 0x{magic:08X} is neither Matter OTA (0x{MATTER_OTA_MAGIC:08X}) "
        f"nor Zigbee OTA (0x{ZIGBEE_OTA_MAGIC:08X})",
        0,
    )


def parse_ota_image(data: bytes, *, verify_digest: bool = True) -> OtaImage:
    """Parse a complete Matter or Zigbee OTA file (`verify_digest` applies to Matter images only)."""
    if detect_protocol(data) == "matter":
        return parse_matter_image(data, verify_digest=verify_digest)
    return parse_zigbee_image(data)
