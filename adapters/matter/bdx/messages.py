"""BDX (Bulk Data Exchange, Matter Core spec 11.22) message codecs: dataclasses <-> payload bytes, strict.

Wire layout (all little endian):
  SendInit 0x01 / ReceiveInit 0x04   ProposedTransferControl u8 | RangeControl u8 | ProposedMaxBlockSize u16 |
                                     [StartOffset u32|u64] | [ProposedMaxLength u32|u64] | FileDesignatorLength u16 |
                                     FileDesignator | Metadata (rest, TLV)
  SendAccept 0x02                    TransferControl u8 | MaxBlockSize u16 | Metadata
  ReceiveAccept 0x05                 TransferControl u8 | RangeControl u8 | MaxBlockSize u16 | [StartOffset] |
                                     [Length] | Metadata
  BlockQuery 0x10, BlockAck 0x13, BlockAckEOF 0x14   BlockCounter u32
  BlockQueryWithSkip 0x15            BlockCounter u32 | BytesToSkip u64
  Block 0x11, BlockEOF 0x12          BlockCounter u32 | Data

Transfer control: version in the low nibble, SenderDrive 0x10, ReceiverDrive 0x20, Async 0x40.
Range control: DefLen 0x01 (length present), StartOffset 0x02 (offset present), Widerange 0x10 (64-bit fields).
Errors are StatusReports (Secure Channel opcode 0x40) with protocol id BDX (0x0002) and a `BdxStatus` code.

Every decoder raises `BdxDecodeError` (with the byte offset) for malformed input and nothing else.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "BDX_PROTOCOL_ID",
    "BDX_VERSION",
    "BdxDecodeError",
    "BdxMessage",
    "BdxStatus",
    "Block",
    "BlockAck",
    "BlockAckEOF",
    "BlockEOF",
    "BlockQuery",
    "BlockQueryWithSkip",
    "Opcode",
    "RangeControl",
    "ReceiveAccept",
    "ReceiveInit",
    "SendAccept",
    "SendInit",
    "TransferControl",
    "decode_message",
]

BDX_PROTOCOL_ID = 0x0002  # Matter standard vendor (0) << 16 | BDX protocol number 2
BDX_VERSION = 0  # the only BDX version Matter defines

_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


class BdxDecodeError(ValueError):
    """Malformed BDX message; `offset` is the byte offset where decoding failed."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class Opcode(enum.IntEnum):
    SEND_INIT = 0x01
    SEND_ACCEPT = 0x02
    RECEIVE_INIT = 0x04
    RECEIVE_ACCEPT = 0x05
    BLOCK_QUERY = 0x10
    BLOCK = 0x11
    BLOCK_EOF = 0x12
    BLOCK_ACK = 0x13
    BLOCK_ACK_EOF = 0x14
    BLOCK_QUERY_WITH_SKIP = 0x15


class BdxStatus(enum.IntEnum):
    """BDX protocol codes carried in a StatusReport (spec 11.22.4, 'BDX Status Codes')."""

    LENGTH_TOO_LARGE = 0x0012
    LENGTH_TOO_SHORT = 0x0013
    LENGTH_MISMATCH = 0x0014
    LENGTH_REQUIRED = 0x0015
    BAD_MESSAGE_CONTENTS = 0x0016
    BAD_BLOCK_COUNTER = 0x0017
    UNEXPECTED_MESSAGE = 0x0018
    RESPONDER_BUSY = 0x0019
    TRANSFER_FAILED_UNKNOWN_ERROR = 0x001F
    TRANSFER_METHOD_NOT_SUPPORTED = 0x0050
    FILE_DESIGNATOR_UNKNOWN = 0x0051
    START_OFFSET_NOT_SUPPORTED = 0x0052
    VERSION_NOT_SUPPORTED = 0x0053
    UNKNOWN = 0x005F


class TransferControl(enum.IntFlag):
    """Transfer control mode bits (the low nibble of the byte is the version, kept separately)."""

    SENDER_DRIVE = 0x10
    RECEIVER_DRIVE = 0x20
    ASYNC = 0x40


class RangeControl(enum.IntFlag):
    DEF_LEN = 0x01
    START_OFFSET = 0x02
    WIDERANGE = 0x10


class _Cursor:
    """Bounds-checked little-endian reader that reports offsets in BdxDecodeError."""

    __slots__ = ("data", "off", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.off = 0
        self.what = what

    def take(self, n: int, field: str) -> bytes:
        if self.off + n > len(self.data):
            raise BdxDecodeError(
                f"{self.what}: truncated {field}: need {n} bytes, have {len(self.data) - self.off}", self.off
            )
        out = self.data[self.off : self.off + n]
        self.off += n
        return out

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return int.from_bytes(self.take(2, field), "little")

    def u32(self, field: str) -> int:
        return int.from_bytes(self.take(4, field), "little")

    def u64(self, field: str) -> int:
        return int.from_bytes(self.take(8, field), "little")

    def rest(self) -> bytes:
        out = self.data[self.off :]
        self.off = len(self.data)
        return out

    def end(self) -> None:
        if self.off != len(self.data):
            raise BdxDecodeError(f"{self.what}: {len(self.data) - self.off} trailing bytes", self.off)


def _check_version(version: int) -> None:
    if not 0 <= version <= 0x0F:
        raise ValueError(f"BDX version must fit in 4 bits, got {version}")


def _range_fields(start_offset: int, length: int | None) -> tuple[int, bytes]:
    """Range control byte and the offset/length fields (64-bit only when a value needs it)."""
    if not 0 <= start_offset <= _U64_MAX or (length is not None and not 0 <= length <= _U64_MAX):
        raise ValueError("BDX offset/length out of 64-bit range")
    wide = start_offset > _U32_MAX or (length is not None and length > _U32_MAX)
    fmt = "<Q" if wide else "<I"
    rc = RangeControl(0)
    out = b""
    if start_offset > 0:
        rc |= RangeControl.START_OFFSET
        out += struct.pack(fmt, start_offset)
    if length is not None:
        rc |= RangeControl.DEF_LEN
        out += struct.pack(fmt, length)
    if wide:
        rc |= RangeControl.WIDERANGE
    return int(rc), out


def _read_range(cur: _Cursor, rc: int) -> tuple[int, int | None]:
    wide = bool(rc & RangeControl.WIDERANGE)
    read = cur.u64 if wide else cur.u32
    start = read("start offset") if rc & RangeControl.START_OFFSET else 0
    length = read("length") if rc & RangeControl.DEF_LEN else None
    return start, length


def _mode(raw: int) -> TransferControl:
    return TransferControl(raw & 0x70)


@dataclass(frozen=True, slots=True)
class _TransferInit:
    """SendInit / ReceiveInit body. `max_length` None = indefinite length."""

    version: int
    control: TransferControl
    max_block_size: int
    file_designator: bytes
    start_offset: int = 0
    max_length: int | None = None
    metadata: bytes = b""

    OPCODE: ClassVar[Opcode]

    def encode(self) -> bytes:
        _check_version(self.version)
        if not 0 <= self.max_block_size <= 0xFFFF or len(self.file_designator) > 0xFFFF:
            raise ValueError("BDX max block size or file designator length out of 16-bit range")
        rc, rng = _range_fields(self.start_offset, self.max_length)
        head = struct.pack("<BBH", (self.version & 0x0F) | int(self.control & 0x70), rc, self.max_block_size)
        return (
            head
            + rng
            + struct.pack("<H", len(self.file_designator))
            + bytes(self.file_designator)
            + bytes(self.metadata)
        )

    @classmethod
    def decode(cls, data: bytes) -> _TransferInit:
        cur = _Cursor(bytes(data), cls.__name__)
        ptc = cur.u8("transfer control")
        rc = cur.u8("range control")
        mbs = cur.u16("max block size")
        start, length = _read_range(cur, rc)
        n = cur.u16("file designator length")
        fd = cur.take(n, "file designator")
        return cls(ptc & 0x0F, _mode(ptc), mbs, fd, start, length, cur.rest())


@dataclass(frozen=True, slots=True)
class SendInit(_TransferInit):
    OPCODE: ClassVar[Opcode] = Opcode.SEND_INIT


@dataclass(frozen=True, slots=True)
class ReceiveInit(_TransferInit):
    OPCODE: ClassVar[Opcode] = Opcode.RECEIVE_INIT


@dataclass(frozen=True, slots=True)
class SendAccept:
    version: int
    control: TransferControl
    max_block_size: int
    metadata: bytes = b""

    OPCODE: ClassVar[Opcode] = Opcode.SEND_ACCEPT

    def encode(self) -> bytes:
        _check_version(self.version)
        if not 0 <= self.max_block_size <= 0xFFFF:
            raise ValueError("BDX max block size out of 16-bit range")
        return (
            struct.pack("<BH", self.version | int(self.control & 0x70), self.max_block_size) + self.metadata
        )

    @classmethod
    def decode(cls, data: bytes) -> SendAccept:
        cur = _Cursor(bytes(data), cls.__name__)
        tc = cur.u8("transfer control")
        mbs = cur.u16("max block size")
        return cls(tc & 0x0F, _mode(tc), mbs, cur.rest())


@dataclass(frozen=True, slots=True)
class ReceiveAccept:
    """`length` None = indefinite (the receiver reads until BlockEOF)."""

    version: int
    control: TransferControl
    max_block_size: int
    start_offset: int = 0
    length: int | None = None
    metadata: bytes = b""

    OPCODE: ClassVar[Opcode] = Opcode.RECEIVE_ACCEPT

    def encode(self) -> bytes:
        _check_version(self.version)
        if not 0 <= self.max_block_size <= 0xFFFF:
            raise ValueError("BDX max block size out of 16-bit range")
        rc, rng = _range_fields(self.start_offset, self.length)
        return (
            struct.pack("<BBH", self.version | int(self.control & 0x70), rc, self.max_block_size)
            + rng
            + self.metadata
        )

    @classmethod
    def decode(cls, data: bytes) -> ReceiveAccept:
        cur = _Cursor(bytes(data), cls.__name__)
        tc = cur.u8("transfer control")
        rc = cur.u8("range control")
        mbs = cur.u16("max block size")
        start, length = _read_range(cur, rc)
        return cls(tc & 0x0F, _mode(tc), mbs, start, length, cur.rest())


@dataclass(frozen=True, slots=True)
class _Counter:
    counter: int

    OPCODE: ClassVar[Opcode]

    def encode(self) -> bytes:
        return struct.pack("<I", self.counter)

    @classmethod
    def decode(cls, data: bytes) -> _Counter:
        cur = _Cursor(bytes(data), cls.__name__)
        c = cur.u32("block counter")
        cur.end()
        return cls(c)


@dataclass(frozen=True, slots=True)
class BlockQuery(_Counter):
    OPCODE: ClassVar[Opcode] = Opcode.BLOCK_QUERY


@dataclass(frozen=True, slots=True)
class BlockAck(_Counter):
    OPCODE: ClassVar[Opcode] = Opcode.BLOCK_ACK


@dataclass(frozen=True, slots=True)
class BlockAckEOF(_Counter):
    OPCODE: ClassVar[Opcode] = Opcode.BLOCK_ACK_EOF


@dataclass(frozen=True, slots=True)
class BlockQueryWithSkip:
    counter: int
    bytes_to_skip: int

    OPCODE: ClassVar[Opcode] = Opcode.BLOCK_QUERY_WITH_SKIP

    def encode(self) -> bytes:
        return struct.pack("<IQ", self.counter, self.bytes_to_skip)

    @classmethod
    def decode(cls, data: bytes) -> BlockQueryWithSkip:
        cur = _Cursor(bytes(data), cls.__name__)
        c = cur.u32("block counter")
        skip = cur.u64("bytes to skip")
        cur.end()
        return cls(c, skip)


@dataclass(frozen=True, slots=True)
class _DataBlock:
    counter: int
    data: bytes

    OPCODE: ClassVar[Opcode]

    def encode(self) -> bytes:
        return struct.pack("<I", self.counter) + self.data

    @classmethod
    def decode(cls, data: bytes) -> _DataBlock:
        cur = _Cursor(bytes(data), cls.__name__)
        c = cur.u32("block counter")
        return cls(c, cur.rest())


@dataclass(frozen=True, slots=True)
class Block(_DataBlock):
    OPCODE: ClassVar[Opcode] = Opcode.BLOCK


@dataclass(frozen=True, slots=True)
class BlockEOF(_DataBlock):
    OPCODE: ClassVar[Opcode] = Opcode.BLOCK_EOF


BdxMessage = (
    SendInit
    | ReceiveInit
    | SendAccept
    | ReceiveAccept
    | BlockQuery
    | BlockAck
    | BlockAckEOF
    | BlockQueryWithSkip
    | Block
    | BlockEOF
)

_BY_OPCODE: dict[int, Any] = {
    cls.OPCODE: cls
    for cls in (
        SendInit,
        ReceiveInit,
        SendAccept,
        ReceiveAccept,
        BlockQuery,
        BlockAck,
        BlockAckEOF,
        BlockQueryWithSkip,
        Block,
        BlockEOF,
    )
}


def decode_message(opcode: int, payload: bytes) -> BdxMessage:
    """Decode a BDX payload for `opcode`; unknown opcodes and malformed bodies raise BdxDecodeError."""
    cls = _BY_OPCODE.get(opcode)
    if cls is None:
        raise BdxDecodeError(f"unknown BDX opcode 0x{opcode:02x}", 0)
    return cls.decode(payload)  # type: ignore[no-any-return]
