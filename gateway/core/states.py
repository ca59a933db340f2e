"""The OTA_Device state machine: the states one device endpoint's update goes through and the legal moves.

One update "episode" runs

    idle -> update_available -> notified -> querying -> downloading -> downloaded
         -> waiting_to_apply -> applying -> verifying -> updated | failed | cancelled

with two holding states: `paused` (an operator or a paused rollout holds the device; the record remembers the
state to return to) and `waiting_for_window` (an update is due but the download window is closed). Not every
step is visited: a device that queries by itself skips `update_available`/`notified`, one that applies at once
skips `waiting_to_apply`.

Meaning of each state (what the core is waiting for):
- idle: nothing to do; the device is up to date as far as policy and the catalog say.
- update_available: an image is due but the device has not been offered it yet (next query or a notification).
- notified: an adapter told the device (Zigbee Image Notify, Matter AnnounceOTAProvider); waiting for its query.
- querying: the device got `Available` with a token; waiting for its first block.
- downloading: blocks are flowing; `bytes_sent` and `acked_offset` grow.
- downloaded: the whole image went out; waiting for the device's apply request.
- waiting_to_apply: the device was told to apply later (apply window, AwaitNextAction).
- applying: the device was told to install now; waiting for it to come back.
- verifying: the device claims success (status report) but has not yet reported the new version.
- updated: the device reported the target version (success is verified, never assumed).
- failed / cancelled: the episode ended without the update; the next query starts a new episode.

Every state has at least one way out, so no device can be stranded: terminal states re-open on the next
query, holding states on resume/window opening, transfer states on completion or expiry (`UpdateCore.sweep`).
"""

from __future__ import annotations

import enum

from gateway.core.interface import ReportedStatus


class DeviceState(enum.StrEnum):
    IDLE = "idle"
    UPDATE_AVAILABLE = "update_available"
    NOTIFIED = "notified"
    QUERYING = "querying"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    WAITING_TO_APPLY = "waiting_to_apply"
    APPLYING = "applying"
    VERIFYING = "verifying"
    UPDATED = "updated"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"
    WAITING_FOR_WINDOW = "waiting_for_window"


S = DeviceState

# States that start a new episode: allowed from every "at rest" state.
_EPISODE_START = frozenset({S.UPDATE_AVAILABLE, S.NOTIFIED, S.QUERYING, S.WAITING_FOR_WINDOW})

TRANSITIONS: dict[DeviceState, frozenset[DeviceState]] = {
    S.IDLE: _EPISODE_START,
    S.UPDATE_AVAILABLE: frozenset(
        {S.NOTIFIED, S.QUERYING, S.WAITING_FOR_WINDOW, S.PAUSED, S.IDLE, S.CANCELLED}
    ),
    S.NOTIFIED: frozenset(
        {S.UPDATE_AVAILABLE, S.QUERYING, S.WAITING_FOR_WINDOW, S.PAUSED, S.IDLE, S.CANCELLED, S.FAILED}
    ),
    S.QUERYING: frozenset({S.DOWNLOADING, S.DOWNLOADED, S.PAUSED, S.FAILED, S.CANCELLED, S.IDLE}),
    S.DOWNLOADING: frozenset({S.DOWNLOADED, S.PAUSED, S.FAILED, S.CANCELLED}),
    S.DOWNLOADED: frozenset({S.WAITING_TO_APPLY, S.APPLYING, S.PAUSED, S.FAILED, S.CANCELLED}),
    S.WAITING_TO_APPLY: frozenset({S.APPLYING, S.PAUSED, S.FAILED, S.CANCELLED}),
    S.APPLYING: frozenset({S.VERIFYING, S.UPDATED, S.FAILED}),
    S.VERIFYING: frozenset({S.UPDATED, S.FAILED}),
    S.UPDATED: _EPISODE_START | {S.IDLE},
    S.FAILED: _EPISODE_START | {S.IDLE},
    S.CANCELLED: _EPISODE_START | {S.IDLE},
    S.PAUSED: frozenset(
        {
            S.UPDATE_AVAILABLE,
            S.NOTIFIED,
            S.QUERYING,
            S.DOWNLOADING,
            S.DOWNLOADED,
            S.WAITING_TO_APPLY,
            S.WAITING_FOR_WINDOW,
            S.FAILED,
            S.CANCELLED,
            S.IDLE,
        }
    ),
    S.WAITING_FOR_WINDOW: frozenset(
        {S.UPDATE_AVAILABLE, S.NOTIFIED, S.QUERYING, S.PAUSED, S.IDLE, S.CANCELLED}
    ),
}

# A transfer holds a concurrency-budget slot in these states.
TRANSFER_STATES = frozenset({S.QUERYING, S.DOWNLOADING})
# The device holds a token the adapters may present (open_image, progress, apply_request).
TOKEN_STATES = frozenset(
    {S.QUERYING, S.DOWNLOADING, S.DOWNLOADED, S.WAITING_TO_APPLY, S.APPLYING, S.VERIFYING}
)
# The device has been told to install; only a version report (or the deadline) ends this.
APPLY_STATES = frozenset({S.APPLYING, S.VERIFYING})
# The episode is over.
TERMINAL_STATES = frozenset({S.IDLE, S.UPDATED, S.FAILED, S.CANCELLED})
# States `paused` may hold (and return to).
PAUSABLE_STATES = frozenset(
    {
        S.UPDATE_AVAILABLE,
        S.NOTIFIED,
        S.QUERYING,
        S.DOWNLOADING,
        S.DOWNLOADED,
        S.WAITING_TO_APPLY,
        S.WAITING_FOR_WINDOW,
    }
)


class IllegalTransition(Exception):
    """A move the state machine does not allow; names the device, both states and why it was attempted."""

    def __init__(self, device_id: str, old: DeviceState, new: DeviceState, reason: str = "") -> None:
        self.device_id = device_id
        self.old = old
        self.new = new
        self.reason = reason
        allowed = ", ".join(sorted(TRANSITIONS[old])) or "none"
        super().__init__(
            f"{device_id}: illegal transition {old} -> {new}"
            + (f" ({reason})" if reason else "")
            + f"; allowed from {old}: {allowed}"
        )


def check_transition(device_id: str, old: DeviceState, new: DeviceState, reason: str = "") -> None:
    """Raise `IllegalTransition` unless `old -> new` is a legal move."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(device_id, old, new, reason)


def reported_status(state: DeviceState) -> ReportedStatus | None:
    """The reference-003 status a record in `state` corresponds to (None where 003 has no word for it)."""
    return _REPORTED.get(state)


_REPORTED: dict[DeviceState, ReportedStatus] = {
    S.NOTIFIED: ReportedStatus.NOTIFIED,
    S.QUERYING: ReportedStatus.NOTIFIED,
    S.DOWNLOADING: ReportedStatus.DOWNLOADING,
    S.DOWNLOADED: ReportedStatus.DOWNLOADING,
    S.WAITING_TO_APPLY: ReportedStatus.UPDATING,
    S.APPLYING: ReportedStatus.UPDATING,
    S.VERIFYING: ReportedStatus.UPDATING,
    S.UPDATED: ReportedStatus.SUCCESSFULLY_UPDATED,
    S.FAILED: ReportedStatus.FAILED_TO_UPDATE,
}
