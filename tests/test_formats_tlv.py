"""The one TLV codec (gateway/formats/tlv.py): spec Appendix A examples, strictness, hypothesis round-trip and
mutation fuzz of the value view; every element type, offsets and the writer of the element view (used by the OTA
header), and both views agreeing on the same bytes."""

from __future__ import annotations

import contextlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.formats.errors import TlvFormatError
from gateway.formats.tlv import (
    MAX_DEPTH,
    Array,
    CommonProfileTag,
    Float32,
    ImplicitProfileTag,
    ProfileTag,
    Struct,
    TLVError,
    TLVList,
    TlvType,
    TlvWriter,
    UInt,
    decode,
    decode_element,
    decode_one,
    encode,
)

# (value, tag, encoding) from Core spec Appendix A.12 "TLV Encoding Examples"
SPEC_EXAMPLES = [
    (False, None, "08"),
    (True, None, "09"),
    (42, None, "00 2a"),
    (-17, None, "00 ef"),
    (UInt(42), None, "04 2a"),
    (-170000, None, "02 f0 67 fd ff"),
    (40000000000, None, "03 00 90 2f 50 09 00 00 00"),
    ("Hello!", None, "0c 06 48 65 6c 6c 6f 21"),
    ("Tschüs", None, "0c 07 54 73 63 68 c3 bc 73"),
    (bytes([0, 1, 2, 3, 4]), None, "10 05 00 01 02 03 04"),
    (None, None, "14"),
    (Float32(0.0), None, "0a 00 00 00 00"),
    (Float32(1.0 / 3.0), None, "0a ab aa aa 3e"),
    (Float32(17.9), None, "0a 33 33 8f 41"),
    (Float32(math.inf), None, "0a 00 00 80 7f"),
    (Float32(-math.inf), None, "0a 00 00 80 ff"),
    (0.0, None, "0b 00 00 00 00 00 00 00 00"),
    (1.0 / 3.0, None, "0b 55 55 55 55 55 55 d5 3f"),
    (17.9, None, "0b 66 66 66 66 66 e6 31 40"),
    (math.inf, None, "0b 00 00 00 00 00 00 f0 7f"),
    (-math.inf, None, "0b 00 00 00 00 00 00 f0 ff"),
    (Struct(), None, "15 18"),
    (Array(), None, "16 18"),
    (TLVList(), None, "17 18"),
    (Struct({0: 42, 1: -17}), None, "15 20 00 2a 20 01 ef 18"),
    (Array([0, 1, 2, 3, 4]), None, "16 00 00 00 01 00 02 00 03 00 04 18"),
    (
        TLVList([(None, 1), (0, 42), (None, 2), (None, 3), (0, -17)]),
        None,
        "17 00 01 20 00 2a 00 02 00 03 20 00 ef 18",
    ),
    (
        Array([42, -170000, Struct(), Float32(17.9), "Hello!"]),
        None,
        "16 00 2a 02 f0 67 fd ff 15 18 0a 33 33 8f 41 0c 06 48 65 6c 6c 6f 21 18",
    ),
    (UInt(42), 1, "24 01 2a"),
    (UInt(42), CommonProfileTag(1), "44 01 00 2a"),
    (UInt(42), CommonProfileTag(100000), "64 a0 86 01 00 2a"),
    (UInt(42), ProfileTag(0xFFF1, 0xDEED, 1), "c4 f1 ff ed de 01 00 2a"),
    (UInt(42), ProfileTag(0xFFF1, 0xDEED, 0xAA55FEED), "e4 f1 ff ed de ed fe 55 aa 2a"),
    (
        Struct({ProfileTag(0xFFF1, 0xDEED, 0xAA55): UInt(42)}),
        ProfileTag(0xFFF1, 0xDEED, 1),
        "d5 f1 ff ed de 01 00 c4 f1 ff ed de 55 aa 2a 18",
    ),
]


@pytest.mark.parametrize(("value", "tag", "hexstr"), SPEC_EXAMPLES)
def test_spec_examples(value: object, tag: object, hexstr: str) -> None:
    raw = bytes.fromhex(hexstr)
    assert encode(value, tag) == raw
    got_tag, got, end = decode_element(raw)
    assert end == len(raw)
    assert got_tag == tag
    assert encode(got, got_tag) == raw
    assert got == value
    assert type(got) is type(value) or (type(value) is int and type(got) is int)


def test_non_minimal_integer_accepted() -> None:
    assert decode(bytes.fromhex("01 2a 00")) == 42  # spec example: 2-octet signed 42
    assert type(decode(bytes.fromhex("05 2a 00"))) is UInt


def test_unsigned_vs_signed_types() -> None:
    assert type(decode(encode(UInt(5)))) is UInt
    assert type(decode(encode(5))) is int
    assert decode(encode(UInt(2**64 - 1))) == 2**64 - 1
    assert encode(-(2**63)) == bytes.fromhex("03 00 00 00 00 00 00 00 80")


def test_implicit_profile_tag_and_plain_containers() -> None:
    assert decode_element(encode(1, ImplicitProfileTag(7)))[0] == ImplicitProfileTag(7)
    assert encode({1: [1, 2]}) == encode(Struct({1: Array([1, 2])}))


@pytest.mark.parametrize(
    ("hexstr", "offset", "fragment"),
    [
        ("", 0, "truncated control byte"),
        ("19", 0, "reserved element type"),
        ("1f", 0, "reserved element type"),
        ("18", 0, "unexpected end-of-container"),
        ("01 2a", 1, "truncated integer"),
        ("0c 05 41", 2, "truncated string"),
        ("0c 02 c3 28", 2, "invalid UTF-8"),
        ("13 ff ff ff ff ff ff ff ff", 9, "truncated string"),
        ("15 24 01 01 24 01 02 18", 4, "duplicate tag"),
        ("15 04 01 18", 1, "anonymous element inside a structure"),
        ("16 24 01 01 18", 1, "tagged element"),
        ("15 24 01 01", 4, "missing end-of-container"),
        ("15 38 18", 1, "end-of-container"),  # context-tagged end-of-container is not an end marker
        ("04 01 04 02", 2, "trailing bytes"),
        ("24", 1, "truncated tag"),
    ],
)
def test_malformed(hexstr: str, offset: int, fragment: str) -> None:
    with pytest.raises(TLVError) as info:
        decode(bytes.fromhex(hexstr))
    assert fragment in str(info.value)
    assert info.value.offset == offset


def test_context_tagged_end_is_rejected() -> None:
    # 0x38 = context tag control with the end-of-container type: not a valid end marker
    with pytest.raises(TLVError):
        decode(bytes.fromhex("15 38 00 18"))


def test_nesting_limit() -> None:
    ok = bytes([0x16] * MAX_DEPTH + [0x18] * MAX_DEPTH)
    assert decode(ok) is not None
    too_deep = bytes([0x16] * (MAX_DEPTH + 1) + [0x18] * (MAX_DEPTH + 1))
    with pytest.raises(TLVError) as info:
        decode(too_deep)
    assert info.value.offset == MAX_DEPTH
    with pytest.raises(TLVError):
        encode(Array([decode(ok)]))


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        (2**64, None),
        (UInt(-1), None),
        (1, 256),
        (1, -1),
        (object(), None),
        (Struct({None: 1}), None),
        (TLVList([1]), None),
        (1, ProfileTag(0x10000, 0, 0)),
        ("\ud800", None),
    ],
)
def test_unencodable(value: object, tag: object) -> None:
    with pytest.raises(TLVError):
        encode(value, tag)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- hypothesis

tags = st.one_of(
    st.integers(0, 255),
    st.builds(ProfileTag, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)),
    st.builds(CommonProfileTag, st.integers(0, 0xFFFFFFFF)),
    st.builds(ImplicitProfileTag, st.integers(0, 0xFFFFFFFF)),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1).map(UInt),
    st.floats(allow_nan=False),
    st.floats(allow_nan=False, width=32).map(Float32),
    st.text(),
    st.binary(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(Array),
        st.dictionaries(tags, inner, max_size=4).map(Struct),
        st.lists(st.tuples(st.one_of(st.none(), tags), inner), max_size=4).map(TLVList),
    ),
    max_leaves=20,
)


@given(values, st.one_of(st.none(), tags))
def test_round_trip(value: object, tag: object) -> None:
    raw = encode(value, tag)  # type: ignore[arg-type]
    got_tag, got, end = decode_element(raw)
    assert (got_tag, got, end) == (tag, value, len(raw))
    assert encode(got, got_tag) == raw  # canonical: re-encoding is byte-identical


@settings(max_examples=300)
@given(values, st.data())
def test_mutation_fuzz(value: object, data: st.DataObject) -> None:
    raw = bytearray(encode(value))  # type: ignore[arg-type]
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    if kind == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw.insert(data.draw(st.integers(0, len(raw))), data.draw(st.integers(0, 255)))
    try:
        decode(bytes(raw))
    except TLVError as exc:
        assert 0 <= exc.offset <= len(raw)


@given(st.binary(max_size=64))
def test_random_bytes_only_raise_tlverror(raw: bytes) -> None:
    with contextlib.suppress(TLVError):
        decode(raw)


def test_element_view_decodes_every_type() -> None:
    writer = TlvWriter().start_struct()
    writer.put_int(1, -5).put_int(2, -70000).put_uint(3, 1 << 40).put_bool(4, False).put_bool(5, True)
    writer.put_float(6, 1.5).put_float(7, 0.25, double=False).put_null(8).put_utf8(9, "ü").put_bytes(
        10, b"\x00"
    )
    writer.start_array(11).put_uint(None, 1).end_container().put_uint(CommonProfileTag(0x1234), 9)
    top = decode_one(writer.end_container().to_bytes(), base_offset=100)
    assert top.type is TlvType.STRUCT and top.offset == 100
    assert isinstance(top.value, tuple)
    values = {m.tag: m.value for m in top.value}
    assert values[1] == -5 and values[2] == -70000 and values[3] == 1 << 40
    assert values[4] is False and values[5] is True and values[6] == 1.5 and values[7] == 0.25
    assert values[8] is None and values[9] == "ü" and values[10] == b"\x00"
    assert values[CommonProfileTag(0x1234)] == 9
    array = next(m for m in top.value if m.tag == 11)
    assert array.type is TlvType.ARRAY and isinstance(array.value, tuple) and array.value[0].value == 1
    with pytest.raises(TlvFormatError) as err:
        decode_one(b"\x16\x24\x01\x18", base_offset=7)  # tagged member in an array
    assert err.value.offset == 8


def test_both_views_agree() -> None:
    """The writer's bytes decode to the same values through the value view, and `encode` output through the
    element view (one codec, one set of wire rules)."""
    w = TlvWriter().start_struct().put_uint(0, 300).put_int(1, -2).put_utf8(2, "x").put_bytes(3, b"\x01")
    w.start_array(4).put_bool(None, True).end_container().put_uint(ProfileTag(0xFFF1, 1, 70000), 1)
    data = w.end_container().to_bytes()
    assert decode(data) == {0: 300, 1: -2, 2: "x", 3: b"\x01", 4: [True], ProfileTag(0xFFF1, 1, 70000): 1}
    assert (
        encode(
            Struct(
                {
                    0: UInt(300),
                    1: -2,
                    2: "x",
                    3: b"\x01",
                    4: Array([True]),
                    ProfileTag(0xFFF1, 1, 70000): UInt(1),
                }
            )
        )
        == data
    )
    top = decode_one(data)
    assert [m.tag for m in top.value] == [0, 1, 2, 3, 4, ProfileTag(0xFFF1, 1, 70000)]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="context tag out of range"):
        TlvWriter().put_uint(256, 1)
