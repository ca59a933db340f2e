"""Matter sessions (Core spec 4.5-4.8): unsecured and CASE-secured unicast sessions, counters, replay window.

- UnsecuredSession: session id 0, keyed by (peer address, the initiator's ephemeral node id); carries CASE.
- SecureSession: keys from CASE; AES-128-CCM with a 16-byte MIC; nonce = security flags | counter (LE) |
  sender's node id (LE); AAD = the plaintext message header. We are always the CASE responder here, so we decrypt
  with I2R and encrypt with R2I.
- Message counters: one global counter for unencrypted messages, one per secure session, each starting at a random
  value in [1, 2^28]; a secure counter never wraps (the session must be closed instead).
- Receive windows (spec 4.6.5): max counter + a 32-bit bitmap per peer; encrypted unicast refuses anything behind
  the window, unencrypted messages may roll over and resync when far behind. Windows are only updated by messages
  that authenticated.

Pure state: no I/O, no clocks; `now_ms` is passed in where activity is tracked.
"""

from __future__ import annotations

import secrets
from collections.abc import Hashable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from .message import (
    MessageError,
    MessageHeader,
    ProtocolHeader,
    SessionType,
    decode_message_header,
    decode_protocol_header,
)

__all__ = [
    "MIC_LENGTH",
    "MSG_COUNTER_WINDOW_SIZE",
    "CounterExhausted",
    "DecryptError",
    "InboundMessage",
    "MRPParams",
    "MessageCounter",
    "ReceiveWindow",
    "SecureSession",
    "SessionError",
    "SessionTable",
    "UnknownSession",
    "UnsecuredSession",
    "build_nonce",
]

MIC_LENGTH = 16
MSG_COUNTER_WINDOW_SIZE = 32
_COUNTER_INIT_MAX = 1 << 28
_U32 = 1 << 32
UNSPECIFIED_NODE_ID = 0


class SessionError(ValueError):
    """A datagram that no session accepts (the node drops it and logs the reason)."""


class UnknownSession(SessionError):
    pass


class DecryptError(SessionError):
    pass


class CounterExhausted(SessionError):
    """The local message counter of a secure session would wrap: the session must be closed."""


@dataclass(frozen=True)
class MRPParams:
    """A peer's MRP parameters (from DNS-SD TXT or CASE session parameters), in ms."""

    idle_retrans_ms: int = 500
    active_retrans_ms: int = 300
    active_threshold_ms: int = 4000


class MessageCounter:
    """A local outgoing message counter starting at a random value in [1, 2^28]."""

    def __init__(self, start: int | None = None, *, wraps: bool) -> None:
        self.value = start if start is not None else 1 + secrets.randbelow(_COUNTER_INIT_MAX)
        self.wraps = wraps

    def next(self) -> int:
        v = self.value
        if v >= _U32 - 1 and not self.wraps:
            raise CounterExhausted("secure session message counter exhausted")
        self.value = (v + 1) % _U32
        return v


class ReceiveWindow:
    """Duplicate/replay detection for one peer counter: max counter + bitmap of the 32 counters below it.

    Bit i-1 of `bitmap` set means counter (max - i) was received. Trust-first: the first message syncs.
    """

    def __init__(self, *, encrypted: bool) -> None:
        self.encrypted = encrypted
        self.synced = False
        self.max = 0
        self.bitmap = 0

    def is_duplicate(self, counter: int) -> bool:
        """True if `counter` must be treated as a duplicate (does not change state)."""
        if not self.synced:
            return False
        if self.encrypted:
            if counter > self.max:
                return False
            offset = self.max - counter
        else:
            ahead = (counter - self.max) % _U32
            if 0 < ahead < (1 << 31):
                return False
            offset = (self.max - counter) % _U32
        if offset == 0:
            return True
        if offset <= MSG_COUNTER_WINDOW_SIZE:
            return bool(self.bitmap & (1 << (offset - 1)))
        # Behind the window: encrypted unicast cannot roll over, so it is a replay; unencrypted peers may have
        # rebooted with a new random counter, so we accept and resync (commit resets the window).
        return self.encrypted

    def commit(self, counter: int) -> None:
        """Record `counter` as received (call only after is_duplicate() was False and the message authenticated)."""
        if not self.synced:
            self.synced, self.max, self.bitmap = True, counter, 0
            return
        if self.encrypted:
            is_ahead = counter > self.max
            ahead = counter - self.max
        else:
            ahead = (counter - self.max) % _U32
            is_ahead = 0 < ahead < (1 << 31)
        if is_ahead:
            if ahead > MSG_COUNTER_WINDOW_SIZE:
                self.bitmap = 0
            else:
                self.bitmap = ((self.bitmap << ahead) | (1 << (ahead - 1))) & 0xFFFFFFFF
            self.max = counter
            return
        offset = (self.max - counter) % _U32
        if 0 < offset <= MSG_COUNTER_WINDOW_SIZE:
            self.bitmap |= 1 << (offset - 1)
        else:  # unencrypted resync
            self.max, self.bitmap = counter, 0

    def accept(self, counter: int) -> bool:
        """is_duplicate + commit: True if the counter is new (and is now recorded)."""
        if self.is_duplicate(counter):
            return False
        self.commit(counter)
        return True


def build_nonce(security_flags: int, counter: int, node_id: int) -> bytes:
    """AES-CCM nonce (13 bytes): security flags | message counter LE32 | source node id LE64."""
    return bytes([security_flags]) + counter.to_bytes(4, "little") + node_id.to_bytes(8, "little")


@dataclass
class InboundMessage:
    """A datagram accepted by a session: headers, payload, and whether it was a duplicate (ack, don't deliver)."""

    session: UnsecuredSession | SecureSession
    header: MessageHeader
    protocol: ProtocolHeader
    payload: bytes
    duplicate: bool


@dataclass(eq=False)
class _SessionBase:
    peer_address: Hashable
    peer_mrp: MRPParams = field(default_factory=MRPParams)
    last_peer_activity_ms: int | None = None
    closed: bool = False

    def note_peer_activity(self, now_ms: int) -> None:
        self.last_peer_activity_ms = now_ms

    def peer_active(self, now_ms: int) -> bool:
        """Spec 4.12.8: the peer is 'active' for SAT ms after we last heard from it."""
        return (self.last_peer_activity_ms is not None
                and now_ms - self.last_peer_activity_ms < self.peer_mrp.active_threshold_ms)

    def peer_retrans_base_ms(self, now_ms: int) -> int:
        return self.peer_mrp.active_retrans_ms if self.peer_active(now_ms) else self.peer_mrp.idle_retrans_ms


@dataclass(eq=False)
class UnsecuredSession(_SessionBase):
    """Unsecured session with an initiator identified by its ephemeral node id (spec 4.13.2.1)."""

    ephemeral_node_id: int = 0
    counter: MessageCounter = field(default_factory=lambda: MessageCounter(wraps=True))
    window: ReceiveWindow = field(default_factory=lambda: ReceiveWindow(encrypted=False))

    is_secure = False

    def encode(self, protocol: ProtocolHeader, payload: bytes) -> tuple[bytes, int]:
        """Frame a message to the initiator; return (datagram, message counter)."""
        ctr = self.counter.next()
        header = MessageHeader(session_id=0, message_counter=ctr, dest_node_id=self.ephemeral_node_id)
        return header.encode() + protocol.encode() + payload, ctr

    def open(self, header: MessageHeader, data: bytes, offset: int) -> InboundMessage:
        proto, poff = decode_protocol_header(data, offset)
        dup = not self.window.accept(header.message_counter)
        return InboundMessage(self, header, proto, bytes(data[poff:]), dup)


@dataclass(eq=False)
class SecureSession(_SessionBase):
    """A CASE session on which we are the responder."""

    local_session_id: int = 0
    peer_session_id: int = 0
    local_node_id: int = 0
    peer_node_id: int = 0
    fabric_index: int = 0
    peer_cats: tuple[int, ...] = ()
    i2r_key: bytes = b""
    r2i_key: bytes = b""
    attestation_challenge: bytes = b""
    counter: MessageCounter = field(default_factory=lambda: MessageCounter(wraps=False))
    window: ReceiveWindow = field(default_factory=lambda: ReceiveWindow(encrypted=True))

    is_secure = True

    def __post_init__(self) -> None:
        if len(self.i2r_key) != 16 or len(self.r2i_key) != 16:
            raise ValueError("session keys must be 16 bytes")
        self._dec = AESCCM(self.i2r_key, tag_length=MIC_LENGTH)
        self._enc = AESCCM(self.r2i_key, tag_length=MIC_LENGTH)

    def encode(self, protocol: ProtocolHeader, payload: bytes) -> tuple[bytes, int]:
        """Encrypt a message to the peer; return (datagram, message counter)."""
        if self.closed:
            raise SessionError("session closed")
        ctr = self.counter.next()
        header = MessageHeader(session_id=self.peer_session_id, message_counter=ctr)
        aad = header.encode()
        nonce = build_nonce(header.security_flags, ctr, self.local_node_id)
        return aad + self._enc.encrypt(nonce, protocol.encode() + payload, aad), ctr

    def open(self, header: MessageHeader, data: bytes, offset: int) -> InboundMessage:
        if header.privacy:
            raise SessionError("privacy-obfuscated messages are not supported")
        if header.session_type != SessionType.UNICAST:
            raise SessionError("group messages are not supported")
        if len(data) - offset < MIC_LENGTH:
            raise DecryptError("secured message shorter than its MIC")
        nonce = build_nonce(header.security_flags, header.message_counter, self.peer_node_id)
        try:
            plain = self._dec.decrypt(nonce, bytes(data[offset:]), bytes(data[:offset]))
        except InvalidTag:
            raise DecryptError(f"MIC check failed on session {self.local_session_id}") from None
        proto, poff = decode_protocol_header(plain, 0)
        dup = not self.window.accept(header.message_counter)
        return InboundMessage(self, header, proto, plain[poff:], dup)


class SessionTable:
    """All sessions of the node: secure by local session id, unsecured by (address, ephemeral node id)."""

    def __init__(self, max_unsecured: int = 64) -> None:
        self.secure: dict[int, SecureSession] = {}
        self.unsecured: dict[tuple[Hashable, int], UnsecuredSession] = {}
        self.max_unsecured = max_unsecured
        self._global_counter = MessageCounter(wraps=True)
        self._reserved: set[int] = set()

    def allocate_session_id(self) -> int:
        """A fresh non-zero local session id, reserved until added or released."""
        for _ in range(1000):
            sid = 1 + secrets.randbelow(0xFFFF)
            if sid not in self.secure and sid not in self._reserved:
                self._reserved.add(sid)
                return sid
        raise SessionError("no free session id")

    def release_session_id(self, sid: int) -> None:
        self._reserved.discard(sid)

    def add_secure(self, session: SecureSession) -> None:
        self._reserved.discard(session.local_session_id)
        self.secure[session.local_session_id] = session

    def remove(self, session: UnsecuredSession | SecureSession) -> None:
        session.closed = True
        if isinstance(session, SecureSession):
            self.secure.pop(session.local_session_id, None)
        else:
            self.unsecured.pop((session.peer_address, session.ephemeral_node_id), None)

    def unsecured_for(self, address: Hashable, ephemeral_node_id: int) -> UnsecuredSession:
        key = (address, ephemeral_node_id)
        s = self.unsecured.get(key)
        if s is None:
            if len(self.unsecured) >= self.max_unsecured:  # evict the oldest: bounded state per hostile peer
                oldest = next(iter(self.unsecured))
                self.unsecured.pop(oldest).closed = True
            s = UnsecuredSession(peer_address=address, ephemeral_node_id=ephemeral_node_id,
                                 counter=self._global_counter)
            self.unsecured[key] = s
        return s

    def open(self, data: bytes, address: Hashable, now_ms: int) -> InboundMessage:
        """Authenticate and frame one datagram. Raises MessageError / SessionError (drop)."""
        header, off = decode_message_header(data)
        if not header.is_secure:
            if header.source_node_id is None:
                raise SessionError("unsecured message without a source node id")
            if header.dest_node_id is not None and header.dest_node_id != UNSPECIFIED_NODE_ID:
                raise SessionError("unsecured message addressed to a node (we are never the initiator)")
            session: UnsecuredSession | SecureSession = self.unsecured_for(address, header.source_node_id)
        else:
            sec = self.secure.get(header.session_id)
            if sec is None:
                raise UnknownSession(f"no secure session {header.session_id}")
            session = sec
        msg = session.open(header, data, off)
        session.note_peer_activity(now_ms)
        if isinstance(session, SecureSession) and not msg.duplicate and session.peer_address != address:
            session.peer_address = address  # authenticated traffic from a new address: follow the peer
        return msg


__all__ += ["UNSPECIFIED_NODE_ID", "MessageError"]
