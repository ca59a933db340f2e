"""Matter message and protocol headers (Core spec 4.4): encode/decode of the plaintext framing.

A UDP datagram is: message header (plaintext, the AAD of secured messages) | protocol header + application
payload (encrypted on secure sessions) | 16-byte MIC (secure sessions only). This module only frames; session.py
does the crypto. Decoders raise MessageError (a ValueError with the byte offset) and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

__all__ = [
    "MessageError",
    "MessageHeader",
    "ProtocolHeader",
    "ProtocolId",
    "SecureChannelOpcode",
    "SessionType",
    "decode_message_header",
    "decode_protocol_header",
]

MATTER_VENDOR_ID = 0x0000


class MessageError(ValueError):
    """Malformed message framing; `offset` is the byte offset concerned."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte {offset})")
        self.offset = offset


class ProtocolId(IntEnum):
    """Matter standard protocol ids (vendor 0)."""

    SECURE_CHANNEL = 0x0000
    INTERACTION_MODEL = 0x0001
    BDX = 0x0002
    USER_DIRECTED_COMMISSIONING = 0x0003
    FOR_TESTING = 0x0004


class SecureChannelOpcode(IntEnum):
    """Opcodes of the Secure Channel protocol (spec 4.11.1)."""

    MSG_COUNTER_SYNC_REQ = 0x00
    MSG_COUNTER_SYNC_RSP = 0x01
    STANDALONE_ACK = 0x10
    PBKDF_PARAM_REQUEST = 0x20
    PBKDF_PARAM_RESPONSE = 0x21
    PASE_PAKE1 = 0x22
    PASE_PAKE2 = 0x23
    PASE_PAKE3 = 0x24
    CASE_SIGMA1 = 0x30
    CASE_SIGMA2 = 0x31
    CASE_SIGMA3 = 0x32
    CASE_SIGMA2_RESUME = 0x33
    STATUS_REPORT = 0x40
    ICD_CHECK_IN = 0x50


class SessionType(IntEnum):
    UNICAST = 0
    GROUP = 1


class ExchangeFlags(IntFlag):
    INITIATOR = 0x01
    ACK = 0x02
    RELIABLE = 0x04
    SECURED_EXTENSIONS = 0x08
    VENDOR = 0x10


# Message flags byte: version in bits 4..7, S (source present) bit 2, DSIZ bits 0..1.
_MF_S = 0x04
_DSIZ_NONE, _DSIZ_NODE, _DSIZ_GROUP = 0, 1, 2
# Security flags byte: P bit 7, C bit 6, MX bit 5, session type bits 0..1.
_SF_P, _SF_C, _SF_MX = 0x80, 0x40, 0x20

_FIXED = struct.Struct("<BHBI")  # message flags, session id, security flags, counter


@dataclass(frozen=True)
class MessageHeader:
    """Plaintext message header. `extensions` is the message-extensions block (MX flag) if present."""

    session_id: int
    message_counter: int
    source_node_id: int | None = None
    dest_node_id: int | None = None
    dest_group_id: int | None = None
    session_type: SessionType = SessionType.UNICAST
    privacy: bool = False
    control: bool = False
    extensions: bytes | None = None
    version: int = 0

    @property
    def is_secure(self) -> bool:
        """Unsecured messages use session id 0 with unicast session type."""
        return not (self.session_id == 0 and self.session_type == SessionType.UNICAST)

    @property
    def security_flags(self) -> int:
        return ((_SF_P if self.privacy else 0) | (_SF_C if self.control else 0)
                | (_SF_MX if self.extensions is not None else 0) | int(self.session_type))

    def encode(self) -> bytes:
        if self.dest_node_id is not None and self.dest_group_id is not None:
            raise ValueError("a message has either a destination node id or a group id")
        dsiz = (_DSIZ_NODE if self.dest_node_id is not None
                else _DSIZ_GROUP if self.dest_group_id is not None else _DSIZ_NONE)
        flags = (self.version << 4) | (_MF_S if self.source_node_id is not None else 0) | dsiz
        out = bytearray(_FIXED.pack(flags, self.session_id, self.security_flags, self.message_counter))
        if self.source_node_id is not None:
            out += struct.pack("<Q", self.source_node_id)
        if self.dest_node_id is not None:
            out += struct.pack("<Q", self.dest_node_id)
        elif self.dest_group_id is not None:
            out += struct.pack("<H", self.dest_group_id)
        if self.extensions is not None:
            out += struct.pack("<H", len(self.extensions)) + self.extensions
        return bytes(out)


def decode_message_header(data: bytes) -> tuple[MessageHeader, int]:
    """Decode the message header; return it and the offset of what follows (protocol header or ciphertext)."""
    if len(data) < _FIXED.size:
        raise MessageError(f"truncated message header: {len(data)} bytes", len(data))
    flags, session_id, sec, counter = _FIXED.unpack_from(data, 0)
    version = flags >> 4
    if version != 0:
        raise MessageError(f"unsupported message version {version}", 0)
    dsiz = flags & 0x03
    if dsiz == 3:
        raise MessageError("reserved DSIZ value 3", 0)
    try:
        session_type = SessionType(sec & 0x03)
    except ValueError:
        raise MessageError(f"reserved session type {sec & 0x03}", 3) from None
    off = _FIXED.size
    source = dest = group = None
    if flags & _MF_S:
        if off + 8 > len(data):
            raise MessageError("truncated source node id", off)
        (source,) = struct.unpack_from("<Q", data, off)
        off += 8
    if dsiz == _DSIZ_NODE:
        if off + 8 > len(data):
            raise MessageError("truncated destination node id", off)
        (dest,) = struct.unpack_from("<Q", data, off)
        off += 8
    elif dsiz == _DSIZ_GROUP:
        if off + 2 > len(data):
            raise MessageError("truncated destination group id", off)
        (group,) = struct.unpack_from("<H", data, off)
        off += 2
    ext = None
    if sec & _SF_MX:
        if off + 2 > len(data):
            raise MessageError("truncated message extensions length", off)
        (n,) = struct.unpack_from("<H", data, off)
        if off + 2 + n > len(data):
            raise MessageError(f"truncated message extensions: {n} bytes announced", off)
        ext = bytes(data[off + 2 : off + 2 + n])
        off += 2 + n
    header = MessageHeader(session_id, counter, source, dest, group, session_type,
                           bool(sec & _SF_P), bool(sec & _SF_C), ext, version)
    return header, off


@dataclass(frozen=True)
class ProtocolHeader:
    """Protocol (exchange) header; `vendor_id` None means the Matter standard vendor (V flag clear)."""

    opcode: int
    exchange_id: int
    protocol_id: int
    initiator: bool = False
    reliable: bool = False
    ack_counter: int | None = None
    vendor_id: int | None = None
    secured_extensions: bytes | None = None

    @property
    def exchange_flags(self) -> int:
        f = 0
        if self.initiator:
            f |= ExchangeFlags.INITIATOR
        if self.ack_counter is not None:
            f |= ExchangeFlags.ACK
        if self.reliable:
            f |= ExchangeFlags.RELIABLE
        if self.secured_extensions is not None:
            f |= ExchangeFlags.SECURED_EXTENSIONS
        if self.vendor_id is not None:
            f |= ExchangeFlags.VENDOR
        return f

    def encode(self) -> bytes:
        out = bytearray(struct.pack("<BBH", self.exchange_flags, self.opcode, self.exchange_id))
        if self.vendor_id is not None:
            out += struct.pack("<H", self.vendor_id)
        out += struct.pack("<H", self.protocol_id)
        if self.ack_counter is not None:
            out += struct.pack("<I", self.ack_counter)
        if self.secured_extensions is not None:
            out += struct.pack("<H", len(self.secured_extensions)) + self.secured_extensions
        return bytes(out)


def decode_protocol_header(data: bytes, offset: int = 0) -> tuple[ProtocolHeader, int]:
    """Decode the protocol header at `offset`; return it and the offset of the application payload."""
    off = offset
    if off + 6 > len(data):
        raise MessageError("truncated protocol header", off)
    flags, opcode, exchange_id = struct.unpack_from("<BBH", data, off)
    off += 4
    vendor = None
    if flags & ExchangeFlags.VENDOR:
        if off + 4 > len(data):
            raise MessageError("truncated protocol vendor id", off)
        (vendor,) = struct.unpack_from("<H", data, off)
        off += 2
    (protocol,) = struct.unpack_from("<H", data, off)
    off += 2
    ack = None
    if flags & ExchangeFlags.ACK:
        if off + 4 > len(data):
            raise MessageError("truncated acknowledged message counter", off)
        (ack,) = struct.unpack_from("<I", data, off)
        off += 4
    sx = None
    if flags & ExchangeFlags.SECURED_EXTENSIONS:
        if off + 2 > len(data):
            raise MessageError("truncated secured extensions length", off)
        (n,) = struct.unpack_from("<H", data, off)
        if off + 2 + n > len(data):
            raise MessageError(f"truncated secured extensions: {n} bytes announced", off)
        sx = bytes(data[off + 2 : off + 2 + n])
        off += 2 + n
    header = ProtocolHeader(opcode, exchange_id, protocol, bool(flags & ExchangeFlags.INITIATOR),
                            bool(flags & ExchangeFlags.RELIABLE), ack, vendor, sx)
    return header, off
