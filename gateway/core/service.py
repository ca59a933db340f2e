"""UpdateCore: the protocol-neutral update service - a thin façade over the core's parts.

It implements `UpdateCoreInterface` (what adapters call) plus the read/admin API (what the HTTP API and the CLI
call), and owns only the lifecycle: start/stop, the sweep timer, change polling of other processes' commits and
the catalog view. Each piece of state has one owner:

- `recordbook.RecordBook`: device records, the live set, transitions, persistence of records;
- `ledger.TransferLedger`: transfer tokens, budget slots, shared image readers;
- `rollout_engine.RolloutEngine`: rollouts, their waves, soak, auto-halt and operator commands;
- `repository.RecordsRepository`: the only place with SQL (state.db);
- `decide.decide`: the pure decision (no state at all), shared by `query` and the dry-run `plan`.

Construction (production and tests alike)::

    from gateway.clock import ManualClock
    from gateway.config import parse_config
    from gateway.core.service import UpdateCore

    cfg = parse_config({"data_dir": str(tmp_path)})
    core = UpdateCore(cfg, store, ManualClock(), auto_sweep=False)   # store: gateway.store ImageStore (opened)
    await core.start()        # opens <data_dir>/state.db, loads records + rollouts + catalog, recovers
    ...                       # adapters call query/progress/...; tests call `await core.sweep()` after
    await core.stop()         #   `await clock.advance(s)` instead of sleeping

`store` needs `await list()`, `await get(ref)`, `open_reader(entry)` and `await mark_invalid(image_id, reason)`.
`role="client"` is for the CLI sharing a running gateway's state.db: it reads, computes plans and writes only
rollout commands (compare-and-set), never device records; the gateway picks those up within
`CHANGE_POLL_S` through `PRAGMA data_version`.

Acting on a decision (`_answer`): a transfer slot from the ledger's budgets (Busy when full; routers before sleepy
end devices), then a new token. Every answer carries a reason a user can read; the same reasons appear in `plan()`
and the history table.

A blob found corrupt when a transfer opens it (`open_image`) marks every catalog entry of that blob invalid at once
(in memory, then in the catalog), ends every pending or running offer of it (releasing their slots), counts it
(`images_invalidated`), publishes an "image" event and logs one line; the devices are offered the next good image
at their next query.

Durability: every state transition is committed before the call returns (group commit, see repository.py), except
the offers ended by a corrupt blob inside the synchronous `open_image`: those are committed by a background task
that `sweep` and `stop` wait for. Transfer offsets are written at most every `policy.progress_persist_s`; after a
crash the persisted offset can only be behind the real one, so resuming from it is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, Literal, Protocol

from gateway.clock import Clock
from gateway.config import Config, PolicySelector
from gateway.core.decide import CatalogView, Decision, decide, descriptor
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
from gateway.core.ledger import TransferLedger
from gateway.core.plan import PlanItem
from gateway.core.policy import EffectivePolicy, Policy, version_permitted
from gateway.core.recordbook import LIVE_STATES, RecordBook
from gateway.core.records import DeviceRecord, HistoryEntry
from gateway.core.repository import SQLiteRecordsRepository, make_repository
from gateway.core.rollout_engine import RolloutEngine, check_params, selector_of
from gateway.core.rollouts import Rollout, RolloutError, RolloutStatus
from gateway.core.states import (
    APPLY_STATES,
    PAUSABLE_STATES,
    TERMINAL_STATES,
    DeviceState,
)
from gateway.store.errors import CatalogMismatchError, CorruptBlobError, StoreError
from gateway.store.model import CatalogEntry
from gateway.store.selection import SelectionIndex, rejection

__all__ = ["CHANGE_POLL_S", "Decision", "ImageSource", "UpdateCore"]

log = logging.getLogger(__name__)

S = DeviceState
CHANGE_POLL_S = 1.0  # how often state.db is checked for other processes' commits (CLI commands)
CATALOG_REFRESH_S = 30.0  # how often the catalog is re-read when nobody called catalog_changed()
HISTORY_KEEP_S = 90 * 86400  # transition history older than this is pruned
PROGRESS_EVENT_S = 1.0  # at most one progress event per device per second
_CONTINUE = Continue()  # immutable: one instance serves every progress() call
# an offer of an image whose blob turned out corrupt ends: waiting devices go back to rest, transfers are cancelled
_OFFER_WAITING = frozenset({S.UPDATE_AVAILABLE, S.NOTIFIED, S.WAITING_FOR_WINDOW})
_OFFER_RUNNING = frozenset({S.QUERYING, S.DOWNLOADING, S.PAUSED})

class ImageSource(Protocol):
    """What the core needs of gateway.store's ImageStore."""

    async def list(self) -> Sequence[CatalogEntry]: ...

    async def get(self, ref: str) -> CatalogEntry:
        """Raises gateway.store.errors.StoreError (ImageNotFoundError, AmbiguousRefError) when not one match."""
        ...

    def open_reader(self, entry: CatalogEntry) -> Any:
        """Raises gateway.store.errors.CorruptBlobError when the blob no longer matches its digest or its payload
        fails the pre-flight check (CatalogMismatchError: the file is sound but disagrees with `entry`)."""
        ...

    async def mark_invalid(self, image_id: str, reason: str) -> None:
        """Persist that the entry must never be offered again (its blob is corrupt)."""
        ...

    async def catalog_version(self) -> int:
        """A number that changes when another process changed the catalog (an image added or approved)."""
        ...


class UpdateCore:
    """The update core façade (see module docstring)."""

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
        self._repo = make_repository(config)
        self._ledger = TransferLedger(config.policy, store.open_reader)
        self._book = RecordBook(
            self._repo,
            self._ledger,
            self.events,
            self.counters,
            clock,
            config.policy,
            persist=role == "gateway",
        )
        self._engine = RolloutEngine(
            self._repo,
            self._book,
            lambda: self._catalog.entries,
            lambda: self._policy,
            acts_on_devices=role == "gateway",
        )
        self._book.on_identity_change = self._engine.track
        self._book.deadline_for = self._deadline_for
        self._engine.on_conflict = lambda: self._check_external_changes(force=True)
        self._catalog = CatalogView({}, SelectionIndex.build(()))
        self._corrupt: dict[
            str, str
        ] = {}  # image id -> why, kept across catalog re-reads until it is removed
        self._background: set[asyncio.Task[None]] = set()
        self._progress_event_at: dict[str, float] = {}
        self._data_version: int | None = None
        self._catalog_version: int | None = None
        self._dv_checked_at = -math.inf
        self._catalog_at = -math.inf
        self._pruned_at = -math.inf
        self._sweeper: asyncio.Task[None] | None = None
        self._started = False

    # ------------------------------------------------------------------------ views kept for tests/benches
    @property
    def _devices(self) -> dict[str, DeviceRecord]:
        return self._book.devices

    @property
    def _db(self) -> SQLiteRecordsRepository:
        if not isinstance(self._repo, SQLiteRecordsRepository):
            raise TypeError("_db is the SQLite repository; this core runs on another backend")
        return self._repo

    @property
    def _entries(self) -> dict[str, CatalogEntry]:
        return dict(self._catalog.entries)

    def _assign(self, r: Rollout) -> dict[str, int]:
        return self._engine.assign(r)

    # ================================================================================== lifecycle
    async def start(self) -> None:
        await self._repo.open()
        self._book.load(await self._repo.load_devices())
        await self._engine.reload()
        self._data_version = await self._repo.data_version()
        self._dv_checked_at = self.clock.monotonic()
        self._catalog_version = await self.store.catalog_version()
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
        await self._settle_background()
        if self._started and self.role == "gateway":
            await self._book.flush_dirty()
        self._ledger.close_all()
        self.events.close()
        await self._repo.close()
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
        self._book.policy = config.policy
        over = self._ledger.set_policy(config.policy)
        self._book.publish(
            "policy", reason="policy reloaded" + (f"; over budget: {', '.join(over)}" if over else "")
        )
        return over

    async def catalog_changed(self) -> None:
        """Re-read the catalog now (call after an image was added or removed)."""
        await self._refresh_catalog()

    async def _refresh_catalog(self) -> None:
        entries = list(await self.store.list())
        present = {e.image_id for e in entries}
        for gone in [i for i in self._corrupt if i not in present]:
            del self._corrupt[gone]  # removed from the catalog: nothing left to distrust
        entries = [
            dataclasses.replace(e, valid=False) if e.image_id in self._corrupt and e.valid else e
            for e in entries
        ]
        self._set_catalog(entries)
        self._catalog_at = self.clock.monotonic()

    def _set_catalog(self, entries: Sequence[CatalogEntry]) -> None:
        self._catalog = CatalogView({e.image_id: e for e in entries}, SelectionIndex.build(entries))

    async def _check_external_changes(self, force: bool = False) -> None:
        """Pick up commits of other processes (CLI rollout commands) within CHANGE_POLL_S."""
        mono = self.clock.monotonic()
        if not force and mono - self._dv_checked_at < CHANGE_POLL_S:
            return
        self._dv_checked_at = mono
        # images added or approved by another process (`otagw image add/approve`) count within CHANGE_POLL_S,
        # not at the next CATALOG_REFRESH_S
        cv = await self.store.catalog_version()
        if cv != self._catalog_version:
            self._catalog_version = cv
            await self._refresh_catalog()
        dv = await self._repo.data_version()
        if dv == self._data_version:
            return
        self._data_version = dv
        for r, old in await self._engine.reload():
            await self._engine.external_change(r, old)
        await self._merge_external_overrides()
        if self.role == "gateway":
            await self._pick_up_lifted_blocks()

    async def _merge_external_overrides(self) -> None:
        """Owner overrides another process wrote (`otagw devices rename` etc.) replace the in-memory ones."""
        for device_id, values in (await self._repo.load_overrides()).items():
            rec = self._book.devices.get(device_id)
            if rec is None or all(getattr(rec, k) == v for k, v in values.items()):
                continue
            for k, v in values.items():
                setattr(rec, k, v)
            self._book.publish("device", device_id=device_id, reason="owner overrides changed", data=values)

    async def _pick_up_lifted_blocks(self) -> None:
        """`otagw devices retry` in another process cleared a device's block in state.db: apply it here too
        (before this process writes the record again)."""
        parked = [r for r in self._book.devices.values() if r.blocked_image_id is not None]
        if not parked:
            return
        still = await self._repo.parked_devices()
        for rec in parked:
            if rec.device_id not in still:
                rec.blocked_image_id = rec.blocked_reason = rec.blocked_at = None
                rec.failures, rec.next_retry_at = 0, None
                self._book.publish("device", device_id=rec.device_id, reason="retry allowed (another process)")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settle_background(self) -> None:
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    # ================================================================================== decisions
    def _effective(self, rec: DeviceRecord) -> EffectivePolicy:
        return self._policy.effective(rec)

    def _deadline_for(self, rec: DeviceRecord) -> int:
        """Seconds a device has after an apply to be heard again on the new version (rules: per vendor)."""
        eff = self._policy.effective(rec).verify_deadline_s
        return eff if eff is not None else self.config.policy.verify_deadline_s

    def _decide(self, rec: DeviceRecord, now: float, installed: list[str] | None = None) -> Decision:
        eff = self._policy.effective(rec)
        return decide(
            rec,
            self._catalog,
            eff,
            self._engine.cover(rec, now),
            now,
            policy=self.config.policy,
            download_window=self._policy.window(eff.download_window),
            installed=installed,
        )

    # ================================================================================== interface
    async def observe(self, device: DeviceInfo) -> None:
        now = self.clock.now()
        rec, created = self._book.record_for(device, now)
        hist: list[HistoryEntry] = []
        if device.current_version is not None:
            self._book.on_version(
                rec, device.current_version, device.current_version_string, now, hist, via_query=False
            )
        if created:
            self._book.publish("device", device_id=rec.device_id, reason="first seen")
        await self._book.save([rec], hist)
        await self._engine.after_terminal(rec, hist, now)

    async def device_left(self, key: DeviceKey) -> None:
        rec = self._book.devices.get(key.device_id)
        if rec is None:
            return
        now = self.clock.now()
        hist: list[HistoryEntry] = []
        rec.present = False
        if rec.state in PAUSABLE_STATES or rec.state == S.PAUSED:
            self._book.transition(rec, S.CANCELLED, "device left the network", hist, now)
        self._book.publish("device", device_id=rec.device_id, reason="left")
        await self._book.save([rec], hist)

    async def query(self, device: DeviceInfo, installed: list[str] | None = None) -> QueryResult:
        await self._check_external_changes()
        now = self.clock.now()
        rec, created = self._book.record_for(device, now)
        rec.last_query = now
        hist: list[HistoryEntry] = []
        if device.current_version is None and installed and rec.current_version is None:
            entries = self._catalog.entries
            known = [entries[i] for p in installed if (i := p.rsplit(":", 1)[-1]) in entries]
            mine = [e for e in known if e.protocol == rec.protocol]
            if mine:
                best = max(mine, key=lambda e: e.numeric_version)
                rec.current_version, rec.current_version_string = best.numeric_version, best.version_string
        if device.current_version is not None:
            self._book.on_version(
                rec, device.current_version, device.current_version_string, now, hist, via_query=True
            )
        result = self._answer(rec, now, installed, hist)
        outcome = type(result).__name__
        # the last answer and its reason stay on the record: an idle device says why it got nothing
        rec.last_answer, rec.last_answer_reason = outcome, result.reason
        self.counters.decisions[outcome] += 1
        self._book.publish("decision", device_id=rec.device_id, new=outcome, reason=result.reason)
        if created:
            self._book.publish("device", device_id=rec.device_id, reason="first seen")
        await self._book.save([rec], hist)
        await self._engine.after_terminal(rec, hist, now)
        return result

    async def rename_network(self, protocol: str, old: str, new: str) -> int:
        """Move the records of network `old` to `new` (an adapter changing how it names a network, e.g. Zigbee
        from the 16-bit PAN id to the extended PAN id); returns how many moved. Idempotent."""
        moved = self._book.rename_network(protocol, old, new, self.clock.now())
        if moved:
            await self._repo.rename_network(protocol, old, new)
            log.info(
                "device records moved to a new network id",
                extra={"fields": {"protocol": protocol, "old": old, "new": new, "records": len(moved)}},
            )
        return len(moved)

    async def query_version(self, device: DeviceInfo, version: int) -> QueryResult:
        await self._check_external_changes()
        now = self.clock.now()
        rec = self._book.devices.get(device.key.device_id)
        if rec is not None:
            d = self._decide(rec, now)
            if (
                d.image is not None
                and d.image.numeric_version == version
                and d.outcome in ("available", "busy")
            ):
                return await self.query(device)
            offered = (
                f"{d.image.version_string} ({d.image.numeric_version})" if d.image is not None else "none"
            )
        else:
            offered = "none (unknown device)"
        self.counters.decisions["NotAvailable"] += 1
        return NotAvailable(
            self.config.policy.callback_interval_s,
            f"version {version} requested; the plan for this device offers {offered}",
        )

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
        has_offer = rec.token is not None and st in (
            S.QUERYING,
            S.DOWNLOADING,
            S.DOWNLOADED,
            S.WAITING_TO_APPLY,
        )
        if has_offer:
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
                and self._ledger.holds(rec.device_id)
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
            self._book.transition(rec, S.CANCELLED, f"superseded: {d.reason}", hist, now)
        if d.outcome == "not_available":
            if rec.state in (S.UPDATE_AVAILABLE, S.NOTIFIED, S.WAITING_FOR_WINDOW):
                self._book.transition(rec, S.IDLE, d.reason, hist, now)
            return NotAvailable(int(d.retry_after_s or pol.callback_interval_s), d.reason)
        if d.outcome == "busy":
            if d.hold is not None and d.image is not None:
                self._book.target(rec, d.image)
                self._book.transition(rec, d.hold, d.reason, hist, now)
            return Busy(max(1, math.ceil(d.retry_after_s)), d.reason)
        assert d.image is not None
        if self._preflight(d.image) is not None:
            # the image was just quarantined (invalid from now on): decide again without it; each entry is
            # quarantined once, so this ends
            return self._answer(rec, now, installed, hist)
        ok, why = self._ledger.try_acquire(rec, now)
        if not ok:
            # routers retry sooner than sleepy end devices: part of their priority
            retry = pol.busy_retry_s * (2 if rec.sleepy else 1)
            reason = f"{d.reason}; {why}"
            self._book.target(rec, d.image)
            self._book.transition(rec, S.UPDATE_AVAILABLE, reason, hist, now)
            return Busy(retry, reason)
        # offer: a new token, counters reset for this transfer
        if rec.target_image_id != d.image.image_id:
            rec.attempts = 0
        if rec.rollout_id != d.rollout_id:
            rec.rollout_failures = 0
        token = self._new_token()
        self._ledger.issue(rec, token, now)
        self._book.target(rec, d.image)
        rec.attempts += 1
        rec.bytes_sent = 0
        rec.acked_offset = 0
        rec.last_progress_at = now
        rec.rollout_id, rec.rollout_wave = d.rollout_id, d.wave
        rec.apply_at = rec.verify_deadline = None
        self._book.transition(rec, S.QUERYING, d.reason, hist, now)
        return Available(token, d.image, 0, d.consent, None, d.reason)

    def open_image(self, token: bytes) -> ImageReader:
        rec = self._ledger.record_of(token, self._book.devices)
        entry = self._catalog.entries.get(rec.target_image_id or "")
        if entry is None:
            raise UnknownToken(
                f"token {bytes(token).hex()}: image {rec.target_image_id} is no longer in the catalog"
            )
        if not entry.valid and entry.image_id in self._corrupt:
            raise UnknownToken(f"token {bytes(token).hex()}: {self._corrupt[entry.image_id]}")
        try:
            reader = self._ledger.reader(entry)
        except CorruptBlobError as exc:
            why = self._quarantine(entry, exc, whole_blob=not isinstance(exc, CatalogMismatchError))
            raise UnknownToken(f"token {bytes(token).hex()}: {why}") from None
        return _SharedView(reader)

    def _preflight(self, entry: CatalogEntry) -> str | None:
        """Before an offer: open the image through the store as a transfer would, which checks that the blob still
        hashes to its name, that its payload passes the pre-flight check and that a Matter header agrees with the
        catalog entry (cheap when nothing changed: the store caches both by the file's identity). None when it
        may be offered, otherwise the reason it was quarantined. No block of a bad image is sent: this runs
        before a token exists, and `open_image` runs the same checks for a reader opened later."""
        try:
            reader = self.store.open_reader(entry)
        except CorruptBlobError as exc:
            return self._quarantine(entry, exc, whole_blob=not isinstance(exc, CatalogMismatchError))
        close = getattr(reader, "close", None)
        if close is not None:
            close()
        return None

    def _quarantine(self, entry: CatalogEntry, exc: CorruptBlobError, *, whole_blob: bool = True) -> str:
        """The blob of `entry` is corrupt: invalidate every entry of it (only `entry` when `whole_blob` is
        false: its catalog row, not the file, is wrong), end their offers; returns the reason.

        Synchronous (adapters call open_image synchronously); the records and the catalog are committed by a
        background task (`sweep` and `stop` wait for it)."""
        what = "is corrupt" if whole_blob else "disagrees with its catalog entry"
        why = f"image {entry.image_id} {what} ({exc.problem}); marked invalid, offers withdrawn"
        bad = [
            e
            for e in self._catalog.entries.values()
            if (e.sha256 == entry.sha256 if whole_blob else e.image_id == entry.image_id) and e.valid
        ]
        for e in bad:
            self._corrupt[e.image_id] = why if e is entry else f"image {e.image_id} shares the corrupt blob"
        if whole_blob:
            self._ledger.drop_reader(entry.sha256)
        self._set_catalog(
            [
                dataclasses.replace(e, valid=False) if e.image_id in self._corrupt else e
                for e in self._catalog.entries.values()
            ]
        )
        now = self.clock.now()
        ids = {e.image_id for e in bad} | {entry.image_id}
        hist: list[HistoryEntry] = []
        ended: list[DeviceRecord] = []
        for rec in self._book.live_records():
            if rec.target_image_id not in ids:
                continue
            n = len(hist)
            if rec.state in _OFFER_RUNNING:
                self._book.transition(rec, S.CANCELLED, why, hist, now)
            elif rec.state in _OFFER_WAITING:
                self._book.transition(rec, S.IDLE, why, hist, now)
            if len(hist) > n:
                ended.append(rec)
        for e in bad:
            self.counters.images_invalidated[e.protocol] += 1
            self._book.publish("image", new="invalid", reason=why, data={"image_id": e.image_id})
        # one line, no traceback: the problem is the stored file, not the code
        log.warning("%s (blob %s at %s; %d offer(s) ended)", why, exc.sha256[:16], exc.path, len(ended))
        if bad or ended:
            self._spawn(self._persist_quarantine([e.image_id for e in bad], ended, hist, why, now))
        return why

    async def _persist_quarantine(
        self, image_ids: list[str], ended: list[DeviceRecord], hist: list[HistoryEntry], why: str, now: float
    ) -> None:
        try:
            await self._book.save(ended, hist)
            if self.role == "gateway":
                for image_id in image_ids:
                    await self.store.mark_invalid(image_id, why)
            for rec in ended:
                await self._engine.after_terminal(rec, hist, now)
        except Exception as exc:  # logged, not raised: nobody awaits a background task's result
            log.error("could not record the corrupt image %s: %s", ", ".join(image_ids), exc)

    async def progress(self, token: bytes, offset: int, nbytes: int) -> ProgressDecision:
        if offset < 0 or nbytes < 0:
            raise ValueError(f"progress: offset {offset} and nbytes {nbytes} must be >= 0")
        rec = self._ledger.record_of(token, self._book.devices)
        now = self.clock.now()
        pol = self.config.policy
        if rec.state == S.PAUSED:
            return Wait(pol.busy_retry_s, f"paused: {rec.state_reason}")
        hist: list[HistoryEntry] = []
        ledger = self._ledger
        if rec.state in (S.QUERYING, S.DOWNLOADING) and not ledger.holds(rec.device_id):  # holders: fast path
            ok, why = ledger.try_acquire(rec, now)
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
            self._book.transition(rec, S.DOWNLOADING, f"first block at offset {offset}", hist, now)
        if now - self._progress_event_at.get(rec.device_id, -math.inf) >= PROGRESS_EVENT_S:
            self._progress_event_at[rec.device_id] = now
            self._book.publish(
                "progress",
                device_id=rec.device_id,
                data={
                    "offset": rec.acked_offset,
                    "bytes_sent": rec.bytes_sent,
                    "percent": rec.percent,
                    "size": size,
                },
            )
        if hist or self._book.persist_due(rec):
            await self._book.save([rec], hist)
        else:
            self._book.mark_dirty(rec)
        return _CONTINUE

    async def download_complete(self, token: bytes) -> None:
        try:
            rec = self._ledger.record_of(token, self._book.devices)
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
                self._book.transition(rec, S.DOWNLOADED, f"all {rec.target_size} bytes downloaded", hist, now)
            rec.last_progress_at = now
            await self._book.save([rec], hist)

    async def download_failed(self, token: bytes, reason: str) -> None:
        try:
            rec = self._ledger.record_of(token, self._book.devices)
        except UnknownToken:
            return
        now = self.clock.now()
        hist: list[HistoryEntry] = []
        self._book.transition(rec, S.FAILED, f"download failed: {reason}", hist, now)
        await self._book.save([rec], hist)
        await self._engine.after_terminal(rec, hist, now)

    async def apply_request(self, token: bytes, new_version: int) -> ApplyDecision:
        await self._check_external_changes()
        pol = self.config.policy
        try:
            rec = self._ledger.record_of(token, self._book.devices)
        except UnknownToken as exc:
            return ApplyDecision(ApplyAction.DISCONTINUE, pol.callback_interval_s, reason=str(exc))
        now = self.clock.now()
        hist: list[HistoryEntry] = []
        decision = self._apply_decision(rec, new_version, now, hist)
        await self._book.save([rec], hist)
        await self._engine.after_terminal(rec, hist, now)
        return decision

    def _apply_decision(
        self, rec: DeviceRecord, new_version: int, now: float, hist: list[HistoryEntry]
    ) -> ApplyDecision:
        pol = self.config.policy
        if new_version != rec.target_version:
            why = f"device asks to apply version {new_version}, but was offered {rec.target_version}"
            self._book.transition(rec, S.FAILED, why, hist, now)
            return ApplyDecision(ApplyAction.DISCONTINUE, pol.busy_retry_s, reason=why)
        if rec.state == S.PAUSED:
            return ApplyDecision(
                ApplyAction.AWAIT_NEXT_ACTION, pol.busy_retry_s, reason=f"paused: {rec.state_reason}"
            )
        if rec.state in (S.QUERYING, S.DOWNLOADING):
            if rec.target_size:
                rec.acked_offset = rec.target_size
            self._book.transition(
                rec, S.DOWNLOADED, "device reports the download complete (apply request)", hist, now
            )
        if rec.state in APPLY_STATES:
            return ApplyDecision(ApplyAction.PROCEED, 0, now, reason="already told to install; proceed")
        entry = self._catalog.entries.get(rec.target_image_id or "")
        eff = self._policy.effective(rec)
        if entry is not None:
            ok, why = version_permitted(eff, entry)
            if not ok:
                self._book.transition(rec, S.CANCELLED, f"not installing: {why}", hist, now)
                return ApplyDecision(
                    ApplyAction.DISCONTINUE, pol.callback_interval_s, reason=f"{why} ({eff.source()})"
                )
        r = self._engine.rollouts.get(rec.rollout_id or "")
        if r is not None and r.status in (RolloutStatus.PAUSED, RolloutStatus.HALTED):
            self._book.transition(
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
            self._book.transition(rec, S.CANCELLED, f"rollout {r.rollout_id} aborted", hist, now)
            return ApplyDecision(
                ApplyAction.DISCONTINUE, pol.callback_interval_s, reason=f"rollout {r.rollout_id} aborted"
            )
        win = self._policy.window(eff.apply_window)
        if win is not None and not win.is_open(now):
            at = win.next_open(now)
            delay = at - now
            if delay <= pol.max_apply_delay_s:
                rec.apply_at = at
                rec.verify_deadline = at + self._deadline_for(rec)
                why = f"install in window {win.text} at {win.describe_next(now)}"
                self._book.transition(rec, S.WAITING_TO_APPLY, why, hist, now)
                return ApplyDecision(ApplyAction.PROCEED, math.ceil(delay), at, reason=why)
            rec.apply_at = None
            why = f"apply window {win.text} opens {win.describe_next(now)}; ask again later"
            self._book.transition(rec, S.WAITING_TO_APPLY, why, hist, now)
            # a repeated "wait" is no transition (state_since stays at the first one): remember the latest ask,
            # sweep's "never asked again" deadline counts from it
            rec.last_progress_at = now
            return ApplyDecision(ApplyAction.AWAIT_NEXT_ACTION, pol.max_apply_delay_s, reason=why)
        rec.apply_at = now
        rec.verify_deadline = now + self._deadline_for(rec)
        why = f"install {rec.target_version_string} now" + (f" (window {win.text} open)" if win else "")
        self._book.transition(rec, S.APPLYING, why, hist, now)
        return ApplyDecision(ApplyAction.PROCEED, 0, now, reason=why)

    async def report_version(self, key: DeviceKey, version: int, version_string: str | None = None) -> None:
        now = self.clock.now()
        rec, _ = self._book.record_for(DeviceInfo(key), now)
        hist: list[HistoryEntry] = []
        self._book.on_version(rec, version, version_string, now, hist, via_query=False)
        await self._book.save([rec], hist)
        await self._engine.after_terminal(rec, hist, now)

    async def update_applied(self, key: DeviceKey, token: bytes) -> None:
        """(additive) The device says it applied the update of offer `token` (Matter NotifyUpdateApplied).

        Recorded as a SUCCESSFULLY_UPDATED status report only when `token` is the token of the device's current
        offer/apply; otherwise UnknownToken says why and nothing changes but the record's last_error."""
        token = bytes(token)
        rec = self._book.devices.get(key.device_id)
        why: str | None = None
        if rec is None:
            why = f"device {key.device_id} has no record"
        elif rec.token is None:
            why = f"device {key.device_id} was never offered an update"
        elif rec.token != token:
            why = f"token {token.hex()} is not the token of device {key.device_id}'s current offer"
        if why is not None:
            msg = f"update-applied notice refused: {why}"
            if rec is not None:
                rec.last_error = msg
                await self._book.save([rec], [])
            raise UnknownToken(msg)
        await self.status_report(key, StatusReport(ReportedStatus.SUCCESSFULLY_UPDATED, 100))

    async def status_report(self, key: DeviceKey, report: StatusReport) -> None:
        now = self.clock.now()
        rec, _ = self._book.record_for(DeviceInfo(key), now)
        rec.reported_status = report.status.value
        if report.percent is not None:
            rec.reported_percent = max(0, min(100, report.percent))
        hist: list[HistoryEntry] = []
        self._book.on_status(rec, report, now, hist)
        if report.percent is not None:
            self._book.publish(
                "progress", device_id=rec.device_id, data={"percent": rec.reported_percent, "reported": True}
            )
        await self._book.save([rec], hist)
        await self._engine.after_terminal(rec, hist, now)

    # ------------------------------------------------------------------------------ additive helpers
    def active_transfer(self, key: DeviceKey) -> TransferInfo | None:
        """(additive) The device's live transfer, to re-attach after a restart (Zigbee image blocks carry no token)."""
        rec = self._book.devices.get(key.device_id)
        if rec is None or rec.token is None or rec.state in TERMINAL_STATES:
            return None
        entry = self._catalog.entries.get(rec.target_image_id or "")
        if entry is None:
            return None
        return TransferInfo(rec.token, entry, rec.state.value, rec.acked_offset, rec.bytes_sent)

    async def mark_notified(self, key: DeviceKey, reason: str = "adapter notified the device") -> None:
        """(additive) An adapter sent Image Notify / AnnounceOTAProvider to a device with an update due."""
        rec = self._book.devices.get(key.device_id)
        if rec is None or rec.state not in (S.UPDATE_AVAILABLE, S.WAITING_FOR_WINDOW):
            return
        hist: list[HistoryEntry] = []
        self._book.transition(rec, S.NOTIFIED, reason, hist, self.clock.now())
        await self._book.save([rec], hist)

    async def set_overrides(self, device_id: str, **values: Any) -> DeviceRecord:
        """Set the owner's per-device overrides (name, pinned_version, excluded); the policy applies them at once.

        Raises KeyError for an unknown device, ValueError for an unknown override.
        """
        rec = self._book.devices.get(device_id)
        if rec is None:
            raise KeyError(device_id)
        if not await self._repo.set_overrides(device_id, values):
            raise KeyError(device_id)
        for k, v in values.items():
            setattr(rec, k, v)
        if self.role == "gateway":
            await self._book.save([rec], [])
        # an offer already made stays; the next decision (query, rollout wave) applies the new pin/exclusion
        self._book.publish("device", device_id=device_id, reason="owner overrides changed", data=dict(values))
        return dataclasses.replace(rec)

    async def single_device_target(self, device_id: str, image: str | None = None) -> CatalogEntry:
        """The image an "update this device now" rollout would send, checked against the policy.

        `image` None: the newest valid catalog image that applies to the device and that policy permits.
        Raises KeyError for an unknown device, RolloutError naming why not (busy, excluded, pinned, blocked,
        not applicable, nothing newer).
        """
        rec = self._book.devices.get(device_id)
        if rec is None:
            raise KeyError(device_id)
        if rec.state in LIVE_STATES and rec.state not in (
            S.UPDATE_AVAILABLE,
            S.NOTIFIED,
            S.WAITING_FOR_WINDOW,
        ):
            raise RolloutError(f"device is busy ({rec.state.value}); wait until the current episode ends")
        if not rec.present:
            raise RolloutError("device left the network")
        desc = descriptor(rec)
        if desc is None:
            raise RolloutError(
                "device has not told its vendor, product and version yet; wait for it to report"
            )
        eff = self._policy.effective(rec)
        await self._refresh_catalog()
        if image is not None:
            try:
                candidates = [await self.store.get(image)]
            except StoreError as exc:
                raise RolloutError(str(exc)) from None
        else:
            candidates = sorted(
                (e for e in self._catalog.entries.values() if e.valid and e.protocol == rec.protocol),
                key=lambda e: e.numeric_version,
                reverse=True,
            )
        why = "no image in the catalog for this device's vendor and product"
        for entry in candidates:
            refused = rejection(entry, desc, allow_downgrade=eff.allow_downgrade)
            if refused is not None:
                if image is not None or not refused.startswith("is "):  # "is for ...": another product's
                    why = f"image {entry.image_id} ({entry.version_string}): {refused}"
                continue
            ok, reason = version_permitted(eff, entry)
            if not ok:
                why = f"policy refuses ({eff.source()}): {reason}"
                continue
            return entry
        raise RolloutError(why)

    async def retry_now(self, device_id: str, reason: str = "retry requested by the owner") -> DeviceRecord:
        """A failed device is offered its target again now (the back-off timer is cleared).

        Raises KeyError for an unknown device, RolloutError (with the reason) when there is nothing to retry.
        """
        rec = self._book.devices.get(device_id)
        if rec is None:
            raise KeyError(device_id)
        if rec.state != S.FAILED:
            raise RolloutError(f"device {device_id} is {rec.state.value}, not failed: nothing to retry")
        if rec.target_image_id is None or rec.target_image_id not in self._catalog.entries:
            raise RolloutError(f"device {device_id} has no target image left to retry")
        entry = self._catalog.entries[rec.target_image_id]
        ok, why = version_permitted(self._policy.effective(rec), entry)
        if not ok:
            raise RolloutError(f"policy refuses: {why}")
        hist: list[HistoryEntry] = []
        rec.next_retry_at = None
        # a person acting lifts a park too (issue 18: back on the old version, or policy.max_attempts reached)
        rec.blocked_image_id = rec.blocked_reason = rec.blocked_at = None
        rec.failures = 0
        self._book.transition(rec, S.UPDATE_AVAILABLE, reason, hist, self.clock.now())
        await self._book.save([rec], hist)
        return dataclasses.replace(rec)

    def devices_to_notify(self) -> list[DeviceKey]:
        """(additive) Devices with an update due that have not been offered it (state update_available)."""
        return [r.key for r in self._book.live_records() if r.state == S.UPDATE_AVAILABLE]

    # ================================================================================== sweep
    async def sweep(self) -> None:
        """Fire every timer that is due: stale transfers, apply times, verification deadlines, windows, rollouts."""
        await self._settle_background()
        await self._check_external_changes(force=True)
        if self.role != "gateway":
            return
        now = self.clock.now()
        changed, hist = self._book.fire_timers(now, self._download_window_open)
        if changed:
            await self._book.save(changed, hist)
        await self._engine.advance_all(now)
        mono = self.clock.monotonic()
        if mono - self._catalog_at >= CATALOG_REFRESH_S:
            await self._refresh_catalog()
        await self._book.flush_dirty()
        self._close_idle_readers()
        if mono - self._pruned_at >= 86400:
            self._pruned_at = mono
            await self._repo.prune_history(now - HISTORY_KEEP_S)

    def _download_window_open(self, rec: DeviceRecord, now: float) -> bool:
        win = self._policy.window(self._policy.effective(rec).download_window)
        return win is None or win.is_open(now)

    def _close_idle_readers(self) -> None:
        entries = self._catalog.entries
        in_use = {
            entries[r.target_image_id].sha256
            for r in self._book.live_records()
            if r.token is not None and r.target_image_id is not None and r.target_image_id in entries
        }
        self._ledger.close_readers_except(in_use)

    # ================================================================================== rollouts
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
        sel = selector_of(selector)
        wave_specs = check_params(waves, soak_s, max_failures, max_failure_rate)
        entry = self._catalog.entries.get(image)
        if entry is None:
            try:
                entry = await self.store.get(image)
            except StoreError as exc:
                raise RolloutError(str(exc)) from None
        if entry.image_id not in self._catalog.entries:
            # known by id from now on (open_image, the rollout's decisions); the selection index is left alone:
            # only a catalog re-read makes it an auto-approval candidate
            self._catalog = CatalogView({**self._catalog.entries, entry.image_id: entry}, self._catalog.index)
        return await self._engine.create(
            entry,
            sel,
            wave_specs,
            soak_s=soak_s,
            max_failures=max_failures,
            max_failure_rate=max_failure_rate,
            wave_deadline_s=wave_deadline_s,
            name=name,
        )

    async def _command(
        self, rollout_id: str, new: RolloutStatus, allowed: set[RolloutStatus], reason: str
    ) -> Rollout:
        await self._check_external_changes(force=True)
        return await self._engine.command(rollout_id, new, allowed, reason)

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

    def rollout_images_for_network(self, network: str) -> dict[str, str]:
        """Image id -> rollout id of every active rollout whose opened waves include a present device of
        `network` (a controller publishing the catalog sees those images; gateway/publish/staging.py)."""
        devices = self._book.devices
        out: dict[str, str] = {}
        for r in self._engine.rollouts.values():
            if r.status != RolloutStatus.ACTIVE or r.image_id in out:
                continue
            for dev_id, wave in self._engine.assign(r).items():
                rec = devices.get(dev_id)
                if rec is not None and rec.present and rec.network == network and wave <= r.current_wave:
                    out[r.image_id] = r.rollout_id
                    break
        return out

    def catalog_entries(self) -> list[CatalogEntry]:
        """The catalog as the core last read it (read-only view for integrations)."""
        return list(self._catalog.entries.values())

    def covering_rollout_ids(self) -> set[str]:
        """Ids of rollouts still distributing (active, paused, halted): their approvals are not yet general."""
        return {r.rollout_id for r in self._engine.rollouts.values() if r.covering}

    def list_rollouts(self) -> list[Rollout]:
        return sorted(self._engine.rollouts.values(), key=lambda r: (r.created_at, r.rollout_id))

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        return self._engine.rollouts.get(rollout_id)

    def rollout_progress(self, rollout_id: str) -> list[dict[str, int]]:
        """Per-wave statistics (members, offered, updated, failed, in progress, done)."""
        return self._engine.progress(rollout_id)

    async def rollout_events(self, rollout_id: str) -> list[dict[str, Any]]:
        return await self._repo.rollout_events(rollout_id)

    # ================================================================================== read API
    def list_devices(self, filters: dict[str, Any] | None = None) -> list[DeviceRecord]:
        """Copies of device records; filters: protocol, state, network, rollout_id, image_id, present."""
        f = filters or {}
        out = []
        for rec in self._book.devices.values():
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
        rec = self._book.devices.get(device_id)
        return dataclasses.replace(rec) if rec is not None else None

    async def retry_device(self, device_id: str, by: str = "operator") -> DeviceRecord:
        """A person lifts a parked device: the failed image may be offered again, attempts and back-off reset.
        Raises KeyError for an unknown device. In the CLI (role client) it commits to state.db and the running
        gateway applies it within CHANGE_POLL_S."""
        rec = self._book.devices.get(device_id)
        if rec is None:
            raise KeyError(f"no device {device_id!r}")
        if self.role != "gateway":  # the CLI: write state.db, the running gateway picks it up
            await self._repo.lift_block(device_id)
            return dataclasses.replace(
                rec, blocked_image_id=None, blocked_reason=None, blocked_at=None, failures=0
            )
        was = rec.blocked_reason
        rec.blocked_image_id = rec.blocked_reason = rec.blocked_at = None
        rec.failures, rec.next_retry_at = 0, None
        self._book.publish(
            "device",
            device_id=device_id,
            reason=f"retry allowed by {by}" + (f" (was parked: {was})" if was else ""),
        )
        await self._book.save([rec], [])
        return dataclasses.replace(rec)

    async def history(self, device_id: str, limit: int | None = None) -> list[HistoryEntry]:
        return await self._repo.history(device_id, limit)

    def image_in_use(self, image_id: str) -> bool:
        """True while a transfer/apply uses the image or a covering rollout distributes it (delete is refused)."""
        return bool(self.image_users(image_id))

    def image_users(self, image_id: str) -> list[str]:
        users = [
            f"device {r.device_id} ({r.state.value})"
            for r in self._book.live_records()
            if r.target_image_id == image_id and r.token is not None
        ]
        return users + self._engine.users_of(image_id)

    def metrics(self) -> dict[str, dict[str, int]]:
        """Counters plus live gauges (transfers_active per protocol)."""
        self.counters.transfers_active.clear()
        self.counters.transfers_active.update(self._ledger.active_by_protocol())
        return self.counters.to_dict()

    def load_counts(self) -> tuple[int, int]:
        """(devices known, transfers holding a slot): what this gateway reports to the fleet."""
        return len(self._book.devices), sum(self._ledger.active_by_protocol().values())

    def subscribe(self, queue_size: int | None = None) -> AsyncIterator[CoreEvent]:
        return self.events.subscribe(queue_size)

    def plan(self) -> list[PlanItem]:
        """Dry run: for every device what it would get, when, and why (not). Changes nothing."""
        now = self.clock.now()
        out: list[PlanItem] = []
        for rec in sorted(self._book.devices.values(), key=lambda r: r.device_id):
            if not rec.present:
                out.append(PlanItem.of(rec, "left", None, None, "device left the network"))
                continue
            if rec.state in LIVE_STATES and rec.state not in (
                S.UPDATE_AVAILABLE,
                S.NOTIFIED,
                S.WAITING_FOR_WINDOW,
            ):
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
                ok = self._ledger.has_room(rec.protocol, rec.network)
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
        devices = self._book.devices
        bad = self._ledger.check(devices)
        for dev, rec in devices.items():
            if (rec.state in LIVE_STATES) != (dev in self._book.live):
                bad.append(f"{dev} live-set mismatch in {rec.state}")
            if rec.state == S.PAUSED and rec.resume_state is None:
                bad.append(f"{dev} paused without a resume state")
            if rec.target_size and rec.acked_offset > rec.target_size:
                bad.append(f"{dev} acked {rec.acked_offset} > size {rec.target_size}")
        return bad


class _SharedView:
    """The adapter's handle on a shared image reader: reads only; closing is the core's business."""

    __slots__ = ("_reader", "size")

    def __init__(self, reader: Any) -> None:
        self._reader = reader
        self.size: int = reader.size

    def read(self, offset: int, length: int) -> bytes:
        data: bytes = self._reader.read(offset, length)
        return data
