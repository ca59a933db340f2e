"""BDX sender for a receiver-initiated transfer: the provider's side of one OTA image download (sans-I/O).

One `BdxSender` per BDX exchange. The requestor opens with ReceiveInit; the sender negotiates (version 0,
max block size = min(proposed, our cap), receiver-drive preferred, sender-drive accepted, start offset and max
length for resume), answers ReceiveAccept, then serves blocks:

  receiver drive   BlockQuery(n) | BlockQueryWithSkip(n, skip) -> Block(n) ... -> BlockEOF(n);
                   BlockAck(n-1) between queries only refreshes the timeout
  sender drive     Block(0) right after ReceiveAccept; BlockAck(n) -> Block(n+1) ... -> BlockEOF
  both             BlockAckEOF(last) -> done

Every protocol error is answered with a StatusReport (protocol BDX) naming it, and ends the transfer. A
StatusReport from the peer ends it silently. Image bytes come block by block from an `ImageReader`; the file
designator only ever reaches the injected resolver (designator -> reader or None), never a filesystem path.
Time comes from an injected monotonic `now()`; the I/O layer calls `poll()` at `deadline`.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from adapters.matter.bdx.messages import (
    BDX_PROTOCOL_ID,
    BDX_VERSION,
    BdxDecodeError,
    BdxStatus,
    Block,
    BlockAck,
    BlockAckEOF,
    BlockEOF,
    BlockQuery,
    BlockQueryWithSkip,
    ReceiveAccept,
    ReceiveInit,
    TransferControl,
    decode_message,
)
from adapters.matter.transport.status_report import (
    SECURE_CHANNEL_OPCODE_STATUS_REPORT,
    GeneralCode,
    StatusReport,
    StatusReportError,
)

__all__ = [
    "DEFAULT_MAX_BLOCK_SIZE",
    "DEFAULT_TIMEOUT_S",
    "SECURE_CHANNEL_PROTOCOL_ID",
    "BdxSender",
    "ImageReaderLike",
    "Outgoing",
    "SenderState",
    "TransferSlots",
    "status_report",
]

log = logging.getLogger(__name__)

SECURE_CHANNEL_PROTOCOL_ID = 0x0000
DEFAULT_MAX_BLOCK_SIZE = 1024  # fits one MRP/UDP message (1280 IPv6 MTU) with headers and MIC
DEFAULT_TIMEOUT_S = 60.0  # idle time without a message from the receiver before the transfer is abandoned


class Outgoing(NamedTuple):
    """One message for the exchange to send: protocol id (32-bit form), opcode, payload."""

    protocol_id: int
    opcode: int
    payload: bytes


class ImageReaderLike(Protocol):
    """gateway.core.interface.ImageReader: random access to one stored image."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...


class SenderState(enum.Enum):
    AWAIT_INIT = "await-init"
    IN_PROGRESS = "in-progress"  # receiver drive: awaiting a query; sender drive: awaiting an ack
    AWAIT_EOF_ACK = "await-eof-ack"
    DONE = "done"
    FAILED = "failed"


class TransferSlots:
    """A bound on concurrent transfers shared by many senders (RESPONDER_BUSY beyond it)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("transfer slot limit must be >= 1")
        self.limit = limit
        self.in_use = 0

    def acquire(self) -> bool:
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use = max(0, self.in_use - 1)


def status_report(code: BdxStatus) -> Outgoing:
    """A BDX error as a Secure Channel StatusReport (general FAILURE, protocol BDX, protocol code)."""
    body = StatusReport(GeneralCode.FAILURE, BDX_PROTOCOL_ID, int(code)).encode()
    return Outgoing(SECURE_CHANNEL_PROTOCOL_ID, SECURE_CHANNEL_OPCODE_STATUS_REPORT, body)


ProgressCallback = Callable[[int, int], None]  # (image offset of the block, bytes in it)
FailedCallback = Callable[[BdxStatus, str], None]


class BdxSender:
    """Responder/sender state machine for one BDX exchange (see module docstring)."""

    def __init__(
        self,
        resolver: Callable[[bytes], ImageReaderLike | None],
        *,
        now: Callable[[], float],
        max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        modes: TransferControl = TransferControl.RECEIVER_DRIVE | TransferControl.SENDER_DRIVE,
        slots: TransferSlots | None = None,
        on_progress: ProgressCallback | None = None,
        on_complete: Callable[[], None] | None = None,
        on_failed: FailedCallback | None = None,
        context: Any = None,
    ) -> None:
        if not 1 <= max_block_size <= 0xFFFF:
            raise ValueError("max_block_size must be 1..65535")
        self._resolver = resolver
        self._now = now
        self._cap = max_block_size
        self._timeout = timeout_s
        self._modes = modes
        self._slots = slots
        self._holds_slot = False
        self._on_progress = on_progress
        self._on_complete = on_complete
        self._on_failed = on_failed
        self.context = context  # the exchange's SessionContext (who is downloading)

        self.state = SenderState.AWAIT_INIT
        self.designator: bytes = b""
        self.mode: TransferControl | None = None
        self.block_size = 0
        self.start_offset = 0
        self.length = 0  # bytes of the image range being transferred
        self.position = 0  # next image offset to send
        self.bytes_sent = 0
        self.blocks_sent = 0
        self.status: BdxStatus | None = None  # why it failed (ours or the peer's code)
        self.reason = ""
        self._reader: ImageReaderLike | None = None
        self._next_block = 0  # counter the next Block will carry
        self._last_block = -1  # counter of the last Block/BlockEOF sent
        self._last_activity = now()

    # ------------------------------------------------------------------ public surface

    @property
    def done(self) -> bool:
        """True once the transfer has completed or failed; the exchange can be closed."""
        return self.state in (SenderState.DONE, SenderState.FAILED)

    @property
    def failed(self) -> bool:
        return self.state is SenderState.FAILED

    @property
    def end_offset(self) -> int:
        return self.start_offset + self.length

    @property
    def deadline(self) -> float | None:
        """Monotonic time at which `poll()` abandons the transfer if nothing arrives."""
        return None if self.done else self._last_activity + self._timeout

    def receive(self, opcode: int, payload: bytes, protocol_id: int = BDX_PROTOCOL_ID) -> list[Outgoing]:
        """Handle one incoming message; return the messages to send (possibly none)."""
        if self.done:
            return []
        if protocol_id == SECURE_CHANNEL_PROTOCOL_ID and opcode == SECURE_CHANNEL_OPCODE_STATUS_REPORT:
            self._peer_status(payload)
            return []
        if protocol_id != BDX_PROTOCOL_ID:
            return self._fail(
                BdxStatus.UNEXPECTED_MESSAGE, f"protocol 0x{protocol_id:x} opcode 0x{opcode:02x}"
            )
        try:
            msg = decode_message(opcode, payload)
        except BdxDecodeError as exc:
            return self._fail(BdxStatus.BAD_MESSAGE_CONTENTS, str(exc))
        self._last_activity = self._now()
        if isinstance(msg, ReceiveInit):
            return self._on_receive_init(msg)
        if self.state is SenderState.IN_PROGRESS:
            if self.mode is TransferControl.RECEIVER_DRIVE:
                if isinstance(msg, BlockQuery | BlockQueryWithSkip):
                    return self._on_query(
                        msg.counter, msg.bytes_to_skip if isinstance(msg, BlockQueryWithSkip) else 0
                    )
                if isinstance(msg, BlockAck):  # keep-alive acknowledging the last block
                    return self._check_ack(msg.counter) or []
            elif isinstance(msg, BlockAck):
                return self._check_ack(msg.counter) or self._send_block()
        elif self.state is SenderState.AWAIT_EOF_ACK and isinstance(msg, BlockAckEOF):
            bad = self._check_ack(msg.counter)
            if bad:
                return bad
            self._finish()
            return []
        return self._fail(BdxStatus.UNEXPECTED_MESSAGE, f"{type(msg).__name__} in state {self.state.value}")

    def poll(self) -> list[Outgoing]:
        """Call when `deadline` passes: abandons an idle transfer with a StatusReport."""
        if self.done or self._now() < self._last_activity + self._timeout:
            return []
        return self._fail(BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR, f"no message for {self._timeout:g} s")

    def abort(
        self, code: BdxStatus = BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR, reason: str = "aborted"
    ) -> list[Outgoing]:
        """Stop the transfer from our side (e.g. the core withdrew the image)."""
        if self.done:
            return []
        return self._fail(code, reason)

    # ------------------------------------------------------------------ negotiation

    def _on_receive_init(self, init: ReceiveInit) -> list[Outgoing]:
        if self.state is not SenderState.AWAIT_INIT:
            return self._fail(BdxStatus.UNEXPECTED_MESSAGE, "second ReceiveInit")
        offered = init.control & self._modes
        if offered & TransferControl.RECEIVER_DRIVE:
            mode = TransferControl.RECEIVER_DRIVE
        elif offered & TransferControl.SENDER_DRIVE:
            mode = TransferControl.SENDER_DRIVE
        else:
            return self._fail(
                BdxStatus.TRANSFER_METHOD_NOT_SUPPORTED, f"proposed modes 0x{int(init.control):02x}"
            )
        if init.max_block_size == 0:
            return self._fail(BdxStatus.BAD_MESSAGE_CONTENTS, "proposed max block size 0")
        self.designator = init.file_designator
        if self._slots is not None:
            if not self._slots.acquire():
                return self._fail(BdxStatus.RESPONDER_BUSY, "all transfer slots in use")
            self._holds_slot = True
        reader = self._resolve(init.file_designator)
        if reader is None:
            return self._fail(BdxStatus.FILE_DESIGNATOR_UNKNOWN, f"designator {init.file_designator!r}")
        size = int(reader.size)
        if init.start_offset > size:
            return self._fail(
                BdxStatus.START_OFFSET_NOT_SUPPORTED,
                f"start offset {init.start_offset} beyond image size {size}",
            )
        self._reader = reader
        self.mode = mode
        self.block_size = min(init.max_block_size, self._cap)
        self.start_offset = init.start_offset
        available = size - init.start_offset
        # a definite length of 0 means "indefinite" on the wire (the SDK never encodes DefLen with 0)
        self.length = available if not init.max_length else min(init.max_length, available)
        self.position = self.start_offset
        self.state = SenderState.IN_PROGRESS
        accept = ReceiveAccept(
            min(BDX_VERSION, init.version), mode, self.block_size, self.start_offset, self.length
        )
        out = [Outgoing(BDX_PROTOCOL_ID, ReceiveAccept.OPCODE, accept.encode())]
        if mode is TransferControl.SENDER_DRIVE:
            out += self._send_block()
        return out

    def _resolve(self, designator: bytes) -> ImageReaderLike | None:
        if not designator:
            return None
        try:
            return self._resolver(designator)
        except Exception:  # a resolver bug must not leak into the protocol: the designator is simply unknown
            log.exception("BDX designator resolver failed for %r", designator)
            return None

    # ------------------------------------------------------------------ transfer

    def _on_query(self, counter: int, skip: int) -> list[Outgoing]:
        if counter != self._next_block:
            return self._fail(
                BdxStatus.BAD_BLOCK_COUNTER, f"query for block {counter}, expected {self._next_block}"
            )
        if skip:
            self.position = min(self.position + skip, self.end_offset)
        return self._send_block()

    def _check_ack(self, counter: int) -> list[Outgoing] | None:
        if counter != self._last_block:
            return self._fail(
                BdxStatus.BAD_BLOCK_COUNTER, f"ack for block {counter}, last sent {self._last_block}"
            )
        return None

    def _send_block(self) -> list[Outgoing]:
        assert self._reader is not None
        n = min(self.block_size, self.end_offset - self.position)
        offset = self.position
        if n > 0:
            try:
                data = self._reader.read(offset, n)
            except (ValueError, OSError) as exc:
                return self._fail(BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR, f"image read at {offset}: {exc}")
            if len(data) != n:
                return self._fail(
                    BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR,
                    f"short image read at {offset}: {len(data)} of {n} bytes",
                )
        else:
            data = b""
        self.position += n
        counter = self._next_block
        self._last_block = counter
        self._next_block = (counter + 1) & 0xFFFFFFFF
        self.bytes_sent += n
        self.blocks_sent += 1
        if self.position >= self.end_offset:
            self.state = SenderState.AWAIT_EOF_ACK
            msg: Block | BlockEOF = BlockEOF(counter, data)
        else:
            msg = Block(counter, data)
        if self._on_progress is not None and n:
            self._on_progress(offset, n)
        return [Outgoing(BDX_PROTOCOL_ID, msg.OPCODE, msg.encode())]

    # ------------------------------------------------------------------ endings

    def _release(self) -> None:
        if self._holds_slot and self._slots is not None:
            self._slots.release()
            self._holds_slot = False
        self._reader = None

    def _finish(self) -> None:
        self.state = SenderState.DONE
        self._release()
        if self._on_complete is not None:
            self._on_complete()

    def _fail(self, code: BdxStatus, reason: str) -> list[Outgoing]:
        self._set_failed(code, reason)
        return [status_report(code)]

    def _set_failed(self, code: BdxStatus, reason: str) -> None:
        self.state = SenderState.FAILED
        self.status = code
        self.reason = reason
        self._release()
        log.info("BDX transfer of %r failed: %s (%s)", self.designator, code.name, reason)
        if self._on_failed is not None:
            self._on_failed(code, reason)

    def _peer_status(self, payload: bytes) -> None:
        try:
            report = StatusReport.decode(payload)
        except StatusReportError as exc:
            self._set_failed(BdxStatus.BAD_MESSAGE_CONTENTS, f"malformed StatusReport from peer: {exc}")
            return
        try:
            code = BdxStatus(report.protocol_code)
        except ValueError:
            code = BdxStatus.UNKNOWN
        self._set_failed(code, f"peer sent {report}")
