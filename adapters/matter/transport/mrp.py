"""Message Reliability Protocol (Core spec 4.12) as a sans-I/O timer table with injected time.

Per exchange: at most one unacknowledged reliable message (retransmitted with the spec backoff until acked or
MRP_MAX_TRANSMISSIONS sends have gone unanswered) and at most one pending acknowledgement (piggybacked on the next
message of the exchange, else sent as a standalone ack after MRP_STANDALONE_ACK_TIMEOUT_MS).

The caller feeds events (`sent_reliable`, `received_ack`, `received_reliable`, `take_ack`) and calls
`poll(now_ms)` at `next_deadline()`; poll returns actions (Retransmit, SendStandaloneAck, GiveUp) for the I/O layer.
Keys are opaque hashable exchange handles.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass

__all__ = [
    "MRP_BACKOFF_BASE",
    "MRP_BACKOFF_JITTER",
    "MRP_BACKOFF_MARGIN",
    "MRP_BACKOFF_THRESHOLD",
    "MRP_MAX_TRANSMISSIONS",
    "MRP_STANDALONE_ACK_TIMEOUT_MS",
    "GiveUp",
    "ReliabilityTable",
    "Retransmit",
    "SendStandaloneAck",
    "backoff_ms",
]

MRP_BACKOFF_BASE = 1.6
MRP_BACKOFF_JITTER = 0.25
MRP_BACKOFF_MARGIN = 1.1
MRP_BACKOFF_THRESHOLD = 1
MRP_MAX_TRANSMISSIONS = 5
MRP_STANDALONE_ACK_TIMEOUT_MS = 200


def backoff_ms(base_interval_ms: int, retransmissions_so_far: int, jitter_draw: float) -> int:
    """Spec 4.12.2.1: time to wait after send number (retransmissions_so_far + 1) before resending.

    t = I * MARGIN * BASE^max(0, n - THRESHOLD) * (1 + draw * JITTER), draw in [0, 1).
    """
    i = base_interval_ms * MRP_BACKOFF_MARGIN
    exp = max(0, retransmissions_so_far - MRP_BACKOFF_THRESHOLD)
    return int(i * MRP_BACKOFF_BASE**exp * (1.0 + jitter_draw * MRP_BACKOFF_JITTER))


@dataclass(frozen=True)
class Retransmit:
    key: Hashable
    datagram: bytes
    counter: int
    transmission: int  # 2 for the first retransmission ... MRP_MAX_TRANSMISSIONS


@dataclass(frozen=True)
class SendStandaloneAck:
    key: Hashable
    ack_counter: int


@dataclass(frozen=True)
class GiveUp:
    """No ack after MRP_MAX_TRANSMISSIONS sends: the exchange (and per spec the session's peer) is unreachable."""

    key: Hashable
    counter: int


Action = Retransmit | SendStandaloneAck | GiveUp


@dataclass
class _Outstanding:
    datagram: bytes
    counter: int
    sends: int
    due_ms: int
    base_interval: Callable[[int], int]


class ReliabilityTable:
    """MRP state of all exchanges of a node."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self._rng = rng
        self._out: dict[Hashable, _Outstanding] = {}
        self._acks: dict[Hashable, tuple[int, int]] = {}  # key -> (ack counter, due ms)

    # ----- sending side
    def sent_reliable(self, key: Hashable, counter: int, datagram: bytes, now_ms: int,
                      base_interval: Callable[[int], int]) -> None:
        """Record a reliable message just sent; `base_interval(now_ms)` gives the peer's current SAI/SII in ms."""
        if key in self._out:
            raise RuntimeError("exchange already has an unacknowledged reliable message")
        due = now_ms + backoff_ms(base_interval(now_ms), 0, self._rng())
        self._out[key] = _Outstanding(datagram, counter, 1, due, base_interval)

    def has_outstanding(self, key: Hashable) -> bool:
        return key in self._out

    def received_ack(self, key: Hashable, ack_counter: int) -> bool:
        """An ack arrived on the exchange; True if it acknowledged our outstanding message."""
        o = self._out.get(key)
        if o is not None and o.counter == ack_counter:
            del self._out[key]
            return True
        return False

    # ----- receiving side
    def received_reliable(self, key: Hashable, counter: int, now_ms: int) -> list[Action]:
        """A reliable message arrived: an ack becomes pending. A still-pending older ack is flushed now."""
        actions: list[Action] = []
        prev = self._acks.get(key)
        if prev is not None and prev[0] != counter:
            actions.append(SendStandaloneAck(key, prev[0]))
        self._acks[key] = (counter, now_ms + MRP_STANDALONE_ACK_TIMEOUT_MS)
        return actions

    def take_ack(self, key: Hashable) -> int | None:
        """Piggyback: the pending ack counter for a message about to be sent on the exchange (now consumed)."""
        entry = self._acks.pop(key, None)
        return None if entry is None else entry[0]

    def has_pending_ack(self, key: Hashable) -> bool:
        return key in self._acks

    def forget(self, key: Hashable) -> None:
        self._out.pop(key, None)
        self._acks.pop(key, None)

    # ----- timers
    def next_deadline(self) -> int | None:
        dues = [o.due_ms for o in self._out.values()] + [d for _, d in self._acks.values()]
        return min(dues) if dues else None

    def poll(self, now_ms: int) -> list[Action]:
        actions: list[Action] = []
        for key, (ctr, due) in list(self._acks.items()):
            if due <= now_ms:
                del self._acks[key]
                actions.append(SendStandaloneAck(key, ctr))
        for key, o in list(self._out.items()):
            if o.due_ms > now_ms:
                continue
            if o.sends >= MRP_MAX_TRANSMISSIONS:
                del self._out[key]
                actions.append(GiveUp(key, o.counter))
                continue
            o.sends += 1
            o.due_ms = now_ms + backoff_ms(o.base_interval(now_ms), o.sends - 1, self._rng())
            actions.append(Retransmit(key, o.datagram, o.counter, o.sends))
        return actions
