"""Pre-flight check of the firmware inside an OTA file: a verdict (valid / invalid with the reason / unknown format).

Zigbee: the upgrade-image sub-elements are checked with zigpy's own validators (`zigpy.ota.validators`: Silicon
Labs EBL and GBL structure, padding and CRC-32), the check Zigbee2MQTT and ZHA run before they send a file, not a
rewrite of it. A payload in a format zigpy has no validator for (Telink, TI, Hue SBL, vendor blobs) is "unknown";
whether such a file is offered is policy (`policy.allow_unvalidated_payload`).

Matter: the image header carries a digest over the payload; it is verified when the file is parsed (import) and the
blob's SHA-256 when it is opened, so a Matter payload that got this far is "valid" in that sense (the verdict's
reason says so). There is no public structure to check inside a vendor's Matter payload.

zigpy is imported on first use only, so a gateway that never handles a Zigbee file never loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.formats.matter_ota import MatterOtaImage
from gateway.formats.zigbee_ota import ZigbeeOtaImage

__all__ = ["PAYLOAD_STATUSES", "PayloadVerdict", "check_payload", "check_zigbee_payload"]

PayloadStatus = Literal["valid", "invalid", "unknown"]
PAYLOAD_STATUSES: tuple[str, ...] = ("valid", "invalid", "unknown")
_UPGRADE_IMAGE_TAG = 0x0000


@dataclass(frozen=True, slots=True)
class PayloadVerdict:
    """The result of a payload check; `offset`: where the faulty sub-element's data starts in the OTA file."""

    status: PayloadStatus
    reason: str
    offset: int | None = None


def check_zigbee_payload(data: bytes, image: ZigbeeOtaImage | None = None) -> PayloadVerdict:
    """Check the firmware inside a Zigbee OTA file with zigpy's validators (see module docstring).

    `image` is our own parse of `data` (used only to name the offset of a bad sub-element)."""
    from zigpy.ota import validators
    from zigpy.ota.image import parse_ota_image

    try:
        zimage, _rest = parse_ota_image(data)
    except Exception as exc:  # zigpy refuses a file our codec accepted: it would not send it either
        return PayloadVerdict("unknown", f"zigpy cannot parse the file ({exc}); payload not checked")
    try:
        result = validators.validate_ota_image(zimage)
    except validators.ValidationError as exc:
        return PayloadVerdict("invalid", f"upgrade image: {exc}", _bad_subelement_offset(data, image))
    if result == validators.ValidationResult.VALID:
        return PayloadVerdict("valid", "Silicon Labs EBL/GBL structure and CRC-32 checked (zigpy validators)")
    return PayloadVerdict(
        "unknown", "payload is not a Silicon Labs EBL/GBL image; no validator for its format"
    )


def _bad_subelement_offset(data: bytes, image: ZigbeeOtaImage | None) -> int | None:
    """The file offset of the first upgrade-image sub-element zigpy's firmware validator refuses."""
    if image is None:
        return None
    from zigpy.ota import validators

    for sub in image.subelements:
        if sub.tag != _UPGRADE_IMAGE_TAG:
            continue
        try:
            validators.validate_firmware(data[sub.offset : sub.offset + sub.length])
        except validators.ValidationError:
            return sub.offset
    return None


def check_payload(data: bytes, image: MatterOtaImage | ZigbeeOtaImage) -> PayloadVerdict:
    """The payload verdict of a parsed OTA file (`data` is the whole file)."""
    if isinstance(image, MatterOtaImage):
        return PayloadVerdict(
            "valid", f"payload {image.header.digest_name} digest matches the header (Matter image digest)"
        )
    return check_zigbee_payload(data, image)
