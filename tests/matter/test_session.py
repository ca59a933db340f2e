"""Sessions: AES-CCM framing with the spec nonce/AAD, replay windows, counters, the session table."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given
from hypothesis import strategies as st

from adapters.matter.transport.message import MessageHeader, ProtocolHeader, decode_message_header
from adapters.matter.transport.session import (
    MSG_COUNTER_WINDOW_SIZE,
    CounterExhausted,
    DecryptError,
    MessageCounter,
    ReceiveWindow,
    SecureSession,
    SessionTable,
    UnknownSession,
    build_nonce,
)

I2R, R2I = bytes(range(16)), bytes(range(16, 32))
OUR_NODE, PEER_NODE = 0x1111_2222_3333_4444, 0x0000_0000_0001_B669


def responder(table: SessionTable | None = None) -> SecureSession:
    s = SecureSession(
        peer_address=("fd00::1", 5540),
        local_session_id=0x1234,
        peer_session_id=0x5678,
        local_node_id=OUR_NODE,
        peer_node_id=PEER_NODE,
        fabric_index=1,
        i2r_key=I2R,
        r2i_key=R2I,
    )
    if table is not None:
        table.add_secure(s)
    return s


def initiator_datagram(
    counter: int, proto: ProtocolHeader, payload: bytes, session_id: int = 0x1234
) -> bytes:
    """Built by hand from the spec (independent of SecureSession.encode): AAD = header, nonce with sender id."""
    aad = MessageHeader(session_id=session_id, message_counter=counter).encode()
    nonce = bytes([0]) + counter.to_bytes(4, "little") + PEER_NODE.to_bytes(8, "little")
    return aad + AESCCM(I2R, tag_length=16).encrypt(nonce, proto.encode() + payload, aad)


def test_nonce_layout() -> None:
    assert build_nonce(0x00, 0x04030201, 0x0807060504030201) == bytes.fromhex("00 01020304 0102030405060708")


def test_decrypt_initiator_message_and_reject_replay_and_tamper() -> None:
    table = SessionTable()
    s = responder(table)
    proto = ProtocolHeader(opcode=0x08, exchange_id=9, protocol_id=1, initiator=True, reliable=True)
    raw = initiator_datagram(100, proto, b"invoke")
    msg = table.open(raw, ("fd00::9", 1), now_ms=5)
    assert (msg.session, msg.protocol, msg.payload, msg.duplicate) == (s, proto, b"invoke", False)
    assert s.peer_address == ("fd00::9", 1)  # follows the authenticated peer
    assert table.open(raw, ("fd00::9", 1), now_ms=6).duplicate
    tampered = bytearray(raw)
    tampered[-1] ^= 1
    with pytest.raises(DecryptError):
        table.open(bytes(tampered), ("fd00::9", 1), now_ms=7)
    with pytest.raises(UnknownSession):
        table.open(initiator_datagram(101, proto, b"", session_id=0x9999), ("fd00::9", 1), now_ms=7)


def test_encrypt_uses_r2i_and_our_node_id() -> None:
    s = responder()
    proto = ProtocolHeader(opcode=0x09, exchange_id=9, protocol_id=1, reliable=True, ack_counter=100)
    raw, ctr = s.encode(proto, b"resp")
    header, off = decode_message_header(raw)
    assert header.session_id == 0x5678 and header.message_counter == ctr and header.source_node_id is None
    nonce = bytes([0]) + ctr.to_bytes(4, "little") + OUR_NODE.to_bytes(8, "little")
    assert AESCCM(R2I, tag_length=16).decrypt(nonce, raw[off:], raw[:off]) == proto.encode() + b"resp"


def test_unsecured_session_per_ephemeral_id_and_reply_addressing() -> None:
    table = SessionTable()
    proto = ProtocolHeader(opcode=0x30, exchange_id=1, protocol_id=0, initiator=True, reliable=True)
    raw = (
        MessageHeader(session_id=0, message_counter=5, source_node_id=0xABC).encode() + proto.encode() + b"s1"
    )
    msg = table.open(raw, ("fd00::9", 1), 0)
    assert not msg.session.is_secure and msg.payload == b"s1"
    assert table.open(raw, ("fd00::9", 1), 0).duplicate
    out, _ = msg.session.encode(ProtocolHeader(opcode=0x31, exchange_id=1, protocol_id=0), b"s2")
    h, _ = decode_message_header(out)
    assert h.dest_node_id == 0xABC and h.session_id == 0 and h.source_node_id is None


def test_session_ids_unique_and_nonzero() -> None:
    table = SessionTable()
    ids = {table.allocate_session_id() for _ in range(500)}
    assert len(ids) == 500 and 0 not in ids


def test_counter_start_range_and_exhaustion() -> None:
    c = MessageCounter(wraps=False)
    assert 1 <= c.value <= 2**28
    c = MessageCounter(2**32 - 2, wraps=False)
    assert c.next() == 2**32 - 2
    with pytest.raises(CounterExhausted):
        c.next()
    w = MessageCounter(2**32 - 1, wraps=True)
    assert (w.next(), w.next()) == (2**32 - 1, 0)


def test_encrypted_window() -> None:
    w = ReceiveWindow(encrypted=True)
    assert w.accept(1000)
    assert not w.accept(1000)
    assert w.accept(1002) and w.accept(1001) and not w.accept(1001)
    assert w.accept(1002 - MSG_COUNTER_WINDOW_SIZE)  # oldest counter still in the window
    assert not w.accept(1002 - MSG_COUNTER_WINDOW_SIZE - 1)  # behind: replay
    assert w.accept(5000) and not w.accept(1003)


def test_unencrypted_window_rolls_over_and_resyncs() -> None:
    w = ReceiveWindow(encrypted=False)
    assert w.accept(2**32 - 1) and w.accept(0) and not w.accept(2**32 - 1)
    assert w.accept(100_000)  # far behind/ahead: peer rebooted, resync
    assert not w.accept(100_000)


@given(st.lists(st.integers(0, 200), max_size=60))
def test_window_model(counters: list[int]) -> None:
    """Against a model: accepted iff never seen and not more than 32 below the max seen."""
    w = ReceiveWindow(encrypted=True)
    seen: set[int] = set()
    for c in counters:
        expect = c not in seen and (not seen or c > max(seen) - MSG_COUNTER_WINDOW_SIZE - 1)
        assert w.accept(c) == expect
        if expect:
            seen.add(c)


@given(st.binary(max_size=60))
def test_table_fuzz_only_typed_errors(raw: bytes) -> None:
    from adapters.matter.transport.message import MessageError
    from adapters.matter.transport.session import SessionError

    table = SessionTable()
    responder(table)
    with contextlib.suppress(MessageError, SessionError):
        table.open(raw, ("fd00::1", 1), 0)
