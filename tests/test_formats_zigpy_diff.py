"""Differential test: otagw's Zigbee OTA parser against zigpy's (`zigpy.ota.image.parse_ota_image`), field for
field, over the real vendor files (when ../shared is present) and generated files of every kind zigpy accepts:
plain ZCL images (with every optional header field), Hue's SBL images, Telink images, and the Legrand, Third
Reality and IKEA containers. A clone without ../shared covers the same code paths with the generated files."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest
from store_helpers import FIXTURES, payload
from zigpy.ota import image as zimage

from gateway.formats import OtaFormatError
from gateway.formats.zigbee_ota import build_zigbee_image, parse_zigbee_image, unwrap_zigbee_container

VARIANTS = {zimage.OTAImage: "zcl", zimage.HueSBLOTAImage: "hue-sbl", zimage.TelinkOTAImage: "telink"}


def header(mfr: int, itype: int, version: int, total: int, text: bytes = b"otagw test") -> bytes:
    """A plain 56-byte OTA header (no optional fields)."""
    return struct.pack(
        "<IHHHHHIH32sI", 0x0BEEF11E, 0x0100, 56, 0, mfr, itype, version, 2, text.ljust(32, b"\0"), total
    )


def hue_sbl(version: int = 0x01001234) -> bytes:
    body = b"\x2a\x00\x01" + payload(700, 3)  # not sub-elements: an SBL image after the header
    return header(0x100B, 0x0116, version, 56 + len(body)) + body


def telink() -> bytes:
    enc = payload(300, 5)
    plain = payload(40, 6)
    body = (
        struct.pack("<HIH", 0xF000, len(enc), 0x0102) + enc + struct.pack("<HI", 0x0000, len(plain)) + plain
    )
    return header(0x1141, 0xD3A3, 0x2000, 56 + len(body)) + body


def legrand(inner: bytes) -> bytes:
    return len(inner).to_bytes(4, "little") + inner + b"\x01" + bytes(16)


def third_reality(inner: bytes) -> bytes:
    head = bytearray(152)
    total = 152 + len(inner)
    head[68:72] = (total - 64).to_bytes(4, "little")
    data = bytearray(head + inner)
    data[0:64] = hashlib.sha512(bytes(data[64:])).digest()
    return bytes(data)


def ikea_container(inner: bytes) -> bytes:
    offset = 40
    head = bytearray(b"NGIS" + bytes(offset - 4))
    head[16:20] = offset.to_bytes(4, "little")
    head[20:24] = len(inner).to_bytes(4, "little")
    return bytes(head) + inner + bytes(8)  # the container is longer than the image it holds


PLAIN = build_zigbee_image(
    payload(500, 1), manufacturer_code=0x117C, image_type=0x2811, file_version=0x10021655
)
GENERATED: dict[str, bytes] = {
    "plain": PLAIN,
    "all-optional-fields": build_zigbee_image(
        [(0, payload(300, 2)), (1, b"sig" * 10), (0xF00F, b"vendor")],
        manufacturer_code=0x1135,
        image_type=0x0000,
        file_version=0x201000A0,
        header_string="full header",
        security_credential_version=1,
        destination="00:12:4b:00:01:ab:cd:ef",
        min_hw=1,
        max_hw=0x0203,
    ),
    "wildcard": build_zigbee_image(b"", manufacturer_code=0xFFFF, image_type=0xFFFF, file_version=1),
    "hue-sbl": hue_sbl(),
    "telink": telink(),
    "legrand": legrand(PLAIN),
    "third-reality": third_reality(PLAIN),
    "ikea-container": ikea_container(PLAIN),
}


def _files() -> list[tuple[str, bytes]]:
    files = list(GENERATED.items())
    if FIXTURES.is_dir():
        files += [(p.name, p.read_bytes()) for p in sorted(FIXTURES.iterdir()) if p.suffix != ".json"]
    return files


def _zigpy_fields(img: Any) -> dict[str, Any]:
    h = img.header
    fields = {
        "manufacturer": int(h.manufacturer_id),
        "image_type": int(h.image_type),
        "file_version": int(h.file_version),
        "header_version": int(h.header_version),
        "header_length": int(h.header_length),
        "field_control": int(h.field_control),
        "stack_version": int(h.stack_version),
        "header_string": bytes(h.header_string).ljust(32, b"\0"),
        "image_size": int(h.image_size),
        "security_credential_version": None
        if h.security_credential_version is None
        else int(h.security_credential_version),
        "destination": None
        if h.upgrade_file_destination is None
        else ":".join(f"{b:02x}" for b in reversed(bytes(h.upgrade_file_destination.serialize()))),
        "min_hw": None if h.minimum_hardware_version is None else int(h.minimum_hardware_version),
        "max_hw": None if h.maximum_hardware_version is None else int(h.maximum_hardware_version),
        "variant": VARIANTS[type(img)],
    }
    if isinstance(img, zimage.HueSBLOTAImage):
        fields["subelements"] = []
    else:
        fields["subelements"] = [(int(e.tag_id), len(e.data)) for e in img.subelements]
    return fields


def _otagw_fields(data: bytes) -> dict[str, Any]:
    inner, _ = unwrap_zigbee_container(data)
    img = parse_zigbee_image(inner)
    h = img.header
    return {
        "manufacturer": h.manufacturer_code,
        "image_type": h.image_type,
        "file_version": h.file_version,
        "header_version": h.header_version,
        "header_length": h.header_length,
        "field_control": h.field_control,
        "stack_version": h.stack_version,
        "header_string": h.header_string,
        "image_size": h.total_image_size,
        "security_credential_version": h.security_credential_version,
        "destination": h.upgrade_file_destination,
        "min_hw": h.min_hardware_version,
        "max_hw": h.max_hardware_version,
        "variant": img.variant,
        "subelements": [(e.tag, e.length) for e in img.subelements],
    }


@pytest.mark.parametrize(("name", "data"), _files(), ids=[n for n, _ in _files()])
def test_otagw_and_zigpy_agree(name: str, data: bytes) -> None:
    zimg, rest = zimage.parse_ota_image(data)
    assert rest == b"" or name == "ikea-container"
    assert _otagw_fields(data) == _zigpy_fields(zimg)


def test_generated_kinds_cover_every_zigpy_image_class() -> None:
    kinds = {type(zimage.parse_ota_image(d)[0]) for d in GENERATED.values()}
    assert kinds == set(VARIANTS)
    containers = {unwrap_zigbee_container(d)[1] for d in GENERATED.values()}
    assert containers == {None, "legrand", "thirdreality", "ikea"}


@pytest.mark.parametrize("name", ["plain", "telink", "hue-sbl"])
def test_both_refuse_a_truncated_file(name: str) -> None:
    data = GENERATED[name][:-10]
    with pytest.raises(ValueError):
        zimage.parse_ota_image(data)
    with pytest.raises(OtaFormatError):
        parse_zigbee_image(data)


def test_unwrapped_images_import_into_the_store(tmp_path: Path) -> None:
    import asyncio

    from gateway.store.store import ImageStore

    async def go() -> list[str]:
        async with ImageStore(tmp_path) as store:
            for name in ("hue-sbl", "telink"):
                await store.add_bytes(GENERATED[name], file_name=f"{name}.ota")
            return [e.name for e in await store.list()]

    assert len(asyncio.run(go())) == 2
