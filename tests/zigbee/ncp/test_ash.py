"""The simulator's ASH layer against UG101's published frames and rules, with an injected clock (no sleeps).

Frames are checked against the worked examples in UG101 (RST, RSTACK, the randomisation sequence) and against
bellows' own independent ASH implementation (`bellows.ash`) as a second reference.
"""

from __future__ import annotations

import bellows.ash as bash
import pytest

from adapters.zigbee.sim.ncp import ash
from adapters.zigbee.sim.ncp.ash import (
    AckFrame,
    AshDecodeError,
    AshDeframer,
    AshNcpLink,
    DataFrame,
    ErrorFrame,
    NakFrame,
    RstAckFrame,
    RstFrame,
)


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def frames_out(link: AshNcpLink) -> list[ash.AshFrame]:
    return [ash.decode(ash.unstuff(body)) for body in AshDeframer().feed(link.take_output())]


# ------------------------------------------------------------------------------------------ codec vs UG101
def test_rst_frame_matches_ug101_example() -> None:
    # UG101 4.1: the host sends Cancel, then RST = C0 38 BC 7E
    assert ash.encode(RstFrame()) == bytes.fromhex("C0 38 BC 7E")
    assert ash.decode(bytes.fromhex("C0 38 BC")) == RstFrame()


def test_rstack_frame_matches_ug101_example() -> None:
    # UG101: RSTACK, ASH version 2, reset reason power-on = C1 02 02 9B 7B 7E
    assert ash.encode(RstAckFrame(reset_code=ash.ResetCode.POWER_ON)) == bytes.fromhex("C1 02 02 9B 7B 7E")
    assert ash.decode(bytes.fromhex("C1 02 02 9B 7B")) == RstAckFrame(reset_code=2)


def test_error_frame_layout() -> None:
    wire = ash.encode(ErrorFrame(error_code=ash.ResetCode.EXCEEDED_MAXIMUM_ACK_TIMEOUT_COUNT))
    assert wire[:3] == bytes([0xC2, 0x02, 0x51]) and wire[-1] == ash.FLAG
    assert bash.parse_frame(ash.unstuff(wire[:-1])) == bash.ErrorFrame(version=2, reset_code=0x51)


def test_randomisation_sequence_starts_as_ug101_says() -> None:
    assert ash.PSEUDO_RANDOM[:5] == bytes([0x42, 0x21, 0xA8, 0x54, 0x2A])
    data = bytes(range(60))
    assert ash.randomize(ash.randomize(data)) == data
    assert ash.PSEUDO_RANDOM == bash.PSEUDO_RANDOM_DATA_SEQUENCE  # bellows computes the same sequence


def test_ack_and_nak_control_bytes_match_ug101() -> None:
    # UG101 examples: ACK with ackNum 1 = 81 60 59 7E; NAK with ackNum 6 = A6 34 DC 7E
    assert ash.encode(AckFrame(ack_num=1)) == bytes.fromhex("81 60 59 7E")
    assert ash.encode(NakFrame(ack_num=6)) == bytes.fromhex("A6 34 DC 7E")


def test_data_frame_matches_ug101_version_command_example() -> None:
    # UG101 4.3: the EZSP version command (seq 0, fc 0, id 0, v4) as DATA frame 0 ackNum 0 =
    # 00 42 21 A8 54 2A D4 (CRC) 7E ... checked via the randomised payload and bellows' decoder
    frame = DataFrame(frm_num=0, ack_num=0, re_tx=False, payload=bytes([0x00, 0x00, 0x00, 0x04]))
    wire = ash.encode(frame)
    assert wire[:5] == bytes([0x00, 0x42, 0x21, 0xA8, 0x50])
    parsed = bash.parse_frame(ash.unstuff(wire[:-1]))
    assert isinstance(parsed, bash.DataFrame) and parsed.ezsp_frame == frame.payload


@pytest.mark.parametrize("reserved", sorted(ash.RESERVED))
def test_reserved_bytes_are_stuffed_and_round_trip(reserved: int) -> None:
    payload = bytes([reserved, 0x00, reserved ^ 0x42, reserved])
    frame = DataFrame(frm_num=3, ack_num=5, re_tx=True, payload=payload)
    wire = ash.encode(frame)
    assert not (set(wire[:-1]) & (ash.RESERVED - {ash.ESCAPE}))  # only the trailing flag is unescaped
    assert ash.decode(ash.unstuff(wire[:-1])) == frame
    # bellows' decoder agrees byte for byte
    got = bash.parse_frame(bash.AshProtocol._unstuff_bytes(wire[:-1]))
    assert got == bash.DataFrame(frm_num=3, re_tx=True, ack_num=5, ezsp_frame=payload)


def test_bellows_frames_decode_here() -> None:
    for frame in (
        bash.DataFrame(frm_num=7, re_tx=False, ack_num=2, ezsp_frame=b"\x01\x00\x01\x7e\x7d"),
        bash.AckFrame(res=0, ncp_ready=0, ack_num=4),
        bash.NakFrame(res=0, ncp_ready=0, ack_num=3),
        bash.RstFrame(),
    ):
        assert ash.encode(ash.decode(frame.to_bytes()))[:-1] == bash.AshProtocol._stuff_bytes(
            frame.to_bytes()
        )


def test_bad_frames_name_what_is_wrong() -> None:
    with pytest.raises(AshDecodeError, match="CRC"):
        ash.decode(bytes.fromhex("C0 38 BD"))
    with pytest.raises(AshDecodeError, match="shorter"):
        ash.decode(b"\xc0")
    with pytest.raises(AshDecodeError, match=r"escape at byte 0"):
        ash.unstuff(b"\x7d\x00")
    with pytest.raises(AshDecodeError, match="RSTACK frame carries 1"):
        short = b"\xc1\x02"
        ash.decode(short + ash.crc_ccitt(short).to_bytes(2, "big"))


def test_deframer_cancel_substitute_and_flow_control() -> None:
    d = AshDeframer()
    rst = ash.encode(RstFrame())
    # 32 Cancel bytes as bellows sends before RST, noise before a Cancel, XON/XOFF inside a frame
    assert d.feed(b"\x1a" * 32 + rst) == [rst[:-1]]
    assert d.feed(b"\x55\x66\x1a" + rst) == [rst[:-1]]
    assert d.feed(b"\xc0\x11\x38\x13\xbc\x7e") == [b"\xc0\x38\xbc"]
    # Substitute: the frame in progress is void up to the next flag
    assert d.feed(b"\xc0\x18\x38\xbc\x7e" + rst) == [rst[:-1]]
    assert d.feed(b"\x7e\x7e") == []  # consecutive flags are no frames


# ------------------------------------------------------------------------------------------ link state machine
def connected(**kw: int) -> tuple[AshNcpLink, FakeTime]:
    t = FakeTime()
    link = AshNcpLink(t, **kw)
    link.power_on()
    assert frames_out(link) == [RstAckFrame(reset_code=2)]
    return link, t


def host_data(frm: int, ack: int, payload: bytes, re_tx: bool = False) -> bytes:
    return ash.encode(DataFrame(frm_num=frm, ack_num=ack, re_tx=re_tx, payload=payload))


def test_rst_asks_for_a_reset_and_rstack_follows() -> None:
    link, _ = connected()
    link.receive(b"\x1a" * 32 + ash.encode(RstFrame()))
    assert link.reset_requested and frames_out(link) == []
    link.reset_done()
    assert frames_out(link) == [RstAckFrame(reset_code=ash.ResetCode.SOFTWARE)]


def test_in_sequence_data_is_delivered_and_acked_or_piggybacked() -> None:
    link, _ = connected()
    link.receive(host_data(0, 0, b"cmd0"))
    assert link.take_frames() == [b"cmd0"]
    link.flush()
    assert frames_out(link) == [AckFrame(ack_num=1)]
    link.receive(host_data(1, 0, b"cmd1"))
    assert link.take_frames() == [b"cmd1"]
    link.send(b"rsp1")  # the response carries the acknowledgement
    link.flush()
    assert frames_out(link) == [DataFrame(frm_num=0, ack_num=2, re_tx=False, payload=b"rsp1")]


def test_out_of_sequence_data_gets_one_nak_and_duplicates_are_reacked() -> None:
    link, _ = connected()
    link.receive(host_data(0, 0, b"a"))
    link.flush()
    assert link.take_frames() == [b"a"]
    frames_out(link)
    link.receive(host_data(2, 0, b"c") + host_data(3, 0, b"d"))  # frame 1 was lost
    link.flush()
    assert link.take_frames() == [] and frames_out(link) == [
        NakFrame(ack_num=1)
    ]  # one NAK per reject condition
    link.receive(host_data(0, 0, b"a", re_tx=True))  # a retransmission of something we have
    link.flush()
    assert link.take_frames() == [] and frames_out(link) == [AckFrame(ack_num=1)]
    link.receive(host_data(1, 0, b"b", re_tx=True))
    assert link.take_frames() == [b"b"]


def test_corrupted_data_frame_is_naked() -> None:
    link, _ = connected()
    wire = bytearray(host_data(0, 0, b"hello"))
    wire[2] ^= 0x40
    link.receive(bytes(wire))
    assert frames_out(link) == [NakFrame(ack_num=0)] and link.counters.bad_frames == 1


def test_window_of_tx_k_frames_then_waits_for_acks() -> None:
    link, _ = connected()
    for i in range(7):
        link.send(bytes([i]))
    sent = frames_out(link)
    assert [f.frm_num for f in sent if isinstance(f, DataFrame)] == [0, 1, 2, 3, 4]  # TX_K = 5
    link.receive(ash.encode(AckFrame(ack_num=2)))  # frames 0 and 1 acknowledged
    assert [f.frm_num for f in frames_out(link) if isinstance(f, DataFrame)] == [5, 6]


def test_nak_retransmits_go_back_n_with_retx_flag() -> None:
    link, _ = connected()
    for i in range(3):
        link.send(bytes([i]))
    frames_out(link)
    link.receive(ash.encode(NakFrame(ack_num=1)))  # frame 0 arrived, 1 did not
    again = frames_out(link)
    assert again == [
        DataFrame(frm_num=1, ack_num=0, re_tx=True, payload=b"\x01"),
        DataFrame(frm_num=2, ack_num=0, re_tx=True, payload=b"\x02"),
    ]


def test_ack_timer_retransmits_doubles_and_fails_after_ack_timeouts() -> None:
    link, t = connected()
    link.send(b"x")
    frames_out(link)
    assert link.next_deadline() == pytest.approx(100.0 + ash.T_RX_ACK_INIT)
    t.now += 1.0
    link.poll()
    assert frames_out(link) == []  # not yet
    t.now += 0.7
    link.poll()
    assert frames_out(link) == [DataFrame(frm_num=0, ack_num=0, re_tx=True, payload=b"x")]
    assert link.t_rx_ack == pytest.approx(3.2)  # doubled (1.6 -> 3.2, the maximum)
    for _ in range(ash.ACK_TIMEOUTS - 1):
        t.now += 3.3
        link.poll()
    out = frames_out(link)
    assert out[-1] == ErrorFrame(error_code=ash.ResetCode.EXCEEDED_MAXIMUM_ACK_TIMEOUT_COUNT)
    assert link.failed and link.next_deadline() is None
    link.receive(host_data(0, 0, b"ignored"))
    assert link.take_frames() == []  # FAILED: only RST is accepted
    link.receive(ash.encode(RstFrame()))
    assert link.reset_requested


def test_ack_adapts_timer_towards_measured_round_trip() -> None:
    link, t = connected()
    link.send(b"x")
    t.now += 0.1
    link.receive(ash.encode(AckFrame(ack_num=1)))
    assert link.t_rx_ack == pytest.approx(1.6 * 7 / 8 + 0.05)
    assert link.next_deadline() is None


def test_injected_faults() -> None:
    link, _ = connected()
    link.faults.drop_tx_data = 1
    link.send(b"lost")
    assert frames_out(link) == []
    link.faults.corrupt_tx_data = 1
    link.send(b"bent")
    wire = link.take_output()
    with pytest.raises(AshDecodeError, match="CRC"):
        ash.decode(ash.unstuff(wire[:-1]))
    link.faults.nak_rx_data = 2
    link.receive(host_data(0, 0, b"a"))
    link.receive(host_data(0, 0, b"a", re_tx=True))
    assert link.take_frames() == [] and [type(f) for f in frames_out(link)] == [NakFrame, NakFrame]
    link.receive(host_data(0, 0, b"a", re_tx=True))
    assert link.take_frames() == [b"a"]
