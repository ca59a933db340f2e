"""BDX codecs and the sender/receiver state machines: full transfers, resume, skip, every error path, fuzz."""

from __future__ import annotations

import contextlib
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.matter.bdx.messages import (
    BDX_PROTOCOL_ID,
    BdxDecodeError,
    BdxStatus,
    Block,
    BlockAck,
    BlockAckEOF,
    BlockEOF,
    BlockQuery,
    BlockQueryWithSkip,
    Opcode,
    RangeControl,
    ReceiveAccept,
    ReceiveInit,
    SendAccept,
    SendInit,
    TransferControl,
    decode_message,
)
from adapters.matter.bdx.receiver import BdxReceiver
from adapters.matter.bdx.sender import (
    SECURE_CHANNEL_PROTOCOL_ID,
    BdxSender,
    Outgoing,
    SenderState,
    TransferSlots,
    status_report,
)
from adapters.matter.transport.status_report import (
    SECURE_CHANNEL_OPCODE_STATUS_REPORT,
    GeneralCode,
    StatusReport,
)

RD = TransferControl.RECEIVER_DRIVE
SD = TransferControl.SENDER_DRIVE


class FakeTime:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class MemoryReader:
    """An ImageReader over bytes that records every read (to prove block-wise access)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.size = len(data)
        self.reads: list[tuple[int, int]] = []

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset > self.size or length < 0:
            raise ValueError(f"read outside image: {offset}+{length}")
        self.reads.append((offset, length))
        return self._data[offset : offset + length]


IMAGE = os.urandom(10_000)


def make_sender(
    reader: MemoryReader | None = None, clock: FakeTime | None = None, **kw: object
) -> tuple[BdxSender, list[tuple[int, int]], list[object]]:
    reader = reader or MemoryReader(IMAGE)
    progress: list[tuple[int, int]] = []
    events: list[object] = []
    sender = BdxSender(
        lambda d: reader if d == b"img" else None,
        now=clock or FakeTime(),
        on_progress=lambda o, n: progress.append((o, n)),
        on_complete=lambda: events.append("complete"),
        on_failed=lambda code, reason: events.append(code),
        **kw,  # type: ignore[arg-type]
    )
    return sender, progress, events


def pump(receiver: BdxReceiver, sender: BdxSender, limit: int = 100_000) -> int:
    """Shuttle messages both ways until both sides are done; return the message count."""
    to_sender = receiver.start()
    count = 0
    while to_sender or not (receiver.done and sender.done):
        to_receiver: list[Outgoing] = []
        for m in to_sender:
            to_receiver += sender.receive(m.opcode, m.payload, m.protocol_id)
            count += 1
        to_sender = []
        for m in to_receiver:
            to_sender += receiver.receive(m.opcode, m.payload, m.protocol_id)
            count += 1
        if not to_sender and not to_receiver:
            break
        assert count < limit
    return count


def report_code(out: list[Outgoing]) -> int:
    assert len(out) == 1
    m = out[0]
    assert (m.protocol_id, m.opcode) == (SECURE_CHANNEL_PROTOCOL_ID, SECURE_CHANNEL_OPCODE_STATUS_REPORT)
    sr = StatusReport.decode(m.payload)
    assert sr.general_code == GeneralCode.FAILURE and sr.protocol_id == BDX_PROTOCOL_ID
    return sr.protocol_code


def init_bytes(**kw: object) -> bytes:
    args: dict[str, object] = {"version": 0, "control": RD, "max_block_size": 1024, "file_designator": b"img"}
    args.update(kw)
    return ReceiveInit(**args).encode()  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ codecs


def test_receive_init_wire_layout_matches_spec() -> None:
    raw = ReceiveInit(0, RD, 1024, b"abc", start_offset=5, max_length=100, metadata=b"\x15\x18").encode()
    # control 0x20 | range DefLen+StartOffset 0x03 | 1024 | offset u32 | length u32 | fdlen 3 | "abc" | metadata
    assert raw == bytes.fromhex("2003000405000000640000000300") + b"abc" + b"\x15\x18"
    wide = ReceiveInit(0, RD | SD, 512, b"x", start_offset=1 << 33).encode()
    assert wide[1] == RangeControl.START_OFFSET | RangeControl.WIDERANGE
    assert struct.unpack_from("<Q", wide, 4)[0] == 1 << 33
    assert decode_message(Opcode.RECEIVE_INIT, wide) == ReceiveInit(
        0, RD | SD, 512, b"x", start_offset=1 << 33
    )


def test_counter_and_block_layouts() -> None:
    assert BlockQuery(7).encode() == b"\x07\x00\x00\x00"
    assert BlockQueryWithSkip(1, 300).encode() == b"\x01\x00\x00\x00" + (300).to_bytes(8, "little")
    assert Block(2, b"ab").encode() == b"\x02\x00\x00\x00ab"
    assert decode_message(Opcode.BLOCK_EOF, b"\x03\x00\x00\x00") == BlockEOF(3, b"")
    acc = ReceiveAccept(0, RD, 1024, 0, 4096).encode()
    assert acc == bytes.fromhex("2001000400100000")


def test_decode_errors_are_typed_with_offsets() -> None:
    with pytest.raises(BdxDecodeError) as e:
        decode_message(Opcode.RECEIVE_INIT, bytes.fromhex("20030004050000"))
    assert e.value.offset == 4
    with pytest.raises(BdxDecodeError):
        decode_message(Opcode.BLOCK_QUERY, b"\x00\x00\x00\x00\x00")  # trailing byte
    with pytest.raises(BdxDecodeError):
        decode_message(0x33, b"")
    with pytest.raises(BdxDecodeError):  # designator length runs past the end
        decode_message(Opcode.RECEIVE_INIT, bytes.fromhex("200000040900") + b"abc")


_u64 = st.integers(0, (1 << 64) - 1)
_messages = st.one_of(
    st.builds(
        ReceiveInit,
        st.integers(0, 15),
        st.sampled_from([RD, SD, RD | SD, RD | SD | TransferControl.ASYNC]),
        st.integers(0, 0xFFFF),
        st.binary(max_size=40),
        _u64,
        st.none() | _u64,
        st.binary(max_size=20),
    ),
    st.builds(
        SendInit,
        st.integers(0, 15),
        st.sampled_from([RD, SD]),
        st.integers(0, 0xFFFF),
        st.binary(max_size=8),
        _u64,
        st.none() | _u64,
        st.binary(max_size=8),
    ),
    st.builds(
        SendAccept,
        st.integers(0, 15),
        st.sampled_from([RD, SD]),
        st.integers(0, 0xFFFF),
        st.binary(max_size=8),
    ),
    st.builds(
        ReceiveAccept,
        st.integers(0, 15),
        st.sampled_from([RD, SD]),
        st.integers(0, 0xFFFF),
        _u64,
        st.none() | _u64,
        st.binary(max_size=8),
    ),
    st.builds(BlockQuery, st.integers(0, 0xFFFFFFFF)),
    st.builds(BlockAck, st.integers(0, 0xFFFFFFFF)),
    st.builds(BlockAckEOF, st.integers(0, 0xFFFFFFFF)),
    st.builds(BlockQueryWithSkip, st.integers(0, 0xFFFFFFFF), _u64),
    st.builds(Block, st.integers(0, 0xFFFFFFFF), st.binary(max_size=64)),
    st.builds(BlockEOF, st.integers(0, 0xFFFFFFFF), st.binary(max_size=64)),
)


@settings(max_examples=400)
@given(_messages)
def test_round_trip(msg: object) -> None:
    raw = msg.encode()  # type: ignore[attr-defined]
    assert decode_message(msg.OPCODE, raw) == msg  # type: ignore[attr-defined]


@settings(max_examples=600)
@given(_messages, st.data())
def test_mutation_fuzz_only_typed_errors(msg: object, data: st.DataObject) -> None:
    raw = bytearray(msg.encode())  # type: ignore[attr-defined]
    op = data.draw(st.sampled_from(list(Opcode)))
    if raw:
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        with contextlib.suppress(BdxDecodeError):
            decode_message(op, candidate)


@settings(max_examples=300)
@given(st.binary(max_size=40), st.integers(0, 0x20))
def test_sender_survives_garbage(payload: bytes, opcode: int) -> None:
    """Any byte string in any state yields at most a StatusReport; nothing raises."""
    sender, _, _ = make_sender()
    out = sender.receive(Opcode.RECEIVE_INIT, init_bytes())
    assert sender.state is SenderState.IN_PROGRESS and len(out) == 1
    out = sender.receive(opcode, payload)
    assert len(out) <= 1


# ------------------------------------------------------------------------------------------ transfers


@pytest.mark.parametrize("mode", [RD, SD])
@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 10_000])
def test_full_transfer(mode: TransferControl, size: int) -> None:
    image = IMAGE[:size]
    reader = MemoryReader(image)
    sender, progress, events = make_sender(reader)
    receiver = BdxReceiver(b"img", now=FakeTime(), mode=mode)
    pump(receiver, sender)
    assert receiver.state.value == "done" and sender.state is SenderState.DONE
    assert bytes(receiver.data) == image
    assert events == ["complete"]
    assert sum(n for _, n in progress) == size
    assert all(n <= 1024 for _, n in reader.reads)  # block-wise, never the whole image
    assert sender.blocks_sent == max(1, -(-size // 1024))


def test_block_size_is_min_of_proposed_and_cap() -> None:
    sender, _, _ = make_sender(max_block_size=500)
    receiver = BdxReceiver(b"img", now=FakeTime(), max_block_size=800)
    pump(receiver, sender)
    assert receiver.block_size == sender.block_size == 500
    assert bytes(receiver.data) == IMAGE
    sender, _, _ = make_sender(max_block_size=4096)
    receiver = BdxReceiver(b"img", now=FakeTime(), max_block_size=300)
    pump(receiver, sender)
    assert sender.block_size == 300 and bytes(receiver.data) == IMAGE


def test_resume_with_start_offset_and_max_length() -> None:
    sender, progress, _ = make_sender()
    receiver = BdxReceiver(b"img", now=FakeTime(), start_offset=4000, max_length=3000)
    pump(receiver, sender)
    assert bytes(receiver.data) == IMAGE[4000:7000]
    assert progress[0] == (4000, 1024)
    # max length beyond the image end is cut at the end
    sender, _, _ = make_sender()
    receiver = BdxReceiver(b"img", now=FakeTime(), start_offset=9000, max_length=5000)
    pump(receiver, sender)
    assert bytes(receiver.data) == IMAGE[9000:]
    # start offset exactly at the end: an empty BlockEOF
    sender, _, events = make_sender()
    receiver = BdxReceiver(b"img", now=FakeTime(), start_offset=len(IMAGE))
    pump(receiver, sender)
    assert receiver.data == b"" and events == ["complete"]


def test_wide_start_offset_on_large_image() -> None:
    class Huge:
        size = (1 << 32) + 2048

        def read(self, offset: int, length: int) -> bytes:
            return bytes([offset & 0xFF]) * length

    sender = BdxSender(lambda d: Huge(), now=FakeTime())
    receiver = BdxReceiver(b"big", now=FakeTime(), start_offset=(1 << 32) + 100)
    pump(receiver, sender)
    assert receiver.received == 1948 and receiver.data[:1] == bytes([100])


def test_block_query_with_skip() -> None:
    sender, _, _ = make_sender()
    receiver = BdxReceiver(b"img", now=FakeTime())
    out = receiver.start()
    out = sender.receive(out[0].opcode, out[0].payload)  # ReceiveAccept
    out = receiver.receive(out[0].opcode, out[0].payload)  # BlockQuery(0)
    out = sender.receive(out[0].opcode, out[0].payload)  # Block(0): bytes 0..1023
    receiver.skip(2000)
    out = receiver.receive(out[0].opcode, out[0].payload)
    assert out[0].opcode == Opcode.BLOCK_QUERY_WITH_SKIP
    while not receiver.done:
        out = sender.receive(out[0].opcode, out[0].payload)
        out = receiver.receive(out[0].opcode, out[0].payload)
    sender.receive(out[0].opcode, out[0].payload)
    assert sender.state is SenderState.DONE
    assert bytes(receiver.data) == IMAGE[:1024] + IMAGE[3024:]


def test_skip_past_end_gives_empty_eof() -> None:
    sender, _, _ = make_sender()
    receiver = BdxReceiver(b"img", now=FakeTime())
    receiver.skip(50_000)
    pump(receiver, sender)
    assert receiver.state.value == "done" and receiver.data == b""


def test_many_transfers_share_one_reader() -> None:
    reader = MemoryReader(IMAGE)
    pairs = []
    for i in range(50):
        s, _, _ = make_sender(reader)
        r = BdxReceiver(b"img", now=FakeTime(), max_block_size=256 + i, mode=RD if i % 2 else SD)
        pairs.append((r, s, r.start()))
    # interleave: one message each per round
    active = True
    while active:
        active = False
        for idx, (r, s, pending) in enumerate(pairs):
            if not pending:
                continue
            active = True
            back: list[Outgoing] = []
            for m in pending:
                back += s.receive(m.opcode, m.payload, m.protocol_id)
            nxt: list[Outgoing] = []
            for m in back:
                nxt += r.receive(m.opcode, m.payload, m.protocol_id)
            pairs[idx] = (r, s, nxt)
    for r, s, _ in pairs:
        assert bytes(r.data) == IMAGE and s.state is SenderState.DONE


def test_receiver_drive_block_ack_is_keepalive() -> None:
    clock = FakeTime()
    sender, _, _ = make_sender(clock=clock)
    sender.receive(Opcode.RECEIVE_INIT, init_bytes())
    sender.receive(Opcode.BLOCK_QUERY, BlockQuery(0).encode())
    clock.t = 50
    assert sender.receive(Opcode.BLOCK_ACK, BlockAck(0).encode()) == []
    clock.t = 100
    assert sender.poll() == []  # the ack refreshed the timeout
    out = sender.receive(Opcode.BLOCK_QUERY, BlockQuery(1).encode())
    assert out[0].opcode == Opcode.BLOCK


# ------------------------------------------------------------------------------------------ errors


def test_unknown_designator() -> None:
    sender, _, events = make_sender()
    assert (
        report_code(sender.receive(Opcode.RECEIVE_INIT, init_bytes(file_designator=b"../etc/passwd")))
        == BdxStatus.FILE_DESIGNATOR_UNKNOWN
    )
    assert sender.failed and events == [BdxStatus.FILE_DESIGNATOR_UNKNOWN]
    sender, _, _ = make_sender()
    assert (
        report_code(sender.receive(Opcode.RECEIVE_INIT, init_bytes(file_designator=b"")))
        == BdxStatus.FILE_DESIGNATOR_UNKNOWN
    )


def test_resolver_exception_is_unknown_designator() -> None:
    def boom(d: bytes) -> None:
        raise KeyError(d)

    sender = BdxSender(boom, now=FakeTime())
    assert report_code(sender.receive(Opcode.RECEIVE_INIT, init_bytes())) == BdxStatus.FILE_DESIGNATOR_UNKNOWN


@pytest.mark.parametrize(
    ("kw", "code"),
    [
        ({"control": TransferControl.ASYNC}, BdxStatus.TRANSFER_METHOD_NOT_SUPPORTED),
        ({"control": TransferControl(0)}, BdxStatus.TRANSFER_METHOD_NOT_SUPPORTED),
        ({"max_block_size": 0}, BdxStatus.BAD_MESSAGE_CONTENTS),
        ({"start_offset": len(IMAGE) + 1}, BdxStatus.START_OFFSET_NOT_SUPPORTED),
    ],
)
def test_negotiation_rejections(kw: dict[str, object], code: BdxStatus) -> None:
    sender, _, events = make_sender()
    assert report_code(sender.receive(Opcode.RECEIVE_INIT, init_bytes(**kw))) == code
    assert sender.done and events == [code]


def test_only_sender_drive_when_configured() -> None:
    sender, _, _ = make_sender(modes=SD)
    out = sender.receive(Opcode.RECEIVE_INIT, init_bytes(control=RD | SD))
    acc = ReceiveAccept.decode(out[0].payload)
    assert acc.control == SD and out[1].opcode == Opcode.BLOCK  # sender drive starts right away
    sender, _, _ = make_sender(modes=SD)
    assert (
        report_code(sender.receive(Opcode.RECEIVE_INIT, init_bytes(control=RD)))
        == BdxStatus.TRANSFER_METHOD_NOT_SUPPORTED
    )


def test_responder_busy_and_slot_release() -> None:
    slots = TransferSlots(1)
    a, _, _ = make_sender(slots=slots)
    a.receive(Opcode.RECEIVE_INIT, init_bytes())
    b, _, _ = make_sender(slots=slots)
    assert report_code(b.receive(Opcode.RECEIVE_INIT, init_bytes())) == BdxStatus.RESPONDER_BUSY
    assert slots.in_use == 1
    a.abort()
    assert slots.in_use == 0
    c, _, _ = make_sender(slots=slots)
    assert c.receive(Opcode.RECEIVE_INIT, init_bytes())[0].opcode == Opcode.RECEIVE_ACCEPT


def test_bad_block_counter() -> None:
    sender, _, _ = make_sender()
    sender.receive(Opcode.RECEIVE_INIT, init_bytes())
    assert (
        report_code(sender.receive(Opcode.BLOCK_QUERY, BlockQuery(1).encode())) == BdxStatus.BAD_BLOCK_COUNTER
    )
    sender, _, _ = make_sender()
    sender.receive(Opcode.RECEIVE_INIT, init_bytes())
    sender.receive(Opcode.BLOCK_QUERY, BlockQuery(0).encode())
    # a duplicate query for the block already served
    assert (
        report_code(sender.receive(Opcode.BLOCK_QUERY, BlockQuery(0).encode())) == BdxStatus.BAD_BLOCK_COUNTER
    )
    sender, _, _ = make_sender()
    sender.receive(Opcode.RECEIVE_INIT, init_bytes(control=SD))
    assert report_code(sender.receive(Opcode.BLOCK_ACK, BlockAck(3).encode())) == BdxStatus.BAD_BLOCK_COUNTER


def test_bad_eof_ack_counter() -> None:
    sender, _, _ = make_sender(reader=MemoryReader(b"tiny"))
    sender.receive(Opcode.RECEIVE_INIT, init_bytes())
    out = sender.receive(Opcode.BLOCK_QUERY, BlockQuery(0).encode())
    assert out[0].opcode == Opcode.BLOCK_EOF and BlockEOF.decode(out[0].payload).data == b"tiny"
    assert (
        report_code(sender.receive(Opcode.BLOCK_ACK_EOF, BlockAckEOF(9).encode()))
        == BdxStatus.BAD_BLOCK_COUNTER
    )


@pytest.mark.parametrize(
    ("opcode", "payload"),
    [
        (Opcode.BLOCK_QUERY, BlockQuery(0).encode()),  # before ReceiveInit
        (Opcode.BLOCK_ACK_EOF, BlockAckEOF(0).encode()),
        (
            Opcode.SEND_INIT,
            SendInit(0, SD, 1024, b"img").encode(),
        ),  # we only answer receiver-initiated transfers
        (Opcode.BLOCK, Block(0, b"x").encode()),
    ],
)
def test_unexpected_message_before_init(opcode: int, payload: bytes) -> None:
    sender, _, _ = make_sender()
    assert report_code(sender.receive(opcode, payload)) == BdxStatus.UNEXPECTED_MESSAGE


def test_unexpected_messages_during_transfer() -> None:
    sender, _, _ = make_sender()
    sender.receive(Opcode.RECEIVE_INIT, init_bytes())
    assert report_code(sender.receive(Opcode.RECEIVE_INIT, init_bytes())) == BdxStatus.UNEXPECTED_MESSAGE
    sender, _, _ = make_sender()
    sender.receive(Opcode.RECEIVE_INIT, init_bytes(control=SD))
    assert (
        report_code(sender.receive(Opcode.BLOCK_QUERY, BlockQuery(1).encode()))
        == BdxStatus.UNEXPECTED_MESSAGE
    )
    sender, _, _ = make_sender()
    sender.receive(Opcode.RECEIVE_INIT, init_bytes())
    assert (
        report_code(sender.receive(Opcode.BLOCK_ACK_EOF, BlockAckEOF(0).encode()))
        == BdxStatus.UNEXPECTED_MESSAGE
    )
    sender, _, _ = make_sender()
    assert report_code(sender.receive(0x01, b"", protocol_id=0x0001)) == BdxStatus.UNEXPECTED_MESSAGE


def test_malformed_message_is_bad_contents() -> None:
    sender, _, _ = make_sender()
    assert report_code(sender.receive(Opcode.RECEIVE_INIT, b"\x20\x00")) == BdxStatus.BAD_MESSAGE_CONTENTS
    assert sender.receive(Opcode.RECEIVE_INIT, init_bytes()) == []  # done: nothing more


def test_peer_status_report_ends_silently() -> None:
    sender, _, events = make_sender()
    sender.receive(Opcode.RECEIVE_INIT, init_bytes())
    sr = status_report(BdxStatus.LENGTH_TOO_LARGE)
    assert sender.receive(sr.opcode, sr.payload, sr.protocol_id) == []
    assert (
        sender.failed
        and sender.status is BdxStatus.LENGTH_TOO_LARGE
        and events == [BdxStatus.LENGTH_TOO_LARGE]
    )
    sender, _, _ = make_sender()
    assert sender.receive(SECURE_CHANNEL_OPCODE_STATUS_REPORT, b"\x01", SECURE_CHANNEL_PROTOCOL_ID) == []
    assert sender.failed


def test_timeout_via_injected_time() -> None:
    clock = FakeTime()
    sender, _, events = make_sender(clock=clock, timeout_s=30)
    sender.receive(Opcode.RECEIVE_INIT, init_bytes())
    assert sender.deadline == 30
    clock.t = 29.9
    assert sender.poll() == []
    clock.t = 30
    assert report_code(sender.poll()) == BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR
    assert events == [BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR] and sender.deadline is None


def test_reader_errors_fail_the_transfer() -> None:
    class Broken(MemoryReader):
        def read(self, offset: int, length: int) -> bytes:
            if offset >= 2048:
                raise OSError("disk gone")
            return super().read(offset, length)

    class Short(MemoryReader):
        def read(self, offset: int, length: int) -> bytes:
            return super().read(offset, length)[:-1]

    for reader in (Broken(IMAGE), Short(IMAGE)):
        sender, _, _ = make_sender(reader)
        receiver = BdxReceiver(b"img", now=FakeTime())
        pump(receiver, sender)
        assert sender.status is BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR
        assert receiver.failed and receiver.status is BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR


def test_receiver_checks_sender() -> None:
    """The receiver is a faithful peer: it rejects a lying sender."""
    r = BdxReceiver(b"img", now=FakeTime(), max_block_size=100)
    r.start()
    assert (
        report_code(r.receive(Opcode.RECEIVE_ACCEPT, ReceiveAccept(0, RD, 200, 0, 50).encode()))
        == BdxStatus.BAD_MESSAGE_CONTENTS
    )
    r = BdxReceiver(b"img", now=FakeTime())
    r.start()
    r.receive(Opcode.RECEIVE_ACCEPT, ReceiveAccept(0, RD, 1024, 0, 10).encode())
    assert report_code(r.receive(Opcode.BLOCK, Block(0, b"x" * 11).encode())) == BdxStatus.LENGTH_MISMATCH
    r = BdxReceiver(b"img", now=FakeTime())
    r.start()
    r.receive(Opcode.RECEIVE_ACCEPT, ReceiveAccept(0, RD, 1024, 0, 10).encode())
    assert (
        report_code(r.receive(Opcode.BLOCK_EOF, BlockEOF(0, b"x" * 9).encode())) == BdxStatus.LENGTH_MISMATCH
    )
    r = BdxReceiver(b"img", now=FakeTime())
    r.start()
    r.receive(Opcode.RECEIVE_ACCEPT, ReceiveAccept(0, RD, 1024).encode())
    assert report_code(r.receive(Opcode.BLOCK, Block(1, b"x").encode())) == BdxStatus.BAD_BLOCK_COUNTER


def test_bdx_server_factory_binds_designators_to_the_peer() -> None:
    from adapters.matter.transport.exchange import SessionContext
    from tests.matter.support import BdxServer

    reader = MemoryReader(IMAGE)
    log: list[tuple[str, int]] = []

    class Obs:
        def progress(self, sender: BdxSender, offset: int, nbytes: int) -> None:
            log.append(("progress", sender.context.peer_node_id))

        def complete(self, sender: BdxSender) -> None:
            log.append(("complete", sender.context.peer_node_id))

        def failed(self, sender: BdxSender, code: BdxStatus, reason: str) -> None:
            log.append(("failed", code))

    server = BdxServer(
        lambda d, ctx: reader if (d, ctx.peer_node_id) == (b"img", 7) else None,
        now=FakeTime(),
        max_transfers=1,
        observer=Obs(),
    )
    owner = SessionContext(1, 7, (), 1, True)
    stranger = SessionContext(1, 8, (), 2, True)
    assert (
        report_code(server(stranger).receive(Opcode.RECEIVE_INIT, init_bytes()))
        == BdxStatus.FILE_DESIGNATOR_UNKNOWN
    )
    assert server.slots.in_use == 0  # the failed attempt released its slot
    pump(BdxReceiver(b"img", now=FakeTime()), s := server(owner))
    assert s.state is SenderState.DONE and ("complete", 7) in log and server.slots.in_use == 0
