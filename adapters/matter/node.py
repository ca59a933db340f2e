"""The Matter OTA Provider node: the asyncio layer that ties UDP, sessions, exchanges, MRP, CASE, IM, BDX, DNS-SD.

Everything below it is sans-I/O; this module only moves datagrams, runs one timer, awaits async handler results
and publishes DNS-SD records.

Wiring
  UDP datagram -> SessionTable.open (decrypt / replay window) -> ExchangeManager.on_message (MRP acks, routing)
  -> a handler per exchange -> replies framed, encrypted, sent reliably (MRP retransmissions via one loop timer).
  Protocol 0 (Secure Channel) Sigma1 on an unsecured session -> M2's CASEResponder (secure/case.py); when the
  handshake completes its EstablishedSession becomes a SecureSession in the table.
  Protocol 1 (Interaction Model) and 2 (BDX) on secure sessions only -> the factories given to ProviderNode.
  A CloseSession StatusReport from the peer removes its session.

Handler protocol (for M3's IM server and BDX sender; defined in transport/exchange.py)
  factory(ctx: SessionContext) -> handler        called for the first (unsolicited) message of an exchange.
      ctx.fabric_index, ctx.peer_node_id, ctx.peer_cats (authenticated subject), ctx.local_session_id,
      ctx.is_secure, ctx.peer_address.
  handler.receive(opcode, payload, protocol_id) -> list of (opcode, payload) on the exchange's protocol, or
      (protocol_id, opcode, payload) for another protocol (e.g. a Secure Channel StatusReport inside BDX).
      It may instead return an awaitable of such a list (e.g. QueryImage consulting the update core): the node
      awaits it on the loop; MRP sends the standalone ack meanwhile. receive(opcode, payload) also works.
  handler.done: bool                             exchange closes when done and every reply is acknowledged.
  handler.deadline: float | None, handler.poll()  optional: monotonic seconds (node clock) at which poll() runs,
      returning replies like receive (BDX idle timeout).
  handler.abort()  optional: the exchange went away before done (session closed, peer unreachable, idle);
      release what the handler holds (BDX transfer slot) and report the failure. Its return value is not sent.
  Handlers get time from the node's clock (`node.clock`) so tests can inject gateway.clock.ManualClock.
  A deadline that poll() leaves in the past is retried later, never in a loop (exchange.py), and the timer loop
  itself backs off from any deadline a pass did not consume and yields to I/O between passes.

Fabrics: `add_fabric(credentials)` / `remove_fabric(index)` at runtime; `advertise_name(name=None)` (re)publishes
operational names; `stop()` sends CloseSession on every secure session (unreliable, best effort), aborts their
exchanges and withdraws the names (DNS-SD goodbyes).

Logging: `logging.getLogger("adapters.matter.node")` with structured `extra={"fields": {...}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from adapters.matter.discovery.dnssd import MrpTxt, OperationalAdvertiser, OperationalName
from adapters.matter.transport.exchange import (
    Await,
    Event,
    ExchangeClosed,
    ExchangeHandler,
    ExchangeManager,
    HandlerFactory,
    PeerClosedSession,
    Send,
    SessionContext,
    SessionEstablished,
)
from adapters.matter.transport.message import MessageError, ProtocolId, SecureChannelOpcode
from adapters.matter.transport.mrp import ReliabilityTable
from adapters.matter.transport.session import MRPParams, SecureSession, SessionError, SessionTable
from adapters.matter.transport.udp import UdpTransport, open_udp
from gateway.clock import Clock, SystemClock

__all__ = ["ExchangeHandler", "HandlerFactory", "ProviderNode", "SessionContext"]

log = logging.getLogger(__name__)

MATTER_PORT = 5540
MAX_SECURE_SESSIONS = 32
TIMER_STALL_BACKOFF_MS = 100  # a past deadline that a timer pass did not consume is retried this much later


def _operational_name(credentials: Any) -> OperationalName:
    return OperationalName(credentials.compressed_fabric_id_int, credentials.node_id)


class _CaseExchange:
    """Adapts M2's CASEResponder to the exchange handler protocol (reports `established` once done)."""

    def __init__(self, responder: Any, local_session_id: int) -> None:
        self.responder = responder
        self.local_session_id = local_session_id

    @property
    def done(self) -> bool:
        return bool(self.responder.done)

    @property
    def established(self) -> Any:
        return self.responder.session if self.responder.done else None

    def receive(self, opcode: int, payload: bytes, protocol_id: int) -> list[tuple[int, bytes]]:
        if protocol_id != ProtocolId.SECURE_CHANNEL:
            return []
        return list(self.responder.receive(opcode, payload))


class ProviderNode:
    """One operational Matter node on one or more fabrics (see module docstring)."""

    def __init__(
        self,
        fabrics: Sequence[Any],
        *,
        im_factory: HandlerFactory | None = None,
        bdx_factory: HandlerFactory | None = None,
        port: int = MATTER_PORT,
        host: str = "::",
        interfaces: Sequence[str] | None = None,
        advertise: bool = True,
        clock: Clock | None = None,
        local_mrp: MrpTxt | None = None,
        case_factory: Callable[[Sequence[Any], int], Any] | None = None,
        mrp_jitter: Callable[[], float] | None = None,
    ) -> None:
        """`fabrics`: M2's OperationalCredentials (node_id, fabric_index, compressed_fabric_id_int...).
        `case_factory(fabrics, local_session_id)` overrides how the CASE responder is built (tests);
        `mrp_jitter()` draws the MRP backoff jitter in [0, 1) (default random; tests pin it)."""
        self.fabrics = list(fabrics)
        self.clock: Clock = clock or SystemClock()
        self.port = port
        self.host = host
        self.interfaces = list(interfaces) if interfaces is not None else None
        self.advertise = advertise
        self.local_mrp = local_mrp or MrpTxt()
        self.sessions = SessionTable()
        self.exchanges = ExchangeManager(ReliabilityTable(mrp_jitter) if mrp_jitter else ReliabilityTable())
        self._case_factory = case_factory or self._default_case
        self._transport: UdpTransport | None = None
        self._advertiser: OperationalAdvertiser | None = None
        self._timer_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._running = False
        self.exchanges.register(
            ProtocolId.SECURE_CHANNEL, self._new_case, secure=False, opcodes=[SecureChannelOpcode.CASE_SIGMA1]
        )
        if im_factory is not None:
            self.exchanges.register(ProtocolId.INTERACTION_MODEL, im_factory, secure=True)
        if bdx_factory is not None:
            self.exchanges.register(ProtocolId.BDX, bdx_factory, secure=True)

    # ------------------------------------------------------------------------------------------ lifecycle
    def now_ms(self) -> int:
        # rounded, not floored: a timer sleep of (due - now) / 1000 s must land on `due`, not 1 ms short of it
        return round(self.clock.monotonic() * 1000)

    async def start(self) -> None:
        self._transport = await open_udp(self._on_datagram, self.port, self.host)
        self.port = self._transport.port
        self._running = True
        self._timer_task = asyncio.create_task(self._timer_loop(), name="matter-node-timer")
        if self.advertise:
            self._advertiser = OperationalAdvertiser(self.port, self.interfaces, mrp=self.local_mrp)
            await self._advertiser.start()
            await self.advertise_name()
        log.info(
            "matter: node listening",
            extra={
                "fields": {
                    "port": self.port,
                    "fabrics": [f"{f.fabric_index}:{f.node_id:016X}" for f in self.fabrics],
                }
            },
        )

    async def stop(self) -> None:
        self._running = False
        self._close_all_sessions()
        if self._advertiser is not None:
            await self._advertiser.close()
            self._advertiser = None
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
            self._timer_task = None
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        log.info("matter: node stopped")

    async def __aenter__(self) -> ProviderNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------------------------------ fabrics
    async def add_fabric(self, credentials: Any) -> None:
        """Join a fabric at runtime (or replace the credentials of one with the same fabric index): CASE accepts
        it from the next Sigma1 on, and its operational name is advertised when advertising is on."""
        old = next((f for f in self.fabrics if f.fabric_index == credentials.fabric_index), None)
        self.fabrics = [f for f in self.fabrics if f.fabric_index != credentials.fabric_index] + [credentials]
        if old is not None and _operational_name(old) != _operational_name(credentials):
            await self._withdraw(_operational_name(old))
        await self.advertise_name(_operational_name(credentials))
        log.info(
            "matter: fabric added",
            extra={
                "fields": {"fabric_index": credentials.fabric_index, "node": f"{credentials.node_id:016X}"}
            },
        )

    async def remove_fabric(self, fabric_index: int) -> None:
        """Leave a fabric: withdraw its operational name and close every session on it."""
        gone = [f for f in self.fabrics if f.fabric_index == fabric_index]
        self.fabrics = [f for f in self.fabrics if f.fabric_index != fabric_index]
        for f in gone:
            await self._withdraw(_operational_name(f))
        for session in [s for s in self.sessions.secure.values() if s.fabric_index == fabric_index]:
            self._drop_session(session, "fabric removed")

    async def advertise_name(self, name: OperationalName | None = None) -> None:
        """Publish `name`, or (None) the operational name of every fabric; idempotent. A no-op when the node
        does not advertise or is not started (start() publishes every fabric)."""
        if self._advertiser is None:
            return
        for n in [name] if name is not None else [_operational_name(f) for f in self.fabrics]:
            await self._advertiser.advertise(n)

    async def _withdraw(self, name: OperationalName) -> None:
        if self._advertiser is not None:
            await self._advertiser.withdraw(name)

    # ------------------------------------------------------------------------------------------ CASE
    def _default_case(self, fabrics: Sequence[Any], local_session_id: int) -> Any:
        from adapters.matter.secure.case import CASEResponder  # M2's module; imported late to keep this light

        return CASEResponder(fabrics, local_session_id, now=self.clock.now)

    def _new_case(self, ctx: SessionContext) -> _CaseExchange:
        sid = self.sessions.allocate_session_id()
        return _CaseExchange(self._case_factory(self.fabrics, sid), sid)

    def _install_session(self, peer_address: Any, est: Any) -> SecureSession:
        local_node_id = getattr(est, "local_node_id", 0)
        if not local_node_id:
            local_node_id = next(f.node_id for f in self.fabrics if f.fabric_index == est.fabric_index)
        mrp = MRPParams(
            **{
                k: int(v)
                for k, v in (getattr(est, "peer_mrp_params", None) or {}).items()
                if k in ("idle_retrans_ms", "active_retrans_ms", "active_threshold_ms")
            }
        )
        session = SecureSession(
            peer_address=peer_address,
            peer_mrp=mrp,
            local_session_id=est.local_session_id,
            peer_session_id=est.peer_session_id,
            local_node_id=local_node_id,
            peer_node_id=est.peer_node_id,
            fabric_index=est.fabric_index,
            peer_cats=tuple(est.peer_cats),
            i2r_key=est.i2r_key,
            r2i_key=est.r2i_key,
            attestation_challenge=est.attestation_challenge,
        )
        session.note_peer_activity(self.now_ms())
        if len(self.sessions.secure) >= MAX_SECURE_SESSIONS:  # evict the least recently active session
            victim = min(self.sessions.secure.values(), key=lambda s: s.last_peer_activity_ms or 0)
            self._drop_session(victim, "evicted")
        self.sessions.add_secure(session)
        log.info(
            "matter: CASE session established",
            extra={
                "fields": {
                    "session": session.local_session_id,
                    "peer_node": f"{session.peer_node_id:016X}",
                    "fabric_index": session.fabric_index,
                    "peer": str(peer_address),
                }
            },
        )
        return session

    def _close_all_sessions(self) -> None:
        """Tell every secure peer its session is gone (CloseSession, best effort, before the socket closes) so a
        requestor mid-download re-establishes and re-queries at once instead of waiting out its BDX timeout."""
        for session in list(self.sessions.secure.values()):
            if self._transport is not None and not session.closed:
                try:
                    notice = self.exchanges.close_session_notice(session)
                except SessionError as exc:
                    log.info("matter: no CloseSession for session %d: %s", session.local_session_id, exc)
                else:
                    self._transport.send(notice.datagram, session.peer_address)
            self._drop_session(session, "node stopping")

    def _drop_session(self, session: SecureSession, reason: str) -> None:
        self._process(self.exchanges.close_session(session, self.now_ms()))
        self.sessions.remove(session)
        log.info(
            "matter: session closed",
            extra={"fields": {"session": session.local_session_id, "reason": reason}},
        )

    # ------------------------------------------------------------------------------------------ I/O
    def _on_datagram(self, data: bytes, addr: Any) -> None:
        now = self.now_ms()
        try:
            msg = self.sessions.open(data, addr, now)
        except (MessageError, SessionError) as exc:
            log.debug("matter: dropped datagram", extra={"fields": {"peer": str(addr), "reason": str(exc)}})
            return
        log.debug(
            "matter: rx",
            extra={
                "fields": {
                    "proto": msg.protocol.protocol_id,
                    "opcode": f"0x{msg.protocol.opcode:02x}",
                    "exchange": msg.protocol.exchange_id,
                    "counter": msg.header.message_counter,
                    "dup": msg.duplicate,
                    "secure": msg.session.is_secure,
                }
            },
        )
        self._process(self.exchanges.on_message(msg, now))

    def _process(self, events: list[Event]) -> None:
        for ev in events:
            if isinstance(ev, Send):
                if self._transport is not None and not ev.session.closed:
                    self._transport.send(ev.datagram, ev.session.peer_address)
            elif isinstance(ev, Await):
                task = asyncio.create_task(self._await_handler(ev))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(ev, SessionEstablished):
                self._install_session(ev.exchange.session.peer_address, ev.established)
            elif isinstance(ev, PeerClosedSession):
                self._drop_session(ev.session, "closed by peer")
            elif isinstance(ev, ExchangeClosed):
                h = ev.exchange.handler
                if isinstance(h, _CaseExchange) and h.established is None:
                    self.sessions.release_session_id(h.local_session_id)
                    err = getattr(h.responder, "error", None)
                    log.info("matter: CASE failed", extra={"fields": {"reason": str(err or ev.reason)}})
        self._wake.set()

    async def _await_handler(self, ev: Await) -> None:
        try:
            result = await ev.awaitable
        except Exception:
            log.exception("matter: async handler of %r failed", ev.exchange)
            self._process(self.exchanges.close(ev.exchange, self.now_ms(), "handler error"))
            return
        self._process(self.exchanges.deliver(ev.exchange, result, self.now_ms()))

    async def _timer_loop(self) -> None:
        """Run the exchange timers at their earliest deadline; new work (`_wake`) recomputes the deadline early."""
        last_pass: int | None = None  # node time (ms) of the previous timer pass
        stalled = False
        while self._running:
            self._wake.clear()
            try:
                deadline = self.exchanges.next_deadline()
            except Exception:
                log.exception("matter: computing the next timer deadline failed")
                deadline = None
            if deadline is None:
                await self._wake.wait()
                continue
            now = self.now_ms()
            due = deadline
            if last_pass is not None and deadline <= last_pass:
                # the previous pass ran at or after this deadline and nothing consumed it: never spin on it
                if not stalled:
                    log.warning("matter: timer deadline %d ms not consumed by a pass; backing off", deadline)
                stalled = True
                due = now + TIMER_STALL_BACKOFF_MS
            else:
                stalled = False
            delay = max(0, due - now) / 1000
            if delay > 0:
                sleeper = asyncio.ensure_future(self.clock.sleep(delay))
                waker = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
                for f in (sleeper, waker):
                    f.cancel()
            else:
                await asyncio.sleep(0)  # datagrams and handler results get the loop between timer passes
            last_pass = self.now_ms()
            try:
                self._process(self.exchanges.on_timer(last_pass))
            except Exception:
                log.exception("matter: timer processing failed")
