"""The sans-I/O Zigbee OTA server on its own: events in, actions out, answers fed back, clock readings passed in.

No asyncio, no zigpy network, no core: each test is a table of (answer to the previous action, expected next
action). The answers are what the core / radio would return; the server's decisions are what is checked.
"""

from __future__ import annotations

from typing import Any

import pytest
from zigpy.zcl.foundation import Status

from adapters.zigbee.ota_server import UPGRADE_TIME_WAIT, TransferStatus, zcl_utc
from adapters.zigbee.protocol.events import (
    Action,
    ApplyRecheckDue,
    CancelPageStream,
    CoreActiveTransfer,
    CoreApplyRequest,
    CoreDownloadComplete,
    CoreDownloadFailed,
    CoreObserve,
    CoreOpenImage,
    CorePlanOutcome,
    CoreProgress,
    CoreQuery,
    CoreReportVersion,
    CoreStatusReport,
    DescribeDevice,
    DeviceInterviewed,
    Event,
    ImageBlockRequest,
    ImagePageRequest,
    NotifyDue,
    QueryNextImage,
    ReadBackDue,
    ReadVersion,
    SendBlock,
    SendBlockStatus,
    SendDefaultResponse,
    SendImageNotify,
    SendQueryResponse,
    SendUpgradeEndResponse,
    SendWaitForData,
    SetTimer,
    Sleep,
    StallCheckDue,
    StartPageStream,
    UpgradeEndRequest,
)
from adapters.zigbee.protocol.server import OtaServer
from gateway.config import parse_config
from gateway.core.interface import (
    ApplyAction,
    ApplyDecision,
    Available,
    Busy,
    Continue,
    DeviceInfo,
    DeviceKey,
    ReportedStatus,
    StatusReport,
    TransferInfo,
    UnknownToken,
    Wait,
)
from gateway.store.model import CatalogEntry

MFR, ITYPE, OLD, NEW = 0x117C, 0x2811, 0x1FF, 0x200
KEY = DeviceKey("zigbee", "pan:1a2b", "00:0d:6f:00:00:00:00:01", 1)
NOW, MONO = 1_700_000_000.0, 1000.0
TOKEN = b"token-01"
IMAGE = CatalogEntry(
    image_id="img1",
    sha256="0" * 64,
    package_id="zigbee:117c:2811",
    bucket="zigbee",
    file_name="x.ota",
    manifest_version="1",
    name="x",
    version="0x00000200",
    description=None,
    size=1000,
    license=None,
    license_url=None,
    copyright=None,
    owner=None,
    packager="otagw",
    release_date=None,
    content_type="application/octet-stream",
    protocol="zigbee",
    vendor_id=MFR,
    product_id=ITYPE,
    numeric_version=NEW,
    version_string="0x00000200",
)
INFO = DeviceInfo(KEY, MFR, ITYPE, "sim", "SimLight", 1, OLD, f"0x{OLD:08x}", sleepy=False)


class BytesReader:
    """An in-memory image (ImageReader protocol)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def read(self, offset: int, length: int) -> bytes:
        return bytes(length)


READER = BytesReader(1000)


def server(**zigbee: Any) -> OtaServer:
    return OtaServer(parse_config({"zigbee": {"enabled": True, **zigbee}}).zigbee)


def run(srv: OtaServer, event: Event, table: list[tuple[Action, Any]], now: float = NOW) -> None:
    """Start `event`'s flow; each row is (the action expected next, the answer to feed back); then the end."""
    flow = srv.handle(event)
    action = srv.step(flow, None, now, MONO)
    for i, (expected, answer) in enumerate(table):
        assert action == expected, f"step {i}: expected {expected}, got {action}"
        if action is None:
            return
        action = srv.step(flow, answer, now, MONO)
    assert action is None, f"unexpected extra action {action}"


def offered(srv: OtaServer, **zigbee: Any) -> None:
    """Bring `srv` to a live transfer of IMAGE for KEY (Query Next Image -> SUCCESS)."""
    run(
        srv,
        QueryNextImage(KEY, 1, INFO),
        [
            (CoreObserve(INFO), None),
            (CoreQuery(INFO), Available(TOKEN, IMAGE)),
            (CoreOpenImage(TOKEN), READER),
            (SendQueryResponse(KEY, 1, Status.SUCCESS, MFR, ITYPE, NEW, 1000), True),
        ],
    )


def block(offset: int, size: int = 64, tsn: int = 5, mbp: int | None = None) -> ImageBlockRequest:
    return ImageBlockRequest(KEY, tsn, MFR, ITYPE, NEW, offset, size, mbp)


def end(status: Status = Status.SUCCESS, tsn: int = 9) -> UpgradeEndRequest:
    return UpgradeEndRequest(KEY, tsn, status, MFR, ITYPE, NEW, False)


# ------------------------------------------------------------------------------------------ offers
def test_query_busy_mains_powered_gets_a_notify_timer_once() -> None:
    srv = server()
    table = [
        (CoreObserve(INFO), None),
        (CoreQuery(INFO), Busy(30)),
        (SendQueryResponse(KEY, 1, Status.NO_IMAGE_AVAILABLE), True),
        (SetTimer(NotifyDue(KEY), 30), None),
    ]
    run(srv, QueryNextImage(KEY, 1, INFO), table)
    # asked again while the notify is pending: no second timer (and the record did not change: no observe)
    run(
        srv,
        QueryNextImage(KEY, 2, INFO),
        [(CoreQuery(INFO), Busy(30)), (SendQueryResponse(KEY, 2, Status.NO_IMAGE_AVAILABLE), True)],
    )
    run(srv, NotifyDue(KEY), [(SendImageNotify(KEY), True)])


def test_query_busy_sleepy_device_gets_no_notify() -> None:
    srv = server()
    sleepy = DeviceInfo(KEY, MFR, ITYPE, current_version=OLD, sleepy=True)
    run(
        srv,
        QueryNextImage(KEY, 1, sleepy),
        [
            (CoreObserve(sleepy), None),
            (CoreQuery(sleepy), Busy(30)),
            (SendQueryResponse(KEY, 1, Status.NO_IMAGE_AVAILABLE), True),
        ],
    )


def test_offer_the_core_cannot_open_is_no_image() -> None:
    srv = server()
    run(
        srv,
        QueryNextImage(KEY, 1, INFO),
        [
            (CoreObserve(INFO), None),
            (CoreQuery(INFO), Available(TOKEN, IMAGE)),
            (CoreOpenImage(TOKEN), UnknownToken("gone")),
            (SendQueryResponse(KEY, 1, Status.NO_IMAGE_AVAILABLE), True),
        ],
    )
    assert KEY not in srv.transfers


@pytest.mark.parametrize(("outcome", "notified"), [("update", True), ("later", False), (None, False)])
def test_interviewed_device_is_notified_only_when_the_plan_updates_it(outcome: Any, notified: bool) -> None:
    table: list[tuple[Action, Any]] = [(CorePlanOutcome(KEY), outcome)]
    if notified:
        table.append((SendImageNotify(KEY), True))
    run(server(), DeviceInterviewed(KEY), table)


# ------------------------------------------------------------------------------------------ blocks
def test_block_served_after_core_progress_and_recorded() -> None:
    srv = server(default_max_block_bytes=50)
    offered(srv)
    tr = srv.transfers[KEY]
    run(srv, block(0), [(CoreProgress(TOKEN, 0, 50), Continue()), (SendBlock(KEY, 5, 0, 50, tr), True)])
    assert (tr.bytes_downloaded, tr.highest_offset, tr.last_block_size) == (50, 50, 50)
    # the last block is cut at the image end
    run(srv, block(990), [(CoreProgress(TOKEN, 990, 10), Continue()), (SendBlock(KEY, 5, 990, 10, tr), True)])
    assert tr.highest_offset == 1000


def test_block_core_says_wait_gives_wait_for_data() -> None:
    srv = server()
    offered(srv)
    run(
        srv,
        block(0),
        [
            (CoreProgress(TOKEN, 0, 64), Wait(12)),
            (SendWaitForData(KEY, 5, zcl_utc(NOW), zcl_utc(NOW + 12), 0), True),
        ],
    )
    assert srv.transfers[KEY].last_activity_mono == MONO + 12  # silence while waiting is not a stall


def test_block_pacing_pushed_once_then_served() -> None:
    srv = server(min_block_period_ms=250)
    offered(srv)
    tr = srv.transfers[KEY]
    run(srv, block(0), [(SendWaitForData(KEY, 5, zcl_utc(NOW), zcl_utc(NOW), 250), True)])
    run(
        srv,
        block(0, mbp=250),
        [(CoreProgress(TOKEN, 0, 64), Continue()), (SendBlock(KEY, 5, 0, 64, tr), True)],
    )


def test_block_out_of_range_is_malformed() -> None:
    srv = server()
    offered(srv)
    run(srv, block(1000), [(SendBlockStatus(KEY, 5, Status.MALFORMED_COMMAND), True)])
    run(srv, block(0, size=0), [(SendBlockStatus(KEY, 5, Status.MALFORMED_COMMAND), True)])


def test_block_without_transfer_reattaches_to_the_core_live_transfer() -> None:
    srv = server()  # e.g. after a gateway restart: the server holds nothing
    live = TransferInfo(TOKEN, IMAGE, "downloading", 640, 700)
    table = [
        (DescribeDevice(KEY), INFO),
        (CoreActiveTransfer(KEY), live),
        (CoreOpenImage(TOKEN), READER),
        (CoreProgress(TOKEN, 640, 64), Continue()),
    ]
    flow = srv.handle(block(640))
    action = srv.step(flow, None, NOW, MONO)
    for expected, answer in table:
        assert action == expected
        action = srv.step(flow, answer, NOW, MONO)
    assert action == SendBlock(KEY, 5, 640, 64, srv.transfers[KEY])
    assert srv.step(flow, True, NOW, MONO) is None
    assert srv.transfers[KEY].resumed


def test_block_for_another_version_than_the_core_offers_fails_that_offer_and_aborts() -> None:
    srv = server()
    other = Available(b"token-02", IMAGE)  # offers 0x200; the device asks for 0x300 below
    run(
        srv,
        ImageBlockRequest(KEY, 5, MFR, ITYPE, 0x300, 0, 64, None),
        [
            (DescribeDevice(KEY), INFO),
            (CoreActiveTransfer(KEY), None),
            (CoreQuery(DeviceInfo(KEY, MFR, ITYPE, "sim", "SimLight", 1, OLD, f"0x{OLD:08x}", False)), other),
            (CoreOpenImage(b"token-02"), READER),
            (CoreDownloadFailed(b"token-02", "device asked for file version 0x00000300"), None),
            (SendBlockStatus(KEY, 5, Status.ABORT), True),
        ],
    )
    assert KEY not in srv.transfers


def test_block_unknown_token_twice_aborts() -> None:
    srv = server()
    offered(srv)
    run(
        srv,
        block(0),
        [
            (CoreProgress(TOKEN, 0, 64), UnknownToken("expired")),
            (DescribeDevice(KEY), INFO),
            (CoreActiveTransfer(KEY), None),
            (CoreQuery(INFO), Busy(30)),
            (SendBlockStatus(KEY, 5, Status.ABORT), True),
        ],
    )


# ------------------------------------------------------------------------------------------ pages
def test_page_streams_blocks_spaced_then_stops_at_page_end() -> None:
    srv = server()
    offered(srv)
    tr = srv.transfers[KEY]
    page = ImagePageRequest(KEY, 7, MFR, ITYPE, NEW, 0, 64, 150, 40)
    run(srv, page, [(StartPageStream(page, tr), None)])
    flow = srv.stream_page(page, tr)
    expected: list[tuple[Action, Any]] = [
        (CoreProgress(TOKEN, 0, 64), Continue()),
        (SendBlock(KEY, 7, 0, 64, tr), True),
        (Sleep(0.04), None),
        (CoreProgress(TOKEN, 64, 64), Continue()),
        (SendBlock(KEY, None, 64, 64, tr), True),  # later blocks of a page carry fresh sequence numbers
        (Sleep(0.04), None),
        (CoreProgress(TOKEN, 128, 22), Continue()),
        (SendBlock(KEY, None, 128, 22, tr), True),
    ]
    action = srv.step(flow, None, NOW, MONO)
    for exp, answer in expected:
        assert action == exp
        action = srv.step(flow, answer, NOW, MONO)
    assert action is None
    assert tr.highest_offset == 150


# ------------------------------------------------------------------------------------------ upgrade end
def test_upgrade_end_proceed_now_schedules_read_back_and_reports_success() -> None:
    srv = server(reboot_wait_s=60)
    offered(srv)
    run(
        srv,
        end(),
        [
            (CancelPageStream(KEY), None),
            (CoreDownloadComplete(TOKEN), None),
            (CoreStatusReport(KEY, StatusReport(ReportedStatus.DOWNLOADING, percent=100)), None),
            (CoreApplyRequest(TOKEN, NEW), ApplyDecision(ApplyAction.PROCEED, 0)),
            (SendUpgradeEndResponse(KEY, 9, MFR, ITYPE, NEW, zcl_utc(NOW), zcl_utc(NOW)), True),
            (SetTimer(ReadBackDue(KEY), 60.0), None),
        ],
    )
    assert srv.transfers[KEY].status is TransferStatus.APPLY_SCHEDULED
    run(
        srv,
        ReadBackDue(KEY),
        [
            (ReadVersion(KEY), None),  # no answer the first time
            (Sleep(60.0), None),
            (ReadVersion(KEY), NEW),
            (CoreReportVersion(KEY, NEW), None),
            (CoreStatusReport(KEY, StatusReport(ReportedStatus.SUCCESSFULLY_UPDATED, percent=100)), None),
        ],
    )
    # verified: a late read-back timer does nothing more
    run(srv, ReadBackDue(KEY), [])


def test_upgrade_end_proceed_at_window_sends_upgrade_time() -> None:
    srv = server(reboot_wait_s=60)
    offered(srv)
    srv.transfers[KEY].status = TransferStatus.COMPLETE
    at = NOW + 3600
    run(
        srv,
        end(),
        [
            (CancelPageStream(KEY), None),
            (CoreApplyRequest(TOKEN, NEW), ApplyDecision(ApplyAction.PROCEED, 3600, apply_at=at)),
            (SendUpgradeEndResponse(KEY, 9, MFR, ITYPE, NEW, zcl_utc(NOW), zcl_utc(at)), True),
            (SetTimer(ReadBackDue(KEY), 3660.0), None),
        ],
    )


def test_upgrade_end_await_sends_wait_then_the_recheck_triggers() -> None:
    srv = server(reboot_wait_s=0)
    offered(srv)
    srv.transfers[KEY].status = TransferStatus.COMPLETE
    run(
        srv,
        end(),
        [
            (CancelPageStream(KEY), None),
            (CoreApplyRequest(TOKEN, NEW), ApplyDecision(ApplyAction.AWAIT_NEXT_ACTION, 120)),
            (SendUpgradeEndResponse(KEY, 9, MFR, ITYPE, NEW, zcl_utc(NOW), UPGRADE_TIME_WAIT), True),
            (SetTimer(ApplyRecheckDue(KEY), 120), None),
        ],
    )
    later = NOW + 120
    run(
        srv,
        ApplyRecheckDue(KEY),
        [
            (CoreApplyRequest(TOKEN, NEW), ApplyDecision(ApplyAction.PROCEED, 0)),
            # unsolicited (tsn None): the trigger
            (SendUpgradeEndResponse(KEY, None, MFR, ITYPE, NEW, zcl_utc(later), zcl_utc(later)), True),
            (SetTimer(ReadBackDue(KEY), 0.0), None),
        ],
        now=later,
    )


def test_upgrade_end_discontinue_answers_default_response_abort() -> None:
    srv = server()
    offered(srv)
    srv.transfers[KEY].status = TransferStatus.COMPLETE
    refused = ApplyDecision(ApplyAction.DISCONTINUE, 3600, reason="version blocked")
    run(
        srv,
        end(),
        [
            (CancelPageStream(KEY), None),
            (CoreApplyRequest(TOKEN, NEW), refused),
            (SendDefaultResponse(KEY, 9, Status.ABORT), None),  # never "wait" (0xFFFFFFFF)
        ],
    )
    tr = srv.transfers[KEY]
    assert tr.status is TransferStatus.FAILED and tr.refused
    # it asks again: the refusal stands, the core is not asked to offer it again
    run(srv, end(tsn=10), [(SendDefaultResponse(KEY, 10, Status.ABORT), None)])


def test_recheck_discontinue_is_remembered_for_the_next_upgrade_end() -> None:
    srv = server()
    offered(srv)
    srv.transfers[KEY].status = TransferStatus.AWAITING_APPLY
    run(
        srv,
        ApplyRecheckDue(KEY),
        [(CoreApplyRequest(TOKEN, NEW), ApplyDecision(ApplyAction.DISCONTINUE, 0, reason="rollout aborted"))],
    )
    run(srv, end(tsn=11), [(SendDefaultResponse(KEY, 11, Status.ABORT), None)])


def test_upgrade_end_invalid_image_fails_with_reason() -> None:
    srv = server()
    offered(srv)
    reason = (
        "device reported INVALID_IMAGE in Upgrade End Request after 0 bytes sent (highest offset 0 of 1000)"
    )
    run(
        srv,
        end(Status.INVALID_IMAGE),
        [
            (CancelPageStream(KEY), None),
            (CoreDownloadFailed(TOKEN, reason), None),
            (SendDefaultResponse(KEY, 9, Status.SUCCESS), None),
        ],
    )


def test_upgrade_end_for_an_image_never_offered() -> None:
    srv = server()
    run(srv, end(Status.ABORT), [(SendDefaultResponse(KEY, 9, Status.SUCCESS), None)])


# ------------------------------------------------------------------------------------------ stalls
def test_stall_fails_the_transfer_and_rearms() -> None:
    srv = server(stall_timeout_s=60)
    offered(srv)
    tr = srv.transfers[KEY]
    interval = srv.stall_check_interval()
    assert srv.start() == [SetTimer(StallCheckDue(), interval)]
    flow = srv.handle(StallCheckDue())
    assert srv.step(flow, None, NOW, MONO + 30) == SetTimer(StallCheckDue(), interval)  # not yet
    flow = srv.handle(StallCheckDue())
    action = srv.step(flow, None, NOW, MONO + 61)
    assert isinstance(action, CoreDownloadFailed) and action.reason.startswith(
        "stalled: no block request for 61 s"
    )
    assert srv.step(flow, None, NOW, MONO + 61) == SetTimer(StallCheckDue(), interval)
    assert tr.status is TransferStatus.FAILED
