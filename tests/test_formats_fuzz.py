"""Property tests for the OTA codecs: random valid images round-trip (Matter and Zigbee, Zigbee also through
zigpy), and random or mutated bytes raise only `OtaFormatError` subclasses, never IndexError, struct.error,
UnicodeDecodeError, RecursionError..."""

from __future__ import annotations

import contextlib
import struct
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zigpy.ota import image as zimage

from gateway.formats import (
    DIGEST_TYPES,
    MATTER_OTA_MAGIC,
    ZIGBEE_OTA_MAGIC,
    OtaFormatError,
    build_matter_image,
    build_zigbee_image,
    parse_matter_image,
    parse_matter_prefix,
    parse_ota_image,
    parse_zigbee_image,
    parse_zigbee_prefix,
)
from gateway.formats.tlv import decode_one

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUND = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
text64 = st.text(min_size=1, max_size=64).filter(lambda s: 1 <= len(s.encode()) <= 64)


@st.composite
def matter_args(draw: st.DrawFn) -> dict[str, Any]:
    low = draw(st.none() | u32)
    high = draw(st.none() | u32)
    if low is not None and high is not None and low > high:
        low, high = high, low
    return {
        "payload": draw(st.binary(max_size=300)),
        "vendor_id": draw(u16),
        "product_id": draw(u16),
        "software_version": draw(u32),
        "software_version_string": draw(text64),
        "min_applicable_version": low,
        "max_applicable_version": high,
        "release_notes_url": draw(
            st.none() | st.text(min_size=1, max_size=256).filter(lambda s: 1 <= len(s.encode()) <= 256)
        ),
        "digest_type": draw(st.sampled_from(sorted(DIGEST_TYPES))),
    }


@st.composite
def zigbee_args(draw: st.DrawFn) -> dict[str, Any]:
    hw = draw(st.none() | st.tuples(u16, u16).map(sorted))
    return {
        "payload": draw(
            st.binary(max_size=300) | st.lists(st.tuples(u16, st.binary(max_size=40)), max_size=4)
        ),
        "manufacturer_code": draw(u16),
        "image_type": draw(u16),
        "file_version": draw(u32),
        "stack_version": draw(u16),
        "header_string": draw(st.binary(max_size=32)),
        "security_credential_version": draw(st.none() | st.integers(0, 255)),
        "destination": draw(st.none() | st.binary(min_size=8, max_size=8).map(lambda b: b.hex(":"))),
        "min_hw": None if hw is None else hw[0],
        "max_hw": None if hw is None else hw[1],
        "header_version": draw(u16),
    }


@ROUND
@given(matter_args())
def test_matter_round_trip(args: dict[str, Any]) -> None:
    payload = args.pop("payload")
    data = build_matter_image(payload, **args)
    image = parse_matter_image(data)
    h = image.header
    assert h.vendor_id == args["vendor_id"] and h.product_id == args["product_id"]
    assert h.software_version == args["software_version"]
    assert h.software_version_string == args["software_version_string"]
    assert h.min_applicable_version == args["min_applicable_version"]
    assert h.max_applicable_version == args["max_applicable_version"]
    assert h.release_notes_url == args["release_notes_url"]
    assert h.digest_type == args["digest_type"] and h.payload_size == len(payload)
    assert bytes(image.payload(data)) == payload and image.total_size == len(data)
    assert parse_matter_prefix(data[: image.payload_offset]) == image


@ROUND
@given(zigbee_args())
def test_zigbee_round_trip(args: dict[str, Any]) -> None:
    payload = args.pop("payload")
    data = build_zigbee_image(payload, **args)
    image = parse_zigbee_image(data)
    h = image.header
    assert (h.manufacturer_code, h.image_type, h.file_version, h.stack_version, h.header_version) == (
        args["manufacturer_code"],
        args["image_type"],
        args["file_version"],
        args["stack_version"],
        args["header_version"],
    )
    assert h.header_string == args["header_string"].ljust(32, b"\x00")
    assert h.security_credential_version == args["security_credential_version"]
    assert h.upgrade_file_destination == args["destination"]
    assert (h.min_hardware_version, h.max_hardware_version) == (args["min_hw"], args["max_hw"])
    elements = [(0, payload)] if isinstance(payload, bytes) else payload
    assert [(s.tag, bytes(s.data(data))) for s in image.subelements] == elements
    assert parse_zigbee_prefix(data[: h.header_length]) == h
    # zigpy, an independent implementation, reads the same sub-elements.
    theirs, rest = zimage.OTAImage.deserialize(data)
    assert rest == b"" and theirs.header.file_version == h.file_version
    assert [(int(s.tag_id), bytes(s.data)) for s in theirs.subelements] == elements


def _only_format_errors(data: bytes) -> None:
    for parse in (
        parse_ota_image,
        parse_matter_image,
        parse_matter_prefix,
        parse_zigbee_image,
        parse_zigbee_prefix,
    ):
        try:
            parse(data)
        except OtaFormatError as exc:
            # The offset always points into the data (or just past its end, for truncation).
            assert isinstance(exc.offset, int) and 0 <= exc.offset <= len(data)
            assert exc.defect


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes(data: bytes) -> None:
    _only_format_errors(data)


@FUZZ
@given(st.binary(max_size=120), st.sampled_from([MATTER_OTA_MAGIC, ZIGBEE_OTA_MAGIC]))
def test_random_bytes_after_magic(body: bytes, magic: int) -> None:
    _only_format_errors(struct.pack("<I", magic) + body)


@FUZZ
@given(st.binary(max_size=150), st.binary(max_size=20))
def test_random_header_tlv(tlv: bytes, payload: bytes) -> None:
    # A consistent fixed header so the fuzzer's bytes reach the TLV decoder and the field checks.
    data = struct.pack("<IQI", MATTER_OTA_MAGIC, 16 + len(tlv) + len(payload), len(tlv)) + tlv + payload
    _only_format_errors(data)
    with contextlib.suppress(OtaFormatError):
        decode_one(tlv)


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        args = draw(matter_args())
        data = bytearray(build_matter_image(args.pop("payload"), **args))
    else:
        args = draw(zigbee_args())
        data = bytearray(build_zigbee_image(args.pop("payload"), **args))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0x18, 0xFF, 0x15, 0x07, 0x13]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[at : at + draw(st.integers(1, 4))]
    return bytes(data)


@FUZZ
@given(mutated_image())
def test_mutated_images(data: bytes) -> None:
    _only_format_errors(data)
