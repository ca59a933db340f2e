"""Device records and their transitions: the one owner of every `DeviceRecord` and of the live set.

`RecordBook` creates and refreshes records from what adapters report, moves them between states (checked against
`states.TRANSITIONS`, with counters, a history row and an event per transition), interprets fresh version reports
(the only way an update counts as successful) and persists records through the repository (write-behind for
progress offsets, see `mark_dirty`). Budget slots and tokens are released through the ledger on the way out of a
transfer; the ledger never changes a record.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.clock import Clock
from gateway.config import PolicyConfig
from gateway.core.events import CoreEvent, Counters, EventBus
from gateway.core.interface import DeviceInfo, ReportedStatus, StatusReport
from gateway.core.ledger import TransferLedger
from gateway.core.records import DeviceRecord, HistoryEntry
from gateway.core.repository import RecordsRepository
from gateway.core.states import (
    APPLY_STATES,
    TERMINAL_STATES,
    TRANSFER_STATES,
    TRANSITIONS,
    DeviceState,
    check_transition,
)
from gateway.store.model import CatalogEntry

S = DeviceState
_DOWNLOAD_STATES = frozenset({S.NOTIFIED, S.QUERYING, S.DOWNLOADING})
LIVE_STATES = frozenset(set(DeviceState) - TERMINAL_STATES)
_IDENTITY_FIELDS = ("vendor_id", "product_id", "vendor_name", "model", "hardware_version", "sleepy")


class RecordBook:
    """Device records, the live set, transitions and their persistence (see module docstring)."""

    def __init__(
        self,
        repo: RecordsRepository,
        ledger: TransferLedger,
        events: EventBus,
        counters: Counters,
        clock: Clock,
        policy: PolicyConfig,
        *,
        persist: bool,
    ) -> None:
        self.repo = repo
        self.ledger = ledger
        self.events = events
        self.counters = counters
        self.clock = clock
        self.policy = policy
        self.persist = persist  # False for the CLI (role "client"): it never writes device records
        self.devices: dict[str, DeviceRecord] = {}
        self.live: set[str] = set()  # device ids not at rest (sweep looks only at these)
        self.on_identity_change: Callable[[DeviceRecord], None] = lambda rec: None
        # the per-device deadline to be heard again on the new version after an apply (policy rules may set
        # it per vendor); the service installs the effective-policy lookup
        self.deadline_for: Callable[[DeviceRecord], int] = lambda rec: self.policy.verify_deadline_s
        self._persisted_at: dict[str, float] = {}
        self._dirty: set[str] = set()

    # ------------------------------------------------------------------------------------------ loading
    def load(self, records: Iterable[DeviceRecord]) -> None:
        recs = list(records)
        for rec in recs:
            self._add(rec)
        self.ledger.restore(recs)

    def _add(self, rec: DeviceRecord) -> None:
        self.devices[rec.device_id] = rec
        if rec.state in LIVE_STATES:
            self.live.add(rec.device_id)

    def rename_network(self, protocol: str, old: str, new: str, now: float) -> list[DeviceRecord]:
        """In memory, what `RecordsRepository.rename_network` does on disk: records of network `old` move to
        `new` (device ids rewritten; one whose new id exists stays). Transfer tokens and budget slots follow."""
        moved: list[DeviceRecord] = []
        for rec in [r for r in self.devices.values() if r.protocol == protocol and r.network == old]:
            old_id = rec.device_id
            new_id = f"{protocol}:{new}:{old_id[len(protocol) + len(old) + 2 :]}"
            if new_id in self.devices:
                continue
            held = self.ledger.holds(old_id)
            if held:
                self.ledger.release(old_id)
            del self.devices[old_id]
            rec.device_id, rec.network = new_id, new
            self.devices[new_id] = rec
            for ids in (self.live, self._dirty):
                if old_id in ids:
                    ids.discard(old_id)
                    ids.add(new_id)
            if old_id in self._persisted_at:
                self._persisted_at[new_id] = self._persisted_at.pop(old_id)
            if rec.token is not None and self.ledger.by_token.get(rec.token) == old_id:
                self.ledger.by_token[rec.token] = new_id
            if held:
                self.ledger.budget.acquire(new_id, rec.protocol, new, bool(rec.sleepy), now)
            moved.append(rec)
        return moved

    def live_records(self) -> list[DeviceRecord]:
        return [self.devices[d] for d in self.live]

    # ------------------------------------------------------------------------------------------ records
    def record_for(self, device: DeviceInfo, now: float) -> tuple[DeviceRecord, bool]:
        """Create or refresh the record from what the adapter knows; True when it was created."""
        key = device.key
        rec = self.devices.get(key.device_id)
        created = rec is None
        if rec is None:
            rec = DeviceRecord(
                device_id=key.device_id,
                protocol=key.protocol,
                network=key.network,
                address=key.address,
                endpoint=key.endpoint,
                first_seen=now,
                last_seen=now,
                state_since=now,
                state_reason="first seen",
            )
            self._add(rec)
            self.ledger.track(rec)
        identity_before = (rec.vendor_id, rec.product_id, rec.model, rec.hardware_version, rec.tags)
        for name in _IDENTITY_FIELDS:
            v = getattr(device, name)
            if v is not None:
                setattr(rec, name, v)
        if device.power_source in ("mains", "battery"):
            rec.power_source = device.power_source
        if device.battery_percent is not None:
            rec.battery_percent = max(0, min(100, int(device.battery_percent)))
        if device.tags:
            rec.tags = tuple(device.tags)
        if device.extra:
            rec.extra = {**rec.extra, **device.extra}
        rec.last_seen = now
        rec.present = True
        if identity_before != (rec.vendor_id, rec.product_id, rec.model, rec.hardware_version, rec.tags):
            self.on_identity_change(rec)
        return rec, created

    @staticmethod
    def target(rec: DeviceRecord, entry: CatalogEntry | None) -> None:
        if entry is None:
            rec.target_image_id = rec.target_version = rec.target_version_string = rec.target_size = None
        else:
            rec.target_image_id, rec.target_version = entry.image_id, entry.numeric_version
            rec.target_version_string, rec.target_size = entry.version_string, entry.size

    def publish(self, kind: str, **kw: Any) -> None:
        self.events.publish(CoreEvent(kind=kind, at=self.clock.now(), **kw))

    # -------------------------------------------------------------------------------------- transitions
    def transition(
        self,
        rec: DeviceRecord,
        new: DeviceState,
        reason: str,
        hist: list[HistoryEntry],
        now: float,
        *,
        kind: str | None = None,
    ) -> None:
        """Move `rec` to `new` (checked), with bookkeeping, a history row and an event. Same state: no-op.

        `kind` names what ended a failed episode (records.FAILURE_KINDS); derived from the old state if None."""
        old = rec.state
        if new == old:
            return
        check_transition(rec.device_id, old, new, reason)
        if old in TRANSFER_STATES and new not in TRANSFER_STATES:
            self.ledger.release(rec.device_id)
        rec.state, rec.state_since, rec.state_reason = new, now, reason
        proto = rec.protocol
        if new == S.PAUSED:
            rec.resume_state = old
        elif old == S.PAUSED:
            rec.resume_state = None
        if new == S.QUERYING and old != S.PAUSED:
            self.counters.transfers_started[proto] += 1
        elif new == S.DOWNLOADED:
            self.counters.transfers_completed[proto] += 1
        elif new == S.FAILED:
            rec.failures += 1
            rec.last_error = reason
            rec.failure_kind = kind or _failure_kind(old, rec.resume_state)
            self._park_if_due(rec, reason, now)
            backoff = self.policy.retry_backoff_s * 2 ** min(rec.failures - 1, 16)
            rec.next_retry_at = now + min(backoff, self.policy.callback_interval_s)
            if rec.rollout_id is not None:
                rec.rollout_failures += 1
            self.counters.updates_failed[proto] += 1
            if old in (S.QUERYING, S.DOWNLOADING, S.DOWNLOADED) or rec.resume_state in TRANSFER_STATES:
                self.counters.transfers_failed[proto] += 1
        elif new == S.UPDATED:
            rec.failures, rec.next_retry_at, rec.last_error = 0, None, None
            rec.failure_kind = None
            self.counters.updates_succeeded[proto] += 1
        if new in TERMINAL_STATES:
            self.live.discard(rec.device_id)
            rec.apply_at = rec.verify_deadline = None
        else:
            self.live.add(rec.device_id)
        self.ledger.forget_if_dead(rec)
        hist.append(
            HistoryEntry(
                rec.device_id,
                now,
                old.value,
                new.value,
                reason,
                rec.target_image_id,
                rec.target_version,
                rec.acked_offset if rec.target_size else None,
            )
        )
        self.publish(
            "state",
            device_id=rec.device_id,
            old=old.value,
            new=new.value,
            reason=reason,
            # rollout_id: a dashboard showing wave counters must re-read them on every member's transition
            rollout_id=rec.rollout_id,
            data={"image_id": rec.target_image_id, "version": rec.target_version},
        )

    def _park_if_due(self, rec: DeviceRecord, reason: str, now: float) -> None:
        """Stop offering the failed image to this device: at once when the update did not take (it came back on
        its old version), or after `policy.max_attempts` failed episodes. Only a person (`otagw devices retry`)
        or a different image lifts it."""
        image = rec.target_image_id
        if image is None:
            return
        if rec.failure_kind == "old_version":
            why = f"the update to {rec.target_version_string} did not take ({reason})"
        elif rec.failures >= self.policy.max_attempts:
            why = f"{rec.failures} failed attempts (policy.max_attempts {self.policy.max_attempts}); last: {reason}"
        else:
            return
        rec.blocked_image_id, rec.blocked_reason, rec.blocked_at = image, why, now
        self.counters.devices_parked[rec.protocol] += 1
        self.publish(
            "attention",
            device_id=rec.device_id,
            reason=f"parked as failed: {why}; `otagw devices retry {rec.device_id}` offers it again",
            data={"image_id": image, "failure_kind": rec.failure_kind},
        )

    def on_version(
        self,
        rec: DeviceRecord,
        version: int,
        vstr: str | None,
        now: float,
        hist: list[HistoryEntry],
        *,
        via_query: bool,
    ) -> None:
        """A fresh version from the device: the only way an update counts as successful."""
        rec.current_version = version
        if vstr is not None:
            rec.current_version_string = vstr
        t = rec.target_version
        if t is None:
            return
        st = rec.state
        shown = f"{vstr or version} ({version})"
        if version == t:
            if st in (S.DOWNLOADED, S.WAITING_TO_APPLY):
                self.transition(rec, S.APPLYING, "device installed the image without waiting", hist, now)
                st = rec.state
            if st in APPLY_STATES:
                self.transition(rec, S.UPDATED, f"device reports version {shown}: update verified", hist, now)
            elif st in (S.QUERYING, S.DOWNLOADING, S.PAUSED):
                self.transition(
                    rec, S.CANCELLED, f"device already runs the target version {shown}", hist, now
                )
            elif st in (S.UPDATE_AVAILABLE, S.NOTIFIED, S.WAITING_FOR_WINDOW):
                self.transition(rec, S.IDLE, f"device already runs the target version {shown}", hist, now)
            return
        if st == S.VERIFYING:
            self.transition(
                rec,
                S.FAILED,
                f"device claimed success but reports version {shown}, expected {t}",
                hist,
                now,
                kind="old_version",
            )
        elif st == S.APPLYING and via_query and (rec.apply_at is None or now >= rec.apply_at):
            self.transition(
                rec,
                S.FAILED,
                f"device came back asking for updates with version {shown} after being told to install {t}",
                hist,
                now,
                kind="old_version",
            )

    def on_status(
        self, rec: DeviceRecord, report: StatusReport, now: float, hist: list[HistoryEntry]
    ) -> None:
        """What a device says about itself (reference 003 status, Matter NotifyUpdateApplied) moves its episode."""
        st = rec.state
        rs = ReportedStatus
        if (
            report.status == rs.NOTIFIED
            and st in (S.IDLE, S.UPDATE_AVAILABLE, S.WAITING_FOR_WINDOW)
            and rec.target_version
        ):
            self.transition(rec, S.NOTIFIED, "device reports it was notified", hist, now)
        elif report.status == rs.DOWNLOADING and st == S.QUERYING:
            self.transition(rec, S.DOWNLOADING, "device reports downloading", hist, now)
        elif report.status == rs.UPDATING and st in (S.DOWNLOADED, S.WAITING_TO_APPLY):
            self.transition(rec, S.APPLYING, "device reports installing", hist, now)
            rec.verify_deadline = rec.verify_deadline or now + self.deadline_for(rec)
        elif report.status == rs.SUCCESSFULLY_UPDATED:
            if st in (S.DOWNLOADED, S.WAITING_TO_APPLY):
                self.transition(rec, S.APPLYING, "device reports installing", hist, now)
                rec.verify_deadline = rec.verify_deadline or now + self.deadline_for(rec)
            if rec.state == S.APPLYING:
                self.transition(
                    rec,
                    S.VERIFYING,
                    "device reports success; waiting for it to report the version",
                    hist,
                    now,
                )
        elif report.status == rs.FAILED_TO_UPDATE:
            why = f"device reports failure: {report.error or 'no error text'}"
            if S.FAILED in TRANSITIONS[st]:
                self.transition(rec, S.FAILED, why, hist, now, kind="device_reported")
            else:  # nothing of ours in flight: keep the word, change no state
                rec.last_error = why

    def fire_timers(
        self, now: float, window_open: Callable[[DeviceRecord, float], bool]
    ) -> tuple[list[DeviceRecord], list[HistoryEntry]]:
        """Every due timer of the live records: stale transfers, apply times, verification deadlines, download
        windows opening, notified devices that never asked. Returns the changed records and their history."""
        pol = self.policy
        changed: list[DeviceRecord] = []
        hist: list[HistoryEntry] = []
        for rec in self.live_records():
            n = len(hist)
            st = rec.state
            if st in (S.QUERYING, S.DOWNLOADING, S.DOWNLOADED):
                since = rec.last_progress_at or rec.state_since
                if now - since >= pol.stale_transfer_s:
                    what = (
                        "no apply request"
                        if st == S.DOWNLOADED
                        else f"no block (acknowledged {rec.acked_offset}"
                    )
                    what += "" if st == S.DOWNLOADED else f" of {rec.target_size} bytes)"
                    self.transition(
                        rec, S.FAILED, f"transfer expired: {what} for {now - since:.0f} s", hist, now
                    )
            elif st == S.WAITING_TO_APPLY:
                if rec.apply_at is not None and now >= rec.apply_at:
                    self.transition(rec, S.APPLYING, "apply time reached", hist, now)
                elif rec.apply_at is None and now - max(rec.state_since, rec.last_progress_at or 0.0) >= (
                    pol.max_apply_delay_s + pol.stale_transfer_s
                ):
                    self.transition(rec, S.FAILED, "device never asked again to apply", hist, now)
            elif st in APPLY_STATES:
                allowed = self.deadline_for(rec)
                deadline = rec.verify_deadline or rec.state_since + allowed
                if now >= deadline:
                    kind, why = self._not_back(rec, deadline, allowed)
                    self.transition(rec, S.FAILED, why, hist, now, kind=kind)
                    if kind == "not_back":
                        self.counters.updates_not_back[rec.protocol] += 1
            elif st == S.WAITING_FOR_WINDOW:
                if window_open(rec, now):
                    self.transition(rec, S.UPDATE_AVAILABLE, "download window open", hist, now)
            elif st == S.NOTIFIED and now - rec.state_since >= pol.stale_transfer_s:
                self.transition(
                    rec, S.UPDATE_AVAILABLE, "notified device did not ask; notify again", hist, now
                )
            if len(hist) > n:
                changed.append(rec)
        return changed, hist

    @staticmethod
    def _not_back(rec: DeviceRecord, deadline: float, allowed: int) -> tuple[str, str]:
        """Why an applied update was not verified by its deadline: the device was never heard again (not back),
        was heard on its old version (the update did not take), or was heard but never said its version."""
        applied = rec.apply_at if rec.apply_at is not None else deadline - allowed
        at = datetime.fromtimestamp(deadline, UTC).isoformat(timespec="seconds")
        target = f"{rec.target_version_string} ({rec.target_version})"
        if rec.last_seen <= applied:
            return "not_back", (
                f"not back after update: not heard within {allowed} s of the apply time (deadline {at})"
            )
        if rec.current_version is not None and rec.current_version != rec.target_version:
            return "old_version", (
                f"came back on its old version {rec.current_version_string or rec.current_version} "
                f"({rec.current_version}), not {target}: the update did not take (deadline {at})"
            )
        return "not_verified", (
            f"not verified: heard again but did not report version {target} within {allowed} s of the apply "
            f"time (deadline {at})"
        )

    # -------------------------------------------------------------------------------------- persistence
    async def save(self, recs: Sequence[DeviceRecord], hist: list[HistoryEntry]) -> None:
        """Commit the records (and history rows) before the caller answers anyone."""
        if not self.persist:
            return
        mono = self.clock.monotonic()
        for r in recs:
            self._persisted_at[r.device_id] = mono
            self._dirty.discard(r.device_id)
        await self.repo.write(recs, hist)

    def persist_due(self, rec: DeviceRecord) -> bool:
        """A transfer offset is written at most every `progress_persist_s` (behind the real one is safe)."""
        last = self._persisted_at.get(rec.device_id, -math.inf)
        return self.clock.monotonic() - last >= self.policy.progress_persist_s

    def mark_dirty(self, rec: DeviceRecord) -> None:
        self._dirty.add(rec.device_id)

    async def flush_dirty(self) -> None:
        if self._dirty:
            await self.save([self.devices[d] for d in self._dirty if d in self.devices], [])


def _failure_kind(old: DeviceState, resume: DeviceState | None) -> str:
    """The failure kind a transition to failed from `old` means when the caller named none."""
    if old in _DOWNLOAD_STATES or (old == S.PAUSED and resume in _DOWNLOAD_STATES):
        return "download"
    if old in (S.DOWNLOADED, S.WAITING_TO_APPLY) or old == S.PAUSED:
        return "apply"
    return "not_verified"
