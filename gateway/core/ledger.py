"""The transfer ledger: who may transfer now. Owns transfer tokens, budget slots and the shared image readers.

State owned here (and nowhere else):
- the token index (token -> device id) of every live transfer adapters may present;
- the concurrency budgets (`BudgetTracker`): which device holds a transfer slot in which scopes;
- the image readers shared by every transfer of one blob (closed when no live transfer uses them).

The records themselves (state, offsets) belong to `RecordBook`; the ledger reads them to decide whether a token is
live. Invariant (checked by `check`): in every scope the number of slot holders never exceeds the scope's limit,
except for the drain right after a policy reload lowered a limit (`BudgetTracker.over_budget` names those scopes).
Restoring the ledger from stored records (`restore`) grants slots only within the limits: a record that rests in
a transfer state without a slot (resumed from pause, or over a limit lowered while the gateway was down) must win
a slot again at its next block like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from gateway.config import PolicyConfig
from gateway.core.interface import UnknownToken
from gateway.core.policy import BudgetTracker
from gateway.core.records import DeviceRecord
from gateway.core.states import TOKEN_STATES, TRANSFER_STATES, DeviceState
from gateway.store.model import CatalogEntry


def token_live(rec: DeviceRecord) -> bool:
    """The record's token names a transfer adapters may still use (also while paused)."""
    if rec.token is None:
        return False
    return rec.state in TOKEN_STATES or (rec.state == DeviceState.PAUSED and rec.resume_state in TOKEN_STATES)


class TransferLedger:
    """Tokens, budget slots and shared readers (see module docstring)."""

    def __init__(self, policy: PolicyConfig, open_reader: Callable[[CatalogEntry], Any]) -> None:
        self.budget = BudgetTracker(policy)
        self.by_token: dict[bytes, str] = {}
        self._open_reader = open_reader
        self._readers: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ policy
    def set_policy(self, policy: PolicyConfig) -> list[str]:
        """New limits; returns the scopes now over their limit (their holders drain, nobody new gets in)."""
        self.budget.cfg = policy
        return self.budget.over_budget()

    # ---------------------------------------------------------------------------------------- restore
    def restore(self, records: Iterable[DeviceRecord]) -> None:
        """Index tokens and grant slots to stored transfers, within the limits (oldest progress first)."""
        in_transfer: list[DeviceRecord] = []
        for rec in records:
            self.track(rec)
            if rec.state in TRANSFER_STATES:
                in_transfer.append(rec)
        in_transfer.sort(key=lambda r: (r.last_progress_at or r.state_since, r.device_id))
        for rec in in_transfer:
            self.try_acquire(rec, rec.last_progress_at or rec.state_since)

    def track(self, rec: DeviceRecord) -> None:
        """Index the record's token when it is live (a new or reloaded record)."""
        if token_live(rec):
            assert rec.token is not None
            self.by_token[rec.token] = rec.device_id

    # ----------------------------------------------------------------------------------------- tokens
    def issue(self, rec: DeviceRecord, token: bytes, now: float) -> None:
        """Give the record a new token (a new offer); its previous token dies."""
        if rec.token is not None:
            self.by_token.pop(rec.token, None)
        rec.token, rec.token_issued_at = token, now
        self.by_token[token] = rec.device_id

    def forget_if_dead(self, rec: DeviceRecord) -> None:
        """After a transition: drop the token from the index once it no longer names a live transfer."""
        if rec.token is not None and not token_live(rec):
            self.by_token.pop(rec.token, None)

    def record_of(self, token: bytes, devices: Mapping[str, DeviceRecord]) -> DeviceRecord:
        """The record whose live transfer `token` names; UnknownToken otherwise."""
        if type(token) is not bytes:  # bytearray / memoryview from a codec: hashable copy
            token = bytes(token)
        dev = self.by_token.get(token)
        rec = devices.get(dev) if dev is not None else None
        if rec is None or rec.token != token or not token_live(rec):
            raise UnknownToken(f"token {token.hex()} is not a live transfer")
        return rec

    # ------------------------------------------------------------------------------------------ slots
    def try_acquire(self, rec: DeviceRecord, now: float) -> tuple[bool, str]:
        return self.budget.acquire(rec.device_id, rec.protocol, rec.network, bool(rec.sleepy), now)

    def release(self, device_id: str) -> None:
        self.budget.release(device_id)

    def holds(self, device_id: str) -> bool:
        return device_id in self.budget.holders

    def has_room(self, protocol: str, network: str) -> bool:
        return all(used < limit for _, limit, used in self.budget.limits(protocol, network))

    def active_by_protocol(self) -> dict[str, int]:
        return dict(self.budget.by_protocol)

    # ---------------------------------------------------------------------------------------- readers
    def reader(self, entry: CatalogEntry) -> Any:
        """The shared reader of the entry's blob (opened on first use; the store's errors propagate)."""
        reader = self._readers.get(entry.sha256)
        if reader is None or getattr(reader, "closed", False):
            reader = self._open_reader(entry)
            self._readers[entry.sha256] = reader
        return reader

    def drop_reader(self, sha256: str) -> None:
        with contextlib.suppress(Exception):
            reader = self._readers.pop(sha256, None)
            if reader is not None:
                reader.close()

    def close_readers_except(self, in_use: set[str]) -> None:
        for sha in [s for s in self._readers if s not in in_use]:
            self.drop_reader(sha)

    def close_all(self) -> None:
        self.close_readers_except(set())

    # ----------------------------------------------------------------------------------------- checks
    def check(self, devices: Mapping[str, DeviceRecord]) -> list[str]:
        """Ledger invariants against the records: an empty list when all is well."""
        bad: list[str] = []
        for dev in self.budget.holders:
            rec = devices.get(dev)
            if rec is None or rec.state not in TRANSFER_STATES:
                bad.append(f"{dev} holds a slot in state {rec.state if rec else None}")
        for token, dev in self.by_token.items():
            rec = devices[dev]
            if rec.token != token or not token_live(rec):
                bad.append(f"token index stale for {dev}")
        counted_protocol: dict[str, int] = {}
        counted_network: dict[str, int] = {}
        for slot in self.budget.holders.values():
            counted_protocol[slot.protocol] = counted_protocol.get(slot.protocol, 0) + 1
            counted_network[slot.network] = counted_network.get(slot.network, 0) + 1
        if {k: v for k, v in self.budget.by_protocol.items() if v} != counted_protocol:
            bad.append(f"protocol counts {self.budget.by_protocol} != holders {counted_protocol}")
        if {k: v for k, v in self.budget.by_network.items() if v} != counted_network:
            bad.append(f"network counts {self.budget.by_network} != holders {counted_network}")
        bad += [f"over budget: {s}" for s in self.budget.over_budget()]
        return bad
