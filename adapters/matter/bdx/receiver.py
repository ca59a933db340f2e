"""BDX receiver that initiates a download with ReceiveInit (the requestor's side), sans-I/O.

Used by tests and the benchmark as an independent peer for `BdxSender`, and as the shape a gateway-side
download would take. It proposes a mode (receiver drive by default), block size, start offset and max length;
checks the ReceiveAccept against its proposal; checks every block's counter, size and the definite length; and
answers with BlockQuery / BlockQueryWithSkip / BlockAck / BlockAckEOF. Received bytes go to `sink(offset, data)`
(or accumulate in `data` when no sink is given). Time comes from an injected monotonic `now()`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

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
from adapters.matter.bdx.sender import (
    DEFAULT_MAX_BLOCK_SIZE,
    DEFAULT_TIMEOUT_S,
    SECURE_CHANNEL_PROTOCOL_ID,
    Outgoing,
    status_report,
)
from adapters.matter.transport.status_report import (
    SECURE_CHANNEL_OPCODE_STATUS_REPORT,
    StatusReport,
    StatusReportError,
)

__all__ = ["BdxReceiver", "ReceiverState"]


class ReceiverState(enum.Enum):
    IDLE = "idle"
    AWAIT_ACCEPT = "await-accept"
    AWAIT_BLOCK = "await-block"
    DONE = "done"
    FAILED = "failed"


class BdxReceiver:
    """Receiver/initiator state machine for one BDX exchange (see module docstring)."""

    def __init__(
        self,
        file_designator: bytes,
        *,
        now: Callable[[], float],
        max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
        start_offset: int = 0,
        max_length: int | None = None,
        mode: TransferControl = TransferControl.RECEIVER_DRIVE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        sink: Callable[[int, bytes], None] | None = None,
    ) -> None:
        if mode not in (TransferControl.RECEIVER_DRIVE, TransferControl.SENDER_DRIVE):
            raise ValueError("mode must be RECEIVER_DRIVE or SENDER_DRIVE")
        self.file_designator = file_designator
        self._now = now
        self.max_block_size = max_block_size
        self.start_offset = start_offset
        self.max_length = max_length
        self.mode = mode
        self._timeout = timeout_s
        self._sink = sink
        self.data = bytearray()
        self.state = ReceiverState.IDLE
        self.block_size = 0
        self.length: int | None = None
        self.received = 0  # payload bytes received
        self.position = start_offset  # image offset of the next byte expected
        self.status: BdxStatus | None = None
        self.reason = ""
        self._expected = 0  # counter of the block we are waiting for
        self._pending_skip = 0
        self._last_activity = now()

    @property
    def done(self) -> bool:
        return self.state in (ReceiverState.DONE, ReceiverState.FAILED)

    @property
    def failed(self) -> bool:
        return self.state is ReceiverState.FAILED

    @property
    def deadline(self) -> float | None:
        return None if self.done or self.state is ReceiverState.IDLE else self._last_activity + self._timeout

    def start(self) -> list[Outgoing]:
        """The opening ReceiveInit."""
        if self.state is not ReceiverState.IDLE:
            raise RuntimeError("BDX receiver already started")
        self.state = ReceiverState.AWAIT_ACCEPT
        self._last_activity = self._now()
        init = ReceiveInit(
            BDX_VERSION,
            self.mode,
            self.max_block_size,
            self.file_designator,
            self.start_offset,
            self.max_length,
        )
        return [Outgoing(BDX_PROTOCOL_ID, ReceiveInit.OPCODE, init.encode())]

    def skip(self, nbytes: int) -> None:
        """Make the next query a BlockQueryWithSkip over `nbytes` (receiver drive only)."""
        if self.mode is not TransferControl.RECEIVER_DRIVE:
            raise RuntimeError("skipping needs receiver drive")
        self._pending_skip += nbytes

    def receive(self, opcode: int, payload: bytes, protocol_id: int = BDX_PROTOCOL_ID) -> list[Outgoing]:
        if self.done:
            return []
        if protocol_id == SECURE_CHANNEL_PROTOCOL_ID and opcode == SECURE_CHANNEL_OPCODE_STATUS_REPORT:
            try:
                report = StatusReport.decode(payload)
                code = BdxStatus(report.protocol_code)
            except (StatusReportError, ValueError):
                code = BdxStatus.UNKNOWN
            self._set_failed(code, "peer sent a StatusReport")
            return []
        if protocol_id != BDX_PROTOCOL_ID:
            return self._fail(BdxStatus.UNEXPECTED_MESSAGE, f"protocol 0x{protocol_id:x}")
        try:
            msg = decode_message(opcode, payload)
        except BdxDecodeError as exc:
            return self._fail(BdxStatus.BAD_MESSAGE_CONTENTS, str(exc))
        self._last_activity = self._now()
        if self.state is ReceiverState.AWAIT_ACCEPT and isinstance(msg, ReceiveAccept):
            return self._on_accept(msg)
        if self.state is ReceiverState.AWAIT_BLOCK and isinstance(msg, Block | BlockEOF):
            return self._on_block(msg)
        return self._fail(BdxStatus.UNEXPECTED_MESSAGE, f"{type(msg).__name__} in state {self.state.value}")

    def poll(self) -> list[Outgoing]:
        deadline = self.deadline
        if deadline is None or self._now() < deadline:
            return []
        return self._fail(BdxStatus.TRANSFER_FAILED_UNKNOWN_ERROR, "timeout")

    def _on_accept(self, acc: ReceiveAccept) -> list[Outgoing]:
        if acc.control != self.mode:
            return self._fail(
                BdxStatus.TRANSFER_METHOD_NOT_SUPPORTED, f"accepted mode 0x{int(acc.control):02x}"
            )
        if acc.version > BDX_VERSION:
            return self._fail(BdxStatus.VERSION_NOT_SUPPORTED, f"version {acc.version}")
        if not 0 < acc.max_block_size <= self.max_block_size:
            return self._fail(BdxStatus.BAD_MESSAGE_CONTENTS, f"max block size {acc.max_block_size}")
        if acc.start_offset != self.start_offset:
            return self._fail(BdxStatus.START_OFFSET_NOT_SUPPORTED, f"start offset {acc.start_offset}")
        if acc.length is not None and self.max_length is not None and acc.length > self.max_length:
            return self._fail(BdxStatus.LENGTH_TOO_LARGE, f"length {acc.length}")
        self.block_size = acc.max_block_size
        self.length = acc.length or None
        self.state = ReceiverState.AWAIT_BLOCK
        return self._query() if self.mode is TransferControl.RECEIVER_DRIVE else []

    def _query(self) -> list[Outgoing]:
        if self._pending_skip:
            skip, self._pending_skip = self._pending_skip, 0
            end = self.start_offset + self.length if self.length is not None else None
            # the sender clamps a skip at the end of the range; mirror that so EOF accounting stays exact
            self.position = self.position + skip if end is None else min(self.position + skip, end)
            q: BlockQuery | BlockQueryWithSkip = BlockQueryWithSkip(self._expected, skip)
        else:
            q = BlockQuery(self._expected)
        return [Outgoing(BDX_PROTOCOL_ID, q.OPCODE, q.encode())]

    def _on_block(self, blk: Block | BlockEOF) -> list[Outgoing]:
        eof = isinstance(blk, BlockEOF)
        if blk.counter != self._expected:
            return self._fail(BdxStatus.BAD_BLOCK_COUNTER, f"block {blk.counter}, expected {self._expected}")
        n = len(blk.data)
        if n > self.block_size or (n == 0 and not eof):
            return self._fail(BdxStatus.BAD_MESSAGE_CONTENTS, f"block of {n} bytes (max {self.block_size})")
        if self.length is not None:
            end = self.position + n - self.start_offset
            if end > self.length or (eof and end != self.length):
                return self._fail(BdxStatus.LENGTH_MISMATCH, f"{end} bytes against a length of {self.length}")
        if n:
            if self._sink is not None:
                self._sink(self.position, blk.data)
            else:
                self.data += blk.data
        self.position += n
        self.received += n
        self._expected = (blk.counter + 1) & 0xFFFFFFFF
        if eof:
            self.state = ReceiverState.DONE
            return [Outgoing(BDX_PROTOCOL_ID, BlockAckEOF.OPCODE, BlockAckEOF(blk.counter).encode())]
        if self.mode is TransferControl.SENDER_DRIVE:
            return [Outgoing(BDX_PROTOCOL_ID, BlockAck.OPCODE, BlockAck(blk.counter).encode())]
        return self._query()

    def _fail(self, code: BdxStatus, reason: str) -> list[Outgoing]:
        self._set_failed(code, reason)
        return [status_report(code)]

    def _set_failed(self, code: BdxStatus, reason: str) -> None:
        self.state = ReceiverState.FAILED
        self.status = code
        self.reason = reason
