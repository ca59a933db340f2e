"""UpdateCore: the protocol-neutral update service; implements `UpdateCoreInterface` plus the read/admin API.

Construction (production and tests alike)::

    from gateway.clock import ManualClock
    from gateway.config import parse_config
    from gateway.core.service import UpdateCore

    cfg = parse_config({"data_dir": str(tmp_path)})
    core = UpdateCore(cfg, store, ManualClock(), auto_sweep=False)   # store: gateway.store ImageStore (opened)
    await core.start()        # opens <data_dir>/state.db, loads records + rollouts + catalog, recovers
    ...                       # adapters call query/progress/...; tests call `await core.sweep()` after
    await core.stop()         #   `await clock.advance(s)` instead of sleeping

`store` needs only `await list()`, `await get(ref)` and `open_reader(entry)` (a test double will do).
`role="client"` is for the CLI sharing a running gateway's state.db: it reads, computes plans and writes only
rollout commands (compare-and-set), never device records; the gateway picks those up within
`CHANGE_POLL_S` through `PRAGMA data_version`.

How a decision is made (`_decide`, shared by `query` and the dry-run `plan`):
1. the device must have told its vendor/product ids and version (or installed package ids, reference 003);
2. a covering rollout (newest active/paused/halted one whose selector and image identity match) decides the
   image: offered only while the device's wave is open and the rollout active; otherwise
   policy auto-approval (or a pin) picks the best permitted image with `gateway.store.selection`;
3. policy constraints always apply (blocked / allowed / pinned versions, downgrade);
4. back-off after failures, then the download window (Busy until it opens: state waiting_for_window);
5. a transfer slot from the budgets (Busy when full; routers before sleepy end devices).
Every answer carries a reason a user can read; the same reasons appear in `plan()` and the history table.

Durability: every state transition is committed before the call returns (group commit, see records.py).
Transfer offsets are written at most every `policy.progress_persist_s`; after a crash the persisted offset can
only be behind the real one, so resuming from it is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from gateway.clock import Clock
from gateway.config import Config, PolicySelector
from gateway.core.events import CoreEvent, Counters, EventBus
from gateway.core.interface import (
    ApplyAction,
    ApplyDecision,
    Available,
    Busy,
    Continue,
    DeviceInfo,
    DeviceKey,
    ImageReader,
    NotAvailable,
    ProgressDecision,
    QueryResult,
    ReportedStatus,
    StatusReport,
    TransferInfo,
    UnknownToken,
    Wait,
)
from gateway.core.plan import PlanItem
from gateway.core.policy import BudgetTracker, EffectivePolicy, Policy, selector_matches, version_permitted
from gateway.core.records import DeviceRecord, HistoryEntry, StateDB
from gateway.core.rollouts import (
    COVERING,
    INSERT_EVENT,
    INSERT_ROLLOUT,
    SELECT_ROLLOUTS,
    Rollout,
    RolloutError,
    RolloutStatus,
    Step,
    evaluate,
    parse_waves,
    rollout_from_row,
    rollout_row,
    soak_remaining,
    wave_stats,
)
from gateway.core.states import (
    APPLY_STATES,
    PAUSABLE_STATES,
    TERMINAL_STATES,
    TOKEN_STATES,
    TRANSFER_STATES,
    TRANSITIONS,
    DeviceState,
    check_transition,
)
from gateway.store.approval import not_approved_reason, offerable
from gateway.store.errors import StoreError
from gateway.store.model import CatalogEntry, DeviceDescriptor
from gateway.store.selection import SelectionIndex, explain_selection, rejection

log = logging.getLogger(__name__)

S = DeviceState
CHANGE_POLL_S = 1.0  # how often state.db is checked for other processes' commits (CLI commands)
CATALOG_REFRESH_S = 30.0  # how often the catalog is re-read when nobody called catalog_changed()
HISTORY_KEEP_S = 90 * 86400  # transition history older than this is pruned
PROGRESS_EVENT_S = 1.0  # at most one progress event per device per second
_LIVE = frozenset(set(DeviceState) - TERMINAL_STATES)
_CONTINUE = Continue()  # immutable: one instance serves every progress() call


class ImageSource(Protocol):
    """What the core needs of gateway.store's ImageStore."""

    async def list(self) -> Sequence[CatalogEntry]: ...

    async def get(self, ref: str) -> CatalogEntry:
        """Raises gateway.store.errors.StoreError (ImageNotFoundError, AmbiguousRefError) when not one match."""
        ...

    def open_reader(self, entry: CatalogEntry) -> Any: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """What policy + rollouts + catalog say for one device now (no side effects)."""

    outcome: Literal["available", "not_available", "busy"]
    reason: str
    image: CatalogEntry | None = None
    retry_after_s: float = 0.0
    hold: DeviceState | None = None  # state a not-offered device rests in (update_available, ...)
    consent: bool = False
    rollout_id: str | None = None
    wave: int | None = None
    when: float | None = None  # for plan(): when the device would get it


class UpdateCore:
    """The update core (see module docstring)."""

    def __init__(
        self,
        config: Config,
        store: ImageSource,
        clock: Clock,
        *,
        role: Literal["gateway", "client"] = "gateway",
        auto_sweep: bool = True,
        token_factory: Callable[[], bytes] | None = None,
        event_queue_size: int = 1000,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.role = role
        self.auto_sweep = auto_sweep and role == "gateway"
        self._new_token = token_factory or (lambda: secrets.token_bytes(16))
        self.events = EventBus(event_queue_size)
        self.counters = Counters()
        self._policy = Policy(config.policy)
        self._budget = BudgetTracker(config.policy)
        self._db = StateDB(config.data_dir / "state.db")
        self._devices: dict[str, DeviceRecord] = {}
        self._live: set[str] = set()  # device ids not at rest (sweep looks only at these)
        self._by_token: dict[bytes, str] = {}
        self._rollouts: dict[str, Rollout] = {}
        self._entries: dict[str, CatalogEntry] = {}
        self._index = SelectionIndex.build(())
        self._readers: dict[str, Any] = {}
        self._persisted_at: dict[str, float] = {}
        self._dirty: set[str] = set()
        self._progress_event_at: dict[str, float] = {}
        self._data_version: int | None = None
        self._dv_checked_at = -math.inf
        self._catalog_at = -math.inf
        self._pruned_at = -math.inf
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False

    # ================================================================================== lifecycle
    async def start(self) -> None:
        await self._db.open()
        for rec in await self._db.load_devices():
            self._index_record(rec)
        await self._reload_rollouts()
        self._data_version = await self._db.data_version()
        self._dv_checked_at = self.clock.monotonic()
        await self._refresh_catalog()
        self._started = True
        if self.role == "gateway":
            await self.sweep()  # expire what went stale while we were down, open windows, advance rollouts
        if self.auto_sweep:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_loop())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self._started and self.role == "gateway":
            await self._flush_dirty()
        for reader in self._readers.values():
            with contextlib.suppress(Exception):
                reader.close()
        self._readers.clear()
        self.events.close()
        await self._db.close()
        self._started = False

    async def _sweep_loop(self) -> None:
        while True:
            await self.clock.sleep(self.config.policy.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:  # keep sweeping: one bad record must not stop every timer
                log.exception("core sweep failed")

    def reload_policy(self, config: Config) -> list[str]:
        """Swap in a new policy section (SIGHUP); returns budget scopes now over their limit (they drain)."""
        self.config = self.config.model_copy(update={"policy": config.policy})
        self._policy = Policy(config.policy)
        self._budget.cfg = config.policy
        over = self._budget.over_budget()
        self._publish(
            "policy", reason="policy reloaded" + (f"; over budget: {', '.join(over)}" if over else "")
        )
        return over

    async def catalog_changed(self) -> None:
        """Re-read the catalog now (call after an image was added or removed)."""
        await self._refresh_catalog()

    # ================================================================================== indexing
    def _index_record(self, rec: DeviceRecord) -> None:
        self._devices[rec.device_id] = rec
        if rec.state in _LIVE:
            self._live.add(rec.device_id)
        if _token_live(rec):
            assert rec.token is not None
            self._by_token[rec.token] = rec.device_id
        if rec.state in TRANSFER_STATES:
            self._budget.holders.setdefault(rec.device_id, _slot(rec))
            self._budget.by_protocol[rec.protocol] = self._budget.by_protocol.get(rec.protocol, 0) + 1
            self._budget.by_network[rec.network] = self._budget.by_network.get(rec.network, 0) + 1

    async def _refresh_catalog(self) -> None:
        entries = list(await self.store.list())
        self._entries = {e.image_id: e for e in entries}
        self._index = SelectionIndex.build(entries)
        self._catalog_at = self.clock.monotonic()

    async def _reload_rollouts(self) -> list[tuple[Rollout, RolloutStatus | None]]:
        """Re-read rollouts; returns (rollout, previous status) for every one whose status changed."""
        async with self._db.conn.execute(SELECT_ROLLOUTS) as cur:
            rows = await cur.fetchall()
        changed: list[tuple[Rollout, RolloutStatus | None]] = []
        fresh: dict[str, Rollout] = {}
        for row in rows:
            r = rollout_from_row(row)
            old = self._rollouts.get(r.rollout_id)
            if old is not None:  # keep the cohort index
                r.adopt_index(old)
            if old is None or old.status != r.status or old.current_wave != r.current_wave:
                changed.append((r, old.status if old else None))
            fresh[r.rollout_id] = r
        self._rollouts = fresh
        return changed

    async def _check_external_changes(self, force: bool = False) -> None:
        """Pick up commits of other processes (CLI rollout commands) within CHANGE_POLL_S."""
        mono = self.clock.monotonic()
        if not force and mono - self._dv_checked_at < CHANGE_POLL_S:
            return
        self._dv_checked_at = mono
        dv = await self._db.data_version()
        if dv == self._data_version:
            return
        self._data_version = dv
        for r, old in await self._reload_rollouts():
            self._publish(
                "rollout", rollout_id=r.rollout_id, new=r.status.value, reason="changed by another process"
            )
            if self.role == "gateway" and old != r.status:
                await self._sync_rollout_devices(
                    r, f"rollout {r.rollout_id} {r.status.value}: {r.status_reason}"
                )
                if old is None and r.status == RolloutStatus.ACTIVE:
                    await self._announce_wave(r)

    # ================================================================================== records
    def _record_for(self, device: DeviceInfo, now: float) -> tuple[DeviceRecord, bool]:
        """Create or refresh the record from what the adapter knows; True when it was created."""
        key = device.key
        rec = self._devices.get(key.device_id)
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
            self._index_record(rec)
        identity_before = (rec.vendor_id, rec.product_id, rec.model, rec.hardware_version, rec.tags)
        for name in ("vendor_id", "product_id", "vendor_name", "model", "hardware_version", "sleepy"):
            v = getattr(device, name)
            if v is not None:
                setattr(rec, name, v)
        if device.tags:
            rec.tags = tuple(device.tags)
        if device.extra:
            rec.extra = {**rec.extra, **device.extra}
        rec.last_seen = now
        rec.present = True
        if identity_before != (rec.vendor_id, rec.product_id, rec.model, rec.hardware_version, rec.tags):
            for r in self._rollouts.values():
                r.track(rec)
        return rec, created

    def _transition(
        self, rec: DeviceRecord, new: DeviceState, reason: str, hist: list[HistoryEntry], now: float
    ) -> None:
        """Move `rec` to `new` (checked), with bookkeeping, a history row and an event. Same state: no-op."""
        old = rec.state
        if new == old:
            return
        check_transition(rec.device_id, old, new, reason)
        if old in TRANSFER_STATES and new not in TRANSFER_STATES:
            self._budget.release(rec.device_id)
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
            backoff = self.config.policy.retry_backoff_s * 2 ** min(rec.failures - 1, 16)
            rec.next_retry_at = now + min(backoff, self.config.policy.callback_interval_s)
            if rec.rollout_id is not None:
                rec.rollout_failures += 1
            self.counters.updates_failed[proto] += 1
            if old in (S.QUERYING, S.DOWNLOADING, S.DOWNLOADED) or rec.resume_state in TRANSFER_STATES:
                self.counters.transfers_failed[proto] += 1
        elif new == S.UPDATED:
            rec.failures, rec.next_retry_at, rec.last_error = 0, None, None
            self.counters.updates_succeeded[proto] += 1
        if new in TERMINAL_STATES:
            self._live.discard(rec.device_id)
            rec.apply_at = rec.verify_deadline = None
        else:
            self._live.add(rec.device_id)
        if rec.token is not None and not _token_live(rec):
            self._by_token.pop(rec.token, None)
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
        self._publish(
            "state",
            device_id=rec.device_id,
            old=old.value,
            new=new.value,
            reason=reason,
            data={"image_id": rec.target_image_id, "version": rec.target_version},
        )

    async def _save(self, recs: Sequence[DeviceRecord], hist: list[HistoryEntry]) -> None:
        if self.role != "gateway":
            return
        now = self.clock.monotonic()
        for r in recs:
            self._persisted_at[r.device_id] = now
            self._dirty.discard(r.device_id)
        await self._db.write(recs, hist)

    async def _flush_dirty(self) -> None:
        if self._dirty:
            recs = [self._devices[d] for d in self._dirty if d in self._devices]
            await self._save(recs, [])

    def _publish(self, kind: str, **kw: Any) -> None:
        self.events.publish(CoreEvent(kind=kind, at=self.clock.now(), **kw))

    def _target(self, rec: DeviceRecord, entry: CatalogEntry | None) -> None:
        if entry is None:
            rec.target_image_id = rec.target_version = rec.target_version_string = rec.target_size = None
        else:
            rec.target_image_id, rec.target_version = entry.image_id, entry.numeric_version
            rec.target_version_string, rec.target_size = entry.version_string, entry.size

    def _descriptor(self, rec: DeviceRecord) -> DeviceDescriptor | None:
        if rec.vendor_id is None or rec.product_id is None or rec.current_version is None:
            return None
        return DeviceDescriptor(
            protocol=rec.protocol,  # type: ignore[arg-type]
            vendor_id=rec.vendor_id,
            product_id=rec.product_id,
            current_version=rec.current_version,
            hardware_version=rec.hardware_version,
            ieee=rec.address if rec.protocol == "zigbee" else None,
            model=rec.model,
        )

    # ================================================================================== decisions
    def _covering_rollout(self, rec: DeviceRecord) -> Rollout | None:
        best: Rollout | None = None
        for r in self._rollouts.values():
            if r.status in COVERING and r.covers(rec) and (best is None or r.created_at >= best.created_at):
                best = r
        return best

    def _assign(self, r: Rollout) -> dict[str, int]:
        if not r._built:
            r.build(self._devices.values())
        return r.assignments()

    def _decide(self, rec: DeviceRecord, now: float, installed: list[str] | None = None) -> Decision:
        pol = self.config.policy
        cb = pol.callback_interval_s
        if rec.vendor_id is None or rec.product_id is None:
            return Decision(
                "not_available", "device has not reported its vendor and product ids yet", when=None
            )
        desc = self._descriptor(rec)
        if desc is None:
            return Decision("not_available", "device has not reported its current version yet")
        eff = self._policy.effective(rec)
        r = self._covering_rollout(rec)
        rollout_id: str | None = None
        wave: int | None = None
        if r is not None:
            entry = self._entries.get(r.image_id)
            tag = f"rollout {r.rollout_id} ({r.name})"
            if entry is None:
                return Decision("not_available", f"{tag}: image {r.image_id} is no longer in the catalog")
            why = rejection(entry, desc, allow_downgrade=eff.allow_downgrade)
            if why is not None:
                return Decision("not_available", f"{tag}: image {entry.version_string} {why}")
            ok, why = version_permitted(eff, entry)
            if not ok:
                return Decision("not_available", f"{tag}: {why} ({eff.source()})")
            if not r._built:
                r.build(self._devices.values())
            wave = r.wave_of(rec)
            if wave is None:
                return Decision("not_available", f"{tag}: device is in none of its waves")
            if r.status != RolloutStatus.ACTIVE:
                return Decision(
                    "busy",
                    f"{tag} is {r.status.value}" + (f": {r.status_reason}" if r.status_reason else ""),
                    image=entry,
                    retry_after_s=pol.busy_retry_s,
                    hold=S.UPDATE_AVAILABLE,
                    rollout_id=r.rollout_id,
                    wave=wave,
                )
            if wave > r.current_wave:
                soak = soak_remaining(r, now)
                hint = (
                    f" (next wave in {soak:.0f} s)" if soak is not None and r.current_wave + 1 == wave else ""
                )
                return Decision(
                    "not_available",
                    f"{tag}: device is in wave {wave + 1}, wave {r.current_wave + 1} is open{hint}",
                    retry_after_s=min(cb, soak) if soak is not None and r.current_wave + 1 == wave else cb,
                    rollout_id=r.rollout_id,
                    wave=wave,
                )
            reason = f"{tag} wave {wave + 1}: {entry.version_string} ({entry.numeric_version})"
            rollout_id = r.rollout_id
        else:
            # Approval (gateway/store/approval.py): only approved entries are candidates; a pin is an approval.
            every = self._index.candidates(desc)
            cands = [
                e
                for e in every
                if eff.pin_version is not None
                or offerable(e, lambda sel: selector_matches(sel, rec), auto_approve=eff.auto_approve)
            ]
            if not cands:
                return Decision(
                    "not_available", not_approved_reason(every, desc, eff.auto_approve, eff.source())
                )
            permitted: list[CatalogEntry] = []
            refused: list[str] = []
            for e in cands:
                ok, why = version_permitted(eff, e)
                if ok:
                    permitted.append(e)
                elif rejection(e, desc, allow_downgrade=eff.allow_downgrade) is None:
                    refused.append(why)
            found, reason = explain_selection(permitted, desc, allow_downgrade=eff.allow_downgrade)
            if found is None:
                if refused:
                    reason = f"{reason}; policy held back {len(refused)}: {refused[0]} ({eff.source()})"
                return Decision("not_available", reason)
            entry = found
        if installed and entry.package_id in installed:
            return Decision("not_available", f"package {entry.package_id} is already installed")
        base = {"image": entry, "rollout_id": rollout_id, "wave": wave, "consent": eff.require_consent}
        if (
            rec.next_retry_at is not None
            and rec.next_retry_at > now
            and rec.target_image_id == entry.image_id
        ):
            return Decision(
                "busy",
                f"{reason}; retrying after {rec.failures} failed attempt(s) (last: {rec.last_error})",
                retry_after_s=rec.next_retry_at - now,
                hold=None,
                when=rec.next_retry_at,
                **base,  # type: ignore[arg-type]
            )
        win = self._policy.window(eff.download_window)
        if win is not None and not win.is_open(now):
            nxt = win.next_open(now)
            return Decision(
                "busy",
                f"{reason}; download window {win.text} closed, opens {win.describe_next(now)}",
                retry_after_s=nxt - now,
                hold=S.WAITING_FOR_WINDOW,
                when=nxt,
                **base,  # type: ignore[arg-type]
            )
        return Decision("available", reason, when=now, **base)  # type: ignore[arg-type]

    def _effective(self, rec: DeviceRecord) -> EffectivePolicy:
        return self._policy.effective(rec)

    # ================================================================================== interface
    async def observe(self, device: DeviceInfo) -> None:
        now = self.clock.now()
        rec, created = self._record_for(device, now)
        hist: list[HistoryEntry] = []
        if device.current_version is not None:
            self._on_version(
                rec, device.current_version, device.current_version_string, now, hist, via_query=False
            )
        if created:
            self._publish("device", device_id=rec.device_id, reason="first seen")
        await self._save([rec], hist)
        await self._after_terminal(rec, hist)

    async def device_left(self, key: DeviceKey) -> None:
        rec = self._devices.get(key.device_id)
        if rec is None:
            return
        now = self.clock.now()
        hist: list[HistoryEntry] = []
        rec.present = False
        if rec.state in PAUSABLE_STATES or rec.state == S.PAUSED:
            self._transition(rec, S.CANCELLED, "device left the network", hist, now)
        self._publish("device", device_id=rec.device_id, reason="left")
        await self._save([rec], hist)

    async def query(self, device: DeviceInfo, installed: list[str] | None = None) -> QueryResult:
        await self._check_external_changes()
        now = self.clock.now()
        rec, created = self._record_for(device, now)
        rec.last_query = now
        hist: list[HistoryEntry] = []
        if device.current_version is None and installed and rec.current_version is None:
            known = [
                self._entries[p.rsplit(":", 1)[-1]]
                for p in installed
                if p.rsplit(":", 1)[-1] in self._entries
            ]
            mine = [e for e in known if e.protocol == rec.protocol]
            if mine:
                best = max(mine, key=lambda e: e.numeric_version)
                rec.current_version, rec.current_version_string = best.numeric_version, best.version_string
        if device.current_version is not None:
            self._on_version(
                rec, device.current_version, device.current_version_string, now, hist, via_query=True
            )
        result = self._answer(rec, now, installed, hist)
        outcome = type(result).__name__
        self.counters.decisions[outcome] += 1
        self._publish("decision", device_id=rec.device_id, new=outcome, reason=result.reason)
        if created:
            self._publish("device", device_id=rec.device_id, reason="first seen")
        await self._save([rec], hist)
        await self._after_terminal(rec, hist)
        return result

    def _answer(
        self, rec: DeviceRecord, now: float, installed: list[str] | None, hist: list[HistoryEntry]
    ) -> QueryResult:
        pol = self.config.policy
        st = rec.state
        if st == S.PAUSED:
            return Busy(pol.busy_retry_s, f"paused: {rec.state_reason}")
        if st in APPLY_STATES or (st == S.WAITING_TO_APPLY and rec.apply_at is not None):
            until = rec.apply_at if rec.apply_at is not None and rec.apply_at > now else now
            return Busy(
                max(1, math.ceil(until - now) + pol.busy_retry_s),
                f"installing {rec.target_version_string} ({rec.target_version}); waiting for the device to report it",
            )
        d = self._decide(rec, now, installed)
        token_live = rec.token is not None and st in (
            S.QUERYING,
            S.DOWNLOADING,
            S.DOWNLOADED,
            S.WAITING_TO_APPLY,
        )
        if token_live:
            assert rec.token is not None
            if d.outcome == "available" and d.image is not None and d.image.image_id == rec.target_image_id:
                where = (
                    "already downloaded"
                    if st in (S.DOWNLOADED, S.WAITING_TO_APPLY)
                    else (f"resuming at offset {rec.acked_offset}")
                )
                return Available(
                    rec.token,
                    d.image,
                    0,
                    d.consent,
                    None,
                    f"{d.reason}; {where}",
                    resume_offset=rec.acked_offset,
                )
            if (
                d.outcome == "busy"
                and d.image is not None
                and d.image.image_id == rec.target_image_id
                and st in (S.QUERYING, S.DOWNLOADING)
                and self._budget.holds(rec.device_id)
            ):
                # a window closing or a back-off does not cut an offer already made: let it resume
                return Available(
                    rec.token,
                    d.image,
                    0,
                    d.consent,
                    None,
                    f"{d.reason}; transfer already under way",
                    resume_offset=rec.acked_offset,
                )
            self._transition(rec, S.CANCELLED, f"superseded: {d.reason}", hist, now)
        if d.outcome == "not_available":
            if rec.state in (S.UPDATE_AVAILABLE, S.NOTIFIED, S.WAITING_FOR_WINDOW):
                self._transition(rec, S.IDLE, d.reason, hist, now)
            return NotAvailable(int(d.retry_after_s or pol.callback_interval_s), d.reason)
        if d.outcome == "busy":
            if d.hold is not None and d.image is not None:
                self._target(rec, d.image)
                self._transition(rec, d.hold, d.reason, hist, now)
            return Busy(max(1, math.ceil(d.retry_after_s)), d.reason)
        assert d.image is not None
        ok, why = self._budget.acquire(rec.device_id, rec.protocol, rec.network, bool(rec.sleepy), now)
        if not ok:
            # routers retry sooner than sleepy end devices: part of their priority
            retry = pol.busy_retry_s * (2 if rec.sleepy else 1)
            reason = f"{d.reason}; {why}"
            self._target(rec, d.image)
            self._transition(rec, S.UPDATE_AVAILABLE, reason, hist, now)
            return Busy(retry, reason)
        # offer: a new token, counters reset for this transfer
        if rec.target_image_id != d.image.image_id:
            rec.attempts = 0
        if rec.rollout_id != d.rollout_id:
            rec.rollout_failures = 0
        if rec.token is not None:
            self._by_token.pop(rec.token, None)
        token = self._new_token()
        rec.token, rec.token_issued_at = token, now
        self._by_token[token] = rec.device_id
        self._target(rec, d.image)
        rec.attempts += 1
        rec.bytes_sent = 0
        rec.acked_offset = 0
        rec.last_progress_at = now
        rec.rollout_id, rec.rollout_wave = d.rollout_id, d.wave
        rec.apply_at = rec.verify_deadline = None
        self._transition(rec, S.QUERYING, d.reason, hist, now)
        return Available(token, d.image, 0, d.consent, None, d.reason)

    def _on_version(
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
                self._transition(rec, S.APPLYING, "device installed the image without waiting", hist, now)
                st = rec.state
            if st in APPLY_STATES:
                self._transition(
                    rec, S.UPDATED, f"device reports version {shown}: update verified", hist, now
                )
            elif st in (S.QUERYING, S.DOWNLOADING, S.PAUSED):
                self._transition(
                    rec, S.CANCELLED, f"device already runs the target version {shown}", hist, now
                )
            elif st in (S.UPDATE_AVAILABLE, S.NOTIFIED, S.WAITING_FOR_WINDOW):
                self._transition(rec, S.IDLE, f"device already runs the target version {shown}", hist, now)
            return
        if st == S.VERIFYING:
            self._transition(
                rec, S.FAILED, f"device claimed success but reports version {shown}, expected {t}", hist, now
            )
        elif st == S.APPLYING and via_query and (rec.apply_at is None or now >= rec.apply_at):
            self._transition(
                rec,
                S.FAILED,
                f"device came back asking for updates with version {shown} after being told to install {t}",
                hist,
                now,
            )

    def _rec_by_token(self, token: bytes) -> DeviceRecord:
        if type(token) is not bytes:  # bytearray / memoryview from a codec: hashable copy
            token = bytes(token)
        dev = self._by_token.get(token)
        rec = self._devices.get(dev) if dev is not None else None
        if rec is None or rec.token != token or not _token_live(rec):
            raise UnknownToken(f"token {token.hex()} is not a live transfer")
        return rec

    def open_image(self, token: bytes) -> ImageReader:
        rec = self._rec_by_token(token)
        entry = self._entries.get(rec.target_image_id or "")
        if entry is None:
            raise UnknownToken(
                f"token {bytes(token).hex()}: image {rec.target_image_id} is no longer in the catalog"
            )
        reader = self._readers.get(entry.sha256)
        if reader is None or getattr(reader, "closed", False):
            reader = self.store.open_reader(entry)
            self._readers[entry.sha256] = reader
        return _SharedView(reader)

    async def progress(self, token: bytes, offset: int, nbytes: int) -> ProgressDecision:
        if offset < 0 or nbytes < 0:
            raise ValueError(f"progress: offset {offset} and nbytes {nbytes} must be >= 0")
        rec = self._rec_by_token(token)
        now = self.clock.now()
        pol = self.config.policy
        if rec.state == S.PAUSED:
            return Wait(pol.busy_retry_s, f"paused: {rec.state_reason}")
        hist: list[HistoryEntry] = []
        if rec.state in (S.QUERYING, S.DOWNLOADING):
            ok, why = self._budget.acquire(rec.device_id, rec.protocol, rec.network, bool(rec.sleepy), now)
            if not ok:
                return Wait(pol.busy_retry_s * (2 if rec.sleepy else 1), why)
        size = rec.target_size or 0
        end = min(offset + nbytes, size) if size else offset + nbytes
        rec.bytes_sent += nbytes
        if offset <= rec.acked_offset < end:
            rec.acked_offset = end
        rec.last_progress_at = now
        self.counters.bytes_served[rec.protocol] += nbytes
        self.counters.blocks_served[rec.protocol] += 1
        if rec.state == S.QUERYING:
            self._transition(rec, S.DOWNLOADING, f"first block at offset {offset}", hist, now)
        if now - self._progress_event_at.get(rec.device_id, -math.inf) >= PROGRESS_EVENT_S:
            self._progress_event_at[rec.device_id] = now
            self._publish(
                "progress",
                device_id=rec.device_id,
                data={
                    "offset": rec.acked_offset,
                    "bytes_sent": rec.bytes_sent,
                    "percent": rec.percent,
                    "size": size,
                },
            )
        if hist or self.clock.monotonic() - self._persisted_at.get(rec.device_id, -math.inf) >= (
            pol.progress_persist_s
        ):
            await self._save([rec], hist)
        else:
            self._dirty.add(rec.device_id)
        return _CONTINUE

    async def download_complete(self, token: bytes) -> None:
        try:
            rec = self._rec_by_token(token)
        except UnknownToken:
            return
        now = self.clock.now()
        hist: list[HistoryEntry] = []
        st = rec.resume_state if rec.state == S.PAUSED else rec.state
        if st in (S.QUERYING, S.DOWNLOADING):
            if rec.target_size:
                rec.acked_offset = rec.target_size
            if rec.state == S.PAUSED:
                rec.resume_state = S.DOWNLOADED
            else:
                self._transition(rec, S.DOWNLOADED, f"all {rec.target_size} bytes downloaded", hist, now)
            rec.last_progress_at = now
            await self._save([rec], hist)

    async def download_failed(self, token: bytes, reason: str) -> None:
        try:
            rec = self._rec_by_token(token)
        except UnknownToken:
            return
        now = self.clock.now()
        hist: list[HistoryEntry] = []
        self._transition(rec, S.FAILED, f"download failed: {reason}", hist, now)
        await self._save([rec], hist)
        await self._after_terminal(rec, hist)

    async def apply_request(self, token: bytes, new_version: int) -> ApplyDecision:
        await self._check_external_changes()
        pol = self.config.policy
        try:
            rec = self._rec_by_token(token)
        except UnknownToken as exc:
            return ApplyDecision(ApplyAction.DISCONTINUE, pol.callback_interval_s, reason=str(exc))
        now = self.clock.now()
        hist: list[HistoryEntry] = []
        decision = self._apply_decision(rec, new_version, now, hist)
        await self._save([rec], hist)
        await self._after_terminal(rec, hist)
        return decision

    def _apply_decision(
        self, rec: DeviceRecord, new_version: int, now: float, hist: list[HistoryEntry]
    ) -> ApplyDecision:
        pol = self.config.policy
        if new_version != rec.target_version:
            why = f"device asks to apply version {new_version}, but was offered {rec.target_version}"
            self._transition(rec, S.FAILED, why, hist, now)
            return ApplyDecision(ApplyAction.DISCONTINUE, pol.busy_retry_s, reason=why)
        if rec.state == S.PAUSED:
            return ApplyDecision(
                ApplyAction.AWAIT_NEXT_ACTION, pol.busy_retry_s, reason=f"paused: {rec.state_reason}"
            )
        if rec.state in (S.QUERYING, S.DOWNLOADING):
            if rec.target_size:
                rec.acked_offset = rec.target_size
            self._transition(
                rec, S.DOWNLOADED, "device reports the download complete (apply request)", hist, now
            )
        if rec.state in APPLY_STATES:
            return ApplyDecision(ApplyAction.PROCEED, 0, now, reason="already told to install; proceed")
        entry = self._entries.get(rec.target_image_id or "")
        eff = self._policy.effective(rec)
        if entry is not None:
            ok, why = version_permitted(eff, entry)
            if not ok:
                self._transition(rec, S.CANCELLED, f"not installing: {why}", hist, now)
                return ApplyDecision(
                    ApplyAction.DISCONTINUE, pol.callback_interval_s, reason=f"{why} ({eff.source()})"
                )
        r = self._rollouts.get(rec.rollout_id or "")
        if r is not None and r.status in (RolloutStatus.PAUSED, RolloutStatus.HALTED):
            self._transition(
                rec, S.WAITING_TO_APPLY, f"rollout {r.rollout_id} is {r.status.value}", hist, now
            )
            rec.last_progress_at = (
                now  # the latest ask: sweep's "never asked again" deadline counts from here
            )
            return ApplyDecision(
                ApplyAction.AWAIT_NEXT_ACTION,
                pol.busy_retry_s,
                reason=f"rollout {r.rollout_id} is {r.status.value}",
            )
        if r is not None and r.status == RolloutStatus.ABORTED:
            self._transition(rec, S.CANCELLED, f"rollout {r.rollout_id} aborted", hist, now)
            return ApplyDecision(
                ApplyAction.DISCONTINUE, pol.callback_interval_s, reason=f"rollout {r.rollout_id} aborted"
            )
        win = self._policy.window(eff.apply_window)
        if win is not None and not win.is_open(now):
            at = win.next_open(now)
            delay = at - now
            if delay <= pol.max_apply_delay_s:
                rec.apply_at = at
                rec.verify_deadline = at + pol.verify_deadline_s
                why = f"install in window {win.text} at {win.describe_next(now)}"
                self._transition(rec, S.WAITING_TO_APPLY, why, hist, now)
                return ApplyDecision(ApplyAction.PROCEED, math.ceil(delay), at, reason=why)
            rec.apply_at = None
            why = f"apply window {win.text} opens {win.describe_next(now)}; ask again later"
            self._transition(rec, S.WAITING_TO_APPLY, why, hist, now)
            # a repeated "wait" is no transition (state_since stays at the first one): remember the latest ask,
            # sweep's "never asked again" deadline counts from it
            rec.last_progress_at = now
            return ApplyDecision(ApplyAction.AWAIT_NEXT_ACTION, pol.max_apply_delay_s, reason=why)
        rec.apply_at = now
        rec.verify_deadline = now + pol.verify_deadline_s
        why = f"install {rec.target_version_string} now" + (f" (window {win.text} open)" if win else "")
        self._transition(rec, S.APPLYING, why, hist, now)
        return ApplyDecision(ApplyAction.PROCEED, 0, now, reason=why)

    async def report_version(self, key: DeviceKey, version: int, version_string: str | None = None) -> None:
        now = self.clock.now()
        rec, _ = self._record_for(DeviceInfo(key), now)
        hist: list[HistoryEntry] = []
        self._on_version(rec, version, version_string, now, hist, via_query=False)
        await self._save([rec], hist)
        await self._after_terminal(rec, hist)

    async def status_report(self, key: DeviceKey, report: StatusReport) -> None:
        now = self.clock.now()
        rec, _ = self._record_for(DeviceInfo(key), now)
        rec.reported_status = report.status.value
        if report.percent is not None:
            rec.reported_percent = max(0, min(100, report.percent))
        hist: list[HistoryEntry] = []
        st = rec.state
        rs = ReportedStatus
        if (
            report.status == rs.NOTIFIED
            and st in (S.IDLE, S.UPDATE_AVAILABLE, S.WAITING_FOR_WINDOW)
            and rec.target_version
        ):
            self._transition(rec, S.NOTIFIED, "device reports it was notified", hist, now)
        elif report.status == rs.DOWNLOADING and st == S.QUERYING:
            self._transition(rec, S.DOWNLOADING, "device reports downloading", hist, now)
        elif report.status == rs.UPDATING and st in (S.DOWNLOADED, S.WAITING_TO_APPLY):
            self._transition(rec, S.APPLYING, "device reports installing", hist, now)
            rec.verify_deadline = rec.verify_deadline or now + self.config.policy.verify_deadline_s
        elif report.status == rs.SUCCESSFULLY_UPDATED:
            if st in (S.DOWNLOADED, S.WAITING_TO_APPLY):
                self._transition(rec, S.APPLYING, "device reports installing", hist, now)
                rec.verify_deadline = rec.verify_deadline or now + self.config.policy.verify_deadline_s
            if rec.state == S.APPLYING:
                self._transition(
                    rec,
                    S.VERIFYING,
                    "device reports success; waiting for it to report the version",
                    hist,
                    now,
                )
        elif report.status == rs.FAILED_TO_UPDATE:
            why = f"device reports failure: {report.error or 'no error text'}"
            if S.FAILED in TRANSITIONS[st]:
                self._transition(rec, S.FAILED, why, hist, now)
            else:  # nothing of ours in flight: keep the word, change no state
                rec.last_error = why
        if report.percent is not None:
            self._publish(
                "progress", device_id=rec.device_id, data={"percent": rec.reported_percent, "reported": True}
            )
        await self._save([rec], hist)
        await self._after_terminal(rec, hist)

    # ------------------------------------------------------------------------------ additive helpers
    def active_transfer(self, key: DeviceKey) -> TransferInfo | None:
        """(additive) The device's live transfer, to re-attach after a restart (Zigbee image blocks carry no token)."""
        rec = self._devices.get(key.device_id)
        if rec is None or rec.token is None or rec.state in TERMINAL_STATES:
            return None
        entry = self._entries.get(rec.target_image_id or "")
        if entry is None:
            return None
        return TransferInfo(rec.token, entry, rec.state.value, rec.acked_offset, rec.bytes_sent)

    async def mark_notified(self, key: DeviceKey, reason: str = "adapter notified the device") -> None:
        """(additive) An adapter sent Image Notify / AnnounceOTAProvider to a device with an update due."""
        rec = self._devices.get(key.device_id)
        if rec is None or rec.state not in (S.UPDATE_AVAILABLE, S.WAITING_FOR_WINDOW):
            return
        hist: list[HistoryEntry] = []
        self._transition(rec, S.NOTIFIED, reason, hist, self.clock.now())
        await self._save([rec], hist)

    def devices_to_notify(self) -> list[DeviceKey]:
        """(additive) Devices with an update due that have not been offered it (state update_available)."""
        return [self._devices[d].key for d in self._live if self._devices[d].state == S.UPDATE_AVAILABLE]

    async def _after_terminal(self, rec: DeviceRecord, hist: list[HistoryEntry]) -> None:
        """A device ended an episode inside a rollout: re-evaluate that rollout (auto-halt promptly)."""
        if (
            rec.rollout_id
            and rec.state in (S.FAILED, S.UPDATED, S.CANCELLED)
            and any(h.new_state == rec.state.value for h in hist)
        ):
            r = self._rollouts.get(rec.rollout_id)
            if r is not None and r.status == RolloutStatus.ACTIVE and self.role == "gateway":
                await self._advance_rollout(r, self.clock.now())

    # ================================================================================== sweep
    async def sweep(self) -> None:
        """Fire every timer that is due: stale transfers, apply times, verification deadlines, windows, rollouts."""
        await self._check_external_changes(force=True)
        if self.role != "gateway":
            return
        now = self.clock.now()
        pol = self.config.policy
        changed: list[DeviceRecord] = []
        hist: list[HistoryEntry] = []
        for dev in list(self._live):
            rec = self._devices[dev]
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
                    self._transition(
                        rec, S.FAILED, f"transfer expired: {what} for {now - since:.0f} s", hist, now
                    )
            elif st == S.WAITING_TO_APPLY:
                if rec.apply_at is not None and now >= rec.apply_at:
                    self._transition(rec, S.APPLYING, "apply time reached", hist, now)
                elif rec.apply_at is None and now - max(rec.state_since, rec.last_progress_at or 0.0) >= (
                    pol.max_apply_delay_s + pol.stale_transfer_s
                ):
                    self._transition(rec, S.FAILED, "device never asked again to apply", hist, now)
            elif st in APPLY_STATES:
                deadline = rec.verify_deadline or rec.state_since + pol.verify_deadline_s
                if now >= deadline:
                    self._transition(
                        rec,
                        S.FAILED,
                        f"not verified: device did not report version {rec.target_version_string} "
                        f"({rec.target_version}) within {pol.verify_deadline_s} s of the apply time",
                        hist,
                        now,
                    )
            elif st == S.WAITING_FOR_WINDOW:
                win = self._policy.window(self._policy.effective(rec).download_window)
                if win is None or win.is_open(now):
                    self._transition(rec, S.UPDATE_AVAILABLE, "download window open", hist, now)
            elif st == S.NOTIFIED and now - rec.state_since >= pol.stale_transfer_s:
                self._transition(
                    rec, S.UPDATE_AVAILABLE, "notified device did not ask; notify again", hist, now
                )
            if len(hist) > n:
                changed.append(rec)
        if changed:
            await self._save(changed, hist)
        for r in list(self._rollouts.values()):
            if r.status == RolloutStatus.ACTIVE:
                await self._advance_rollout(r, now)
        mono = self.clock.monotonic()
        if mono - self._catalog_at >= CATALOG_REFRESH_S:
            await self._refresh_catalog()
        await self._flush_dirty()
        self._close_idle_readers()
        if mono - self._pruned_at >= 86400:
            self._pruned_at = mono
            await self._db.prune_history(now - HISTORY_KEEP_S)

    def _close_idle_readers(self) -> None:
        in_use = {
            self._entries[r.target_image_id].sha256
            for d in self._live
            if (r := self._devices[d]).token is not None and r.target_image_id in self._entries
        }
        for sha in [s for s in self._readers if s not in in_use]:
            with contextlib.suppress(Exception):
                self._readers.pop(sha).close()

    # ================================================================================== rollouts
    async def _advance_rollout(self, r: Rollout, now: float) -> None:
        for _ in range(len(r.waves) + 2):  # a wave can complete and the next open in one sweep
            step = evaluate(r, self._devices, self._assign(r), now)
            if step is None:
                return
            if not await self._apply_step(r, step, now):
                return

    async def _apply_step(self, r: Rollout, step: Step, now: float) -> bool:
        """Compare-and-set the step into state.db; False when another process changed the rollout first."""
        status = step.status or r.status
        wave = r.current_wave if step.current_wave is None else step.current_wave
        opened = r.wave_opened_at if step.wave_opened_at is None else step.wave_opened_at
        completed = None if step.current_wave is not None else (step.wave_completed_at or r.wave_completed_at)
        n = await self._db.execute_cas(
            "UPDATE rollouts SET status=?, status_reason=?, current_wave=?, wave_opened_at=?, wave_completed_at=?,"
            " updated_at=? WHERE rollout_id=? AND status=? AND current_wave=?",
            (
                status.value,
                step.reason if step.status else r.status_reason,
                wave,
                opened,
                completed,
                now,
                r.rollout_id,
                r.status.value,
                r.current_wave,
            ),
            [(INSERT_EVENT, (r.rollout_id, now, step.event, wave, step.reason))],
        )
        if not n:
            await self._check_external_changes(force=True)
            return False
        old_status = r.status
        r.status = status
        if step.status:
            r.status_reason = step.reason
        r.current_wave, r.wave_opened_at, r.wave_completed_at, r.updated_at = wave, opened, completed, now
        self._publish(
            "rollout",
            rollout_id=r.rollout_id,
            old=old_status.value,
            new=status.value,
            reason=step.reason,
            data={"event": step.event, "wave": wave},
        )
        log.info("rollout %s: %s", r.rollout_id, step.reason)
        if status != old_status:
            await self._sync_rollout_devices(r, f"rollout {r.rollout_id} {status.value}: {step.reason}")
        if step.event == "wave_opened":
            await self._announce_wave(r)
        return True

    async def _announce_wave(self, r: Rollout) -> None:
        """Devices of a newly opened wave become update_available (adapters notify them)."""
        now = self.clock.now()
        entry = self._entries.get(r.image_id)
        if entry is None:
            return
        assign = self._assign(r)
        changed: list[DeviceRecord] = []
        hist: list[HistoryEntry] = []
        for dev, w in assign.items():
            rec = self._devices[dev]
            if w > r.current_wave or rec.state not in (S.IDLE, S.UPDATED, S.CANCELLED) or not rec.present:
                continue
            if self._covering_rollout(rec) is not r:
                continue
            desc = self._descriptor(rec)
            if desc is None or rejection(
                entry, desc, allow_downgrade=self._policy.effective(rec).allow_downgrade
            ):
                continue
            self._target(rec, entry)
            self._transition(rec, S.UPDATE_AVAILABLE, f"rollout {r.rollout_id} wave {w + 1} open", hist, now)
            changed.append(rec)
        if changed:
            await self._save(changed, hist)

    async def _sync_rollout_devices(self, r: Rollout, reason: str) -> None:
        """Apply a rollout status change to its devices: pause, resume or cancel their episodes."""
        if self.role != "gateway":
            return
        now = self.clock.now()
        changed: list[DeviceRecord] = []
        hist: list[HistoryEntry] = []
        for dev in list(self._live):
            rec = self._devices[dev]
            if rec.rollout_id != r.rollout_id:
                continue
            n = len(hist)
            if r.status in (RolloutStatus.PAUSED, RolloutStatus.HALTED) and rec.state in PAUSABLE_STATES:
                self._transition(rec, S.PAUSED, reason, hist, now)
            elif r.status in (RolloutStatus.ACTIVE, RolloutStatus.COMPLETED) and rec.state == S.PAUSED:
                back = rec.resume_state or S.UPDATE_AVAILABLE
                self._transition(rec, back, reason, hist, now)
                rec.last_progress_at = now  # the pause does not count against the stale-transfer timer
            elif r.status == RolloutStatus.ABORTED and (
                rec.state in PAUSABLE_STATES or rec.state == S.PAUSED
            ):
                self._transition(rec, S.CANCELLED, reason, hist, now)
            if len(hist) > n:
                changed.append(rec)
        if changed:
            await self._save(changed, hist)

    async def create_rollout(
        self,
        image: str,
        *,
        selector: PolicySelector | dict[str, Any] | None = None,
        waves: Sequence[str | int | float] = ("1", "10%", "50%", "100%"),
        soak_s: float = 3600.0,
        max_failures: int | None = 0,
        max_failure_rate: float | None = None,
        wave_deadline_s: float | None = 86400.0,
        name: str | None = None,
    ) -> Rollout:
        """Start a rollout of catalog image `image` (id or unique prefix); wave 1 opens at once."""
        try:
            sel = (
                selector
                if isinstance(selector, PolicySelector)
                else PolicySelector.model_validate(selector or {})
            )
        except Exception as exc:
            raise RolloutError(f"bad selector: {exc}") from None
        wave_specs = parse_waves(waves)
        if soak_s < 0:
            raise RolloutError("soak time must be >= 0")
        if max_failures is not None and max_failures < 0:
            raise RolloutError("max_failures must be >= 0")
        if max_failure_rate is not None and not 0 <= max_failure_rate <= 1:
            raise RolloutError("max_failure_rate must be between 0 and 1")
        entry = self._entries.get(image)
        if entry is None:
            try:
                entry = await self.store.get(image)
            except StoreError as exc:
                raise RolloutError(str(exc)) from None
        self._entries.setdefault(entry.image_id, entry)
        if sel.protocol is not None and sel.protocol != entry.protocol:
            raise RolloutError(f"selector protocol {sel.protocol} does not match the {entry.protocol} image")
        now = self.clock.now()
        r = Rollout(
            rollout_id=f"r{secrets.token_hex(4)}",
            name=name or f"{entry.name or entry.file_name} {entry.version_string}",
            image_id=entry.image_id,
            image_sha256=entry.sha256,
            protocol=entry.protocol,
            vendor_id=entry.vendor_id,
            product_id=entry.product_id,
            numeric_version=entry.numeric_version,
            version_string=entry.version_string,
            selector=sel,
            waves=wave_specs,
            soak_s=soak_s,
            max_failures=max_failures,
            max_failure_rate=max_failure_rate,
            wave_deadline_s=wave_deadline_s,
            status=RolloutStatus.ACTIVE,
            status_reason="created",
            current_wave=0,
            wave_opened_at=now,
            wave_completed_at=None,
            created_at=now,
            updated_at=now,
        )
        await self._db.write(
            sql=[
                (INSERT_ROLLOUT, rollout_row(r)),
                (INSERT_EVENT, (r.rollout_id, now, "created", 0, f"created; wave 1 ({r.waves[0]}) open")),
            ]
        )
        self._rollouts[r.rollout_id] = r
        self._publish(
            "rollout",
            rollout_id=r.rollout_id,
            new=r.status.value,
            reason="created",
            data={"event": "created", "wave": 0},
        )
        if self.role == "gateway":
            await self._announce_wave(r)
        return r

    async def _command(
        self, rollout_id: str, new: RolloutStatus, allowed: set[RolloutStatus], reason: str
    ) -> Rollout:
        await self._check_external_changes(force=True)
        r = self._rollouts.get(rollout_id)
        if r is None:
            raise RolloutError(f"no rollout {rollout_id!r}")
        if r.status == new:
            return r
        if r.status not in allowed:
            raise RolloutError(f"rollout {rollout_id} is {r.status.value}; cannot make it {new.value}")
        now = self.clock.now()
        reopen = new == RolloutStatus.ACTIVE and r.status == RolloutStatus.HALTED
        # resuming a halted rollout restarts its current wave's clock (the operator accepted the failures)
        n = await self._db.execute_cas(
            "UPDATE rollouts SET status=?, status_reason=?, updated_at=?"
            + (
                ", wave_opened_at=?, wave_completed_at=NULL, max_failures=NULL, max_failure_rate=NULL"
                if reopen
                else ""
            )
            + " WHERE rollout_id=? AND status=?",
            (new.value, reason, now, *((now,) if reopen else ()), rollout_id, r.status.value),
            [(INSERT_EVENT, (rollout_id, now, new.value, r.current_wave, reason))],
        )
        if not n:
            await self._check_external_changes(force=True)
            raise RolloutError(
                f"rollout {rollout_id} changed meanwhile; it is now {self._rollouts[rollout_id].status}"
            )
        old = r.status
        r.status, r.status_reason, r.updated_at = new, reason, now
        if reopen:
            r.wave_opened_at, r.wave_completed_at, r.max_failures, r.max_failure_rate = now, None, None, None
        self._publish(
            "rollout",
            rollout_id=rollout_id,
            old=old.value,
            new=new.value,
            reason=reason,
            data={"event": new.value, "wave": r.current_wave},
        )
        await self._sync_rollout_devices(r, f"rollout {rollout_id} {new.value}: {reason}")
        return r

    async def pause_rollout(self, rollout_id: str, reason: str = "paused by operator") -> Rollout:
        return await self._command(
            rollout_id, RolloutStatus.PAUSED, {RolloutStatus.ACTIVE, RolloutStatus.HALTED}, reason
        )

    async def resume_rollout(self, rollout_id: str, reason: str = "resumed by operator") -> Rollout:
        return await self._command(
            rollout_id, RolloutStatus.ACTIVE, {RolloutStatus.PAUSED, RolloutStatus.HALTED}, reason
        )

    async def abort_rollout(self, rollout_id: str, reason: str = "aborted by operator") -> Rollout:
        return await self._command(
            rollout_id,
            RolloutStatus.ABORTED,
            {RolloutStatus.ACTIVE, RolloutStatus.PAUSED, RolloutStatus.HALTED},
            reason,
        )

    def list_rollouts(self) -> list[Rollout]:
        return sorted(self._rollouts.values(), key=lambda r: (r.created_at, r.rollout_id))

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        return self._rollouts.get(rollout_id)

    def rollout_progress(self, rollout_id: str) -> list[dict[str, int]]:
        """Per-wave statistics (members, offered, updated, failed, in progress, done)."""
        r = self._rollouts.get(rollout_id)
        if r is None:
            raise RolloutError(f"no rollout {rollout_id!r}")
        assign = self._assign(r)
        return [wave_stats(r, self._devices, assign, w).to_dict() for w in range(len(r.waves))]

    async def rollout_events(self, rollout_id: str) -> list[dict[str, Any]]:
        async with self._db.conn.execute(
            "SELECT at, event, wave, reason FROM rollout_events WHERE rollout_id=? ORDER BY id", (rollout_id,)
        ) as cur:
            rows = await cur.fetchall()
        return [{"at": a, "event": e, "wave": w, "reason": why} for a, e, w, why in rows]

    # ================================================================================== read API
    def list_devices(self, filters: dict[str, Any] | None = None) -> list[DeviceRecord]:
        """Copies of device records; filters: protocol, state, network, rollout_id, image_id, present."""
        f = filters or {}
        out = []
        for rec in self._devices.values():
            if "protocol" in f and rec.protocol != f["protocol"]:
                continue
            if "state" in f and rec.state != f["state"]:
                continue
            if "network" in f and rec.network != f["network"]:
                continue
            if "rollout_id" in f and rec.rollout_id != f["rollout_id"]:
                continue
            if "image_id" in f and rec.target_image_id != f["image_id"]:
                continue
            if "present" in f and rec.present != bool(f["present"]):
                continue
            out.append(dataclasses.replace(rec))
        return sorted(out, key=lambda r: r.device_id)

    def get_device(self, device_id: str) -> DeviceRecord | None:
        rec = self._devices.get(device_id)
        return dataclasses.replace(rec) if rec is not None else None

    async def history(self, device_id: str, limit: int | None = None) -> list[HistoryEntry]:
        return await self._db.history(device_id, limit)

    def image_in_use(self, image_id: str) -> bool:
        """True while a transfer/apply uses the image or a covering rollout distributes it (delete is refused)."""
        return bool(self.image_users(image_id))

    def image_users(self, image_id: str) -> list[str]:
        users = [
            f"device {d} ({self._devices[d].state.value})"
            for d in self._live
            if self._devices[d].target_image_id == image_id and self._devices[d].token is not None
        ]
        users += [
            f"rollout {r.rollout_id} ({r.status.value})"
            for r in self._rollouts.values()
            if r.image_id == image_id and r.covering
        ]
        return users

    def metrics(self) -> dict[str, dict[str, int]]:
        """Counters plus live gauges (transfers_active per protocol)."""
        self.counters.transfers_active.clear()
        self.counters.transfers_active.update(self._budget.by_protocol)
        return self.counters.to_dict()

    def subscribe(self, queue_size: int | None = None) -> AsyncIterator[CoreEvent]:
        return self.events.subscribe(queue_size)

    def plan(self) -> list[PlanItem]:
        """Dry run: for every device what it would get, when, and why (not). Changes nothing."""
        now = self.clock.now()
        out: list[PlanItem] = []
        for rec in sorted(self._devices.values(), key=lambda r: r.device_id):
            if not rec.present:
                out.append(PlanItem.of(rec, "left", None, None, "device left the network"))
                continue
            if rec.state in _LIVE and rec.state not in (S.UPDATE_AVAILABLE, S.NOTIFIED, S.WAITING_FOR_WINDOW):
                out.append(
                    PlanItem.of(
                        rec,
                        "in_progress",
                        rec.target_image_id,
                        now,
                        f"{rec.state.value}: {rec.state_reason}",
                        rec.target_version_string,
                    )
                )
                continue
            d = self._decide(rec, now)
            if d.outcome == "available":
                assert d.image is not None
                ok = all(used < limit for _, limit, used in self._budget.limits(rec.protocol, rec.network))
                reason = d.reason if ok else f"{d.reason}; waits for a transfer slot (budget full)"
                out.append(
                    PlanItem.of(
                        rec, "update", d.image.image_id, now if ok else None, reason, d.image.version_string
                    )
                )
            elif d.outcome == "busy":
                out.append(
                    PlanItem.of(
                        rec,
                        "later",
                        d.image.image_id if d.image else None,
                        d.when,
                        d.reason,
                        d.image.version_string if d.image else None,
                    )
                )
            else:
                out.append(PlanItem.of(rec, "none", None, None, d.reason))
        return out

    # ================================================================================== checks
    def check_invariants(self) -> list[str]:
        """Internal consistency (used by property tests): an empty list when all is well."""
        bad: list[str] = []
        for dev, slot_rec in self._budget.holders.items():
            rec = self._devices.get(dev)
            if rec is None or rec.state not in TRANSFER_STATES:
                bad.append(f"{dev} holds a slot in state {rec.state if rec else None}")
            del slot_rec
        for token, dev in self._by_token.items():
            rec = self._devices[dev]
            if rec.token != token or not _token_live(rec):
                bad.append(f"token index stale for {dev}")
        for dev, rec in self._devices.items():
            if (rec.state in _LIVE) != (dev in self._live):
                bad.append(f"{dev} live-set mismatch in {rec.state}")
            if rec.state == S.PAUSED and rec.resume_state is None:
                bad.append(f"{dev} paused without a resume state")
            if rec.target_size and rec.acked_offset > rec.target_size:
                bad.append(f"{dev} acked {rec.acked_offset} > size {rec.target_size}")
        bad += [f"over budget: {s}" for s in self._budget.over_budget()]
        return bad


def _token_live(rec: DeviceRecord) -> bool:
    """The record's token names a transfer adapters may still use (also while paused)."""
    if rec.token is None:
        return False
    return rec.state in TOKEN_STATES or (rec.state == S.PAUSED and rec.resume_state in TOKEN_STATES)


def _slot(rec: DeviceRecord) -> Any:
    from gateway.core.policy import _Slot

    return _Slot(rec.protocol, rec.network, bool(rec.sleepy))


class _SharedView:
    """The adapter's handle on a shared image reader: reads only; closing is the core's business."""

    __slots__ = ("_reader", "size")

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self.size: int = reader.size

    def read(self, offset: int, length: int) -> bytes:
        data: bytes = self._reader.read(offset, length)
        return data
