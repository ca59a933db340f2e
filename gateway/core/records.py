"""Device update state as data: the OTA_Device record and its transition-history entries (no I/O, no SQL).

`DeviceRecord` is the reference-004 OTA_Device record grown to what the core tracks: identity (protocol, network,
address, endpoint), what the device is (vendor/manufacturer, product/image type, model, hardware and current
version), the episode (state, target image, token, bytes sent - which over-counts on repeated or overlapping
requests, as 004 says - and the highest contiguous offset acknowledged), timers and counters.

Persistence lives in `gateway.core.repository` (the only module with SQL for records, history and rollouts).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from gateway.core.interface import DeviceKey
from gateway.core.states import DeviceState

# What ended a failed episode (DeviceRecord.failure_kind): a download is not an install that did not take.
FAILURE_KINDS = {
    "download": "the transfer failed or expired before the image was complete",
    "apply": "the device refused or never asked to install the downloaded image",
    "device_reported": "the device reported that the update failed",
    "not_back": "not back after update: the device was not heard within the deadline after the apply",
    "not_verified": "heard again after the apply, but never reported the new version within the deadline",
    "old_version": "came back on its old version: the update did not take",
}


class StateDBError(Exception):
    """state.db cannot be used (newer schema, corrupt file); the message says which file and why."""


@dataclass(slots=True)
class DeviceRecord:
    """One device endpoint's OTA_Device record (see module docstring)."""

    device_id: str
    protocol: str
    network: str
    address: str
    endpoint: int
    first_seen: float
    last_seen: float
    state: DeviceState = DeviceState.IDLE
    state_since: float = 0.0
    state_reason: str = ""
    resume_state: DeviceState | None = None  # where `paused` returns to
    vendor_id: int | None = None
    product_id: int | None = None
    vendor_name: str | None = None
    model: str | None = None
    hardware_version: int | None = None
    current_version: int | None = None
    current_version_string: str | None = None
    sleepy: bool | None = None
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    target_image_id: str | None = None
    target_version: int | None = None
    target_version_string: str | None = None
    target_size: int | None = None
    token: bytes | None = None
    token_issued_at: float | None = None
    bytes_sent: int = 0  # every byte served, including repeats (over-counts, per 004)
    acked_offset: int = 0  # highest contiguous offset acknowledged: the resume point
    last_progress_at: float | None = None
    apply_at: float | None = None
    verify_deadline: float | None = None
    rollout_id: str | None = None
    rollout_wave: int | None = None
    rollout_failures: int = 0  # failed episodes inside `rollout_id` (wave failure threshold)
    attempts: int = 0  # offers of the current target
    failures: int = 0  # consecutive failed episodes (drives the retry back-off)
    next_retry_at: float | None = None
    last_error: str | None = None
    reported_status: str | None = None  # last 003 status report from the device
    reported_percent: int | None = None
    last_query: float | None = None
    present: bool = True  # False after device_left
    # owner overrides (schema step 3 in gateway/core/schema.py): set by the owner, never by a device
    name: str | None = None  # the owner's name for the device ("Kitchen lamp")
    pinned_version: str | None = None  # a version spec this device is held at (policy.version_matches syntax)
    excluded: bool = False  # never offered an update (rules and rollouts alike)
    # --- update safety (issue 18 / 11); columns added by repository migration 3 ---------------------------
    failure_kind: str | None = None  # why the last episode failed: see FAILURE_KINDS
    blocked_image_id: str | None = None  # never offered again until a person acts (`devices retry`)
    blocked_reason: str | None = None
    blocked_at: float | None = None  # parked since: only images added after this are offered (a new image acts)
    last_answer: str | None = None  # the last query's answer: Available / NotAvailable / Busy
    last_answer_reason: str | None = None
    power_source: str | None = None  # "mains" | "battery" | None (unknown), as the device says
    battery_percent: int | None = None  # 0..100, last read from the device

    @property
    def key(self) -> DeviceKey:
        return DeviceKey(self.protocol, self.network, self.address, self.endpoint)  # type: ignore[arg-type]

    @property
    def percent(self) -> int | None:
        if not self.target_size:
            return None
        return min(100, self.acked_offset * 100 // self.target_size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (CLI --json, HTTP API)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bytes):
                v = v.hex()
            elif isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, DeviceState):
                v = v.value
            out[f.name] = v
        out["percent"] = self.percent
        # reference 004 "bytes downloaded": the contiguous part of the image the device has (the resume point);
        # bytes_sent over-counts repeats. Full size once the transfer finished, kept until the next offer.
        out["bytes_downloaded"] = self.acked_offset if self.target_image_id is not None else None
        return out


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    device_id: str
    at: float
    old_state: str | None
    new_state: str
    reason: str
    image_id: str | None = None
    version: int | None = None
    offset: int | None = None

    def row(self) -> tuple[Any, ...]:
        return (
            self.device_id,
            self.at,
            self.old_state,
            self.new_state,
            self.reason,
            self.image_id,
            self.version,
            self.offset,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "old_state": self.old_state,
            "new_state": self.new_state,
            "reason": self.reason,
            "image_id": self.image_id,
            "version": self.version,
            "offset": self.offset,
        }
