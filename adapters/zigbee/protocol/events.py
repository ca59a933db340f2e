"""The vocabulary of the sans-I/O Zigbee OTA server: the events it is fed and the actions it asks for.

A request from a device (already decoded by zigpy's ZCL codec) or a timer expiry is an *event*; the server answers
it with a *flow* (server.py), a generator that yields *actions* one at a time. The I/O layer (adapter.py) performs
each action — sends a frame, awaits the core, reads the image, sleeps on the clock — and sends the action's
*answer* back into the flow (the value named in each action's docstring; None when it has none). Every action is
plain data, so a test drives a flow with a table of answers and compares the actions it gets, no asyncio needed.
Timer events are frozen (hashable: the I/O layer keys its timers by them); the rest are plain slotted records,
built once per block on the hot path, where a frozen dataclass's __init__ costs several microseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from adapters.zigbee.ota_server import OtaDevice
from gateway.core.interface import DeviceInfo, DeviceKey, StatusReport

# --------------------------------------------------------------------------------------------- events in


@dataclass(slots=True)
class QueryNextImage:
    """Query Next Image Request. `info` is the device as the request and zigpy's attribute cache describe it."""

    key: DeviceKey
    tsn: int
    info: DeviceInfo


@dataclass(slots=True)
class QuerySpecificFile:
    """Query Specific File Request for `file_version`; `info` already names the requested image's identity."""

    key: DeviceKey
    tsn: int
    info: DeviceInfo
    file_version: int


@dataclass(slots=True)
class ImageBlockRequest:
    """Image Block Request (minimum_block_period is present only when the device sent it)."""

    key: DeviceKey
    tsn: int
    manufacturer_code: int
    image_type: int
    file_version: int
    file_offset: int
    maximum_data_size: int
    minimum_block_period: int | None


@dataclass(slots=True)
class ImagePageRequest:
    """Image Page Request: `page_size` bytes as consecutive blocks, `response_spacing` ms apart."""

    key: DeviceKey
    tsn: int
    manufacturer_code: int
    image_type: int
    file_version: int
    file_offset: int
    maximum_data_size: int
    page_size: int
    response_spacing: int


@dataclass(slots=True)
class UpgradeEndRequest:
    """Upgrade End Request with the device's status (0 SUCCESS, INVALID_IMAGE, ABORT, ...)."""

    key: DeviceKey
    tsn: int
    status: int
    manufacturer_code: int
    image_type: int
    file_version: int
    disable_default_response: bool


@dataclass(slots=True)
class DeviceInterviewed:
    """zigpy finished interviewing the device (join or re-interview) and its OTA attributes were read."""

    key: DeviceKey


@dataclass(frozen=True, slots=True)
class ApplyRecheckDue:
    """Timer: the device was told to wait (upgrade time 0xFFFFFFFF); ask the core again whether to apply."""

    key: DeviceKey


@dataclass(frozen=True, slots=True)
class ReadBackDue:
    """Timer: the upgrade time plus the reboot wait passed; read current_file_version back."""

    key: DeviceKey


@dataclass(frozen=True, slots=True)
class NotifyDue:
    """Timer: the core expected room for a Busy device by now; send it an Image Notify."""

    key: DeviceKey


@dataclass(frozen=True, slots=True)
class StallCheckDue:
    """Timer: look for transfers silent longer than their stall timeout."""


Event = (
    QueryNextImage
    | QuerySpecificFile
    | ImageBlockRequest
    | ImagePageRequest
    | UpgradeEndRequest
    | DeviceInterviewed
    | ApplyRecheckDue
    | ReadBackDue
    | NotifyDue
    | StallCheckDue
)
TimerEvent = ApplyRecheckDue | ReadBackDue | NotifyDue | StallCheckDue

# --------------------------------------------------------------------------------------------- actions out
# Frames. A frame with `tsn=None` is unsolicited (the I/O layer takes a fresh sequence number).


@dataclass(slots=True)
class SendQueryResponse:
    """Query Next Image Response (or Query Specific File Response when `specific`); answer: delivered (bool).
    Status SUCCESS carries the image identity and size; NO_IMAGE_AVAILABLE carries nothing else."""

    key: DeviceKey
    tsn: int
    status: int
    manufacturer_code: int | None = None
    image_type: int | None = None
    file_version: int | None = None
    image_size: int | None = None
    specific: bool = False


@dataclass(slots=True)
class SendBlock:
    """Image Block Response SUCCESS with `length` image bytes at `offset` of the transfer's image (the I/O layer
    reads them: the store is I/O); answer: delivered (bool)."""

    key: DeviceKey
    tsn: int | None
    offset: int
    length: int
    transfer: OtaDevice = field(compare=False, repr=False)


@dataclass(slots=True)
class SendWaitForData:
    """Image Block Response WAIT_FOR_DATA (ZCL UTC times); answer: delivered (bool)."""

    key: DeviceKey
    tsn: int | None
    current_time: int
    request_time: int
    minimum_block_period: int


@dataclass(slots=True)
class SendBlockStatus:
    """Image Block Response with a bare status (ABORT, MALFORMED_COMMAND); answer: delivered (bool)."""

    key: DeviceKey
    tsn: int | None
    status: int


@dataclass(slots=True)
class SendUpgradeEndResponse:
    """Upgrade End Response (ZCL UTC times; upgrade_time 0xFFFFFFFF = wait); answer: delivered (bool)."""

    key: DeviceKey
    tsn: int | None
    manufacturer_code: int
    image_type: int
    file_version: int
    current_time: int
    upgrade_time: int


@dataclass(slots=True)
class SendDefaultResponse:
    """Default Response to the request that started the flow, with `status`; no answer."""

    key: DeviceKey
    tsn: int
    status: int


@dataclass(slots=True)
class SendImageNotify:
    """Unicast Image Notify (QueryJitter payload, jitter 100: the device always answers); answer: delivered."""

    key: DeviceKey


@dataclass(slots=True)
class DescribeDevice:
    """The device endpoint as zigpy's attribute cache describes it (no traffic); answer: DeviceInfo."""

    key: DeviceKey


@dataclass(slots=True)
class ReadVersion:
    """Read current_file_version from the device, uncached; answer: the version (int), or None on failure."""

    key: DeviceKey


# Core calls (gateway/core/interface.py). Answers are what the core returns; a raised UnknownToken is answered
# as the exception instance.


@dataclass(slots=True)
class CoreObserve:
    info: DeviceInfo


@dataclass(slots=True)
class CoreReportVersion:
    key: DeviceKey
    version: int


@dataclass(slots=True)
class CoreStatusReport:
    """A reference 003 status the device stated in ZCL terms (e.g. Upgrade End SUCCESS: 100 % downloaded)."""

    key: DeviceKey
    report: StatusReport


@dataclass(slots=True)
class CoreQuery:
    """answer: QueryResult"""

    info: DeviceInfo


@dataclass(slots=True)
class CoreQueryVersion:
    """answer: QueryResult (the core offers exactly `version` or nothing, holding no slot on a mismatch)"""

    info: DeviceInfo
    version: int


@dataclass(slots=True)
class CoreActiveTransfer:
    """answer: TransferInfo or None (None too when the core does not offer `active_transfer`)"""

    key: DeviceKey


@dataclass(slots=True)
class CorePlanOutcome:
    """answer: the core's plan outcome for the device ("update", "later", "none", ...), None when unknown"""

    key: DeviceKey


@dataclass(slots=True)
class CoreOpenImage:
    """answer: ImageReader, or UnknownToken"""

    token: bytes


@dataclass(slots=True)
class CoreProgress:
    """answer: ProgressDecision, or UnknownToken"""

    token: bytes
    offset: int
    nbytes: int


@dataclass(slots=True)
class CoreDownloadComplete:
    token: bytes


@dataclass(slots=True)
class CoreDownloadFailed:
    token: bytes
    reason: str


@dataclass(slots=True)
class CoreApplyRequest:
    """answer: ApplyDecision"""

    token: bytes
    new_version: int


# Timers and flows


@dataclass(slots=True)
class SetTimer:
    """Feed `event` to the server after `delay_s` seconds (clock), replacing a pending timer for the same event."""

    event: TimerEvent
    delay_s: float


@dataclass(slots=True)
class Sleep:
    """Pause this flow for `seconds` (clock) without counting as busy; no answer."""

    seconds: float


@dataclass(slots=True)
class StartPageStream:
    """Run `ImagePageRequest` as its own flow (server.stream_page), replacing a page still streaming to `key`."""

    request: ImagePageRequest
    transfer: OtaDevice = field(compare=False, repr=False)


@dataclass(slots=True)
class CancelPageStream:
    key: DeviceKey


@dataclass(slots=True)
class SaveLearnedCaps:
    """Persist the learned block-size caps (JSON text)."""

    text: str


Action = (
    SendQueryResponse
    | SendBlock
    | SendWaitForData
    | SendBlockStatus
    | SendUpgradeEndResponse
    | SendDefaultResponse
    | SendImageNotify
    | DescribeDevice
    | ReadVersion
    | CoreObserve
    | CoreReportVersion
    | CoreStatusReport
    | CoreQuery
    | CoreQueryVersion
    | CoreActiveTransfer
    | CorePlanOutcome
    | CoreOpenImage
    | CoreProgress
    | CoreDownloadComplete
    | CoreDownloadFailed
    | CoreApplyRequest
    | SetTimer
    | Sleep
    | StartPageStream
    | CancelPageStream
    | SaveLearnedCaps
)
