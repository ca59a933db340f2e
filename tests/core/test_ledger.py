"""The transfer ledger on its own: tokens, budget slots, restore after a restart, shared readers - and a stateful
property test that no interleaving of offers, blocks, pauses, resumes, endings and restarts ever lets a budget scope
hold more transfers than its limit (issue 11: "12 concurrent downloads under a per-network budget of 10")."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from gateway.clock import ManualClock
from gateway.config import PolicyConfig, parse_config
from gateway.core.events import Counters, EventBus
from gateway.core.interface import UnknownToken
from gateway.core.ledger import TransferLedger
from gateway.core.recordbook import RecordBook
from gateway.core.records import DeviceRecord, HistoryEntry
from gateway.core.states import PAUSABLE_STATES, TRANSFER_STATES, TRANSITIONS
from gateway.core.states import DeviceState as S
from tests.core.conftest import T0, MemReader, make_entry


def policy(**budgets: Any) -> PolicyConfig:
    return parse_config({"data_dir": "/nonexistent", "policy": {"budgets": budgets}}).policy


def record(i: int, network: str = "pan:1", *, sleepy: bool = False, state: S = S.IDLE) -> DeviceRecord:
    return DeviceRecord(
        device_id=f"zigbee:{network}:{i:016x}:1",
        protocol="zigbee",
        network=network,
        address=f"{i:016x}",
        endpoint=1,
        first_seen=T0,
        last_seen=T0,
        state=state,
        state_since=T0,
        sleepy=sleepy,
    )


class _NoRepo:
    """RecordBook with persist=False never writes; any call would be a bug."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"repository used: {name}")


def book_for(cfg: PolicyConfig, clock: ManualClock) -> RecordBook:
    ledger = TransferLedger(cfg, lambda e: MemReader(e.size))
    return RecordBook(_NoRepo(), ledger, EventBus(10), Counters(), clock, cfg, persist=False)  # type: ignore[arg-type]


def holders_by_scope(ledger: TransferLedger) -> dict[str, int]:
    out: dict[str, int] = {"global": len(ledger.budget.holders)}
    for slot in ledger.budget.holders.values():
        out[f"network {slot.network}"] = out.get(f"network {slot.network}", 0) + 1
        out[f"protocol {slot.protocol}"] = out.get(f"protocol {slot.protocol}", 0) + 1
    return out


# ------------------------------------------------------------------------------------------------ unit tests
def test_budget_full_then_released() -> None:
    ledger = TransferLedger(policy(**{"global": 10, "per_network_default": 2}), lambda e: None)
    a, b, c = (record(i) for i in range(3))
    assert ledger.try_acquire(a, T0)[0] and ledger.try_acquire(b, T0)[0]
    ok, why = ledger.try_acquire(c, T0)
    assert not ok and why == "network pan:1 transfer budget full (2/2 active)"
    assert ledger.try_acquire(a, T0) == (True, "already holds a transfer slot")  # idempotent for a holder
    ledger.release(a.device_id)
    ledger.release(a.device_id)  # twice: no double count
    assert ledger.try_acquire(c, T0)[0]
    assert holders_by_scope(ledger)["network pan:1"] == 2
    assert ledger.check({r.device_id: dataclasses.replace(r, state=S.DOWNLOADING) for r in (b, c)}) == []


def test_networks_are_budgeted_apart() -> None:
    ledger = TransferLedger(policy(**{"global": 10, "per_network_default": 1}), lambda e: None)
    assert ledger.try_acquire(record(1, "pan:1"), T0)[0]
    assert ledger.try_acquire(record(2, "pan:2"), T0)[0]
    assert not ledger.try_acquire(record(3, "pan:1"), T0)[0]


def test_sleepy_device_waits_behind_a_refused_router() -> None:
    cfg = policy(**{"global": 10, "per_network_default": 1})
    ledger = TransferLedger(cfg, lambda e: None)
    holder, router, sleepy = record(1), record(2), record(3, sleepy=True)
    assert ledger.try_acquire(holder, T0)[0]
    assert not ledger.try_acquire(router, T0)[0]  # refused: now first in line
    ledger.release(holder.device_id)
    ok, why = ledger.try_acquire(sleepy, T0 + 1)
    assert not ok and "waits for the network pan:1 budget first" in why
    assert ledger.try_acquire(router, T0 + 1)[0]


def test_restore_grants_slots_only_within_the_limits() -> None:
    """12 records stored mid-transfer (some resumed from a pause without a slot) under a per-network budget of 10:
    after the restart at most 10 hold a slot, the oldest transfers first; the others must win one again."""
    ledger = TransferLedger(policy(**{"global": 100, "per_network_default": 10}), lambda e: None)
    recs = [record(i, state=S.DOWNLOADING) for i in range(12)]
    for i, r in enumerate(recs):
        r.last_progress_at = T0 + i
    ledger.restore(reversed(recs))
    assert holders_by_scope(ledger)["network pan:1"] == 10
    assert set(ledger.budget.holders) == {r.device_id for r in recs[:10]}
    assert ledger.check({r.device_id: r for r in recs}) == []


def test_tokens_live_only_while_the_transfer_is() -> None:
    clock = ManualClock(T0)
    book = book_for(policy(), clock)
    rec = record(1)
    book.load([rec])
    book.ledger.issue(rec, b"t1", T0)
    hist: list[HistoryEntry] = []
    book.transition(rec, S.QUERYING, "offer", hist, T0)
    assert book.ledger.record_of(bytearray(b"t1"), book.devices) is rec  # codecs hand over bytearrays
    book.ledger.issue(rec, b"t2", T0)  # a new offer kills the old token
    with pytest.raises(UnknownToken):
        book.ledger.record_of(b"t1", book.devices)
    book.transition(rec, S.CANCELLED, "superseded", hist, T0)
    with pytest.raises(UnknownToken):
        book.ledger.record_of(b"t2", book.devices)
    assert book.ledger.check(book.devices) == []


def test_one_reader_per_blob_closed_when_idle() -> None:
    opened: list[MemReader] = []

    def open_reader(e: Any) -> MemReader:
        opened.append(MemReader(e.size))
        return opened[-1]

    ledger = TransferLedger(policy(), open_reader)
    e = make_entry()
    assert ledger.reader(e) is ledger.reader(e) and len(opened) == 1
    ledger.close_readers_except({e.sha256})
    assert not opened[0].closed
    ledger.close_readers_except(set())
    assert opened[0].closed
    assert ledger.reader(e) is opened[1]  # reopened on demand


# ------------------------------------------------------------------------------------- property: interleavings
# few devices and tight limits, so short random interleavings reach the limits (with the pre-fix restore, which gave
# every stored transfer a slot, hypothesis finds offer/pause/offer-another/resume/restart -> 2 on a budget of 1)
DEVICES = 5
NETWORKS = ("pan:1", "pan:2")
LIMITS = {"global": 3, "per_network_default": 1}


class LedgerMachine(RuleBasedStateMachine):
    """Drives RecordBook + TransferLedger the way the core does (offer on query, a slot per block, pause and resume
    from rollouts, episodes ending, restarts from the stored records) and checks the budget after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = policy(**LIMITS)
        self.clock = ManualClock(T0)
        self.now = T0
        self.book = book_for(self.cfg, self.clock)
        self.book.load([record(i, NETWORKS[i % 2], sleepy=i % 3 == 0) for i in range(DEVICES)])
        self.ids = sorted(self.book.devices)
        self.tokens = 0

    def rec(self, i: int) -> DeviceRecord:
        return self.book.devices[self.ids[i % DEVICES]]

    def move(self, rec: DeviceRecord, new: S) -> bool:
        if new not in TRANSITIONS[rec.state]:
            return False
        self.book.transition(rec, new, "test", [], self.now)
        return True

    @rule(i=st.integers(0, DEVICES - 1))
    def offer(self, i: int) -> None:
        """query -> Available: a slot, then a new token and state querying (as UpdateCore._answer)."""
        rec = self.rec(i)
        if rec.state not in (S.IDLE, S.UPDATED, S.FAILED, S.CANCELLED, S.UPDATE_AVAILABLE, S.NOTIFIED):
            return
        ok, _ = self.book.ledger.try_acquire(rec, self.now)
        if not ok:
            self.move(rec, S.UPDATE_AVAILABLE)
            return
        self.tokens += 1
        self.book.ledger.issue(rec, self.tokens.to_bytes(16, "big"), self.now)
        assert self.move(rec, S.QUERYING)

    @rule(i=st.integers(0, DEVICES - 1))
    def block(self, i: int) -> None:
        """progress(): a block is served only to a slot holder (as UpdateCore.progress)."""
        rec = self.rec(i)
        if rec.token is None or rec.state not in TRANSFER_STATES:
            return
        ok, _ = self.book.ledger.try_acquire(rec, self.now)
        if ok:
            assert self.book.ledger.holds(rec.device_id)
            self.move(rec, S.DOWNLOADING)

    @rule(i=st.integers(0, DEVICES - 1))
    def pause(self, i: int) -> None:
        rec = self.rec(i)
        if rec.state in PAUSABLE_STATES:
            self.move(rec, S.PAUSED)

    @rule(i=st.integers(0, DEVICES - 1))
    def resume(self, i: int) -> None:
        rec = self.rec(i)
        if rec.state == S.PAUSED:
            self.move(rec, rec.resume_state or S.UPDATE_AVAILABLE)

    @rule(i=st.integers(0, DEVICES - 1), end=st.sampled_from([S.FAILED, S.CANCELLED, S.DOWNLOADED]))
    def end(self, i: int, end: S) -> None:
        self.move(self.rec(i), end)

    @rule(seconds=st.integers(1, 600))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds

    @rule()
    def restart(self) -> None:
        """The gateway restarts: a new ledger and book from the stored records (copies, as from the database)."""
        stored = [dataclasses.replace(r) for r in self.book.devices.values()]
        self.book = book_for(self.cfg, self.clock)
        self.book.load(stored)

    @invariant()
    def budgets_never_exceeded(self) -> None:
        used = holders_by_scope(self.book.ledger)
        assert used["global"] <= LIMITS["global"], used
        for net in NETWORKS:
            assert used.get(f"network {net}", 0) <= LIMITS["per_network_default"], used
        assert self.book.ledger.check(self.book.devices) == []


TestLedgerInterleavings = LedgerMachine.TestCase
TestLedgerInterleavings.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
