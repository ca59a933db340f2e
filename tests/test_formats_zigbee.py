"""Zigbee OTA image codec: the real vendor files (checked against zigpy's own parser as an independent
oracle), round trips through both codecs, and every defect class with its exact offset."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import zigpy.types as zt
from zigpy.ota import image as zimage

from gateway.formats import (
    IMAGE_TYPE_SPECIAL,
    SUBELEMENT_TAGS,
    ZIGBEE_OTA_MAGIC,
    BadMagicError,
    FieldValueError,
    LengthMismatchError,
    OtaFormatError,
    SubElement,
    SubElementError,
    TruncatedError,
    ZigbeeOtaImage,
    build_matter_image,
    build_zigbee_image,
    detect_protocol,
    parse_ota_image,
    parse_zigbee_image,
    parse_zigbee_prefix,
)
from tests.fixtures_gen import BY_NAME as GENERATED_BY_NAME
from tests.fixtures_gen import IMAGES as GENERATED

FIXTURES = Path(__file__).resolve().parent.parent / ".." / "shared" / "fixtures" / "zigbee"
REAL_NAMES = [
    "1135-0000-201000A0-FLS-PP3_RGBW.zigbee",
    "RDL2016091_1_E11-G13_V0.0.9_20170921_release.ota",
    "ikea-mgm210l-light-cws-cv-rgbw-v268572245.ota",
]
# Values read from the files with zigpy 2.4.0 (`zigpy.ota.image.parse_ota_image`) and cross-checked in
# test_fixture_matches_zigpy below: (manufacturer, image type, file version, total size, header text).
FIXTURE_FACTS = {
    REAL_NAMES[0]: (0x1135, 0x0000, 0x201000A0, 197247, None),
    REAL_NAMES[1]: (0x1160, 0x0003, 0x00000009, 116478, "EBL ElementClassic_E11GX3"),
    REAL_NAMES[2]: (0x117C, 0x2802, 268572245, 228582, "GBL Signed OTA"),
}
# Generated equivalents (tests/fixtures_gen.py) with the same quirks run on every clone; the real files are an
# extra layer where ../shared is present.
for _g in GENERATED:
    FIXTURE_FACTS[_g.name] = (
        _g.manufacturer,
        _g.image_type,
        _g.file_version,
        len(_g.build()),
        _g.header_text,
    )
FIXTURE_NAMES = [g.name for g in GENERATED] + REAL_NAMES


def _fixture(name: str) -> bytes:
    if name in GENERATED_BY_NAME:
        return GENERATED_BY_NAME[name].build()
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip("shared fixtures not present")
    return path.read_bytes()


def _zigpy_parse(data: bytes) -> zimage.OTAImage:
    parsed, rest = zimage.OTAImage.deserialize(data)
    assert rest == b""
    return parsed


def _assert_matches_zigpy(data: bytes, ours: ZigbeeOtaImage) -> None:
    theirs = _zigpy_parse(data)
    zh, h = theirs.header, ours.header
    assert h.header_version == zh.header_version
    assert h.header_length == zh.header_length
    assert h.field_control == int(zh.field_control)
    assert h.manufacturer_code == zh.manufacturer_id
    assert h.image_type == zh.image_type
    assert h.file_version == zh.file_version
    assert h.stack_version == zh.stack_version
    assert h.header_string == zh.header_string.serialize()
    assert h.total_image_size == zh.image_size
    assert h.security_credential_version == zh.security_credential_version
    assert h.upgrade_file_destination == (
        None if zh.upgrade_file_destination is None else str(zh.upgrade_file_destination)
    )
    assert h.min_hardware_version == zh.minimum_hardware_version
    assert h.max_hardware_version == zh.maximum_hardware_version
    assert [(s.tag, bytes(s.data(data))) for s in ours.subelements] == [
        (int(s.tag_id), bytes(s.data)) for s in theirs.subelements
    ]


# ---------------------------------------------------------------------------------------- vendor files


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_matches_zigpy(name: str) -> None:
    data = _fixture(name)
    image = parse_zigbee_image(data)
    _assert_matches_zigpy(data, image)
    manufacturer, image_type, file_version, size, text = FIXTURE_FACTS[name]
    h = image.header
    assert (h.manufacturer_code, h.image_type, h.file_version, h.total_image_size) == (
        manufacturer,
        image_type,
        file_version,
        size,
    )
    assert (h.header_version, h.header_length, h.field_control, h.stack_version) == (0x0100, 56, 0, 2)
    assert h.security_credential_version is None and h.upgrade_file_destination is None
    assert h.min_hardware_version is None and h.max_hardware_version is None
    if text is not None:
        assert h.header_text == text
    assert len(h.header_string) == 32
    assert [(s.tag, s.offset, s.length, s.name) for s in image.subelements] == [
        (0, 62, size - 62, "upgrade image")
    ]
    assert parse_ota_image(data) == image and detect_protocol(data) == "zigbee"
    assert parse_zigbee_prefix(data[:56]) == h


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_fixture_damage_is_named(name: str) -> None:
    data = _fixture(name)
    with pytest.raises(TruncatedError) as err:
        parse_zigbee_image(data[:-1])
    assert err.value.offset == len(data) - 1
    with pytest.raises(LengthMismatchError) as err2:
        parse_zigbee_image(data + b"\xff")
    assert err2.value.offset == len(data)
    # Sub-element length one byte too long: it would run past the end of the image.
    bad = bytearray(data)
    struct.pack_into("<I", bad, 58, len(data) - 62 + 1)
    with pytest.raises(SubElementError) as err3:
        parse_zigbee_image(bytes(bad))
    assert err3.value.offset == 56


# --------------------------------------------------------------------------------------------- round trips


def test_round_trip_every_field_checked_by_zigpy() -> None:
    elements = [(0, b"firmware" * 100), (3, b"\x01\x02\x03\x04"), (0xF123, b""), (1, b"s" * 42)]
    data = build_zigbee_image(
        elements,
        manufacturer_code=0x115F,
        image_type=0xFFC3,
        file_version=0x01020304,
        stack_version=3,
        header_string="Picture 🖼",
        security_credential_version=0x02,
        destination="00:0d:6f:00:0a:bc:de:f1",
        min_hw=0x0001,
        max_hw=0x0203,
        header_version=0x0100,
    )
    image = parse_zigbee_image(data)
    h = image.header
    assert (h.manufacturer_code, h.image_type, h.file_version, h.stack_version) == (
        0x115F,
        0xFFC3,
        0x01020304,
        3,
    )
    assert h.header_length == 56 + 1 + 8 + 4 and h.field_control == 0x7
    assert h.header_text == "Picture 🖼" and h.header_string == "Picture 🖼".encode().ljust(32, b"\x00")
    assert h.security_credential_version == 2
    assert h.upgrade_file_destination == "00:0d:6f:00:0a:bc:de:f1"
    assert data[57:65] == bytes.fromhex("f1debc0a006f0d00")  # EUI64 little-endian on the wire
    assert (h.min_hardware_version, h.max_hardware_version) == (1, 0x0203)
    assert h.total_image_size == len(data)
    assert h.image_type_name == "picture"
    assert [(s.tag, bytes(s.data(data))) for s in image.subelements] == elements
    assert [s.name for s in image.subelements] == [
        "upgrade image",
        "image integrity code",
        "manufacturer specific (0xf123)",
        "ECDSA signature (suite 1)",
    ]
    _assert_matches_zigpy(data, image)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"security_credential_version": 0},
        {"destination": "ff:ee:dd:cc:bb:aa:99:88"},
        {"min_hw": 0, "max_hw": 0xFFFF},
        {"security_credential_version": 1, "min_hw": 5, "max_hw": 5},
    ],
)
def test_optional_field_combinations(options: dict[str, Any]) -> None:
    data = build_zigbee_image(b"\x00" * 10, manufacturer_code=1, image_type=2, file_version=3, **options)
    image = parse_zigbee_image(data)
    _assert_matches_zigpy(data, image)
    assert image.subelements == (SubElement(tag=0, offset=image.header.header_length + 6, length=10),)


def test_zigpy_built_image_parses() -> None:
    header = zimage.OTAImageHeader(
        upgrade_file_id=zimage.OTAImageHeader.MAGIC_VALUE,
        header_version=0x0100,
        header_length=56 + 8 + 4,
        field_control=zimage.FieldControl.DEVICE_SPECIFIC_FILE_PRESENT
        | zimage.FieldControl.HARDWARE_VERSIONS_PRESENT,
        manufacturer_id=0x1037,
        image_type=0x0102,
        file_version=77,
        stack_version=2,
        header_string="zigpy made this",
        image_size=0,
        upgrade_file_destination=zt.EUI64.convert("11:22:33:44:55:66:77:88"),
        minimum_hardware_version=3,
        maximum_hardware_version=9,
    )
    sub = zimage.SubElement(tag_id=zimage.ElementTagId.UPGRADE_IMAGE, data=b"payload-bytes")
    built = zimage.OTAImage(header=header, subelements=[sub])
    built.header.image_size = zt.uint32_t(len(header.serialize()) + len(sub.serialize()))
    data = built.serialize()
    h = parse_zigbee_image(data).header
    assert h.upgrade_file_destination == "11:22:33:44:55:66:77:88"
    assert (h.min_hardware_version, h.max_hardware_version, h.header_text) == (3, 9, "zigpy made this")
    assert (h.manufacturer_code, h.image_type, h.file_version) == (0x1037, 0x0102, 77)


def test_header_only_image_and_header_text() -> None:
    data = build_zigbee_image(
        [], manufacturer_code=0xFFFF, image_type=0xFFFF, file_version=0, header_string=b"a\x00b"
    )
    image = parse_zigbee_image(data)
    assert image.subelements == () and len(data) == 56
    assert image.header.header_text == "a" and image.header.image_type_name == "wildcard"
    assert parse_zigbee_image(
        build_zigbee_image(b"", manufacturer_code=1, image_type=1, file_version=1)
    ).subelements[0] == SubElement(tag=0, offset=62, length=0)
    binary = build_zigbee_image(
        b"", manufacturer_code=1, image_type=1, file_version=1, header_string=b"\xff\xfeok"
    )
    assert parse_zigbee_image(binary).header.header_text == "\ufffd\ufffdok"


def test_tables() -> None:
    # ZCL OTA tag identifiers and special image types (checked against the ZCL spec / vendor stacks).
    assert SUBELEMENT_TAGS[0] == "upgrade image" and SUBELEMENT_TAGS[3] == "image integrity code"
    assert (
        SUBELEMENT_TAGS[4] == "picture data" and SUBELEMENT_TAGS[6] == "ECDSA signing certificate (suite 2)"
    )
    assert (
        IMAGE_TYPE_SPECIAL[0xFFC0] == "client security credentials"
        and IMAGE_TYPE_SPECIAL[0xFFFF] == "wildcard"
    )
    assert SubElement(0x0100, 0, 0).name == "reserved (0x0100)"
    assert {int(t) for t in zimage.ElementTagId} <= set(SUBELEMENT_TAGS)


# ------------------------------------------------------------------------------------------------- defects


def _good(**options: Any) -> bytes:
    return build_zigbee_image(b"fw-bytes", manufacturer_code=0x1234, image_type=1, file_version=2, **options)


def _raises(exc_type: type[OtaFormatError], data: bytes, offset: int) -> OtaFormatError:
    with pytest.raises(OtaFormatError) as err:
        parse_zigbee_image(data)
    assert type(err.value) is exc_type, err.value
    assert err.value.offset == offset, err.value
    return err.value


def test_truncated_header() -> None:
    data = _good(min_hw=1, max_hw=2)
    _raises(TruncatedError, b"", 0)
    _raises(TruncatedError, data[:2], 2)
    _raises(TruncatedError, data[:55], 55)
    _raises(TruncatedError, data[:58], 58)  # inside the optional hardware versions
    with pytest.raises(TruncatedError) as err:
        parse_zigbee_prefix(data[:59])
    assert err.value.offset == 59
    assert parse_zigbee_prefix(data[:60]).max_hardware_version == 2


def test_bad_magic() -> None:
    data = _good()
    _raises(BadMagicError, b"\x1f" + data[1:], 0)
    matter = build_matter_image(
        b"x", vendor_id=1, product_id=1, software_version=1, software_version_string="1"
    )
    assert "0x1BEEF11E" in _raises(BadMagicError, matter, 0).defect
    assert detect_protocol(struct.pack("<I", ZIGBEE_OTA_MAGIC)) == "zigbee"
    with pytest.raises(TruncatedError):
        detect_protocol(b"\x1e\xf1")


def test_reserved_field_control_bits() -> None:
    data = bytearray(_good())
    struct.pack_into("<H", data, 8, 0x0008)
    assert "reserved bits 0x0008" in _raises(FieldValueError, bytes(data), 8).defect


@pytest.mark.parametrize("header_length", [55, 57, 0, 0xFFFF])
def test_header_length_must_match_field_control(header_length: int) -> None:
    data = bytearray(_good())
    struct.pack_into("<H", data, 6, header_length)
    _raises(LengthMismatchError, bytes(data), 6)
    data = bytearray(_good(security_credential_version=1))
    struct.pack_into("<H", data, 8, 0)  # field control no longer announces the byte that is there
    _raises(LengthMismatchError, bytes(data), 6)


def test_total_size_defects() -> None:
    data = bytearray(_good())
    struct.pack_into("<I", data, 52, 40)
    _raises(LengthMismatchError, bytes(data), 52)
    struct.pack_into("<I", data, 52, len(data) + 10)
    _raises(TruncatedError, bytes(data), len(data))
    good = _good()
    assert "3 trailing bytes" in _raises(LengthMismatchError, good + b"abc", len(good)).defect


def test_subelement_defects() -> None:
    data = _good()
    # Four stray bytes after the last sub-element (total size grown to include them).
    grown = bytearray(data + b"\x00" * 4)
    struct.pack_into("<I", grown, 52, len(grown))
    assert "too few" in _raises(SubElementError, bytes(grown), len(data)).defect
    # Second sub-element whose length overruns the image.
    two = bytearray(
        build_zigbee_image([(0, b"a" * 5), (4, b"b" * 5)], manufacturer_code=1, image_type=1, file_version=1)
    )
    second = 56 + 6 + 5
    struct.pack_into("<I", two, second + 2, 6)
    err = _raises(SubElementError, bytes(two), second)
    assert "0x0004" in err.defect and "1 bytes past" in err.defect
    # A huge length cannot wrap around.
    struct.pack_into("<I", two, second + 2, 0xFFFF_FFFF)
    _raises(SubElementError, bytes(two), second)


def test_hardware_versions_out_of_order() -> None:
    data = bytearray(_good(min_hw=1, max_hw=2))
    struct.pack_into("<HH", data, 56, 3, 2)
    _raises(FieldValueError, bytes(data), 56)


@pytest.mark.parametrize(
    "options",
    [
        {"manufacturer_code": 0x10000},
        {"image_type": -1},
        {"file_version": 1 << 32},
        {"stack_version": 0x10000},
        {"header_string": "x" * 33},
        {"header_string": b"\x00" * 33},
        {"security_credential_version": 256},
        {"destination": "00:11:22"},
        {"destination": "zz:11:22:33:44:55:66:77"},
        {"min_hw": 1},
        {"min_hw": 3, "max_hw": 2},
        {"max_hw": 0x10000, "min_hw": 0},
    ],
)
def test_builder_rejects_bad_values(options: dict[str, Any]) -> None:
    args: dict[str, Any] = {"manufacturer_code": 1, "image_type": 1, "file_version": 1}
    args.update(options)
    with pytest.raises(FieldValueError):
        build_zigbee_image(b"x", **args)
    with pytest.raises(FieldValueError):
        build_zigbee_image([(0x10000, b"")], manufacturer_code=1, image_type=1, file_version=1)
