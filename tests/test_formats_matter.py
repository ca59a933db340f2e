"""Matter OTA image codec: round trips, every field, every defect class with its exact offset, interop with
CHIP's own TLV codec (chip.tlv, as ota_image_tool.py uses it) and with matter.js OtaImageWriter/Reader."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.formats import (
    DIGEST_LENGTHS,
    DIGEST_TYPES,
    MATTER_OTA_MAGIC,
    BadMagicError,
    DigestMismatchError,
    FieldValueError,
    LengthMismatchError,
    MatterOtaImage,
    OtaFormatError,
    TlvFormatError,
    TruncatedError,
    build_matter_image,
    build_zigbee_image,
    compute_digest,
    detect_protocol,
    digest_name_to_type,
    parse_matter_image,
    parse_matter_prefix,
    parse_ota_image,
)
from gateway.formats.tlv import MAX_DEPTH, ProfileTag, TlvWriter

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "tests" / "js"
PAYLOAD = bytes(range(256)) * 5 + b"tail"


def _image(**overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "vendor_id": 0xFFF1,
        "product_id": 0x8001,
        "software_version": 0x01020304,
        "software_version_string": "1.2.3-rc4",
    }
    args.update(overrides)
    payload = args.pop("payload", PAYLOAD)
    return build_matter_image(payload, **args)


Field = Callable[[TlvWriter], Any]


def _raw_image(
    fields: list[Field], payload: bytes = PAYLOAD, *, total_delta: int = 0
) -> tuple[bytes, list[int]]:
    """A Matter image whose header TLV is written field by field; returns it and each field's file offset."""
    writer = TlvWriter().start_struct()
    offsets = []
    for put in fields:
        offsets.append(16 + len(writer))
        put(writer)
    tlv = writer.end_container().to_bytes()
    fixed = struct.pack("<IQI", MATTER_OTA_MAGIC, 16 + len(tlv) + len(payload) + total_delta, len(tlv))
    return fixed + tlv + payload, offsets


def _std_fields(payload: bytes = PAYLOAD, **replace: Field | None) -> list[Field]:
    fields: dict[str, Field | None] = {
        "vendor": lambda w: w.put_uint(0, 0xFFF1),
        "product": lambda w: w.put_uint(1, 0x8001),
        "version": lambda w: w.put_uint(2, 7),
        "version_string": lambda w: w.put_utf8(3, "7.0"),
        "payload_size": lambda w: w.put_uint(4, len(payload)),
        "digest_type": lambda w: w.put_uint(8, 1),
        "digest": lambda w: w.put_bytes(9, hashlib.sha256(payload).digest()),
    }
    fields.update(replace)
    return [f for f in fields.values() if f is not None]


# ---------------------------------------------------------------------------------------------- round trips


def test_round_trip_every_field() -> None:
    data = _image(
        min_applicable_version=3,
        max_applicable_version=0x01020303,
        release_notes_url="https://example.com/notes/1.2.3",
        digest_type=7,
    )
    image = parse_matter_image(data)
    h = image.header
    assert (h.vendor_id, h.product_id, h.software_version) == (0xFFF1, 0x8001, 0x01020304)
    assert h.software_version_string == "1.2.3-rc4"
    assert h.payload_size == len(PAYLOAD)
    assert (h.min_applicable_version, h.max_applicable_version) == (3, 0x01020303)
    assert h.release_notes_url == "https://example.com/notes/1.2.3"
    assert h.digest_type == 7 and h.digest_name == "sha-384"
    assert h.digest == hashlib.sha384(PAYLOAD).digest()
    assert image.total_size == len(data)
    assert image.payload_offset == 16 + image.header_size
    assert struct.unpack_from("<I", data, 12)[0] == image.header_size
    assert bytes(image.payload(data)) == PAYLOAD
    assert parse_ota_image(data) == image
    assert detect_protocol(data) == "matter"


def test_optional_fields_absent() -> None:
    h = parse_matter_image(_image()).header
    assert h.min_applicable_version is None
    assert h.max_applicable_version is None
    assert h.release_notes_url is None


def test_extreme_values_and_empty_payload() -> None:
    data = _image(
        vendor_id=0xFFFF,
        product_id=0,
        software_version=0xFFFF_FFFF,
        software_version_string="v" * 64,
        min_applicable_version=0,
        max_applicable_version=0xFFFF_FFFF,
        release_notes_url="https://e.x/" + "a" * 244,
        payload=b"",
    )
    h = parse_matter_image(data).header
    assert (h.vendor_id, h.product_id, h.software_version) == (0xFFFF, 0, 0xFFFF_FFFF)
    assert h.payload_size == 0 and len(h.release_notes_url or "") == 256
    assert h.digest == hashlib.sha256(b"").digest()


def test_unicode_version_string_is_counted_in_bytes() -> None:
    assert (
        parse_matter_image(_image(software_version_string="é" * 32)).header.software_version_string
        == "é" * 32
    )
    with pytest.raises(FieldValueError):
        _image(software_version_string="é" * 33)  # 66 bytes of UTF-8


@pytest.mark.parametrize("digest_type", sorted(DIGEST_TYPES))
def test_every_digest_type(digest_type: int) -> None:
    data = _image(digest_type=digest_type)
    h = parse_matter_image(data).header
    assert h.digest_type == digest_type
    assert len(h.digest) == DIGEST_LENGTHS[digest_type]
    name = DIGEST_TYPES[digest_type]
    # Independent computation: hashlib by the registry name; truncated sha-256 keeps the leftmost bits.
    if name.startswith("sha-256-"):
        expected = hashlib.sha256(PAYLOAD).digest()[: int(name.rsplit("-", 1)[1]) // 8]
    else:
        hashlib_name = name.replace("-", "_") if name.startswith("sha3-") else name.replace("-", "")
        expected = hashlib.new(hashlib_name, PAYLOAD).digest()
    assert h.digest == expected
    corrupted = bytearray(data)
    corrupted[-1] ^= 1
    with pytest.raises(DigestMismatchError):
        parse_matter_image(bytes(corrupted))


def test_digest_registry_names() -> None:
    # IANA Named Information Hash Algorithm Registry (RFC 6920), checked against iana.org.
    assert DIGEST_TYPES[1] == "sha-256" and DIGEST_TYPES[6] == "sha-256-32"
    assert DIGEST_TYPES[7] == "sha-384" and DIGEST_TYPES[8] == "sha-512"
    assert DIGEST_TYPES[9] == "sha3-224" and DIGEST_TYPES[12] == "sha3-512"
    for name, expected in [
        ("sha256", 1),
        ("SHA-256", 1),
        ("sha-256-128", 2),
        ("sha256_120", 3),
        ("sha384", 7),
        ("sha512", 8),
        ("sha3-256", 10),
        ("sha3_512", 12),
        ("10", 10),
    ]:
        assert digest_name_to_type(name) == expected
    with pytest.raises(ValueError, match="md5"):
        digest_name_to_type("md5")


def test_compute_digest_truncation() -> None:
    assert compute_digest(3, b"abc") == hashlib.sha256(b"abc").digest()[:15]


def test_prefix_needs_only_the_header() -> None:
    data = _image(release_notes_url="https://x.example")
    full = parse_matter_image(data)
    assert parse_matter_prefix(data[: full.payload_offset]) == full
    assert parse_matter_prefix(data[: full.payload_offset + 3]) == full
    with pytest.raises(TruncatedError) as err:
        parse_matter_prefix(data[: full.payload_offset - 1])
    assert err.value.offset == full.payload_offset - 1


def test_verify_digest_can_be_skipped() -> None:
    data = bytearray(_image())
    data[-1] ^= 0xFF
    image = parse_matter_image(bytes(data), verify_digest=False)
    with pytest.raises(DigestMismatchError) as err:
        parse_matter_image(bytes(data))
    assert err.value.offset == image.payload_offset
    assert "does not match" in str(err.value)


def test_non_minimal_widths_and_unknown_fields_are_accepted() -> None:
    payload = b"xyz"
    fields = _std_fields(
        payload,
        vendor=lambda w: w.put_uint(0, 0xFFF1, width=8),
        product=lambda w: w.put_uint(1, 1, width=4),
        version_string=lambda w: w.put_utf8(3, "7.0", width=2),
        payload_size=lambda w: w.put_uint(4, 3, width=8),
        digest=lambda w: w.put_bytes(9, hashlib.sha256(payload).digest(), width=4),
    )
    # Future fields: an unknown context tag, a fully qualified profile tag and a nested container.
    fields.append(lambda w: w.put_utf8(10, "future"))
    fields.append(lambda w: w.put_uint(ProfileTag(0x0000, 0xFFF1, 0x0001), 5))
    fields.append(lambda w: w.start_list(11).put_bool(None, True).put_null(1).end_container())
    data, _ = _raw_image(fields, payload)
    h = parse_matter_image(data).header
    assert (h.vendor_id, h.product_id, h.software_version_string, h.payload_size) == (0xFFF1, 1, "7.0", 3)


# --------------------------------------------------------------------------------- defects, exact offsets


def _raises(exc_type: type[OtaFormatError], data: bytes, offset: int, **kw: Any) -> OtaFormatError:
    with pytest.raises(OtaFormatError) as err:
        parse_matter_image(data, **kw)
    assert type(err.value) is exc_type, err.value
    assert err.value.offset == offset, err.value
    assert str(err.value) == f"{err.value.defect} at byte {offset}"
    return err.value


def test_truncated_fixed_header() -> None:
    data = _image()
    _raises(TruncatedError, b"", 0)
    _raises(TruncatedError, data[:3], 3)
    _raises(TruncatedError, data[:15], 15)


def test_bad_magic() -> None:
    data = _image()
    err = _raises(BadMagicError, b"\x00" + data[1:], 0)
    assert "0x1BEEF100" in err.defect
    zigbee = build_zigbee_image(b"fw", manufacturer_code=1, image_type=2, file_version=3)
    _raises(BadMagicError, zigbee, 0)
    with pytest.raises(BadMagicError):
        detect_protocol(b"GBL\x00rest")


def test_header_size_defects() -> None:
    data = bytearray(_image())
    struct.pack_into("<I", data, 12, 0)
    _raises(LengthMismatchError, bytes(data), 12)
    struct.pack_into("<I", data, 12, 0xFFFF_FFFF)
    _raises(LengthMismatchError, bytes(data), 12)


def test_truncated_inside_header_tlv() -> None:
    data = _image()
    _raises(TruncatedError, data[:20], 20)


def test_total_size_disagrees_with_payload_size() -> None:
    data, _ = _raw_image(_std_fields(), total_delta=1)
    _raises(LengthMismatchError, data + b"\x00", 4)
    data, _ = _raw_image(_std_fields(), total_delta=-1)
    _raises(LengthMismatchError, data, 4)


def test_file_shorter_or_longer_than_total_size() -> None:
    data = _image()
    _raises(TruncatedError, data[:-1], len(data) - 1)
    err = _raises(LengthMismatchError, data + b"\x00\x00", len(data))
    assert "2 trailing bytes" in err.defect


@pytest.mark.parametrize(
    "missing", ["vendor", "product", "version", "version_string", "payload_size", "digest_type", "digest"]
)
def test_missing_required_field(missing: str) -> None:
    data, _ = _raw_image(_std_fields(PAYLOAD, **{missing: None}))
    header_end = 16 + struct.unpack_from("<I", data, 12)[0]
    err = _raises(FieldValueError, data, header_end - 1)  # the end-of-container byte
    assert "lacks required field" in err.defect


def test_wrong_field_types() -> None:
    data, offsets = _raw_image(_std_fields(vendor=lambda w: w.put_utf8(0, "fff1")))
    assert "expected an unsigned integer" in _raises(FieldValueError, data, offsets[0]).defect
    data, offsets = _raw_image(_std_fields(product=lambda w: w.put_int(1, 5)))
    _raises(FieldValueError, data, offsets[1])
    data, offsets = _raw_image(_std_fields(version_string=lambda w: w.put_bytes(3, b"1.0")))
    assert "expected a UTF-8 string" in _raises(FieldValueError, data, offsets[3]).defect
    data, offsets = _raw_image(_std_fields(digest=lambda w: w.put_utf8(9, "ab" * 16)))
    _raises(FieldValueError, data, offsets[-1])


def test_field_values_out_of_range() -> None:
    data, offsets = _raw_image(_std_fields(vendor=lambda w: w.put_uint(0, 0x10000)))
    _raises(FieldValueError, data, offsets[0] + 2)  # control + tag, then the value
    data, offsets = _raw_image(_std_fields(version=lambda w: w.put_uint(2, 1 << 32)))
    _raises(FieldValueError, data, offsets[2] + 2)
    data, offsets = _raw_image(_std_fields(digest_type=lambda w: w.put_uint(8, 256)))
    _raises(FieldValueError, data, offsets[5] + 2)


def test_version_string_and_url_lengths() -> None:
    data, offsets = _raw_image(_std_fields(version_string=lambda w: w.put_utf8(3, "")))
    _raises(FieldValueError, data, offsets[3] + 3)  # control, tag, 1-byte length
    data, offsets = _raw_image(_std_fields(version_string=lambda w: w.put_utf8(3, "x" * 65)))
    assert "65 bytes long" in _raises(FieldValueError, data, offsets[3] + 3).defect
    fields = [*_std_fields(), lambda w: w.put_utf8(7, "h" * 257)]
    data, offsets = _raw_image(fields)
    _raises(FieldValueError, data, offsets[-1] + 4)  # 2-byte length field


@pytest.mark.parametrize("digest_type", [0, 13, 255])
def test_unknown_digest_type(digest_type: int) -> None:
    data, offsets = _raw_image(_std_fields(digest_type=lambda w: w.put_uint(8, digest_type)))
    assert "not a known hash algorithm" in _raises(FieldValueError, data, offsets[5] + 2).defect


def test_digest_length_must_match_type() -> None:
    data, offsets = _raw_image(
        _std_fields(digest=lambda w: w.put_bytes(9, hashlib.sha256(PAYLOAD).digest()[:31]))
    )
    err = _raises(FieldValueError, data, offsets[6] + 3)
    assert "31 bytes" in err.defect and "sha-256" in err.defect
    data, offsets = _raw_image(
        _std_fields(
            digest_type=lambda w: w.put_uint(8, 8),
            digest=lambda w: w.put_bytes(9, hashlib.sha256(PAYLOAD).digest()),
        )
    )
    _raises(FieldValueError, data, offsets[6] + 3)


def test_min_greater_than_max() -> None:
    fields = [*_std_fields(), lambda w: w.put_uint(5, 9), lambda w: w.put_uint(6, 8)]
    data, offsets = _raw_image(fields)
    _raises(FieldValueError, data, offsets[-2])


def test_duplicate_field() -> None:
    fields = [*_std_fields(), lambda w: w.put_uint(0, 1)]
    data, offsets = _raw_image(fields)
    assert "duplicate" in _raises(TlvFormatError, data, offsets[-1]).defect


def _with_header_tlv(tlv: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("<IQI", MATTER_OTA_MAGIC, 16 + len(tlv) + len(payload), len(tlv)) + tlv + payload


def test_malformed_header_tlv() -> None:
    good = TlvWriter().start_struct().put_uint(0, 1).end_container().to_bytes()
    # Top level must be an anonymous structure.
    _raises(TlvFormatError, _with_header_tlv(TlvWriter().start_array().end_container().to_bytes()), 16)
    _raises(TlvFormatError, _with_header_tlv(TlvWriter().start_struct(1).end_container().to_bytes()), 16)
    # Extra bytes after the structure, still inside HeaderSize.
    err = _raises(TlvFormatError, _with_header_tlv(good + b"\x18"), 16 + len(good))
    assert "extra bytes" in err.defect
    # Structure without its end-of-container byte.
    _raises(TlvFormatError, _with_header_tlv(good[:-1]), 16 + len(good) - 1)
    # Reserved element type 0x19 as the first member.
    _raises(TlvFormatError, _with_header_tlv(b"\x15\x39\x00\x18"), 17)
    # Anonymous member inside a structure.
    _raises(TlvFormatError, _with_header_tlv(b"\x15\x04\x01\x18"), 17)
    # String length running past HeaderSize.
    _raises(TlvFormatError, _with_header_tlv(b"\x15\x2c\x03\x09ab\x18"), 20)
    # Invalid UTF-8: offset of the offending byte.
    _raises(TlvFormatError, _with_header_tlv(b"\x15\x2c\x03\x03a\xffb\x18"), 21)
    # A lone end-of-container as the whole header.
    _raises(TlvFormatError, _with_header_tlv(b"\x18"), 16)


def test_tlv_nesting_limit() -> None:
    writer = TlvWriter().start_struct()
    for _ in range(MAX_DEPTH):
        writer.start_list(1)
    for _ in range(MAX_DEPTH + 1):
        writer.end_container()
    tlv = writer.to_bytes()
    err = _raises(TlvFormatError, _with_header_tlv(tlv), 16 + 1 + 2 * (MAX_DEPTH - 1))
    assert "nested deeper" in err.defect


# ------------------------------------------------------------------------------------------------ builder


@pytest.mark.parametrize(
    "overrides",
    [
        {"vendor_id": 0x10000},
        {"vendor_id": -1},
        {"product_id": 0x10000},
        {"software_version": 1 << 32},
        {"software_version_string": ""},
        {"software_version_string": "x" * 65},
        {"min_applicable_version": 1 << 32},
        {"min_applicable_version": 5, "max_applicable_version": 4},
        {"release_notes_url": ""},
        {"release_notes_url": "h" * 257},
        {"digest_type": 13},
    ],
)
def test_builder_rejects_bad_values(overrides: dict[str, Any]) -> None:
    with pytest.raises(FieldValueError):
        _image(**overrides)


def test_error_is_value_error_and_pickles() -> None:
    with pytest.raises(ValueError) as err:
        parse_matter_image(b"\x1e\xf1\xee\x1b")
    assert isinstance(err.value, TruncatedError)
    clone = pickle.loads(pickle.dumps(err.value))
    assert type(clone) is TruncatedError and (clone.defect, clone.offset) == (err.value.defect, 4)


# ---------------------------------------------------------------------- CHIP TLV codec (ota_image_tool.py)


def test_chip_tlv_reads_our_header_and_we_read_chip_headers() -> None:
    chip_tlv = pytest.importorskip("chip.tlv")
    data = _image(min_applicable_version=1, max_applicable_version=2, release_notes_url="https://r.example")
    image = parse_matter_image(data)
    decoded = chip_tlv.TLVReader(data[16 : image.payload_offset]).get()["Any"]
    assert decoded == {
        0: 0xFFF1,
        1: 0x8001,
        2: 0x01020304,
        3: "1.2.3-rc4",
        4: len(PAYLOAD),
        5: 1,
        6: 2,
        7: "https://r.example",
        8: 1,
        9: hashlib.sha256(PAYLOAD).digest(),
    }

    # The other way: a header made exactly as ota_image_tool.py makes it (TLVWriter.put(None, {...})).
    uint = chip_tlv.uint
    fields = {
        0: uint(0xDEAD),
        1: uint(0xBEEF),
        2: uint(2),
        3: "2.0",
        4: uint(len(PAYLOAD)),
        8: uint(10),
        9: hashlib.sha3_256(PAYLOAD).digest(),
        5: uint(1),
    }
    writer = chip_tlv.TLVWriter()
    writer.put(None, fields)
    tlv = writer.encoding
    chip_image = struct.pack("<IQI", 0x1BEEF11E, 16 + len(tlv) + len(PAYLOAD), len(tlv)) + tlv + PAYLOAD
    h = parse_matter_image(chip_image).header
    assert (h.vendor_id, h.product_id, h.software_version, h.software_version_string) == (
        0xDEAD,
        0xBEEF,
        2,
        "2.0",
    )
    assert (h.digest_type, h.min_applicable_version, h.max_applicable_version) == (10, 1, None)


# --------------------------------------------------------------------------------------- matter.js interop


def _node_ready() -> bool:
    return shutil.which("node") is not None and (JS_DIR / "node_modules" / "@matter" / "protocol").is_dir()


@pytest.fixture(scope="module")
def matterjs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One node run: matter.js writes images from our payloads and reads images we built."""
    if not _node_ready():
        pytest.skip("node or tests/js/node_modules (matter.js) missing")
    tmp = tmp_path_factory.mktemp("matterjs")
    payload = tmp / "payload.bin"
    payload.write_bytes(PAYLOAD * 3)
    empty = tmp / "empty.bin"
    empty.write_bytes(b"")
    writes = {
        "sha256": {
            "vendorId": 0xFFF1,
            "productId": 0x8000,
            "softwareVersion": 2,
            "softwareVersionString": "2.0",
        },
        "sha384-all": {
            "vendorId": 0x1234,
            "productId": 0x5678,
            "softwareVersion": 0xFFFFFFFF,
            "softwareVersionString": "9.9.9-ü",
            "minApplicableSoftwareVersion": 1,
            "maxApplicableSoftwareVersion": 0xFFFFFFFE,
            "releaseNotesUrl": "https://example.com/rn",
            "imageDigestType": "SHA-384",
        },
        "sha512": {
            "vendorId": 1,
            "productId": 2,
            "softwareVersion": 300,
            "softwareVersionString": "x",
            "imageDigestType": "SHA-512",
        },
        "sha3-256": {
            "vendorId": 0,
            "productId": 0,
            "softwareVersion": 70000,
            "softwareVersionString": "3",
            "imageDigestType": "SHA3-256",
        },
    }
    jobs: list[dict[str, Any]] = []
    for name, options in writes.items():
        source = empty if name == "sha3-256" else payload
        jobs.append(
            {"op": "write", "payload": str(source), "out": str(tmp / f"js-{name}.ota"), "options": options}
        )
    ours = {
        "plain": _image(payload=PAYLOAD * 3),
        "all-fields": _image(
            min_applicable_version=0,
            max_applicable_version=0x01020303,
            release_notes_url="https://example.org/x",
            digest_type=8,
        ),
        "sha3-256": _image(digest_type=10, payload=b""),
    }
    bad = bytearray(ours["plain"])
    bad[-5] ^= 0x40
    ours["corrupt"] = bytes(bad)
    for name, data in ours.items():
        (tmp / f"py-{name}.ota").write_bytes(data)
        jobs.append({"op": "read", "file": str(tmp / f"py-{name}.ota"), "chunk": 97})
    jobs_file = tmp / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    proc = subprocess.run(
        ["node", str(JS_DIR / "ota_image_writer.mjs"), str(jobs_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    n = len(writes)
    return {
        "tmp": tmp,
        "payload": PAYLOAD * 3,
        "writes": writes,
        "write_results": dict(zip(writes, results[:n], strict=True)),
        "ours": ours,
        "read_results": dict(zip(ours, results[n:], strict=True)),
    }


_JS_DIGESTS = {"SHA-256": 1, "SHA-384": 7, "SHA-512": 8, "SHA3-256": 10}


@pytest.mark.parametrize("name", ["sha256", "sha384-all", "sha512", "sha3-256"])
def test_we_parse_matterjs_images(matterjs: dict[str, Any], name: str) -> None:
    result = matterjs["write_results"][name]
    assert result["ok"], result
    data = (matterjs["tmp"] / f"js-{name}.ota").read_bytes()
    assert len(data) == result["size"]
    image = parse_matter_image(data)
    options = matterjs["writes"][name]
    payload = b"" if name == "sha3-256" else matterjs["payload"]
    h = image.header
    assert h.vendor_id == options["vendorId"] and h.product_id == options["productId"]
    assert h.software_version == options["softwareVersion"]
    assert h.software_version_string == options["softwareVersionString"]
    assert h.min_applicable_version == options.get("minApplicableSoftwareVersion")
    assert h.max_applicable_version == options.get("maxApplicableSoftwareVersion")
    assert h.release_notes_url == options.get("releaseNotesUrl")
    assert h.digest_type == _JS_DIGESTS[options.get("imageDigestType", "SHA-256")]
    assert h.payload_size == len(payload) and bytes(image.payload(data)) == payload
    # Same inputs through our builder give byte-identical files.
    ours = build_matter_image(
        payload,
        vendor_id=h.vendor_id,
        product_id=h.product_id,
        software_version=h.software_version,
        software_version_string=h.software_version_string,
        min_applicable_version=h.min_applicable_version,
        max_applicable_version=h.max_applicable_version,
        release_notes_url=h.release_notes_url,
        digest_type=h.digest_type,
    )
    assert ours == data


@pytest.mark.parametrize("name", ["plain", "all-fields", "sha3-256"])
def test_matterjs_reads_our_images(matterjs: dict[str, Any], name: str) -> None:
    result = matterjs["read_results"][name]
    assert result["ok"], result
    js = result["header"]
    h = parse_matter_image(matterjs["ours"][name]).header
    assert (js["vendorId"], js["productId"], js["softwareVersion"]) == (
        h.vendor_id,
        h.product_id,
        h.software_version,
    )
    assert js["softwareVersionString"] == h.software_version_string
    assert int(js["payloadSize"]) == h.payload_size
    assert js.get("minApplicableSoftwareVersion") == h.min_applicable_version
    assert js.get("maxApplicableSoftwareVersion") == h.max_applicable_version
    assert js.get("releaseNotesUrl") == h.release_notes_url
    assert js["imageDigestType"] == h.digest_type and js["imageDigest"] == h.digest.hex()


def test_matterjs_rejects_our_corrupted_image(matterjs: dict[str, Any]) -> None:
    result = matterjs["read_results"]["corrupt"]
    assert not result["ok"] and "digest mismatch" in result["error"]
    with pytest.raises(DigestMismatchError):
        parse_matter_image(matterjs["ours"]["corrupt"])


def test_image_dataclasses_are_frozen() -> None:
    image = parse_matter_image(_image())
    assert isinstance(image, MatterOtaImage)
    with pytest.raises(AttributeError):
        image.total_size = 1  # type: ignore[misc]
