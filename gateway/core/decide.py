"""The update decision as a pure function: (record, catalog, effective policy, rollout cover, now) -> Decision.

No I/O, no clock, no mutation: the same inputs always give the same Decision, so `query` (which then acts on it)
and the dry-run `plan` agree, and the rules are tested with tables (tests/core/test_decide.py).

How a decision is made:
1. the device must have told its vendor/product ids and version;
2. a covering rollout decides the image: offered only while the device's wave is open and the rollout active;
   otherwise policy auto-approval (or a pin) picks the best permitted image with `gateway.store.selection`;
3. policy constraints always apply (blocked / allowed / pinned versions, downgrade), and the payload check: an
   invalid payload is never offered, one of unknown format only where `allow_unvalidated_payload` holds;
4. a device parked as failed (an update did not take, or policy.max_attempts failed episodes) is offered nothing
   it could have been offered then, only an image added later or a rollout's (both a person's act), and never
   the image that failed, until a person lifts it (`otagw devices retry`);
5. a battery device below `min_battery_percent` is deferred (Busy, reason says so) until it recovers;
6. back-off after failures, then the download window (Busy until it opens: state waiting_for_window).
Transfer slots (budgets) are not part of the decision: the ledger grants them when the core acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from gateway.config import PolicyConfig
from gateway.core.policy import (
    EffectivePolicy,
    Window,
    payload_refusal,
    selector_matches,
    version_permitted,
)
from gateway.core.records import DeviceRecord
from gateway.core.rollouts import RolloutStatus
from gateway.core.states import DeviceState
from gateway.store.approval import not_approved_reason, offerable
from gateway.store.model import CatalogEntry, DeviceDescriptor
from gateway.store.selection import SelectionIndex, explain_selection, rejection


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


@dataclass(frozen=True, slots=True)
class CatalogView:
    """The catalog as the decision sees it: entries by id and the selection index over them."""

    entries: Mapping[str, CatalogEntry]
    index: SelectionIndex


@dataclass(frozen=True, slots=True)
class RolloutCover:
    """The rollout covering a device, reduced to what the decision needs (computed by the rollout engine)."""

    rollout_id: str
    name: str
    image_id: str
    status: RolloutStatus
    status_reason: str
    current_wave: int
    wave: int | None  # the device's wave; None when it is in none of the waves
    soak_remaining_s: float | None  # seconds until the next wave may open (None: not soaking)


def descriptor(rec: DeviceRecord) -> DeviceDescriptor | None:
    """What selection needs to know of the device; None until it told its ids and version."""
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


def low_battery(rec: DeviceRecord, eff: EffectivePolicy) -> str | None:
    """Why a battery device is too low to start an update now (None: mains, unknown charge, or enough).
    A battery that dies mid-flash can leave a device half-written; mains devices have no minimum."""
    if rec.power_source != "battery" or rec.battery_percent is None or not eff.min_battery_percent:
        return None
    if rec.battery_percent >= eff.min_battery_percent:
        return None
    return (
        f"battery at {rec.battery_percent} % is below the minimum {eff.min_battery_percent} % "
        f"({eff.source()}: min_battery_percent); offered once it recovers"
    )


def _parked_for(rec: DeviceRecord, entry: CatalogEntry) -> bool:
    """A parked device is offered only images added after it was parked (and never the one that failed)."""
    if rec.blocked_image_id is None:
        return False
    return entry.image_id == rec.blocked_image_id or entry.added_at <= (rec.blocked_at or 0.0)


def _parked(rec: DeviceRecord) -> str:
    return (
        f"device parked as failed for image {rec.blocked_image_id}: {rec.blocked_reason}; "
        f"`otagw devices retry {rec.device_id}` offers it again"
    )


def decide(
    rec: DeviceRecord,
    catalog: CatalogView,
    eff: EffectivePolicy,
    cover: RolloutCover | None,
    now: float,
    *,
    policy: PolicyConfig,
    download_window: Window | None,
    installed: list[str] | None = None,
) -> Decision:
    """The decision for `rec` now (see module docstring); `download_window` is `eff.download_window` resolved."""
    cb = policy.callback_interval_s
    if rec.vendor_id is None or rec.product_id is None:
        return Decision("not_available", "device has not reported its vendor and product ids yet", when=None)
    desc = descriptor(rec)
    if desc is None:
        return Decision("not_available", "device has not reported its current version yet")
    rollout_id: str | None = None
    wave: int | None = None
    if cover is not None:
        entry = catalog.entries.get(cover.image_id)
        tag = f"rollout {cover.rollout_id} ({cover.name})"
        if entry is None:
            return Decision("not_available", f"{tag}: image {cover.image_id} is no longer in the catalog")
        why = rejection(entry, desc, allow_downgrade=eff.allow_downgrade)
        if why is not None:
            return Decision("not_available", f"{tag}: image {entry.version_string} {why}")
        ok, why = version_permitted(eff, entry)
        if not ok:
            return Decision("not_available", f"{tag}: {why} ({eff.source()})")
        bad_payload = payload_refusal(eff, entry)
        if bad_payload is not None:
            return Decision("not_available", f"{tag}: {bad_payload}")
        if entry.image_id == rec.blocked_image_id:
            return Decision("not_available", f"{tag}: {_parked(rec)}")
        wave = cover.wave
        if wave is None:
            return Decision("not_available", f"{tag}: device is in none of its waves")
        if cover.status != RolloutStatus.ACTIVE:
            return Decision(
                "busy",
                f"{tag} is {cover.status.value}"
                + (f": {cover.status_reason}" if cover.status_reason else ""),
                image=entry,
                retry_after_s=policy.busy_retry_s,
                hold=DeviceState.UPDATE_AVAILABLE,
                rollout_id=cover.rollout_id,
                wave=wave,
            )
        if wave > cover.current_wave:
            soak = cover.soak_remaining_s
            next_up = soak is not None and cover.current_wave + 1 == wave
            hint = f" (next wave in {soak:.0f} s)" if next_up else ""
            return Decision(
                "not_available",
                f"{tag}: device is in wave {wave + 1}, wave {cover.current_wave + 1} is open{hint}",
                retry_after_s=min(cb, soak) if next_up and soak is not None else cb,
                rollout_id=cover.rollout_id,
                wave=wave,
            )
        reason = f"{tag} wave {wave + 1}: {entry.version_string} ({entry.numeric_version})"
        rollout_id = cover.rollout_id
    else:
        # Approval (gateway/store/approval.py): only approved entries are candidates; a pin is an approval.
        every = catalog.index.candidates(desc)
        cands = [
            e
            for e in every
            if eff.pin_version is not None
            or offerable(e, lambda sel: selector_matches(sel, rec), auto_approve=eff.auto_approve)
        ]
        if not cands:
            return Decision("not_available", not_approved_reason(every, desc, eff.auto_approve, eff.source()))
        permitted: list[CatalogEntry] = []
        refused: list[str] = []
        for e in cands:
            ok, why = version_permitted(eff, e)
            bad_payload = payload_refusal(eff, e)
            if ok and bad_payload is not None:
                ok, why = False, bad_payload
            if ok and _parked_for(rec, e):
                ok, why = False, _parked(rec)
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
    consent = eff.require_consent
    low = low_battery(rec, eff)
    if low is not None:
        # deferred, not refused: the device asks again and gets it once the battery recovered
        return Decision(
            "busy",
            f"{reason}; deferred: {low}",
            image=entry,
            retry_after_s=policy.busy_retry_s,
            hold=None,
            consent=consent,
            rollout_id=rollout_id,
            wave=wave,
            when=None,
        )
    if rec.next_retry_at is not None and rec.next_retry_at > now and rec.target_image_id == entry.image_id:
        return Decision(
            "busy",
            f"{reason}; retrying after {rec.failures} failed attempt(s) (last: {rec.last_error})",
            image=entry,
            retry_after_s=rec.next_retry_at - now,
            hold=None,
            consent=consent,
            rollout_id=rollout_id,
            wave=wave,
            when=rec.next_retry_at,
        )
    win = download_window
    if win is not None and not win.is_open(now):
        nxt = win.next_open(now)
        return Decision(
            "busy",
            f"{reason}; download window {win.text} closed, opens {win.describe_next(now)}",
            image=entry,
            retry_after_s=nxt - now,
            hold=DeviceState.WAITING_FOR_WINDOW,
            consent=consent,
            rollout_id=rollout_id,
            wave=wave,
            when=nxt,
        )
    return Decision(
        "available", reason, image=entry, consent=consent, rollout_id=rollout_id, wave=wave, when=now
    )
