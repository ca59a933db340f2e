"""Exchange manager (Core spec 4.10): exchanges per session, routing to protocol handlers, MRP on every message.

Sans-I/O: the node feeds authenticated `InboundMessage`s and timer ticks (`now_ms`); the manager returns events
(`Send` a datagram, `Await` an async handler result, `SessionEstablished`, `PeerClosedSession`, `ExchangeClosed`).

Handler protocol (what M2/M3 plug in; see also adapters/matter/node.py):
  factory(ctx: SessionContext) -> handler          one handler per exchange, created on its first message
  handler.receive(opcode, payload, protocol_id)    -> list of (opcode, payload) [exchange's protocol] or
                                                      (protocol_id, opcode, payload); may instead return an
                                                      awaitable of that list (the node awaits it). Handlers whose
                                                      receive takes only (opcode, payload) are also accepted.
  handler.done: bool                               the exchange closes once done and all its sends are acked
  handler.deadline: float | None   (optional)      monotonic seconds at which to call handler.poll(); a deadline
                                                      that poll() leaves in the past is retried only every
                                                      STALE_DEADLINE_RETRY_MS (no busy loop)
  handler.poll() -> same as receive  (optional)
  handler.established  (optional)                  set by the CASE handler once the session is up; reported once
                                                      as a SessionEstablished event.
  handler.abort()  (optional)                      called when the exchange goes away before the handler is done
                                                      (session closed, MRP gave up, idle, handler error); what it
                                                      returns is not sent.

Exchanges are keyed by (session, exchange id, peer-is-initiator). Unsolicited messages (I flag set, no exchange)
go to the factory registered for their protocol id if the session kind allows it (CASE: unsecured only, opcode
Sigma1; IM and BDX: secure only). Duplicates are acked, never delivered. `close_session_notice(session)` builds
the CloseSession StatusReport the node sends to each peer when it stops.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .message import ProtocolHeader, ProtocolId, SecureChannelOpcode
from .mrp import GiveUp, ReliabilityTable, Retransmit, SendStandaloneAck
from .session import InboundMessage, SecureSession, SessionError, UnsecuredSession
from .status_report import GeneralCode, SecureChannelCode, StatusReport, StatusReportError

__all__ = [
    "EXCHANGE_IDLE_TIMEOUT_MS",
    "STALE_DEADLINE_RETRY_MS",
    "Await",
    "Exchange",
    "ExchangeClosed",
    "ExchangeHandler",
    "ExchangeManager",
    "HandlerFactory",
    "PeerClosedSession",
    "Send",
    "SessionContext",
    "SessionEstablished",
]

log = logging.getLogger(__name__)

EXCHANGE_IDLE_TIMEOUT_MS = 120_000  # drop exchanges nobody talks on (bounded state against silent peers)
STALE_DEADLINE_RETRY_MS = 1_000  # a handler deadline that poll() left in the past is retried this much later

Session = UnsecuredSession | SecureSession
Reply = tuple[int, bytes] | tuple[int, int, bytes]


@dataclass(frozen=True)
class SessionContext:
    """Who is on the other end of an exchange. On unsecured sessions only peer_address is meaningful."""

    fabric_index: int | None
    peer_node_id: int | None
    peer_cats: tuple[int, ...]
    local_session_id: int
    is_secure: bool
    peer_address: Hashable = None


class ExchangeHandler(Protocol):
    done: bool

    def receive(self, opcode: int, payload: bytes, protocol_id: int) -> Any: ...


HandlerFactory = Callable[[SessionContext], Any]  # returns an ExchangeHandler (duck typed)


@dataclass(eq=False)
class Exchange:
    session: Session
    exchange_id: int
    peer_initiator: bool
    protocol_id: int
    handler: Any
    last_activity_ms: int
    queue: list[tuple[int, int, bytes]] = field(default_factory=list)
    closed: bool = False
    reported_established: bool = False
    awaiting: bool = False
    stale_deadline_ms: int | None = None  # a handler deadline poll() left in the past ...
    stale_retry_ms: int = 0  # ... is polled again only at this time (never in a tight loop)

    @property
    def key(self) -> tuple[int, int, bool]:
        return (id(self.session), self.exchange_id, self.peer_initiator)

    def __repr__(self) -> str:
        role = "R" if self.peer_initiator else "I"
        return f"<Exchange {self.exchange_id}{role} proto={self.protocol_id} session={_sid(self.session)}>"


@dataclass(frozen=True)
class Send:
    session: Session
    datagram: bytes


@dataclass(frozen=True)
class Await:
    """The handler returned an awaitable: await it and pass the result to `ExchangeManager.deliver`."""

    exchange: Exchange
    awaitable: Awaitable[Any]


@dataclass(frozen=True)
class SessionEstablished:
    exchange: Exchange
    established: Any


@dataclass(frozen=True)
class PeerClosedSession:
    session: SecureSession


@dataclass(frozen=True)
class ExchangeClosed:
    exchange: Exchange
    reason: str


Event = Send | Await | SessionEstablished | PeerClosedSession | ExchangeClosed


@dataclass
class _Route:
    factory: HandlerFactory
    secure: bool
    opcodes: frozenset[int] | None


def _sid(session: Session) -> str:
    return f"s{session.local_session_id}" if isinstance(session, SecureSession) else "unsecured"


def context_for(session: Session) -> SessionContext:
    if isinstance(session, SecureSession):
        return SessionContext(
            session.fabric_index,
            session.peer_node_id,
            tuple(session.peer_cats),
            session.local_session_id,
            True,
            session.peer_address,
        )
    return SessionContext(None, None, (), 0, False, session.peer_address)


_ARITY_CACHE: dict[type, bool] = {}


def _takes_protocol_id(handler: Any) -> bool:
    t = type(handler)
    if t not in _ARITY_CACHE:
        try:
            params = inspect.signature(handler.receive).parameters
            _ARITY_CACHE[t] = len(params) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params.values())
        except (TypeError, ValueError):
            _ARITY_CACHE[t] = True
    return _ARITY_CACHE[t]


class ExchangeManager:
    """All exchanges of a node plus its MRP table."""

    def __init__(
        self,
        mrp: ReliabilityTable | None = None,
        *,
        idle_timeout_ms: int = EXCHANGE_IDLE_TIMEOUT_MS,
        max_exchanges: int = 256,
    ) -> None:
        self.mrp = mrp or ReliabilityTable()
        self.exchanges: dict[tuple[int, int, bool], Exchange] = {}
        self._routes: dict[int, _Route] = {}
        self._idle_timeout_ms = idle_timeout_ms
        self._max_exchanges = max_exchanges
        self._next_exchange_id = 1

    def register(
        self, protocol_id: int, factory: HandlerFactory, *, secure: bool, opcodes: Iterable[int] | None = None
    ) -> None:
        """Route unsolicited messages of `protocol_id` (optionally only these opcodes) on secure or unsecured
        sessions to new handlers from `factory`."""
        self._routes[protocol_id] = _Route(
            factory, secure, frozenset(opcodes) if opcodes is not None else None
        )

    # ------------------------------------------------------------------------------------------ inbound
    def on_message(self, msg: InboundMessage, now_ms: int) -> list[Event]:
        ph = msg.protocol
        session = msg.session
        events: list[Event] = []
        key = (id(session), ph.exchange_id, ph.initiator)
        ex = self.exchanges.get(key)

        if msg.duplicate:
            if ph.reliable:  # our ack was lost: ack again, right away, without redelivering
                events.append(
                    self._standalone_ack(session, ph.exchange_id, ph.initiator, msg.header.message_counter)
                )
            return events

        if ph.ack_counter is not None and ex is not None and self.mrp.received_ack(ex, ph.ack_counter):
            events += self._pump(ex, now_ms)

        if ph.protocol_id == ProtocolId.SECURE_CHANNEL and ph.opcode == SecureChannelOpcode.STANDALONE_ACK:
            if ex is not None:
                events += self._maybe_close(ex, now_ms)
            return events

        if ex is None:
            ex, refusal = self._new_exchange(msg, now_ms)
            if ex is None:
                log.info(
                    "matter: dropping %s opcode 0x%02x on %s: %s",
                    ph.protocol_id,
                    ph.opcode,
                    _sid(session),
                    refusal,
                )
                if isinstance(session, SecureSession) and self._is_close_session(ph, msg.payload):
                    events.append(PeerClosedSession(session))
                if ph.reliable:
                    events.append(
                        self._standalone_ack(
                            session, ph.exchange_id, ph.initiator, msg.header.message_counter
                        )
                    )
                return events

        ex.last_activity_ms = now_ms
        if ph.reliable:
            for a in self.mrp.received_reliable(ex, msg.header.message_counter, now_ms):
                events += self._on_mrp_action(a, now_ms)
        if ex.closed:
            return events
        events += self._call(ex, ex.handler.receive, (ph.opcode, msg.payload, ph.protocol_id), now_ms)
        return events

    def _is_close_session(self, ph: ProtocolHeader, payload: bytes) -> bool:
        if ph.protocol_id != ProtocolId.SECURE_CHANNEL or ph.opcode != SecureChannelOpcode.STATUS_REPORT:
            return False
        try:
            sr = StatusReport.decode(payload)
        except StatusReportError:
            return False
        return (
            sr.protocol_id == ProtocolId.SECURE_CHANNEL
            and sr.protocol_code == SecureChannelCode.CLOSE_SESSION
            and sr.general_code == GeneralCode.SUCCESS
        )

    def _new_exchange(self, msg: InboundMessage, now_ms: int) -> tuple[Exchange | None, str]:
        ph = msg.protocol
        if not ph.initiator:
            return None, "no such exchange (message from a responder)"
        if ph.vendor_id not in (None, 0):
            return None, f"vendor protocol {ph.vendor_id:#x}"
        route = self._routes.get(ph.protocol_id)
        if route is None:
            return None, "no handler for protocol"
        if route.secure != msg.session.is_secure:
            return None, "protocol not allowed on this session kind"
        if route.opcodes is not None and ph.opcode not in route.opcodes:
            return None, "opcode does not start an exchange"
        if len(self.exchanges) >= self._max_exchanges:
            return None, "too many exchanges"
        handler = route.factory(context_for(msg.session))
        ex = Exchange(msg.session, ph.exchange_id, True, ph.protocol_id, handler, now_ms)
        self.exchanges[ex.key] = ex
        log.debug("matter: opened %r", ex)
        return ex, ""

    # ------------------------------------------------------------------------------------------ handler I/O
    def _call(self, ex: Exchange, fn: Callable[..., Any], args: tuple[Any, ...], now_ms: int) -> list[Event]:
        try:
            if fn is ex.handler.receive and not _takes_protocol_id(ex.handler):
                args = args[:2]
            result = fn(*args)
        except Exception:  # a handler bug must not take the node down; the exchange dies instead
            log.exception("matter: handler of %r failed", ex)
            return self.close(ex, now_ms, "handler error")
        if inspect.isawaitable(result):
            ex.awaiting = True
            return [Await(ex, result)]
        return self.deliver(ex, result, now_ms)

    def deliver(self, ex: Exchange, replies: Iterable[Reply] | None, now_ms: int) -> list[Event]:
        """Queue a handler's replies on its exchange and send what MRP allows (one unacked message at a time)."""
        ex.awaiting = False
        if ex.closed:
            return []
        for r in replies or ():
            if len(r) == 2:
                ex.queue.append((ex.protocol_id, int(r[0]), bytes(r[1])))
            else:
                ex.queue.append((int(r[0]), int(r[1]), bytes(r[2])))
        events: list[Event] = []
        est = getattr(ex.handler, "established", None)
        if est is not None and not ex.reported_established:
            ex.reported_established = True
            # the reply (StatusReport success) goes out first on the unsecured session; then the session exists
            events += self._pump(ex, now_ms)
            events.append(SessionEstablished(ex, est))
            return events + self._maybe_close(ex, now_ms)
        return events + self._pump(ex, now_ms)

    def _pump(self, ex: Exchange, now_ms: int) -> list[Event]:
        events: list[Event] = []
        if ex.queue and not self.mrp.has_outstanding(ex) and not ex.closed:
            pid, opcode, payload = ex.queue.pop(0)
            events.append(self._send(ex, pid, opcode, payload, now_ms))
        return events + self._maybe_close(ex, now_ms)

    def _send(self, ex: Exchange, protocol_id: int, opcode: int, payload: bytes, now_ms: int) -> Send:
        ack = self.mrp.take_ack(ex)
        ph = ProtocolHeader(
            opcode,
            ex.exchange_id,
            protocol_id,
            initiator=not ex.peer_initiator,
            reliable=True,
            ack_counter=ack,
        )
        datagram, ctr = ex.session.encode(ph, payload)
        session = ex.session
        self.mrp.sent_reliable(ex, ctr, datagram, now_ms, session.peer_retrans_base_ms)
        ex.last_activity_ms = now_ms
        return Send(session, datagram)

    def _standalone_ack(self, session: Session, exchange_id: int, peer_initiator: bool, counter: int) -> Send:
        ph = ProtocolHeader(
            SecureChannelOpcode.STANDALONE_ACK,
            exchange_id,
            ProtocolId.SECURE_CHANNEL,
            initiator=not peer_initiator,
            reliable=False,
            ack_counter=counter,
        )
        datagram, _ = session.encode(ph, b"")
        return Send(session, datagram)

    def _maybe_close(self, ex: Exchange, now_ms: int) -> list[Event]:
        if (
            not ex.closed
            and not ex.awaiting
            and getattr(ex.handler, "done", False)
            and not ex.queue
            and not self.mrp.has_outstanding(ex)
        ):
            return self.close(ex, now_ms, "done")
        return []

    def close(self, ex: Exchange, now_ms: int, reason: str) -> list[Event]:
        """Close an exchange: a still-pending ack is flushed as a standalone ack; retransmissions stop."""
        if ex.closed:
            return []
        events: list[Event] = []
        ack = self.mrp.take_ack(ex)
        if ack is not None and not ex.session.closed:
            with contextlib.suppress(SessionError):
                events.append(self._standalone_ack(ex.session, ex.exchange_id, ex.peer_initiator, ack))
        self.mrp.forget(ex)
        ex.closed = True
        self.exchanges.pop(ex.key, None)
        log.debug("matter: closed %r (%s)", ex, reason)
        events += self._abandon(ex, reason)
        events.append(ExchangeClosed(ex, reason))
        return events

    def close_session(self, session: Session, now_ms: int) -> list[Event]:
        """Drop every exchange of a session (no acks: the session is gone)."""
        events: list[Event] = []
        for ex in [e for e in self.exchanges.values() if e.session is session]:
            self.mrp.forget(ex)
            ex.closed = True
            self.exchanges.pop(ex.key, None)
            events += self._abandon(ex, "session closed")
            events.append(ExchangeClosed(ex, "session closed"))
        return events

    def _abandon(self, ex: Exchange, reason: str) -> list[Event]:
        """The exchange of a handler that is not done went away (session closed, peer unreachable, idle, error):
        call its optional `abort()` so it can release what it holds (a BDX transfer slot) and report the failure.
        What abort() returns cannot be sent any more; an awaitable result is still awaited (then dropped)."""
        abort = getattr(ex.handler, "abort", None)
        if abort is None or getattr(ex.handler, "done", False):
            return []
        try:
            result = abort()
        except Exception:
            log.exception("matter: abort of %r's handler failed (%s)", ex, reason)
            return []
        return [Await(ex, result)] if inspect.isawaitable(result) else []

    # ------------------------------------------------------------------------------------------ outbound
    def initiate(
        self, session: Session, protocol_id: int, handler: Any, opcode: int, payload: bytes, now_ms: int
    ) -> tuple[Exchange, list[Event]]:
        """Open an exchange as initiator (e.g. to announce ourselves) and send its first message."""
        for _ in range(0x10000):
            eid = self._next_exchange_id
            self._next_exchange_id = (eid + 1) & 0xFFFF or 1
            if (id(session), eid, False) not in self.exchanges:
                break
        ex = Exchange(session, eid, False, protocol_id, handler, now_ms)
        self.exchanges[ex.key] = ex
        return ex, [self._send(ex, protocol_id, opcode, payload, now_ms)]

    def close_session_notice(self, session: SecureSession) -> Send:
        """A CloseSession StatusReport (general SUCCESS, Secure Channel code CLOSE_SESSION) for `session`, on a
        fresh exchange we initiate. Sent without MRP: the sender tears the session down right after, so it could
        not retransmit or take the ack anyway (the SDK sends it the same way, best effort). Not tracked as an
        exchange. SessionError when the session's counter is exhausted."""
        for _ in range(0x10000):
            eid = self._next_exchange_id
            self._next_exchange_id = (eid + 1) & 0xFFFF or 1
            if (id(session), eid, False) not in self.exchanges:
                break
        report = StatusReport(GeneralCode.SUCCESS, ProtocolId.SECURE_CHANNEL, SecureChannelCode.CLOSE_SESSION)
        ph = ProtocolHeader(
            SecureChannelOpcode.STATUS_REPORT,
            eid,
            ProtocolId.SECURE_CHANNEL,
            initiator=True,
            reliable=False,
        )
        datagram, _ = session.encode(ph, report.encode())
        return Send(session, datagram)

    # ------------------------------------------------------------------------------------------ timers
    def next_deadline(self) -> int | None:
        dues: list[int] = []
        d = self.mrp.next_deadline()
        if d is not None:
            dues.append(d)
        for ex in self.exchanges.values():
            dues.append(ex.last_activity_ms + self._idle_timeout_ms)
            hd = self._handler_deadline_ms(ex)
            if hd is not None:
                dues.append(hd)
        return min(dues) if dues else None

    @staticmethod
    def _handler_deadline_ms(ex: Exchange) -> int | None:
        if ex.awaiting or ex.closed or not hasattr(ex.handler, "poll"):
            return None
        hd = getattr(ex.handler, "deadline", None)
        if isinstance(hd, int | float) and not isinstance(hd, bool) and math.isfinite(hd):
            ms = math.ceil(hd * 1000)
            return max(ms, ex.stale_retry_ms) if ms == ex.stale_deadline_ms else ms
        return None

    def on_timer(self, now_ms: int) -> list[Event]:
        events: list[Event] = []
        for a in self.mrp.poll(now_ms):
            events += self._on_mrp_action(a, now_ms)
        for ex in list(self.exchanges.values()):
            if ex.closed:
                continue
            hd = self._handler_deadline_ms(ex)
            if hd is not None and hd <= now_ms:
                events += self._call(ex, ex.handler.poll, (), now_ms)
                after = self._handler_deadline_ms(ex)
                if after is not None and after <= now_ms:
                    # poll() neither acted on nor moved a past deadline (a handler bug, or its clock differs
                    # from ours): polling again at once would spin the timer loop, so retry it later
                    if ex.stale_deadline_ms is None:
                        log.warning(
                            "matter: handler of %r left its deadline in the past; retrying every %d ms",
                            ex,
                            STALE_DEADLINE_RETRY_MS,
                        )
                    ex.stale_deadline_ms = math.ceil(ex.handler.deadline * 1000)
                    ex.stale_retry_ms = now_ms + STALE_DEADLINE_RETRY_MS
            if not ex.closed and now_ms - ex.last_activity_ms >= self._idle_timeout_ms:
                events += self.close(ex, now_ms, "idle")
        return events

    def _on_mrp_action(self, a: Retransmit | SendStandaloneAck | GiveUp, now_ms: int) -> list[Event]:
        ex = a.key
        assert isinstance(ex, Exchange)
        if ex.session.closed:
            self.mrp.forget(ex)
            return []
        if isinstance(a, Retransmit):
            log.debug("matter: retransmit #%d counter %d on %r", a.transmission, a.counter, ex)
            return [Send(ex.session, a.datagram)]
        if isinstance(a, SendStandaloneAck):
            return [self._standalone_ack(ex.session, ex.exchange_id, ex.peer_initiator, a.ack_counter)]
        log.warning("matter: no ack for counter %d after retransmissions on %r", a.counter, ex)
        return self.close(ex, now_ms, "peer unreachable")
