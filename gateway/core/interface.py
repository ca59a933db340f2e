"""The neutral update interface: the only thing adapters call (the contract between core and adapters).

An adapter (Matter provider, Zigbee OTA server, the HTTP version query) turns protocol messages into these
calls and maps the answers back onto its protocol. The core never learns what a ZCL frame or a BDX block is.

Lifecycle of one update, as the adapter sees it:

    observe(device)                                  -> device record created/refreshed (joins, attribute reads)
    query(device, installed)                         -> Available(token, image, delay, consent...) | NotAvailable | Busy
    open_image(token)                                -> ImageReader (random access, no per-transfer copy)
    progress(token, offset, nbytes)                  -> Continue | Wait(retry_after)   (per block or batch)
    download_complete(token) / download_failed(token, reason)
    apply_request(token, new_version)                -> ApplyDecision(Proceed | AwaitNextAction | Discontinue, delay)
    report_version(device, version, version_string)  -> the core verifies and marks Updated (or Failed at deadline)
    status_report(device, StatusReport)              -> reference 003 "OTA Status Report" semantics

Semantics follow reference 003 (Query Software Packages: installed package ids in, available packages and a
callback interval out) and 002 (provider knobs: status, delays, consent, apply action).

The contract in detail (implemented by gateway.core.service.UpdateCore; every answer carries a readable `reason`):

- `observe` creates/refreshes the device record; fields left None keep their stored value. A `current_version`
  equal to the target of an applied update verifies it (same as `report_version`).
- `query`: `installed` are 003 package ids (`CatalogEntry.package_id`); when the device gave no
  `current_version` the highest installed known package sets it, and an offered package already installed gives
  NotAvailable. Answers:
  * `Available`: start (or resume) a transfer with `token`. Re-querying during a live transfer returns the
    same token and `resume_offset` (highest contiguous offset acknowledged); `consent_needed` comes from policy
    (adapters only pass it on when the requestor can consent). `delay_s` is 0 today.
  * `NotAvailable(callback_interval_s)`: nothing to offer (up to date, no image, policy, rollout wave not open).
  * `Busy(retry_after_s)`: something is due but not now (transfer budget full, download window closed,
    rollout paused/halted, back-off after a failure, an install already scheduled). Never an error.
- `open_image(token)`: a read-only view on a reader shared by all transfers of that image; adapters do not close
  it. Raises `UnknownToken` when the token is not a live transfer.
- `progress(token, offset, nbytes)`: bytes served at `offset` (repeats and overlaps allowed; they count in
  `bytes_sent` but the resume point only grows contiguously). `Continue`, or `Wait(retry_after_s)` while paused
  or when the transfer lost its budget slot. Raises `UnknownToken` for ended transfers (adapters abort).
- `download_complete` / `download_failed`: idempotent; ignored for ended tokens.
- `apply_request(token, new_version)`: `PROCEED` with `delay_s`/`apply_at` (0/now, or the next apply-window
  opening: "download now, install in the window"; Matter DelayedActionTime, Zigbee upgrade time);
  `AWAIT_NEXT_ACTION` with `delay_s` (rollout paused, or the window further off than policy.max_apply_delay_s:
  ask again then); `DISCONTINUE` (unknown token, wrong version, version now blocked, rollout aborted).
- `report_version`: the only proof of success: the target version after an apply -> updated; otherwise the
  verification deadline fails the update. A device that queries again with its old version after the apply time
  has failed the update.
- `status_report`: 003 statuses move the record (Successfully Updated is a claim: -> verifying, not updated;
  Failed to Update -> failed with the error text); `percent` is recorded and published.
- `active_transfer(key) -> TransferInfo | None` (re-attach after a restart), `mark_notified(key)` (after
  Image Notify / AnnounceOTAProvider), `devices_to_notify()` (devices in update_available), `get_device(id)` and
  `plan()` (read-only views): adapters call these directly, never through `getattr`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.store.model import CatalogEntry, ProtocolName


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """Identity of one device endpoint.

    Zigbee: network = extended PAN id as "epid:0011223344556677" (records named "pan:1a2b" by older versions are
    renamed at start), address = IEEE "aa:bb:..", endpoint = endpoint id.
    Matter: network = "fabric:<compressed fabric id hex>", address = node id as 16 hex digits, endpoint = 0.
    """

    protocol: ProtocolName
    network: str
    address: str
    endpoint: int

    @property
    def device_id(self) -> str:
        """Stable string id used in CLI, API and cohort hashing."""
        return f"{self.protocol}:{self.network}:{self.address}:{self.endpoint}"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What an adapter knows about a device; any field may be None when not yet read."""

    key: DeviceKey
    vendor_id: int | None = None  # Matter VendorID / Zigbee manufacturer code
    product_id: int | None = None  # Matter ProductID / Zigbee image type
    vendor_name: str | None = None
    model: str | None = None
    hardware_version: int | None = None
    current_version: int | None = None
    current_version_string: str | None = None
    sleepy: bool | None = None  # True for sleepy end devices; routers / mains-powered are False
    tags: tuple[str, ...] = ()
    extra: dict[str, object] = field(
        default_factory=dict
    )  # e.g. {"min_block_period_ms": 0, "location": "DE"}
    # (additive) as the device says (Zigbee node descriptor / Basic PowerSource, Matter Power Source features),
    # never guessed from the model: "mains", "battery" or None (unknown)
    power_source: str | None = None
    battery_percent: int | None = None  # 0..100 (Zigbee BatteryPercentageRemaining / 2, Matter BatPercentRemaining / 2)


@dataclass(frozen=True, slots=True)
class Available:
    token: bytes  # >= 8 bytes, unique per requestor and transfer
    image: CatalogEntry
    delay_s: int = 0  # DelayedActionTime before starting the download
    consent_needed: bool = False
    metadata: bytes | None = None
    reason: str = ""
    resume_offset: int = 0  # (additive) highest contiguous offset the device already acknowledged


@dataclass(frozen=True, slots=True)
class NotAvailable:
    callback_interval_s: int  # when to ask again (003 Callback Interval)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Busy:
    retry_after_s: int  # budget full, outside the download window, rollout not reached...
    reason: str = ""


QueryResult = Available | NotAvailable | Busy


@dataclass(frozen=True, slots=True)
class Continue:
    """Keep transferring now."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Pause this transfer (Zigbee WAIT_FOR_DATA, BDX pacing) and come back after `retry_after_s`."""

    retry_after_s: float
    reason: str = ""


ProgressDecision = Continue | Wait


class ApplyAction(enum.IntEnum):
    """Values match Matter ApplyUpdateActionEnum."""

    PROCEED = 0
    AWAIT_NEXT_ACTION = 1
    DISCONTINUE = 2


@dataclass(frozen=True, slots=True)
class ApplyDecision:
    action: ApplyAction
    delay_s: int = 0  # DelayedActionTime / Zigbee upgrade time offset
    apply_at: float | None = None  # absolute wall time when action is PROCEED with a window
    reason: str = ""


class ReportedStatus(enum.StrEnum):
    """Reference 003 "OTA Status Report" states."""

    NOTIFIED = "Notified"
    DOWNLOADING = "Downloading"
    UPDATING = "Updating"
    SUCCESSFULLY_UPDATED = "Successfully Updated"
    FAILED_TO_UPDATE = "Failed to Update"


@dataclass(frozen=True, slots=True)
class StatusReport:
    status: ReportedStatus
    percent: int | None = None
    error: str | None = None


class UnknownToken(LookupError):
    """(additive) The token is not a live transfer: never issued, or its episode ended (failed, cancelled,
    updated, superseded by a new offer). Raised by open_image and progress; adapters abort the transfer
    (Zigbee status ABORT, BDX StatusReport). download_complete/download_failed on an ended token are no-ops."""


@dataclass(frozen=True, slots=True)
class TransferInfo:
    """(additive) What `active_transfer(key)` returns: lets an adapter re-attach to a transfer after a restart."""

    token: bytes
    image: CatalogEntry
    state: str  # gateway.core.states.DeviceState value
    acked_offset: int  # resume point: highest contiguous offset acknowledged
    bytes_sent: int


class ImageReader(Protocol):
    """Random-access read of one stored image; shared by all transfers of that image."""

    size: int

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset` (fewer only at the end). Raises ValueError outside the image."""
        ...


class DeviceView(Protocol):
    """What an adapter reads of a device record (`get_device`): its state (a DeviceState value) and apply time."""

    @property
    def state(self) -> str: ...

    @property
    def apply_at(self) -> float | None: ...


class PlanView(Protocol):
    """What an adapter reads of one `plan()` line: which device would get which image now (outcome "update")."""

    @property
    def device_id(self) -> str: ...

    @property
    def outcome(self) -> str: ...

    @property
    def image_id(self) -> str | None: ...


class UpdateCoreInterface(Protocol):
    """What the core offers adapters. Implemented by gateway.core.service.UpdateCore."""

    async def observe(self, device: DeviceInfo) -> None: ...

    async def device_left(self, key: DeviceKey) -> None: ...

    async def query(self, device: DeviceInfo, installed: list[str] | None = None) -> QueryResult: ...

    async def rename_network(self, protocol: str, old: str, new: str) -> int:
        """Records of network `old` now belong to network `new` (the adapter's stable id for the same network);
        device ids are rewritten, history, tokens and budget slots follow. Returns how many records moved."""
        ...

    async def query_version(self, device: DeviceInfo, version: int) -> QueryResult:
        """A device asks for one exact version (Zigbee Query Specific File): `Available` only when the core's
        decision for it is an image of exactly that version (then the same as `query`); otherwise `NotAvailable`
        naming both versions, and nothing changes (no offer is made, no budget slot is taken)."""
        ...

    def open_image(self, token: bytes) -> ImageReader: ...

    async def progress(self, token: bytes, offset: int, nbytes: int) -> ProgressDecision: ...

    async def download_complete(self, token: bytes) -> None: ...

    async def download_failed(self, token: bytes, reason: str) -> None: ...

    async def apply_request(self, token: bytes, new_version: int) -> ApplyDecision: ...

    async def report_version(
        self, key: DeviceKey, version: int, version_string: str | None = None
    ) -> None: ...

    async def status_report(self, key: DeviceKey, report: StatusReport) -> None: ...

    async def update_applied(self, key: DeviceKey, token: bytes) -> None:
        """(additive) The device says it applied the update it was offered under `token` (Matter
        NotifyUpdateApplied). Raises UnknownToken, changing nothing, unless `token` is the device's current
        offer/apply token; otherwise recorded like status_report(SUCCESSFULLY_UPDATED)."""
        ...

    def active_transfer(self, key: DeviceKey) -> TransferInfo | None:
        """The device's live transfer (token, image, resume point), to re-attach after a restart."""
        ...

    async def mark_notified(self, key: DeviceKey, reason: str = "adapter notified the device") -> None:
        """The adapter told the device an update is due (Image Notify / AnnounceOTAProvider)."""
        ...

    def devices_to_notify(self) -> list[DeviceKey]:
        """Devices with an update due that have not been offered it yet."""
        ...

    def get_device(self, device_id: str) -> DeviceView | None:
        """A snapshot of the device's record (None: unknown device)."""
        ...

    def plan(self) -> Sequence[PlanView]:
        """Dry run: what every device would get now (changes nothing)."""
        ...
