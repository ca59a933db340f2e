"""Staged rollouts: one image to a selected set of devices in waves, with soak times and auto-halt.

A rollout is an image + a selector (`PolicySelector`) + waves (cumulative sizes: "1" = one device, "10%" = a
tenth of the covered devices) + a soak time between waves + a failure threshold per wave.

Cohorts are deterministic: covered devices are ranked by sha256(rollout id + device id), so a restart (or the
CLI computing a plan) always puts the same devices in the same waves. Coverage depends only on who the device is
(selector + the image's identity rules), never on its version, so updating devices does not reshuffle waves.
A device keeps the wave it was offered in (`DeviceRecord.rollout_wave`).

Progress (`evaluate`), run by the service on every sweep and after every terminal transition:
- a wave is done when each member is updated, failed, cancelled or already at/above the image version, or when
  `wave_deadline_s` has passed since it opened (devices that never asked do not hold a rollout forever);
- a wave whose failures exceed `max_failures` or `max_failure_rate` halts the rollout (status `halted`);
- after a done wave has soaked for `soak_s`, the next wave opens; after the last, the rollout is `completed`.

Commands (pause, resume, abort) and progress are written with compare-and-set UPDATEs on `rollouts.status` /
`current_wave`, so a CLI command and the running gateway never overwrite each other; the gateway picks CLI
changes up through `PRAGMA data_version` (see UpdateCore).
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.config import PolicySelector
from gateway.core.policy import describe_selector, selector_matches
from gateway.core.records import DeviceRecord
from gateway.core.states import DeviceState
from gateway.store.model import CatalogEntry, DeviceDescriptor
from gateway.store.selection import rejection

_WAVE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(%?)\s*")


class RolloutError(Exception):
    """A rollout command that cannot be carried out (unknown id, wrong status, bad waves)."""


class RolloutStatus(enum.StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    HALTED = "halted"  # auto-halted by the failure threshold; resume or abort by command
    COMPLETED = "completed"
    ABORTED = "aborted"


# Rollouts in these statuses cover their devices (policy's auto-approval does not reach them).
COVERING = frozenset({RolloutStatus.ACTIVE, RolloutStatus.PAUSED, RolloutStatus.HALTED})


@dataclass(frozen=True, slots=True)
class WaveSpec:
    size: float
    percent: bool

    @classmethod
    def parse(cls, text: str | int | float) -> WaveSpec:
        m = _WAVE.fullmatch(str(text))
        if not m:
            raise RolloutError(f"wave {text!r}: expected a device count like 1 or a share like 10%")
        value, pct = float(m.group(1)), bool(m.group(2))
        if pct and not 0 < value <= 100:
            raise RolloutError(f"wave {text!r}: a share must be more than 0% and at most 100%")
        if not pct and (value < 1 or value != int(value)):
            raise RolloutError(f"wave {text!r}: a device count must be a whole number >= 1")
        return cls(value, pct)

    def cumulative(self, covered: int) -> int:
        return min(covered, math.ceil(covered * self.size / 100) if self.percent else int(self.size))

    def __str__(self) -> str:
        return f"{self.size:g}%" if self.percent else f"{int(self.size)}"


def parse_waves(waves: Sequence[str | int | float]) -> list[WaveSpec]:
    if not waves:
        raise RolloutError("a rollout needs at least one wave (e.g. 1 10% 50% 100%)")
    return [WaveSpec.parse(w) for w in waves]


def cohort_key(rollout_id: str, device_id: str) -> str:
    """The deterministic rank key of a device in a rollout (hash of the device id, salted per rollout)."""
    return hashlib.sha256(f"{rollout_id}\0{device_id}".encode()).hexdigest()


@dataclass(slots=True)
class Rollout:
    rollout_id: str
    name: str
    image_id: str
    image_sha256: str
    protocol: str
    vendor_id: int
    product_id: int
    numeric_version: int
    version_string: str
    selector: PolicySelector
    waves: list[WaveSpec]
    soak_s: float
    max_failures: int | None
    max_failure_rate: float | None
    wave_deadline_s: float | None
    status: RolloutStatus
    status_reason: str
    current_wave: int
    wave_opened_at: float | None
    wave_completed_at: float | None
    created_at: float
    updated_at: float
    # cohort index (not persisted; rebuilt from the records at start, kept up to date as devices change):
    # covered device id -> cohort key, and the covered devices sorted by cohort key (rank = wave membership)
    _cov: dict[str, str] = field(default_factory=dict, repr=False)
    _sorted: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _built: bool = field(default=False, repr=False)
    _version: int = field(default=0, repr=False)
    _assign: dict[str, int] = field(default_factory=dict, repr=False)
    _assign_version: int = field(default=-1, repr=False)

    def adopt_index(self, other: Rollout) -> None:
        """Keep the cohort index of the same rollout re-read from state.db."""
        self._cov, self._sorted, self._built, self._version = (
            other._cov,
            other._sorted,
            other._built,
            other._version,
        )
        self._assign, self._assign_version = other._assign, other._assign_version

    @property
    def covering(self) -> bool:
        return self.status in COVERING

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "name": self.name,
            "image_id": self.image_id,
            "protocol": self.protocol,
            "vendor_id": self.vendor_id,
            "product_id": self.product_id,
            "version": self.numeric_version,
            "version_string": self.version_string,
            "selector": self.selector.model_dump(exclude_none=True),
            "selector_text": describe_selector(self.selector),
            "waves": [str(w) for w in self.waves],
            "soak_s": self.soak_s,
            "max_failures": self.max_failures,
            "max_failure_rate": self.max_failure_rate,
            "wave_deadline_s": self.wave_deadline_s,
            "status": self.status.value,
            "status_reason": self.status_reason,
            "current_wave": self.current_wave,
            "wave_opened_at": self.wave_opened_at,
            "wave_completed_at": self.wave_completed_at,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    # -------------------------------------------------------------------------------- coverage & cohorts
    def covers(self, rec: DeviceRecord) -> bool:
        """Selector match + the image's identity rules (protocol, ids, destination, model, hardware)."""
        if rec.protocol != self.protocol or not selector_matches(self.selector, rec):
            return False
        if rec.vendor_id is None or rec.product_id is None:
            return False
        return _identity_rejection(self.entry_stub(), rec) is None

    def entry_stub(self) -> CatalogEntry:
        """Enough of the catalog entry for identity checks when the real one is not at hand."""
        return _STUBS.setdefault(
            (self.image_id, self.protocol, self.vendor_id, self.product_id),
            CatalogEntry(
                image_id=self.image_id,
                sha256=self.image_sha256,
                package_id="",
                bucket=self.protocol,
                file_name="",
                manifest_version="1",
                name="",
                version=self.version_string,
                description=None,
                size=0,
                license=None,
                license_url=None,
                copyright=None,
                owner=None,
                packager="",
                release_date=None,
                content_type="",
                protocol=self.protocol,  # type: ignore[arg-type]
                vendor_id=self.vendor_id,
                product_id=self.product_id,
                numeric_version=self.numeric_version,
                version_string=self.version_string,
            ),
        )

    def build(self, devices: Iterable[DeviceRecord]) -> None:
        self._cov = {r.device_id: cohort_key(self.rollout_id, r.device_id) for r in devices if self.covers(r)}
        self._sorted = sorted((h, d) for d, h in self._cov.items())
        self._built = True
        self._version += 1

    def track(self, rec: DeviceRecord) -> None:
        """A device appeared or changed identity: add it to / drop it from the cohort index (O(log n) + memmove)."""
        if not self._built:
            return
        covered = self.covers(rec)
        h = self._cov.get(rec.device_id)
        if covered and h is None:
            h = cohort_key(self.rollout_id, rec.device_id)
            self._cov[rec.device_id] = h
            bisect.insort(self._sorted, (h, rec.device_id))
            self._version += 1
        elif not covered and h is not None:
            del self._cov[rec.device_id]
            i = bisect.bisect_left(self._sorted, (h, rec.device_id))
            del self._sorted[i]
            self._version += 1

    def _cumulative(self) -> list[int]:
        cum: list[int] = []
        for w in self.waves:
            cum.append(max(cum[-1] if cum else 0, w.cumulative(len(self._sorted))))
        return cum

    def cohort_wave(self, device_id: str) -> int | None:
        """The wave a covered device's rank puts it in (None: not covered, or beyond the last wave)."""
        h = self._cov.get(device_id)
        if h is None:
            return None
        rank = bisect.bisect_left(self._sorted, (h, device_id))
        for i, c in enumerate(self._cumulative()):
            if rank < c:
                return i
        return None

    def assignments(self) -> dict[str, int]:
        """device id -> wave index for every covered device that is in a wave (cached per index version)."""
        if self._assign_version == self._version:
            return self._assign
        cum = self._cumulative()
        assign: dict[str, int] = {}
        wave = 0
        for rank, (_, dev) in enumerate(self._sorted):
            while wave < len(cum) and rank >= cum[wave]:
                wave += 1
            if wave >= len(cum):
                break
            assign[dev] = wave
        self._assign, self._assign_version = assign, self._version
        return assign

    def wave_of(self, rec: DeviceRecord) -> int | None:
        """The device's wave: the one it was offered in, else its cohort's."""
        if rec.rollout_id == self.rollout_id and rec.rollout_wave is not None:
            return rec.rollout_wave
        return self.cohort_wave(rec.device_id)


_STUBS: dict[tuple[str, str, int, int], CatalogEntry] = {}


def _identity_rejection(entry: CatalogEntry, rec: DeviceRecord) -> str | None:
    """`selection.rejection` minus the version rules (coverage must not depend on the installed version)."""
    desc = DeviceDescriptor(
        protocol=rec.protocol,  # type: ignore[arg-type]
        vendor_id=rec.vendor_id or 0,
        product_id=rec.product_id or 0,
        current_version=-1,  # never equal to, and below, any image version: version rules all pass
        hardware_version=rec.hardware_version,
        ieee=rec.address if rec.protocol == "zigbee" else None,
        model=rec.model,
    )
    why = rejection(entry, desc, allow_downgrade=True)
    if why is not None and why.startswith("applies "):
        return None  # min/max applicable is a version rule
    return why


# ------------------------------------------------------------------------------------------- progress
@dataclass(frozen=True, slots=True)
class WaveStats:
    wave: int
    members: int
    offered: int
    updated: int
    failed: int
    in_progress: int
    done: int

    def to_dict(self) -> dict[str, int]:
        return {
            "wave": self.wave,
            "members": self.members,
            "offered": self.offered,
            "updated": self.updated,
            "failed": self.failed,
            "in_progress": self.in_progress,
            "done": self.done,
        }


_DONE_STATES = frozenset({DeviceState.UPDATED, DeviceState.FAILED, DeviceState.CANCELLED})


def wave_stats(r: Rollout, devices: dict[str, DeviceRecord], assign: dict[str, int], wave: int) -> WaveStats:
    members = offered = updated = failed = in_progress = done = 0
    for dev_id, w in assign.items():
        rec = devices.get(dev_id)
        if rec is None:
            continue
        w = r.wave_of(rec) or 0
        if w != wave:
            continue
        members += 1
        mine = rec.rollout_id == r.rollout_id
        offered += mine
        at_target = rec.current_version is not None and rec.current_version >= r.numeric_version
        # a device counts as failed once an episode in this rollout failed, until it ends up updated
        if mine and rec.rollout_failures > 0 and not at_target and rec.state != DeviceState.UPDATED:
            failed += 1
        if at_target and (not mine or rec.state in _DONE_STATES | {DeviceState.IDLE}):
            updated += 1
        if (mine and rec.state in _DONE_STATES) or at_target or not rec.present:
            done += 1
        elif mine:
            in_progress += 1
    return WaveStats(wave, members, offered, updated, failed, in_progress, done)


@dataclass(frozen=True, slots=True)
class Step:
    """What `evaluate` decided: the new status/wave fields and a reason (None fields: unchanged)."""

    event: str  # "halted", "wave_complete", "wave_opened", "completed"
    reason: str
    status: RolloutStatus | None = None
    current_wave: int | None = None
    wave_opened_at: float | None = None
    wave_completed_at: float | None = None


def evaluate(r: Rollout, devices: dict[str, DeviceRecord], assign: dict[str, int], now: float) -> Step | None:
    """The next progress step of an active rollout, or None when nothing changes now."""
    if r.status != RolloutStatus.ACTIVE:
        return None
    w = r.current_wave
    st = wave_stats(r, devices, assign, w)
    over = (r.max_failures is not None and st.failed > r.max_failures) or (
        r.max_failure_rate is not None and st.offered > 0 and st.failed / st.offered > r.max_failure_rate
    )
    if over:
        limit = (
            f"max_failures {r.max_failures}"
            if r.max_failures is not None and st.failed > r.max_failures
            else f"max_failure_rate {r.max_failure_rate:.0%}"
        )
        return Step(
            "halted",
            f"wave {w + 1}: {st.failed} of {st.offered} offered devices failed, exceeding {limit}",
            status=RolloutStatus.HALTED,
        )
    if r.wave_completed_at is None:
        deadline_passed = (
            r.wave_deadline_s is not None
            and r.wave_opened_at is not None
            and now >= r.wave_opened_at + r.wave_deadline_s
        )
        if st.done >= st.members or deadline_passed:
            why = (
                f"wave {w + 1} done: {st.updated} updated, {st.failed} failed of {st.members}"
                if st.done >= st.members
                else f"wave {w + 1} deadline passed: {st.done} of {st.members} done, {st.failed} failed"
            )
            return Step("wave_complete", f"{why}; soaking {r.soak_s:g} s", wave_completed_at=now)
        return None
    if now < r.wave_completed_at + r.soak_s:
        return None
    if w + 1 >= len(r.waves):
        return Step("completed", f"all {len(r.waves)} waves done and soaked", status=RolloutStatus.COMPLETED)
    return Step(
        "wave_opened",
        f"wave {w + 2} ({r.waves[w + 1]}) opened after wave {w + 1} soaked {r.soak_s:g} s",
        current_wave=w + 1,
        wave_opened_at=now,
    )


def soak_remaining(r: Rollout, now: float) -> float | None:
    if r.status != RolloutStatus.ACTIVE or r.wave_completed_at is None:
        return None
    return max(0.0, r.wave_completed_at + r.soak_s - now)
