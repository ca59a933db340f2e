"""The rollout engine: owns the rollouts in memory and moves them (waves, soak, auto-halt, operator commands).

The model (rollouts, waves, cohorts, `evaluate`) is `gateway.core.rollouts`; this module acts on it: it advances
active rollouts (on every sweep and after a device ends an episode inside one), announces an opened wave to its
devices, applies a status change to the devices' episodes (pause, resume, cancel), and runs the operator's commands.
Every change is written to the repository as a compare-and-set first; when another process (the CLI) changed the
rollout meanwhile the engine gives way and re-reads (`on_conflict`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from gateway.config import PolicySelector
from gateway.core.decide import RolloutCover, descriptor
from gateway.core.policy import Policy
from gateway.core.recordbook import RecordBook
from gateway.core.records import DeviceRecord, HistoryEntry
from gateway.core.repository import RecordsRepository, RolloutChange
from gateway.core.rollouts import (
    COVERING,
    Rollout,
    RolloutError,
    RolloutStatus,
    Step,
    WaveSpec,
    evaluate,
    parse_waves,
    soak_remaining,
    wave_stats,
)
from gateway.core.states import PAUSABLE_STATES, DeviceState
from gateway.store.model import CatalogEntry
from gateway.store.selection import rejection

log = logging.getLogger("gateway.core.service")  # the logger operators already filter on

S = DeviceState


class RolloutEngine:
    """Rollouts in memory + their progress and commands (see module docstring)."""

    def __init__(
        self,
        repo: RecordsRepository,
        book: RecordBook,
        entries: Callable[[], Mapping[str, CatalogEntry]],
        policy: Callable[[], Policy],
        *,
        acts_on_devices: bool,
    ) -> None:
        self.repo = repo
        self.book = book
        self._entries = entries
        self._policy = policy
        self.acts_on_devices = (
            acts_on_devices  # the gateway moves device episodes; the CLI only writes commands
        )
        self.rollouts: dict[str, Rollout] = {}
        self.on_conflict: Callable[[], Awaitable[None]] = _nothing
        # rollouts whose progress is being evaluated and written now (see `advance`)
        self._advancing: set[str] = set()

    # ------------------------------------------------------------------------------------------ loading
    async def reload(self) -> list[tuple[Rollout, RolloutStatus | None]]:
        """Re-read rollouts; returns (rollout, previous status) for every one whose status or wave changed."""
        changed: list[tuple[Rollout, RolloutStatus | None]] = []
        fresh: dict[str, Rollout] = {}
        for r in await self.repo.load_rollouts():
            old = self.rollouts.get(r.rollout_id)
            if old is not None:  # keep the cohort index
                r.adopt_index(old)
            if old is None or old.status != r.status or old.current_wave != r.current_wave:
                changed.append((r, old.status if old else None))
            fresh[r.rollout_id] = r
        self.rollouts = fresh
        return changed

    async def external_change(self, r: Rollout, old: RolloutStatus | None) -> None:
        """Another process changed `r` (was `old`): follow it on the devices."""
        self.book.publish(
            "rollout", rollout_id=r.rollout_id, new=r.status.value, reason="changed by another process"
        )
        if self.acts_on_devices and old != r.status:
            await self.sync_devices(r, f"rollout {r.rollout_id} {r.status.value}: {r.status_reason}")
            if old is None and r.status == RolloutStatus.ACTIVE:
                await self.announce_wave(r)

    # ----------------------------------------------------------------------------------------- coverage
    def track(self, rec: DeviceRecord) -> None:
        """A device appeared or changed identity: keep every rollout's cohort index current."""
        for r in self.rollouts.values():
            r.track(rec)

    def covering(self, rec: DeviceRecord) -> Rollout | None:
        """The newest active/paused/halted rollout that covers the device."""
        best: Rollout | None = None
        for r in self.rollouts.values():
            if r.status in COVERING and r.covers(rec) and (best is None or r.created_at >= best.created_at):
                best = r
        return best

    def assign(self, r: Rollout) -> dict[str, int]:
        if not r._built:
            r.build(self.book.devices.values())
        return r.assignments()

    def cover(self, rec: DeviceRecord, now: float) -> RolloutCover | None:
        """The covering rollout reduced to what `decide` needs (builds the cohort index on first use)."""
        r = self.covering(rec)
        if r is None:
            return None
        if not r._built:
            r.build(self.book.devices.values())
        return RolloutCover(
            rollout_id=r.rollout_id,
            name=r.name,
            image_id=r.image_id,
            status=r.status,
            status_reason=r.status_reason,
            current_wave=r.current_wave,
            wave=r.wave_of(rec),
            soak_remaining_s=soak_remaining(r, now),
        )

    # ----------------------------------------------------------------------------------------- progress
    async def advance_all(self, now: float) -> None:
        for r in list(self.rollouts.values()):
            if r.status == RolloutStatus.ACTIVE:
                await self.advance(r, now)

    async def after_terminal(self, rec: DeviceRecord, hist: list[HistoryEntry], now: float) -> None:
        """A device ended an episode inside a rollout: re-evaluate that rollout (auto-halt promptly)."""
        if (
            rec.rollout_id
            and rec.state in (S.FAILED, S.UPDATED, S.CANCELLED)
            and any(h.new_state == rec.state.value for h in hist)
        ):
            r = self.rollouts.get(rec.rollout_id)
            if r is not None and r.status == RolloutStatus.ACTIVE and self.acts_on_devices:
                await self.advance(r, now)

    async def advance(self, r: Rollout, now: float) -> None:
        # One evaluation at a time per rollout: a sweep and a device's terminal transition can both advance the
        # same rollout; the compare-and-set checks (status, wave) only, so two concurrent evaluations of an
        # unfinished wave would both record `wave_complete` (and the later one move the soak's start). The one
        # already running re-evaluates after each step it writes, so the second caller has nothing to add.
        if r.rollout_id in self._advancing:
            return
        self._advancing.add(r.rollout_id)
        try:
            for _ in range(len(r.waves) + 2):  # a wave can complete and the next open in one sweep
                step = evaluate(r, self.book.devices, self.assign(r), now)
                if step is None:
                    return
                if not await self._apply_step(r, step, now):
                    return
        finally:
            self._advancing.discard(r.rollout_id)

    async def _apply_step(self, r: Rollout, step: Step, now: float) -> bool:
        """Compare-and-set the step into the repository; False when another process changed the rollout first."""
        status = step.status or r.status
        wave = r.current_wave if step.current_wave is None else step.current_wave
        opened = r.wave_opened_at if step.wave_opened_at is None else step.wave_opened_at
        completed = None if step.current_wave is not None else (step.wave_completed_at or r.wave_completed_at)
        ok = await self.repo.update_rollout_if(
            RolloutChange(
                rollout_id=r.rollout_id,
                expect_status=r.status,
                expect_wave=r.current_wave,
                status=status,
                status_reason=step.reason if step.status else r.status_reason,
                current_wave=wave,
                wave_opened_at=opened,
                wave_completed_at=completed,
                at=now,
                event=step.event,
                event_reason=step.reason,
            )
        )
        if not ok:
            await self.on_conflict()
            return False
        old_status = r.status
        r.status = status
        if step.status:
            r.status_reason = step.reason
        r.current_wave, r.wave_opened_at, r.wave_completed_at, r.updated_at = wave, opened, completed, now
        self.book.publish(
            "rollout",
            rollout_id=r.rollout_id,
            old=old_status.value,
            new=status.value,
            reason=step.reason,
            data={"event": step.event, "wave": wave},
        )
        log.info("rollout %s: %s", r.rollout_id, step.reason)
        if status != old_status:
            await self.sync_devices(r, f"rollout {r.rollout_id} {status.value}: {step.reason}")
        if step.event == "wave_opened":
            await self.announce_wave(r)
        return True

    async def announce_wave(self, r: Rollout) -> None:
        """Devices of a newly opened wave become update_available (adapters notify them)."""
        book = self.book
        now = book.clock.now()
        entry = self._entries().get(r.image_id)
        if entry is None:
            return
        policy = self._policy()
        changed: list[DeviceRecord] = []
        hist: list[HistoryEntry] = []
        for dev, w in self.assign(r).items():
            rec = book.devices[dev]
            if w > r.current_wave or rec.state not in (S.IDLE, S.UPDATED, S.CANCELLED) or not rec.present:
                continue
            if self.covering(rec) is not r:
                continue
            desc = descriptor(rec)
            if desc is None or rejection(entry, desc, allow_downgrade=policy.effective(rec).allow_downgrade):
                continue
            book.target(rec, entry)
            book.transition(rec, S.UPDATE_AVAILABLE, f"rollout {r.rollout_id} wave {w + 1} open", hist, now)
            changed.append(rec)
        if changed:
            await book.save(changed, hist)

    async def sync_devices(self, r: Rollout, reason: str) -> None:
        """Apply a rollout status change to its devices: pause, resume or cancel their episodes."""
        if not self.acts_on_devices:
            return
        book = self.book
        now = book.clock.now()
        changed: list[DeviceRecord] = []
        hist: list[HistoryEntry] = []
        for rec in book.live_records():
            if rec.rollout_id != r.rollout_id:
                continue
            n = len(hist)
            if r.status in (RolloutStatus.PAUSED, RolloutStatus.HALTED) and rec.state in PAUSABLE_STATES:
                book.transition(rec, S.PAUSED, reason, hist, now)
            elif r.status in (RolloutStatus.ACTIVE, RolloutStatus.COMPLETED) and rec.state == S.PAUSED:
                back = rec.resume_state or S.UPDATE_AVAILABLE
                book.transition(rec, back, reason, hist, now)
                rec.last_progress_at = now  # the pause does not count against the stale-transfer timer
            elif r.status == RolloutStatus.ABORTED and (
                rec.state in PAUSABLE_STATES or rec.state == S.PAUSED
            ):
                book.transition(rec, S.CANCELLED, reason, hist, now)
            if len(hist) > n:
                changed.append(rec)
        if changed:
            await book.save(changed, hist)

    # ----------------------------------------------------------------------------------------- commands
    async def create(
        self,
        entry: CatalogEntry,
        sel: PolicySelector,
        wave_specs: list[WaveSpec],
        *,
        soak_s: float,
        max_failures: int | None,
        max_failure_rate: float | None,
        wave_deadline_s: float | None,
        name: str | None,
    ) -> Rollout:
        """Start a rollout of `entry` (parameters checked by `check_params`); wave 1 opens at once."""
        if sel.protocol is not None and sel.protocol != entry.protocol:
            raise RolloutError(f"selector protocol {sel.protocol} does not match the {entry.protocol} image")
        now = self.book.clock.now()
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
        await self.repo.insert_rollout(r, "created", f"created; wave 1 ({r.waves[0]}) open")
        self.rollouts[r.rollout_id] = r
        self.book.publish(
            "rollout",
            rollout_id=r.rollout_id,
            new=r.status.value,
            reason="created",
            data={"event": "created", "wave": 0},
        )
        if self.acts_on_devices:
            await self.announce_wave(r)
        return r

    async def command(
        self, rollout_id: str, new: RolloutStatus, allowed: set[RolloutStatus], reason: str
    ) -> Rollout:
        """Pause / resume / abort (the caller re-read the repository first)."""
        r = self.rollouts.get(rollout_id)
        if r is None:
            raise RolloutError(f"no rollout {rollout_id!r}")
        if r.status == new:
            return r
        if r.status not in allowed:
            raise RolloutError(f"rollout {rollout_id} is {r.status.value}; cannot make it {new.value}")
        now = self.book.clock.now()
        reopen = new == RolloutStatus.ACTIVE and r.status == RolloutStatus.HALTED
        # resuming a halted rollout restarts its current wave's clock (the operator accepted the failures)
        ok = await self.repo.update_rollout_if(
            RolloutChange(
                rollout_id=rollout_id,
                expect_status=r.status,
                expect_wave=None,
                status=new,
                status_reason=reason,
                current_wave=r.current_wave,
                wave_opened_at=now if reopen else r.wave_opened_at,
                wave_completed_at=None if reopen else r.wave_completed_at,
                at=now,
                event=new.value,
                event_reason=reason,
                clear_thresholds=reopen,
            )
        )
        if not ok:
            await self.on_conflict()
            raise RolloutError(
                f"rollout {rollout_id} changed meanwhile; it is now {self.rollouts[rollout_id].status}"
            )
        old = r.status
        r.status, r.status_reason, r.updated_at = new, reason, now
        if reopen:
            r.wave_opened_at, r.wave_completed_at, r.max_failures, r.max_failure_rate = now, None, None, None
        self.book.publish(
            "rollout",
            rollout_id=rollout_id,
            old=old.value,
            new=new.value,
            reason=reason,
            data={"event": new.value, "wave": r.current_wave},
        )
        await self.sync_devices(r, f"rollout {rollout_id} {new.value}: {reason}")
        return r

    # ---------------------------------------------------------------------------------------- read side
    def progress(self, rollout_id: str) -> list[dict[str, int]]:
        r = self.rollouts.get(rollout_id)
        if r is None:
            raise RolloutError(f"no rollout {rollout_id!r}")
        assign = self.assign(r)
        return [wave_stats(r, self.book.devices, assign, w).to_dict() for w in range(len(r.waves))]

    def users_of(self, image_id: str) -> list[str]:
        return [
            f"rollout {r.rollout_id} ({r.status.value})"
            for r in self.rollouts.values()
            if r.image_id == image_id and r.covering
        ]


async def _nothing() -> None:
    return None


def check_params(
    waves: Sequence[str | int | float],
    soak_s: float,
    max_failures: int | None,
    max_failure_rate: float | None,
) -> list[WaveSpec]:
    """The parsed waves, or RolloutError naming the first bad parameter."""
    wave_specs = parse_waves(waves)
    if soak_s < 0:
        raise RolloutError("soak time must be >= 0")
    if max_failures is not None and max_failures < 0:
        raise RolloutError("max_failures must be >= 0")
    if max_failure_rate is not None and not 0 <= max_failure_rate <= 1:
        raise RolloutError("max_failure_rate must be between 0 and 1")
    return wave_specs


def selector_of(selector: PolicySelector | dict[str, Any] | None) -> PolicySelector:
    try:
        return (
            selector
            if isinstance(selector, PolicySelector)
            else PolicySelector.model_validate(selector or {})
        )
    except Exception as exc:
        raise RolloutError(f"bad selector: {exc}") from None
