"""Matter StatusReport message (Core spec Appendix D): general code, protocol id, protocol code, protocol data.

Layout (little endian): GeneralCode u16 | ProtocolId u32 (vendor id << 16 | protocol number) | ProtocolCode u16 |
optional protocol-specific data. Sent with opcode 0x40 of the Secure Channel protocol (and with the owning
protocol's own StatusReport opcode by BDX, which reuses the same body).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "SECURE_CHANNEL_OPCODE_STATUS_REPORT",
    "GeneralCode",
    "SecureChannelCode",
    "StatusReport",
    "StatusReportError",
]

SECURE_CHANNEL_OPCODE_STATUS_REPORT = 0x40


class StatusReportError(ValueError):
    """Malformed StatusReport body; `offset` is the byte offset concerned."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class GeneralCode(IntEnum):
    """Status Report general codes (spec Appendix D, Table 'General Status Codes')."""

    SUCCESS = 0
    FAILURE = 1
    BAD_PRECONDITION = 2
    OUT_OF_RANGE = 3
    BAD_REQUEST = 4
    UNSUPPORTED = 5
    UNEXPECTED = 6
    RESOURCE_EXHAUSTED = 7
    BUSY = 8
    TIMEOUT = 9
    CONTINUE = 10
    ABORTED = 11
    INVALID_ARGUMENT = 12
    NOT_FOUND = 13
    ALREADY_EXISTS = 14
    PERMISSION_DENIED = 15
    DATA_LOSS = 16


class SecureChannelCode(IntEnum):
    """Secure Channel protocol codes carried in a StatusReport (spec 4.11.1.3)."""

    SESSION_ESTABLISHMENT_SUCCESS = 0x0000
    NO_SHARED_TRUST_ROOTS = 0x0001
    INVALID_PARAMETER = 0x0002
    CLOSE_SESSION = 0x0003
    BUSY = 0x0004


# Flat aliases (briefed API)
SESSION_ESTABLISHMENT_SUCCESS = SecureChannelCode.SESSION_ESTABLISHMENT_SUCCESS
NO_SHARED_TRUST_ROOTS = SecureChannelCode.NO_SHARED_TRUST_ROOTS
INVALID_PARAMETER = SecureChannelCode.INVALID_PARAMETER
CLOSE_SESSION = SecureChannelCode.CLOSE_SESSION
BUSY = SecureChannelCode.BUSY

_HEAD = struct.Struct("<HIH")


@dataclass(frozen=True)
class StatusReport:
    """One StatusReport. `protocol_id` is the 32-bit form (vendor id in the upper 16 bits; 0 for Matter)."""

    general_code: int
    protocol_id: int
    protocol_code: int
    data: bytes = b""

    def encode(self) -> bytes:
        if not (0 <= self.general_code <= 0xFFFF and 0 <= self.protocol_id <= 0xFFFFFFFF
                and 0 <= self.protocol_code <= 0xFFFF):
            raise ValueError(f"StatusReport field out of range: {self!r}")
        return _HEAD.pack(self.general_code, self.protocol_id, self.protocol_code) + bytes(self.data)

    @classmethod
    def decode(cls, data: bytes) -> StatusReport:
        if len(data) < _HEAD.size:
            raise StatusReportError(f"truncated StatusReport: {len(data)} of {_HEAD.size} bytes", len(data))
        g, p, c = _HEAD.unpack_from(data, 0)
        general: int
        try:
            general = GeneralCode(g)
        except ValueError:
            general = g  # unknown codes are kept as ints: a peer may be newer than us
        return cls(general, p, c, bytes(data[_HEAD.size :]))

    @property
    def is_success(self) -> bool:
        return self.general_code == GeneralCode.SUCCESS

    @property
    def vendor_id(self) -> int:
        return self.protocol_id >> 16

    def __str__(self) -> str:
        g = self.general_code.name if isinstance(self.general_code, GeneralCode) else str(self.general_code)
        return f"StatusReport({g}, protocol=0x{self.protocol_id:x}, code=0x{self.protocol_code:04x})"
