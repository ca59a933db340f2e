"""MRP timer table: spec backoff figures, retransmission schedule, give-up, pending/piggybacked acks."""

from __future__ import annotations

from adapters.matter.transport.mrp import (
    MRP_MAX_TRANSMISSIONS,
    MRP_STANDALONE_ACK_TIMEOUT_MS,
    GiveUp,
    ReliabilityTable,
    Retransmit,
    SendStandaloneAck,
    backoff_ms,
)


def test_backoff_formula() -> None:
    # I=300ms -> 330ms with margin; no jitter: 330, 330, 528, 844.8
    assert [backoff_ms(300, n, 0.0) for n in range(4)] == [330, 330, 528, 844]
    assert backoff_ms(300, 0, 0.999999) == 412  # 330 * 1.25
    assert backoff_ms(500, 4, 0.0) == int(550 * 1.6**3)


def test_retransmit_until_give_up() -> None:
    t = ReliabilityTable(rng=lambda: 0.0)
    t.sent_reliable("ex", 42, b"dgram", 1000, lambda now: 300)
    assert t.next_deadline() == 1330
    assert t.poll(1329) == []
    sends = [1000]
    now = 1330
    actions = []
    while True:
        acts = t.poll(now)
        actions += acts
        if any(isinstance(a, GiveUp) for a in acts):
            break
        sends.append(now)
        now = t.next_deadline()  # type: ignore[assignment]
    retrans = [a for a in actions if isinstance(a, Retransmit)]
    assert [a.transmission for a in retrans] == list(range(2, MRP_MAX_TRANSMISSIONS + 1))
    assert all(a.datagram == b"dgram" and a.counter == 42 for a in retrans)
    gaps = [b - a for a, b in zip(sends, [*sends[1:], now], strict=True)]
    assert gaps == [330, 330, 528, 844, 1351]
    assert t.next_deadline() is None


def test_ack_stops_retransmission() -> None:
    t = ReliabilityTable(rng=lambda: 0.5)
    t.sent_reliable("ex", 7, b"x", 0, lambda now: 500)
    assert not t.received_ack("ex", 6)
    assert t.received_ack("ex", 7)
    assert t.poll(10_000) == []


def test_pending_ack_piggyback_and_standalone() -> None:
    t = ReliabilityTable()
    assert t.received_reliable("ex", 5, 100) == []
    assert t.next_deadline() == 100 + MRP_STANDALONE_ACK_TIMEOUT_MS
    assert t.take_ack("ex") == 5  # piggybacked: no standalone ack later
    assert t.poll(1000) == []
    t.received_reliable("ex", 6, 2000)
    assert t.poll(2199) == []
    assert t.poll(2200) == [SendStandaloneAck("ex", 6)]
    t.received_reliable("ex", 7, 3000)
    assert t.received_reliable("ex", 8, 3001) == [SendStandaloneAck("ex", 7)]  # older ack flushed now
