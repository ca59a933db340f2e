"""ASH (UG101 "UART Gateway Protocol") for the NCP side, sans-I/O: framing, codec and the link state machine.

Everything here works on bytes and on times read from an injected clock; nothing does I/O or sleeps.

- Frame codec: control byte, data randomisation (LFSR seeded 0x42, taps 0xB8), CRC-CCITT (poly 0x1021, init
  0xFFFF, sent big-endian), byte stuffing of the reserved bytes (0x7E flag, 0x7D escape, 0x11 XON, 0x13 XOFF,
  0x18 substitute, 0x1A cancel) as 0x7D, byte ^ 0x20.
- `AshDeframer`: splits a byte stream at flag bytes, honouring Cancel (drop what came since the last flag),
  Substitute (drop up to the next flag) and XON/XOFF (dropped from the stream).
- `AshNcpLink`: the NCP's half of the link: RST -> RSTACK, DATA with frame/ack numbers and a transmit window of
  TX_K frames, ACK/NAK, reject condition, go-back-N retransmission on NAK or when t_rx_ack expires (adapted as
  UG101 says: doubled on timeout, 7/8 old + 1/2 measured on an acknowledgement, clamped to [0.4, 3.2] s), the
  FAILED state after ACK_TIMEOUTS consecutive timeouts (an ERROR frame is sent) and fault injection for tests.
"""

from __future__ import annotations

import binascii
import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

LOGGER = logging.getLogger(__name__)

FLAG = 0x7E
ESCAPE = 0x7D
XON = 0x11
XOFF = 0x13
SUBSTITUTE = 0x18
CANCEL = 0x1A
RESERVED = frozenset({FLAG, ESCAPE, XON, XOFF, SUBSTITUTE, CANCEL})

ASH_VERSION = 0x02

# UG101 "Configuration Parameters" (the values an EmberZNet NCP ships with)
T_RX_ACK_INIT = 1.6
T_RX_ACK_MIN = 0.4
T_RX_ACK_MAX = 3.2
TX_K = 5
ACK_TIMEOUTS = 4
MAX_DATA_FIELD = 128  # the EZSP frame carried in one DATA frame


class ResetCode(enum.IntEnum):
    """Reset/error codes carried by RSTACK and ERROR frames (the subset an NCP sends here)."""

    UNKNOWN_REASON = 0x00
    EXTERNAL = 0x01
    POWER_ON = 0x02
    WATCHDOG = 0x03
    ASSERT = 0x06
    BOOTLOADER = 0x09
    SOFTWARE = 0x0B
    EXCEEDED_MAXIMUM_ACK_TIMEOUT_COUNT = 0x51


class AshDecodeError(ValueError):
    """A frame that cannot be decoded (bad CRC, bad escape, wrong length); the message says what and where."""


# --------------------------------------------------------------------------------------------- frames
@dataclass(frozen=True)
class DataFrame:
    frm_num: int
    ack_num: int
    re_tx: bool
    payload: bytes


@dataclass(frozen=True)
class AckFrame:
    ack_num: int
    n_rdy: bool = False


@dataclass(frozen=True)
class NakFrame:
    ack_num: int
    n_rdy: bool = False


@dataclass(frozen=True)
class RstFrame:
    pass


@dataclass(frozen=True)
class RstAckFrame:
    reset_code: int
    version: int = ASH_VERSION


@dataclass(frozen=True)
class ErrorFrame:
    error_code: int
    version: int = ASH_VERSION


AshFrame = DataFrame | AckFrame | NakFrame | RstFrame | RstAckFrame | ErrorFrame


def _pseudo_random(length: int) -> bytes:
    out = bytearray()
    rand = 0x42
    for _ in range(length):
        out.append(rand)
        rand = (rand >> 1) ^ 0xB8 if rand & 1 else rand >> 1
    return bytes(out)


PSEUDO_RANDOM = _pseudo_random(256)


def randomize(data: bytes) -> bytes:
    """XOR with the UG101 pseudo-random sequence (its own inverse)."""
    if len(data) > len(PSEUDO_RANDOM):
        raise AshDecodeError(f"DATA field of {len(data)} bytes is longer than {len(PSEUDO_RANDOM)}")
    return bytes(a ^ b for a, b in zip(data, PSEUDO_RANDOM, strict=False))


def crc_ccitt(data: bytes) -> int:
    """CRC-CCITT as ASH uses it: polynomial 0x1021, initial value 0xFFFF (the stdlib's crc_hqx is exactly that)."""
    return binascii.crc_hqx(data, 0xFFFF)


def stuff(data: bytes) -> bytes:
    out = bytearray()
    for b in data:
        if b in RESERVED:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unstuff(data: bytes) -> bytes:
    out = bytearray()
    escaped = False
    for i, b in enumerate(data):
        if escaped:
            value = b ^ 0x20
            if value not in RESERVED:
                raise AshDecodeError(
                    f"escape at byte {i - 1} is followed by 0x{b:02X}, not an escaped reserved byte"
                )
            out.append(value)
            escaped = False
        elif b == ESCAPE:
            escaped = True
        else:
            out.append(b)
    if escaped:
        raise AshDecodeError(f"frame ends in an escape byte (byte {len(data) - 1})")
    return bytes(out)


def control_and_data(frame: AshFrame) -> bytes:
    """Control byte + data field (DATA payloads randomised), without CRC or stuffing."""
    if isinstance(frame, DataFrame):
        control = (frame.frm_num & 7) << 4 | int(frame.re_tx) << 3 | (frame.ack_num & 7)
        return bytes([control]) + randomize(frame.payload)
    if isinstance(frame, AckFrame):
        return bytes([0x80 | int(frame.n_rdy) << 3 | (frame.ack_num & 7)])
    if isinstance(frame, NakFrame):
        return bytes([0xA0 | int(frame.n_rdy) << 3 | (frame.ack_num & 7)])
    if isinstance(frame, RstFrame):
        return b"\xc0"
    if isinstance(frame, RstAckFrame):
        return bytes([0xC1, frame.version, frame.reset_code])
    return bytes([0xC2, frame.version, frame.error_code])


def encode(frame: AshFrame) -> bytes:
    """The frame as it goes on the wire: stuffed control+data+CRC, then the flag byte."""
    body = control_and_data(frame)
    return stuff(body + crc_ccitt(body).to_bytes(2, "big")) + bytes([FLAG])


def decode(raw: bytes) -> AshFrame:
    """Decode one unstuffed frame (control, data, CRC; no flag)."""
    if len(raw) < 3:
        raise AshDecodeError(f"frame of {len(raw)} bytes is shorter than control byte + CRC")
    body, crc = raw[:-2], int.from_bytes(raw[-2:], "big")
    want = crc_ccitt(body)
    if crc != want:
        raise AshDecodeError(
            f"CRC 0x{crc:04X} at byte {len(raw) - 2} does not match the computed 0x{want:04X}"
        )
    control, data = body[0], body[1:]
    if control & 0x80 == 0:
        return DataFrame(
            frm_num=control >> 4 & 7, re_tx=bool(control & 0x08), ack_num=control & 7, payload=randomize(data)
        )
    if control & 0xE0 == 0x80:
        _expect_len(data, 0, "ACK")
        return AckFrame(ack_num=control & 7, n_rdy=bool(control & 0x08))
    if control & 0xE0 == 0xA0:
        _expect_len(data, 0, "NAK")
        return NakFrame(ack_num=control & 7, n_rdy=bool(control & 0x08))
    if control == 0xC0:
        _expect_len(data, 0, "RST")
        return RstFrame()
    if control == 0xC1:
        _expect_len(data, 2, "RSTACK")
        return RstAckFrame(version=data[0], reset_code=data[1])
    if control == 0xC2:
        _expect_len(data, 2, "ERROR")
        return ErrorFrame(version=data[0], error_code=data[1])
    raise AshDecodeError(f"unknown control byte 0x{control:02X} at byte 0")


def _expect_len(data: bytes, n: int, kind: str) -> None:
    if len(data) != n:
        raise AshDecodeError(f"{kind} frame carries {len(data)} data bytes, expected {n}")


class AshDeframer:
    """Byte stream -> stuffed frame bodies (without flags), applying Cancel/Substitute/XON/XOFF."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        for b in data:
            if b == FLAG:
                if not self._discarding and self._buf:
                    frames.append(bytes(self._buf))
                self._buf.clear()
                self._discarding = False
            elif b == CANCEL:
                self._buf.clear()  # everything since the previous flag is void
            elif b == SUBSTITUTE:
                self._buf.clear()
                self._discarding = True  # a byte was lost: the frame in progress is void
            elif b in (XON, XOFF):
                continue  # software flow control, never part of a frame
            elif not self._discarding:
                self._buf.append(b)
                if len(self._buf) > 2 * (MAX_DATA_FIELD + 3) + 8:
                    # no flag for far longer than any frame: noise, resynchronise at the next flag
                    self._buf.clear()
                    self._discarding = True
        return frames


# --------------------------------------------------------------------------------------------- link
@dataclass
class AshFaults:
    """Faults injected on the link (tests): counts are consumed as frames pass."""

    drop_tx_data: int = 0  # outgoing DATA frames vanish on the wire
    corrupt_tx_data: int = 0  # outgoing DATA frames arrive with a broken CRC
    drop_rx_data: int = 0  # incoming DATA frames are lost before the NCP sees them
    nak_rx_data: int = (
        0  # incoming valid DATA frames are answered with NAK (receive buffer full): a NAK storm
    )


@dataclass
class _Sent:
    frm_num: int
    payload: bytes
    sent_at: float
    retransmitted: bool = False


@dataclass
class AshCounters:
    rx_data: int = 0
    tx_data: int = 0
    retransmissions: int = 0
    naks_sent: int = 0
    naks_received: int = 0
    acks_sent: int = 0
    bad_frames: int = 0
    timeouts: int = 0
    resets: int = 0
    reset_codes: list[int] = field(default_factory=list)


class AshNcpLink:
    """The NCP side of one ASH link. Feed it bytes and time; take bytes, EZSP frames and events out.

    `receive(bytes)` processes input; `take_output()` returns bytes to write; `take_frames()` returns EZSP frames
    received in order; `reset_requested` is set when the host sent RST (the caller resets the NCP and calls
    `reset_done()`); `poll()` runs the retransmission timer; `next_deadline()` says when to call it.
    """

    def __init__(
        self,
        monotonic: Callable[[], float],
        *,
        tx_k: int = TX_K,
        ack_timeouts: int = ACK_TIMEOUTS,
        on_output: Callable[[], None] | None = None,
    ) -> None:
        self.monotonic = monotonic
        self.tx_k = tx_k
        self.ack_timeouts = ack_timeouts
        self.on_output = on_output
        self.faults = AshFaults()
        self.counters = AshCounters()
        self._deframer = AshDeframer()
        self._out = bytearray()
        self._frames: deque[bytes] = deque()
        self.reset_requested = False
        self._init_state()
        self.connected = False
        self.failed = False

    def _init_state(self) -> None:
        self._tx_seq = 0  # frmNum of the next new DATA frame
        self._rx_seq = 0  # frmNum we expect next from the host (our ackNum)
        self._unacked: deque[_Sent] = deque()
        self._pending: deque[bytes] = deque()  # queued, not yet sent (window full)
        self._t_rx_ack = T_RX_ACK_INIT
        self._timeouts_in_row = 0
        self._reject = False
        self._ack_owed = False

    # ------------------------------------------------------------------ outward API
    def power_on(self, reset_code: int = ResetCode.POWER_ON, *, announce: bool = True) -> None:
        """The NCP boots (or reboots): fresh link state; an RSTACK tells the host when `announce`."""
        self._init_state()
        self.failed = False
        self.connected = True
        self.counters.resets += 1
        self.counters.reset_codes.append(int(reset_code))
        if announce:
            self._write(RstAckFrame(reset_code=int(reset_code)))

    def reset_done(self, reset_code: int = ResetCode.SOFTWARE) -> None:
        """The caller finished the reset the host asked for with RST."""
        self.reset_requested = False
        self.power_on(reset_code)

    def send(self, payload: bytes) -> None:
        """Queue one EZSP frame to the host."""
        if len(payload) > MAX_DATA_FIELD:
            raise ValueError(
                f"EZSP frame of {len(payload)} bytes exceeds the ASH DATA field ({MAX_DATA_FIELD})"
            )
        if not self.connected or self.failed:
            LOGGER.debug("ASH link not connected, dropping %s", payload.hex())
            return
        self._pending.append(payload)
        self._pump()

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def take_frames(self) -> list[bytes]:
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def next_deadline(self) -> float | None:
        if not self._unacked or self.failed:
            return None
        return self._unacked[0].sent_at + self._t_rx_ack

    @property
    def t_rx_ack(self) -> float:
        return self._t_rx_ack

    # ------------------------------------------------------------------ input
    def receive(self, data: bytes) -> None:
        """Process wire bytes. Then take_frames(), queue the answers with send() (they piggyback the ACK) and
        call flush() so an ACK still owed goes out on its own."""
        for body in self._deframer.feed(data):
            self._frame_bytes(body)

    def _frame_bytes(self, body: bytes) -> None:
        try:
            raw = unstuff(body)
            frame = decode(raw)
        except AshDecodeError as exc:
            self.counters.bad_frames += 1
            LOGGER.debug("ASH: bad frame %s: %s", body.hex(), exc)
            # UG101: a DATA frame with an error is answered with NAK (once, entering the reject condition)
            if self.connected and not self.failed and body and body[0] & 0x80 == 0:
                self._nak()
            return
        self.frame_received(frame)

    def frame_received(self, frame: AshFrame) -> None:
        if isinstance(frame, RstFrame):
            # the host asks for a reset: the NCP reboots; the caller resets the EZSP layer and calls reset_done()
            self.connected = False
            self._init_state()
            self.reset_requested = True
            return
        if not self.connected or self.failed:
            return  # only RST is accepted before the link is up or in the FAILED state
        if isinstance(frame, DataFrame):
            self._data(frame)
        elif isinstance(frame, AckFrame):
            self._ack_num(frame.ack_num)
        elif isinstance(frame, NakFrame):
            self.counters.naks_received += 1
            self._ack_num(frame.ack_num)
            self._retransmit_all()
        # RSTACK / ERROR come only from an NCP; a host never sends them

    def _data(self, frame: DataFrame) -> None:
        if self.faults.drop_rx_data > 0:
            self.faults.drop_rx_data -= 1
            return
        self._ack_num(frame.ack_num)  # ackNum is valid even in a frame we reject
        if frame.frm_num == self._rx_seq:
            if self.faults.nak_rx_data > 0:
                self.faults.nak_rx_data -= 1
                self._send_nak_now()
                return
            self._rx_seq = (self._rx_seq + 1) & 7
            self._reject = False
            self._ack_owed = True
            self.counters.rx_data += 1
            self._frames.append(frame.payload)
        elif frame.re_tx:
            self._ack_owed = True  # a retransmission of something we have: acknowledge again
        else:
            self._nak()

    def _ack_num(self, ack_num: int) -> None:
        """Free every frame the host acknowledged (ackNum = the next frame it expects)."""
        freed = False
        while self._unacked and (ack_num - self._unacked[0].frm_num) & 7 in range(1, len(self._unacked) + 1):
            sent = self._unacked.popleft()
            freed = True
            if not sent.retransmitted:  # Karn: only unambiguous samples adapt the timer
                measured = self.monotonic() - sent.sent_at
                self._set_t_rx_ack(self._t_rx_ack * 7 / 8 + measured / 2)
        if freed:
            self._timeouts_in_row = 0
            self._pump()

    # ------------------------------------------------------------------ output
    def _pump(self) -> None:
        while self._pending and len(self._unacked) < self.tx_k:
            payload = self._pending.popleft()
            sent = _Sent(frm_num=self._tx_seq, payload=payload, sent_at=self.monotonic())
            self._tx_seq = (self._tx_seq + 1) & 7
            self._unacked.append(sent)
            self._write_data(sent, re_tx=False)

    def _write_data(self, sent: _Sent, *, re_tx: bool) -> None:
        frame = DataFrame(frm_num=sent.frm_num, ack_num=self._rx_seq, re_tx=re_tx, payload=sent.payload)
        self._ack_owed = False  # piggybacked
        self.counters.tx_data += 1
        if self.faults.drop_tx_data > 0:
            self.faults.drop_tx_data -= 1
            return
        if self.faults.corrupt_tx_data > 0:
            self.faults.corrupt_tx_data -= 1
            wire = bytearray(encode(frame))
            wire[-2] ^= 0x01 if wire[-2] ^ 0x01 not in RESERVED else 0x04  # a bit error in the CRC
            self._emit(bytes(wire))
            return
        self._write(frame)

    def _retransmit_all(self) -> None:
        now = self.monotonic()
        for sent in self._unacked:
            sent.sent_at = now
            sent.retransmitted = True
            self.counters.retransmissions += 1
            self._write_data(sent, re_tx=True)

    def _nak(self) -> None:
        if self._reject:
            return  # one NAK per reject condition
        self._reject = True
        self._send_nak_now()

    def _send_nak_now(self) -> None:
        self.counters.naks_sent += 1
        self._ack_owed = False
        self._write(NakFrame(ack_num=self._rx_seq))

    def _flush_ack(self) -> None:
        if self._ack_owed:
            self._ack_owed = False
            self.counters.acks_sent += 1
            self._write(AckFrame(ack_num=self._rx_seq))

    def flush(self) -> None:
        """Send an ACK still owed (after the caller queued its responses, which piggyback it)."""
        self._flush_ack()

    def _write(self, frame: AshFrame) -> None:
        self._emit(encode(frame))

    def _emit(self, wire: bytes) -> None:
        self._out += wire
        if self.on_output is not None:
            self.on_output()

    # ------------------------------------------------------------------ timers
    def poll(self) -> None:
        """Run the t_rx_ack timer: retransmit, back off, or give up (FAILED + ERROR frame)."""
        deadline = self.next_deadline()
        if deadline is None or self.monotonic() < deadline:
            return
        self.counters.timeouts += 1
        self._timeouts_in_row += 1
        if self.ack_timeouts and self._timeouts_in_row >= self.ack_timeouts:
            self.failed = True
            self._write(ErrorFrame(error_code=ResetCode.EXCEEDED_MAXIMUM_ACK_TIMEOUT_COUNT))
            return
        self._set_t_rx_ack(self._t_rx_ack * 2)
        self._retransmit_all()

    def _set_t_rx_ack(self, value: float) -> None:
        self._t_rx_ack = min(T_RX_ACK_MAX, max(T_RX_ACK_MIN, value))
