"""IM message codecs and the 0x0029 field codecs: layouts, the chip SDK as an independent oracle, fuzz."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.matter.interaction.clusters import (
    ApplyUpdateAction,
    ApplyUpdateRequest,
    ApplyUpdateResponse,
    NotifyUpdateApplied,
    OtaStatus,
    QueryImage,
    QueryImageResponse,
)
from adapters.matter.interaction.messages import (
    IM_REVISION,
    AttributeData,
    AttributePath,
    AttributeStatus,
    ClusterPath,
    CommandData,
    CommandPath,
    CommandStatus,
    DataVersionFilter,
    IMDecodeError,
    InvokeRequest,
    InvokeResponse,
    Opcode,
    ReadRequest,
    ReportData,
    StatusIB,
    StatusResponse,
    SubscribeRequest,
    TimedRequest,
    WriteRequest,
    WriteResponse,
    decode_message,
)
from adapters.matter.interaction.registry import ConstraintError, FieldError
from gateway.formats.tlv import Array, Struct, TLVList, UInt, decode, encode

chip_tlv = pytest.importorskip("chip.tlv")
Objects = pytest.importorskip("chip.clusters.Objects")
OTA = Objects.OtaSoftwareUpdateProvider


def sdk_decode(raw: bytes) -> object:
    return chip_tlv.TLVReader(raw).get()["Any"]


# ------------------------------------------------------------------------------------------ layouts


def test_invoke_request_layout_read_by_sdk_reader() -> None:
    req = InvokeRequest([CommandData(CommandPath(0, 0x29, 0), Struct({0: UInt(0xFFF1)}))])
    raw = req.encode()
    v = sdk_decode(raw)
    assert v[0] is False and v[1] is False and v[0xFF] == IM_REVISION
    (cmd,) = v[2]
    assert cmd[1] == {0: 0xFFF1}
    # CommandPathIB is a TLV *list*: the SDK reader shows it as a list of (tag, value)
    assert raw.find(bytes([0x37, 0x00])) > 0  # context tag 0, type list (0x17 | 0x20)


def test_status_response_and_timed_request_bytes() -> None:
    assert StatusResponse(0x7E).encode() == bytes.fromhex("15 24 00 7e 24 ff 0c 18".replace(" ", ""))
    assert TimedRequest(500).encode() == bytes.fromhex("15 25 00 f4 01 24 ff 0c 18".replace(" ", ""))


def test_report_data_flags_and_sdk_view() -> None:
    rd = ReportData(
        [
            AttributeData(AttributePath(0, 0x28, 1), "otagw", 7),
            AttributeStatus(AttributePath(0, 0x28, 0x99), StatusIB(0x86)),
        ],
        more_chunked=True,
    )
    v = sdk_decode(rd.encode())
    assert v[3] is True and 4 not in v
    assert v[1][0][1][0] == 7 and v[1][0][1][2] == "otagw"
    assert v[1][1][0][1] == {0: 0x86}


def test_decode_rejects_wrong_types_with_paths() -> None:
    bad = encode(Struct({2: Array([Struct({0: Struct({0: UInt(1)})})]), 0xFF: UInt(12)}))
    with pytest.raises(IMDecodeError) as e:
        decode_message(Opcode.INVOKE_REQUEST, bad)
    assert "InvokeRequests[0].CommandPath" in str(e.value)
    with pytest.raises(IMDecodeError):
        decode_message(Opcode.INVOKE_REQUEST, encode(Struct({0: True})))  # no InvokeRequests
    with pytest.raises(IMDecodeError):
        decode_message(Opcode.STATUS_RESPONSE, b"\x15\x18\x00")  # trailing byte
    with pytest.raises(IMDecodeError):
        decode_message(0x42, b"")
    with pytest.raises(IMDecodeError):  # endpoint wider than 16 bits
        AttributePath.from_tlv(TLVList([(2, UInt(0x10000))]), "p")


# ------------------------------------------------------------------------------------------ SDK oracle for 0x0029


def test_query_image_from_sdk_encoding() -> None:
    sdk = OTA.Commands.QueryImage(
        vendorID=0xFFF1,
        productID=0x8000,
        softwareVersion=3,
        protocolsSupported=[OTA.Enums.DownloadProtocolEnum.kBDXSynchronous],
        hardwareVersion=2,
        location="DE",
        requestorCanConsent=True,
        metadataForProvider=b"\x01\x02",
    )
    ours = QueryImage.from_fields(decode(sdk.ToTLV()))
    assert ours == QueryImage(0xFFF1, 0x8000, 3, (0,), 2, "DE", True, b"\x01\x02")
    # and back: the SDK decodes ours to the same command
    again = OTA.Commands.QueryImage.FromTLV(encode(ours.to_fields()))
    assert again == sdk


def test_query_image_response_decoded_by_sdk() -> None:
    resp = QueryImageResponse(
        OtaStatus.UPDATE_AVAILABLE, 0, "bdx://0000000000000001/abc", 5, "5.0", b"T" * 16, False, None
    )
    sdk = OTA.Commands.QueryImageResponse.FromTLV(encode(resp.to_fields()))
    assert sdk.status == OTA.Enums.StatusEnum.kUpdateAvailable
    assert (sdk.imageURI, sdk.softwareVersion, sdk.softwareVersionString, sdk.updateToken) == (
        "bdx://0000000000000001/abc",
        5,
        "5.0",
        b"T" * 16,
    )
    assert sdk.metadataForRequestor is None and sdk.delayedActionTime == 0
    not_avail = OTA.Commands.QueryImageResponse.FromTLV(
        encode(QueryImageResponse(OtaStatus.NOT_AVAILABLE, delayed_action_time=60).to_fields())
    )
    assert not_avail.status == OTA.Enums.StatusEnum.kNotAvailable and not_avail.delayedActionTime == 60
    assert QueryImageResponse.from_fields(
        decode(OTA.Commands.QueryImageResponse(status=1, delayedActionTime=9).ToTLV())
    ) == QueryImageResponse(OtaStatus.BUSY, 9)


def test_apply_and_notify_against_sdk() -> None:
    sdk = OTA.Commands.ApplyUpdateRequest(updateToken=b"12345678", newVersion=9)
    assert ApplyUpdateRequest.from_fields(decode(sdk.ToTLV())) == ApplyUpdateRequest(b"12345678", 9)
    r = OTA.Commands.ApplyUpdateResponse.FromTLV(
        encode(ApplyUpdateResponse(ApplyUpdateAction.AWAIT_NEXT_ACTION, 30).to_fields())
    )
    assert r.action == OTA.Enums.ApplyUpdateActionEnum.kAwaitNextAction and r.delayedActionTime == 30
    n = OTA.Commands.NotifyUpdateApplied(updateToken=b"abcdefgh", softwareVersion=4)
    assert NotifyUpdateApplied.from_fields(decode(n.ToTLV())) == NotifyUpdateApplied(b"abcdefgh", 4)
    assert OTA.Commands.QueryImage.command_id == 0 and OTA.Commands.NotifyUpdateApplied.command_id == 4


@pytest.mark.parametrize(
    ("fields", "exc"),
    [
        (Struct({0: UInt(1), 1: UInt(2), 2: UInt(3)}), FieldError),  # ProtocolsSupported missing
        (Struct({0: 1, 1: UInt(2), 2: UInt(3), 3: Array([UInt(0)])}), FieldError),  # signed VendorID
        (Struct({0: UInt(1 << 16), 1: UInt(2), 2: UInt(3), 3: Array([UInt(0)])}), FieldError),
        (Struct({0: UInt(1), 1: UInt(2), 2: UInt(3), 3: Array([UInt(0)]), 5: "DEU"}), ConstraintError),
        (Struct({0: UInt(1), 1: UInt(2), 2: UInt(3), 3: Array([])}), ConstraintError),
        (Struct({0: UInt(1), 1: UInt(2), 2: UInt(3), 3: Array([UInt(0)]), 7: b"x" * 513}), ConstraintError),
        (Struct({0: UInt(1), 1: UInt(2), 2: UInt(3), 3: Array([UInt(0)]), 6: None}), FieldError),
    ],
)
def test_query_image_validation(fields: Struct, exc: type) -> None:
    with pytest.raises(exc):
        QueryImage.from_fields(fields)


def test_apply_update_token_constraints() -> None:
    with pytest.raises(ConstraintError):
        ApplyUpdateRequest.from_fields(Struct({0: b"short", 1: UInt(1)}))
    with pytest.raises(FieldError):
        ApplyUpdateRequest.from_fields(Struct({0: "not bytes", 1: UInt(1)}))
    with pytest.raises(ValueError):
        QueryImageResponse(OtaStatus.UPDATE_AVAILABLE)


# ------------------------------------------------------------------------------------------ round trips + fuzz

_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_opt16 = st.none() | _u16
_opt32 = st.none() | _u32
_tlv_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(0, 2**64 - 1).map(UInt)
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3).map(Array)
        | st.dictionaries(st.integers(0, 254), inner, max_size=3).map(Struct)
    ),
    max_leaves=8,
)
_attr_path = st.builds(AttributePath, _opt16, _opt32, _opt32, st.none() | st.integers(0, 2**64 - 1))
_cmd_path = st.builds(CommandPath, _opt16, _u32, _u32)
_status_ib = st.builds(StatusIB, st.integers(0, 0xFF), st.none() | st.integers(0, 0xFF))
_cmd_data = st.builds(
    CommandData,
    _cmd_path,
    st.none() | st.dictionaries(st.integers(0, 254), _tlv_value, max_size=3).map(Struct),
    _opt16,
)
_attr_data = st.builds(AttributeData, _attr_path, _tlv_value, _opt32)
_attr_status = st.builds(AttributeStatus, _attr_path, _status_ib)
_filters = st.lists(st.builds(DataVersionFilter, st.builds(ClusterPath, _opt16, _opt32), _u32), max_size=2)

_messages = st.one_of(
    st.builds(StatusResponse, st.integers(0, 0xFF)),
    st.builds(TimedRequest, _u16),
    st.builds(InvokeRequest, st.lists(_cmd_data, max_size=3), st.booleans(), st.booleans()),
    st.builds(
        InvokeResponse,
        st.lists(_cmd_data | st.builds(CommandStatus, _cmd_path, _status_ib, _opt16), max_size=3),
        st.booleans(),
        st.booleans(),
    ),
    st.builds(ReadRequest, st.lists(_attr_path, max_size=3), st.booleans(), _filters),
    st.builds(
        SubscribeRequest, _u16, _u16, st.lists(_attr_path, max_size=2), st.booleans(), st.booleans(), _filters
    ),
    st.builds(
        ReportData, st.lists(_attr_data | _attr_status, max_size=3), st.booleans(), st.booleans(), _opt32
    ),
    st.builds(WriteRequest, st.lists(_attr_data, max_size=2), st.booleans(), st.booleans(), st.booleans()),
    st.builds(WriteResponse, st.lists(_attr_status, max_size=3)),
)


@settings(max_examples=300)
@given(_messages)
def test_round_trip(msg: object) -> None:
    raw = msg.encode()  # type: ignore[attr-defined]
    assert decode_message(msg.OPCODE, raw) == msg  # type: ignore[attr-defined]


@settings(max_examples=500)
@given(_messages, st.data())
def test_mutation_fuzz_only_typed_errors(msg: object, data: st.DataObject) -> None:
    raw = bytearray(msg.encode())  # type: ignore[attr-defined]
    op = data.draw(st.sampled_from([o for o in Opcode if o != Opcode.SUBSCRIBE_RESPONSE]))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        with contextlib.suppress(IMDecodeError):
            decode_message(op, candidate)


@settings(max_examples=300)
@given(st.dictionaries(st.integers(0, 10), _tlv_value, max_size=8).map(Struct))
def test_ota_field_codecs_only_typed_errors(fields: Struct) -> None:
    for codec in (QueryImage, ApplyUpdateRequest, NotifyUpdateApplied):
        with contextlib.suppress(FieldError, ConstraintError):
            codec.from_fields(fields)  # type: ignore[attr-defined]
