"""Message/protocol headers and StatusReport: known encodings, round trips, truncation and mutation fuzz."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.matter.transport.message import (
    MessageError,
    MessageHeader,
    ProtocolHeader,
    SessionType,
    decode_message_header,
    decode_protocol_header,
)
from adapters.matter.transport.status_report import (
    GeneralCode,
    SecureChannelCode,
    StatusReport,
    StatusReportError,
)


def test_unsecured_sigma1_header_layout() -> None:
    # flags 0x04 (S), session 0, security flags 0, counter 0x01020304, source node id
    h = MessageHeader(session_id=0, message_counter=0x01020304, source_node_id=0x1122334455667788)
    raw = h.encode()
    assert raw == bytes.fromhex("04 0000 00 04030201 8877665544332211")
    assert decode_message_header(raw) == (h, len(raw))
    assert not h.is_secure


def test_secure_header_with_group_and_extensions() -> None:
    h = MessageHeader(
        session_id=0xBEEF,
        message_counter=7,
        dest_group_id=0x1234,
        session_type=SessionType.GROUP,
        control=True,
        extensions=b"\x01\x02",
    )
    raw = h.encode()
    assert raw[0] == 0x02 and raw[3] == 0x40 | 0x20 | 0x01
    assert decode_message_header(raw + b"rest") == (h, len(raw))


def test_protocol_header_layout() -> None:
    p = ProtocolHeader(opcode=0x30, exchange_id=0xABCD, protocol_id=0, initiator=True, reliable=True)
    assert p.encode() == bytes.fromhex("05 30 cdab 0000")
    ack = ProtocolHeader(opcode=0x10, exchange_id=1, protocol_id=0, ack_counter=0x11223344, vendor_id=0xFFF1)
    raw = ack.encode()
    assert raw == bytes.fromhex("12 10 0100 f1ff 0000 44332211")
    assert decode_protocol_header(raw + b"xy") == (ack, len(raw))


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "04 00 00 00 01 00 00",
        "04 0000 00 01000000 8877",
        "10 0000 00 01000000",
        "03 0000 00 01000000",
        "00 0000 20 01000000 0500 01",
    ],
)
def test_bad_message_headers(raw: str) -> None:
    with pytest.raises(MessageError):
        decode_message_header(bytes.fromhex(raw))


@pytest.mark.parametrize("raw", ["05 30 cdab 00", "12 10 0100 f1ff 0000 4433", "08 10 0100 0000 0500 01"])
def test_bad_protocol_headers(raw: str) -> None:
    with pytest.raises(MessageError):
        decode_protocol_header(bytes.fromhex(raw))


node_ids = st.none() | st.integers(0, 2**64 - 1)
headers = st.builds(
    MessageHeader,
    session_id=st.integers(0, 0xFFFF),
    message_counter=st.integers(0, 2**32 - 1),
    source_node_id=node_ids,
    dest_node_id=node_ids,
    session_type=st.sampled_from(SessionType),
    privacy=st.booleans(),
    control=st.booleans(),
    extensions=st.none() | st.binary(max_size=8),
).filter(lambda h: True)
protos = st.builds(
    ProtocolHeader,
    opcode=st.integers(0, 255),
    exchange_id=st.integers(0, 0xFFFF),
    protocol_id=st.integers(0, 0xFFFF),
    initiator=st.booleans(),
    reliable=st.booleans(),
    ack_counter=st.none() | st.integers(0, 2**32 - 1),
    vendor_id=st.none() | st.integers(0, 0xFFFF),
    secured_extensions=st.none() | st.binary(max_size=8),
)


@given(headers, protos, st.binary(max_size=16))
def test_round_trip(h: MessageHeader, p: ProtocolHeader, payload: bytes) -> None:
    raw = h.encode() + p.encode() + payload
    h2, off = decode_message_header(raw)
    p2, poff = decode_protocol_header(raw, off)
    assert (h2, p2, raw[poff:]) == (h, p, payload)


@given(st.binary(max_size=40))
def test_fuzz_only_typed_errors(raw: bytes) -> None:
    try:
        _, off = decode_message_header(raw)
        decode_protocol_header(raw, off)
    except MessageError as exc:
        assert 0 <= exc.offset <= len(raw)


def test_status_report() -> None:
    sr = StatusReport(GeneralCode.SUCCESS, 0, SecureChannelCode.SESSION_ESTABLISHMENT_SUCCESS)
    assert sr.encode() == bytes.fromhex("0000 00000000 0000")
    bad = StatusReport(GeneralCode.FAILURE, 0, SecureChannelCode.NO_SHARED_TRUST_ROOTS, b"\x01")
    assert StatusReport.decode(bad.encode()) == bad
    assert StatusReport.decode(bytes.fromhex("1000 02000000 5200")).general_code is GeneralCode.DATA_LOSS
    assert StatusReport.decode(bytes.fromhex("ff00 00000000 0000")).general_code == 0xFF  # unknown kept
    with pytest.raises(StatusReportError):
        StatusReport.decode(b"\x00\x00\x00")


@given(st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1), st.integers(0, 0xFFFF), st.binary(max_size=8))
def test_status_report_round_trip(g: int, p: int, c: int, d: bytes) -> None:
    sr = StatusReport.decode(StatusReport(g, p, c, d).encode())
    assert (int(sr.general_code), sr.protocol_id, sr.protocol_code, sr.data) == (g, p, c, d)
