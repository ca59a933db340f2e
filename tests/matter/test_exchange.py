"""Exchange manager over real sessions and MRP: routing, piggybacked/standalone acks, retransmission, closing."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.matter.transport.exchange import (
    Await,
    ExchangeClosed,
    ExchangeManager,
    PeerClosedSession,
    Send,
    SessionContext,
    SessionEstablished,
)
from adapters.matter.transport.message import (
    MessageHeader,
    ProtocolHeader,
    decode_message_header,
    decode_protocol_header,
)
from adapters.matter.transport.mrp import ReliabilityTable
from adapters.matter.transport.session import SecureSession, SessionTable
from adapters.matter.transport.status_report import SecureChannelCode, StatusReport

PEER = ("fd00::2", 5540)


@dataclass
class Recorder:
    """A two-step handler: answers opcode 1 with 2, then 3 with 4 and is done."""

    ctx: SessionContext
    got: list[tuple[int, bytes, int]] = field(default_factory=list)
    done: bool = False
    established: object = None

    def receive(self, opcode: int, payload: bytes, protocol_id: int) -> list[tuple[int, bytes]]:
        self.got.append((opcode, payload, protocol_id))
        if opcode == 3:
            self.done = True
            self.established = "keys"
            return [(4, b"bye")]
        return [(2, b"hi")]


def unsecured(
    counter: int,
    opcode: int,
    *,
    exchange: int = 7,
    ack: int | None = None,
    reliable: bool = True,
    protocol: int = 0,
    initiator: bool = True,
) -> bytes:
    h = MessageHeader(session_id=0, message_counter=counter, source_node_id=0xE1)
    p = ProtocolHeader(opcode, exchange, protocol, initiator=initiator, reliable=reliable, ack_counter=ack)
    return h.encode() + p.encode() + b"p%d" % opcode


def parse(ev: Send) -> tuple[MessageHeader, ProtocolHeader, bytes]:
    h, off = decode_message_header(ev.datagram)
    p, poff = decode_protocol_header(ev.datagram, off)
    return h, p, ev.datagram[poff:]


def setup() -> tuple[SessionTable, ExchangeManager, list[Recorder]]:
    handlers: list[Recorder] = []

    def factory(ctx: SessionContext) -> Recorder:
        handlers.append(Recorder(ctx))
        return handlers[-1]

    mgr = ExchangeManager(ReliabilityTable(rng=lambda: 0.0))
    mgr.register(0, factory, secure=False, opcodes=[1])
    mgr.register(1, factory, secure=True)
    return SessionTable(), mgr, handlers


def test_full_exchange_with_piggybacked_acks_and_close() -> None:
    table, mgr, handlers = setup()
    ev = mgr.on_message(table.open(unsecured(10, 1), PEER, 0), 0)
    assert len(ev) == 1 and isinstance(ev[0], Send)
    h, p, payload = parse(ev[0])
    assert (p.opcode, p.ack_counter, p.reliable, p.initiator, p.exchange_id, payload) == (
        2,
        10,
        True,
        False,
        7,
        b"hi",
    )
    assert h.dest_node_id == 0xE1
    assert handlers[0].ctx.is_secure is False
    # peer answers with opcode 3, acking our message: handler finishes, reply acks it, session established
    ev = mgr.on_message(table.open(unsecured(11, 3, ack=h.message_counter), PEER, 100), 100)
    sends = [e for e in ev if isinstance(e, Send)]
    assert [parse(s)[1].opcode for s in sends] == [4]
    assert any(isinstance(e, SessionEstablished) and e.established == "keys" for e in ev)
    assert mgr.exchanges  # still waiting for the ack of opcode 4
    h4 = parse(sends[0])[0]
    ev = mgr.on_message(
        table.open(unsecured(12, 0x10, ack=h4.message_counter, reliable=False), PEER, 200), 200
    )
    assert any(isinstance(e, ExchangeClosed) for e in ev)
    assert not mgr.exchanges and mgr.next_deadline() is None


def test_retransmission_and_give_up() -> None:
    table, mgr, _ = setup()
    first = mgr.on_message(table.open(unsecured(10, 1), PEER, 0), 0)[0]
    assert isinstance(first, Send)
    times, resent = [], []
    while (d := mgr.next_deadline()) is not None and d < 100_000:
        evs = mgr.on_timer(d)
        resent += [e for e in evs if isinstance(e, Send)]
        times.append(d)
        if any(isinstance(e, ExchangeClosed) for e in evs):
            break
    assert len(resent) == 4 and all(r.datagram == first.datagram for r in resent)  # same counter, same bytes
    assert times == [330, 660, 1188, 2032, 3383]  # peer heard within SAT: active 300 ms * 1.1 * 1.6^k


def test_duplicate_is_acked_not_redelivered() -> None:
    table, mgr, handlers = setup()
    raw = unsecured(10, 1)
    mgr.on_message(table.open(raw, PEER, 0), 0)
    ev = mgr.on_message(table.open(raw, PEER, 10), 10)
    assert len(ev) == 1 and isinstance(ev[0], Send)
    _, p, _ = parse(ev[0])
    assert (p.opcode, p.protocol_id, p.ack_counter, p.reliable) == (0x10, 0, 10, False)
    assert len(handlers[0].got) == 1


def test_unroutable_messages_get_standalone_acks_only() -> None:
    table, mgr, handlers = setup()
    for raw in (
        unsecured(1, 9),
        unsecured(2, 1, protocol=1),
        unsecured(3, 1, protocol=2),
        unsecured(4, 1, initiator=False),
    ):
        ev = mgr.on_message(table.open(raw, PEER, 0), 0)
        assert [parse(e)[1].opcode for e in ev if isinstance(e, Send)] == [0x10]
    assert handlers == [] and not mgr.exchanges


def test_standalone_ack_after_timeout_when_handler_is_silent() -> None:
    table, mgr, handlers = setup()

    def quiet(ctx: SessionContext) -> Recorder:
        r = Recorder(ctx)
        r.receive = lambda *a: []  # type: ignore[method-assign]
        handlers.append(r)
        return r

    mgr.register(0, quiet, secure=False)
    assert mgr.on_message(table.open(unsecured(10, 1), PEER, 0), 0) == []
    assert mgr.next_deadline() == 200
    ev = mgr.on_timer(200)
    assert [parse(e)[1].ack_counter for e in ev if isinstance(e, Send)] == [10]


async def test_async_handler_result_is_delivered() -> None:
    table, mgr, _ = setup()

    async def later() -> list[tuple[int, bytes]]:
        return [(2, b"late")]

    class AsyncHandler:
        done = False

        def receive(self, opcode: int, payload: bytes, protocol_id: int) -> object:
            return later()

    mgr.register(0, lambda ctx: AsyncHandler(), secure=False)
    ev = mgr.on_message(table.open(unsecured(10, 1), PEER, 0), 0)
    assert len(ev) == 1 and isinstance(ev[0], Await)
    result = await ev[0].awaitable
    out = mgr.deliver(ev[0].exchange, result, 50)
    _, p, payload = parse(out[0])  # type: ignore[arg-type]
    assert (p.opcode, p.ack_counter, payload) == (2, 10, b"late")


def test_close_session_status_report_on_secure_session() -> None:
    table, mgr, _ = setup()
    s = SecureSession(
        peer_address=PEER,
        local_session_id=5,
        peer_session_id=6,
        local_node_id=1,
        peer_node_id=2,
        i2r_key=bytes(16),
        r2i_key=bytes(16),
    )
    table.add_secure(s)
    peer = SecureSession(
        peer_address=PEER,
        local_session_id=6,
        peer_session_id=5,
        local_node_id=2,
        peer_node_id=1,
        i2r_key=bytes(16),
        r2i_key=bytes(16),
    )
    body = StatusReport(0, 0, SecureChannelCode.CLOSE_SESSION).encode()
    raw, _ = peer.encode(ProtocolHeader(0x40, 3, 0, initiator=True, reliable=False), body)
    ev = mgr.on_message(table.open(raw, PEER, 0), 0)
    assert ev == [PeerClosedSession(s)]
