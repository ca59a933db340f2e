"""The sans-I/O Zigbee OTA Upgrade server: every protocol decision of otagw's OTA cluster server, no I/O.

`OtaServer.handle(event)` turns an event (events.py: a request decoded by zigpy's codec, or a timer expiry)
into a *flow*: a generator yielding actions (frames to send, core calls, timers, sleeps) and receiving each
action's answer. `OtaServer.step(flow, answer, now, mono)` advances a flow with the clock readings of that moment,
so the server never reads a clock; the asyncio layer (adapters/zigbee/adapter.py) performs the actions. This is
the aioquic / h11 shape with the core as one more peer: a test feeds events and answers and checks actions.

What is decided here (and nowhere else):
- offers: Query Next Image / Query Specific File -> core query -> response; Busy mains-powered devices get an
  Image Notify timer at the core's retry time (sleepy ones ask again by themselves);
- blocks: resume of a transfer the server does not hold (re-attach to the core's live transfer, or query again),
  range checks, delayed start and pacing by WAIT_FOR_DATA, block sizing, one core.progress per block, and Image
  Page streaming as consecutive blocks `response_spacing` apart;
- Upgrade End: the apply mapping (PROCEED -> upgrade time now/later; AWAIT_NEXT_ACTION -> 0xFFFFFFFF and a
  recheck timer; DISCONTINUE -> Default Response ABORT, ZCL's answer to a refused upgrade, so the client discards
  the image instead of waiting for a trigger that never comes), failures with their reason, learned block caps;
- who is notified: after an interview only a device the core's plan would update now (zigpy's own blanket
  Image Notify is suppressed in cluster.py);
- after an apply: the version read-back timer; which version reports reach the core; stalls.

Block sizing, learned caps and the per-device transfer records are in adapters/zigbee/ota_server.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any, TypeVar

from zigpy.zcl.foundation import Status

from adapters.zigbee.ota_server import (
    UPGRADE_TIME_WAIT,
    OtaDevice,
    OtaServerState,
    TransferStatus,
    zcl_utc,
)
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
    CoreQueryVersion,
    CoreReportVersion,
    CoreStatusReport,
    DescribeDevice,
    DeviceInterviewed,
    Event,
    ImageBlockRequest,
    ImagePageRequest,
    NotifyDue,
    QueryNextImage,
    QuerySpecificFile,
    ReadBackDue,
    ReadVersion,
    SaveLearnedCaps,
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
from gateway.config import ZigbeeConfig
from gateway.core.interface import (
    ApplyAction,
    ApplyDecision,
    Available,
    Busy,
    DeviceInfo,
    DeviceKey,
    ReportedStatus,
    StatusReport,
    UnknownToken,
    Wait,
)

LOGGER = logging.getLogger("adapters.zigbee.adapter")  # one logger for the Zigbee server, as before the split

UPGRADE_END_FAILURES = {Status.INVALID_IMAGE, Status.REQUIRE_MORE_IMAGE, Status.ABORT}
# the core states in which a device's transfer may be re-attached after a restart
_LIVE_STATES = ("querying", "downloading", "downloaded", "waiting_to_apply")

R = TypeVar("R")
# A flow yields actions and receives their answers (Any: each action documents its answer's type).
Flow = Generator[Action, Any, R]


class OtaServer:
    """The OTA server's state and decisions; see the module docstring."""

    def __init__(self, config: ZigbeeConfig) -> None:
        self.config = config
        self.state = OtaServerState(config)
        self.now = 0.0  # wall clock (Unix s) of the step being run; set by step()
        self.mono = 0.0  # monotonic clock of the step being run
        self._observed: dict[DeviceKey, DeviceInfo] = {}
        self._known_version: dict[DeviceKey, int] = {}
        self._verify_pending: set[DeviceKey] = set()
        self._notify_scheduled: set[DeviceKey] = set()
        self._flows: dict[type, Callable[[Any], Flow[None]]] = {
            QueryNextImage: self._query_next_image,
            QuerySpecificFile: self._query_specific_file,
            ImageBlockRequest: self._image_block,
            ImagePageRequest: self._image_page,
            UpgradeEndRequest: self._upgrade_end,
            DeviceInterviewed: self._device_interviewed,
            ApplyRecheckDue: self._apply_recheck,
            ReadBackDue: self._read_back,
            NotifyDue: self._notify_due,
            StallCheckDue: self._stall_check,
        }

    @property
    def transfers(self) -> dict[DeviceKey, OtaDevice]:
        return self.state.transfers

    # ================================================================== driving
    def handle(self, event: Event) -> Flow[None]:
        """The flow that answers `event` (not started: advance it with step(flow, None, now, mono))."""
        return self._flows[type(event)](event)

    def step(self, flow: Flow[Any], answer: Any, now: float, mono: float) -> Action | None:
        """Send `answer` (None to start) into `flow` at clock time (now, mono); the next action, None when done."""
        self.now = now
        self.mono = mono
        try:
            return flow.send(answer)
        except StopIteration:
            return None

    def start(self) -> list[Action]:
        """Actions to perform when the server starts serving: the first stall check."""
        return [SetTimer(StallCheckDue(), self.stall_check_interval())]

    def stall_check_interval(self) -> float:
        return max(1.0, self.state.min_stall_timeout() / 4)

    # ================================================================== device records
    def observe(self, info: DeviceInfo) -> Flow[None]:
        """Tell the core about a device when what we know of it changed."""
        if self._observed.get(info.key) == info:
            return
        self._observed[info.key] = info
        if info.current_version is not None:
            self._known_version.setdefault(info.key, info.current_version)
        yield CoreObserve(info)

    def report_version(self, key: DeviceKey, version: int, *, force: bool = False) -> Flow[None]:
        """Report a running version to the core when it changed, was being verified, or `force`."""
        changed = self._known_version.get(key) not in (None, version)
        self._known_version[key] = version
        if not (force or changed or key in self._verify_pending):
            return
        verifying = key in self._verify_pending
        self._verify_pending.discard(key)
        LOGGER.info("%s runs file version 0x%08x", key.device_id, version)
        yield CoreReportVersion(key, version)
        tr = self.state.transfers.get(key)
        if (
            verifying
            and tr is not None
            and tr.status is TransferStatus.APPLY_SCHEDULED
            and version == tr.file_version
        ):
            tr.status = TransferStatus.APPLIED
            yield CoreStatusReport(key, StatusReport(ReportedStatus.SUCCESSFULLY_UPDATED, percent=100))

    def forget_device(self, network: str, address: str) -> list[DeviceKey]:
        """The device left the network: drop its transfers and records; returns the keys to tell the core."""
        keys = [
            k
            for k in {*self._observed, *self.state.transfers}
            if k.address == address and k.network == network
        ]
        for key in keys:
            self.state.transfers.pop(key, None)
            self._observed.pop(key, None)
        return keys

    # ================================================================== Query Next Image / Query Specific File
    def _query_next_image(self, ev: QueryNextImage) -> Flow[None]:
        info, key = ev.info, ev.key
        yield from self.observe(info)
        if info.current_version is not None:
            yield from self.report_version(key, info.current_version)
        result = yield CoreQuery(info)
        if isinstance(result, Available):
            tr = yield from self._new_transfer(key, result, info)
            if tr is None:
                yield SendQueryResponse(key, ev.tsn, Status.NO_IMAGE_AVAILABLE)
                return
            yield SendQueryResponse(
                key, ev.tsn, Status.SUCCESS, tr.manufacturer_code, tr.image_type, tr.file_version, tr.size
            )
            LOGGER.info("%s: offered %s (%d bytes)", key.device_id, result.image.image_id, tr.size)
            return
        yield SendQueryResponse(key, ev.tsn, Status.NO_IMAGE_AVAILABLE)
        if isinstance(result, Busy) and info.sleepy is False:
            # mains-powered devices get an Image Notify when the core expects room; sleepy ones ask again
            yield from self._schedule_notify(key, result.retry_after_s)

    def _query_specific_file(self, ev: QuerySpecificFile) -> Flow[None]:
        # the core offers exactly the version asked for, or nothing (a mismatch takes no budget slot)
        result = yield CoreQueryVersion(ev.info, ev.file_version)
        if isinstance(result, Available) and result.image.numeric_version == ev.file_version:
            tr = yield from self._new_transfer(ev.key, result, ev.info)
            if tr is not None:
                yield SendQueryResponse(
                    ev.key,
                    ev.tsn,
                    Status.SUCCESS,
                    tr.manufacturer_code,
                    tr.image_type,
                    tr.file_version,
                    tr.size,
                    specific=True,
                )
                return
        # Not the file it asked for (or no room now): NO_IMAGE_AVAILABLE; the core made no offer for it.
        yield SendQueryResponse(ev.key, ev.tsn, Status.NO_IMAGE_AVAILABLE, specific=True)

    def _new_transfer(self, key: DeviceKey, result: Available, info: DeviceInfo) -> Flow[OtaDevice | None]:
        """Open the offered image and record the transfer; None when the core cannot open it."""
        reader = yield CoreOpenImage(result.token)
        if isinstance(reader, UnknownToken):
            LOGGER.warning("%s: core offered an image it cannot open: %s", key.device_id, reader)
            return None
        mbp = info.extra.get("min_block_period_ms", 0)
        tr = OtaDevice(
            key=key,
            token=result.token,
            image=result.image,
            reader=reader,
            started_mono=self.mono,
            manufacturer_code=result.image.vendor_id,
            image_type=result.image.product_id,
            file_version=result.image.numeric_version,
            model=info.model,
            last_activity_mono=self.mono + result.delay_s,
            not_before_wall=self.now + result.delay_s,
            device_min_block_period_ms=mbp if isinstance(mbp, int) else 0,
        )
        old = self.state.transfers.get(key)
        if old is not None and old.token == tr.token:
            # same transfer offered again (device re-queried mid-download): keep its counters
            tr.bytes_downloaded, tr.highest_offset, tr.paced = (
                old.bytes_downloaded,
                old.highest_offset,
                old.paced,
            )
        self.state.transfers[key] = tr
        return tr

    def _resume(
        self, key: DeviceKey, manufacturer_code: int, image_type: int, file_version: int
    ) -> Flow[OtaDevice | None]:
        """A device asks for an image we hold no transfer for (gateway restart, stall expiry): re-attach to the
        core's live transfer of that very image, or ask the core again on its behalf."""
        base: DeviceInfo = yield DescribeDevice(key)
        known = self._observed.get(key)
        info = DeviceInfo(
            key=key,
            vendor_id=manufacturer_code,
            product_id=image_type,
            vendor_name=base.vendor_name,
            model=base.model,
            hardware_version=base.hardware_version,
            current_version=known.current_version
            if known is not None and known.current_version is not None
            else base.current_version,
            current_version_string=base.current_version_string,
            sleepy=base.sleepy,
            extra=base.extra,
        )
        ti = yield CoreActiveTransfer(key)
        if ti is not None and ti.image.numeric_version == file_version and ti.state in _LIVE_STATES:
            result: Any = Available(
                ti.token,
                ti.image,
                0,
                resume_offset=ti.acked_offset,
                reason="re-attached to the live transfer",
            )
        else:
            result = yield CoreQuery(info)
        if not isinstance(result, Available):
            LOGGER.info(
                "%s asks for blocks of 0x%08x but the core has nothing for it (%s)",
                key.device_id,
                file_version,
                type(result).__name__,
            )
            return None
        tr = yield from self._new_transfer(key, result, info)
        if tr is None:
            return None
        if not tr.matches(manufacturer_code, image_type, file_version):
            LOGGER.info(
                "%s asks for 0x%08x but the core now offers 0x%08x",
                key.device_id,
                file_version,
                tr.file_version,
            )
            self.state.transfers.pop(key, None)
            yield CoreDownloadFailed(tr.token, f"device asked for file version 0x{file_version:08x}")
            return None
        tr.resumed = True
        tr.last_activity_mono = self.mono
        tr.not_before_wall = 0.0
        LOGGER.info("%s: resuming transfer of %s", key.device_id, tr.image.image_id)
        return tr

    def _transfer_for(self, key: DeviceKey, mfr: int, itype: int, version: int) -> Flow[OtaDevice | None]:
        tr = self.state.transfers.get(key)
        if tr is not None and tr.status is TransferStatus.DOWNLOADING and tr.matches(mfr, itype, version):
            return tr
        resumed = yield from self._resume(key, mfr, itype, version)
        return resumed

    # ================================================================== blocks and pages
    def _wait_for_data(self, tr: OtaDevice, tsn: int | None, retry_after_s: float) -> Flow[None]:
        # the device stays silent meanwhile: that is not a stall
        tr.last_activity_mono = max(tr.last_activity_mono, self.mono + retry_after_s)
        yield SendWaitForData(
            tr.key,
            tsn,
            zcl_utc(self.now),
            zcl_utc(self.now + retry_after_s),
            self.state.pacing_period_ms(tr),
        )

    def _must_wait(self, tr: OtaDevice) -> bool:
        """Whether _may_send_block would answer WAIT_FOR_DATA (cheap check for the hot path)."""
        return self.now < tr.not_before_wall or self.state.needs_pacing_push(tr)

    def _may_send_block(self, tr: OtaDevice, tsn: int | None) -> Flow[bool]:
        """WAIT_FOR_DATA for a delayed start or to push the configured pacing; True when the block may go."""
        if self.now < tr.not_before_wall:
            yield from self._wait_for_data(tr, tsn, tr.not_before_wall - self.now)
            return False
        if self.state.needs_pacing_push(tr):
            tr.paced = True
            yield from self._wait_for_data(tr, tsn, 0)
            return False
        return True

    def _serve_block(self, tr: OtaDevice, offset: int, n: int, tsn: int | None) -> Flow[bool | None]:
        """Ask the core, then send `n` bytes at `offset` (or WAIT_FOR_DATA). True when a block went out;
        None when the core no longer knows the transfer."""
        decision = yield CoreProgress(tr.token, offset, n)
        if isinstance(decision, UnknownToken):
            LOGGER.info("%s: %s", tr.key.device_id, decision)
            return None
        if isinstance(decision, Wait):
            yield from self._wait_for_data(tr, tsn, decision.retry_after_s)
            return False
        delivered = yield SendBlock(tr.key, tsn, offset, n, tr)
        if delivered:
            self.state.record_block(tr, offset, n, self.mono)
        return bool(delivered)

    def _out_of_range(self, tr: OtaDevice, what: str, offset: int, limit: str, tsn: int) -> Flow[None]:
        LOGGER.warning(
            "%s: %s at offset %d (size %d, %s) is out of range",
            tr.key.device_id,
            what,
            offset,
            tr.size,
            limit,
        )
        yield SendBlockStatus(tr.key, tsn, Status.MALFORMED_COMMAND)

    def _image_block(self, ev: ImageBlockRequest) -> Flow[None]:
        # the hot path (one call per block): the live transfer and the may-send check are inlined, so a plain
        # block costs one generator, not four
        key, tsn = ev.key, ev.tsn
        tr = self.state.transfers.get(key)
        if (
            tr is None
            or tr.status is not TransferStatus.DOWNLOADING
            or not tr.matches(ev.manufacturer_code, ev.image_type, ev.file_version)
        ):
            tr = yield from self._resume(key, ev.manufacturer_code, ev.image_type, ev.file_version)
        if tr is None:
            yield SendBlockStatus(key, tsn, Status.ABORT)
            return
        if ev.minimum_block_period is not None:
            tr.device_min_block_period_ms = ev.minimum_block_period
        offset = ev.file_offset
        if offset >= tr.size or ev.maximum_data_size == 0:
            yield from self._out_of_range(
                tr, "Image Block Request", offset, f"max {ev.maximum_data_size}", tsn
            )
            return
        tr.last_activity_mono = max(tr.last_activity_mono, self.mono)
        if self._must_wait(tr) and not (yield from self._may_send_block(tr, tsn)):
            return
        n = min(self.state.block_size(ev.manufacturer_code, tr.model, ev.maximum_data_size), tr.size - offset)
        if (yield from self._serve_block(tr, offset, n, tsn)) is not None:
            return
        # the core ended this episode (expired, cancelled, superseded): one fresh attempt, else ABORT
        self.state.transfers.pop(key, None)
        tr = yield from self._resume(key, ev.manufacturer_code, ev.image_type, ev.file_version)
        if tr is not None:
            if not (yield from self._may_send_block(tr, tsn)):
                return
            n = min(
                self.state.block_size(ev.manufacturer_code, tr.model, ev.maximum_data_size), tr.size - offset
            )
            if (yield from self._serve_block(tr, offset, n, tsn)) is not None:
                return
            self.state.transfers.pop(key, None)
        yield SendBlockStatus(key, tsn, Status.ABORT)

    def _image_page(self, ev: ImagePageRequest) -> Flow[None]:
        key, tsn = ev.key, ev.tsn
        tr = yield from self._transfer_for(key, ev.manufacturer_code, ev.image_type, ev.file_version)
        if tr is None:
            yield SendBlockStatus(key, tsn, Status.ABORT)
            return
        offset = ev.file_offset
        if offset >= tr.size or ev.maximum_data_size == 0 or ev.page_size == 0:
            yield from self._out_of_range(tr, "Image Page Request", offset, f"page {ev.page_size}", tsn)
            return
        tr.last_activity_mono = max(tr.last_activity_mono, self.mono)
        if not (yield from self._may_send_block(tr, tsn)):
            return
        # a new page request supersedes a page still being streamed (the device timed out on it)
        yield StartPageStream(ev, tr)

    def stream_page(self, ev: ImagePageRequest, tr: OtaDevice) -> Flow[None]:
        """Send a page as consecutive Image Block Responses, `response_spacing` ms apart."""
        offset = ev.file_offset
        end = min(tr.size, offset + ev.page_size)
        spacing_ms = max(ev.response_spacing, self.config.page_response_spacing_min_ms)
        tsn: int | None = ev.tsn  # the first response answers the request; the rest carry fresh numbers
        while (
            offset < end
            and self.state.transfers.get(tr.key) is tr
            and tr.status is TransferStatus.DOWNLOADING
        ):
            n = min(self.state.block_size(ev.manufacturer_code, tr.model, ev.maximum_data_size), end - offset)
            sent = yield from self._serve_block(tr, offset, n, tsn)
            if sent is None:
                self.state.transfers.pop(tr.key, None)
                yield SendBlockStatus(tr.key, tsn, Status.ABORT)
                return
            if not sent:
                return
            offset += n
            tsn = None
            if offset < end and spacing_ms:
                yield Sleep(spacing_ms / 1000)

    # ================================================================== Upgrade End and apply
    def _upgrade_end(self, ev: UpgradeEndRequest) -> Flow[None]:
        key, status = ev.key, Status(ev.status)  # type: ignore[no-untyped-call]  # zigpy's enum is untyped
        tr = self.state.transfers.get(key)
        mine = tr is not None and tr.matches(ev.manufacturer_code, ev.image_type, ev.file_version)
        if tr is not None and mine and tr.refused and status == Status.SUCCESS:
            # asks again after policy refused this image: the refusal stands (ZCL: ABORT, discard the image)
            LOGGER.info("%s: Upgrade End again for a refused update: %s", key.device_id, tr.failure)
            yield SendDefaultResponse(key, ev.tsn, Status.ABORT)
            return
        if tr is None or not mine or tr.status is TransferStatus.FAILED:
            tr = (
                (yield from self._resume(key, ev.manufacturer_code, ev.image_type, ev.file_version))
                if status == Status.SUCCESS
                else None
            )
        if tr is None:
            LOGGER.info(
                "%s: Upgrade End (%s) for 0x%08x, which it was not offered",
                key.device_id,
                status.name,
                ev.file_version,
            )
            if not ev.disable_default_response or status == Status.SUCCESS:
                yield SendDefaultResponse(
                    key, ev.tsn, Status.SUCCESS if status != Status.SUCCESS else Status.ABORT
                )
            return
        yield CancelPageStream(key)
        if status == Status.SUCCESS:
            if tr.status is TransferStatus.DOWNLOADING:
                tr.status = TransferStatus.COMPLETE
                yield CoreDownloadComplete(tr.token)
                # the device's own word: the whole image arrived and verified (the record's reported fields
                # would otherwise stay null for a finished Zigbee transfer)
                yield CoreStatusReport(key, StatusReport(ReportedStatus.DOWNLOADING, percent=100))
            decision = yield CoreApplyRequest(tr.token, tr.file_version)
            yield from self._answer_apply(tr, decision, ev.tsn)
            return
        reason = (
            f"device reported {status.name} in Upgrade End Request after {tr.bytes_downloaded} bytes sent "
            f"(highest offset {tr.highest_offset} of {tr.size})"
        )
        if status == Status.ABORT:
            yield from self._learn(tr)
        if status not in UPGRADE_END_FAILURES:
            reason = f"device ended the download with status 0x{int(status):02x}: " + reason
        tr.status, tr.failure = TransferStatus.FAILED, reason
        LOGGER.warning("%s: %s", key.device_id, reason)
        yield CoreDownloadFailed(tr.token, reason)
        if not ev.disable_default_response:
            yield SendDefaultResponse(key, ev.tsn, Status.SUCCESS)

    def _answer_apply(self, tr: OtaDevice, decision: ApplyDecision, tsn: int | None) -> Flow[None]:
        """Map the core's apply decision to ZCL. `tsn` None: an unsolicited answer after a recheck (a trigger)."""
        now = self.now
        if decision.action == ApplyAction.PROCEED:
            at = decision.apply_at if decision.apply_at is not None else now + decision.delay_s
            at = max(at, now)
            delivered = yield SendUpgradeEndResponse(
                tr.key, tsn, tr.manufacturer_code, tr.image_type, tr.file_version, zcl_utc(now), zcl_utc(at)
            )
            if not delivered and tsn is None:
                # an unsolicited trigger that did not arrive (sleepy device): try again later
                tr.status = TransferStatus.AWAITING_APPLY
                yield SetTimer(ApplyRecheckDue(tr.key), max(1.0, self.config.apply_recheck_s))
                return
            tr.status = TransferStatus.APPLY_SCHEDULED
            self._verify_pending.add(tr.key)
            LOGGER.info(
                "%s: apply %s at %s",
                tr.key.device_id,
                tr.image.image_id,
                "once" if at <= now else f"+{at - now:.0f}s",
            )
            yield SetTimer(ReadBackDue(tr.key), max(0.0, at - now) + self.config.reboot_wait_s)
            return
        if decision.action == ApplyAction.DISCONTINUE:
            tr.status, tr.refused = TransferStatus.FAILED, True
            tr.failure = f"policy discontinued the update: {decision.reason}"
            LOGGER.info("%s: %s", tr.key.device_id, tr.failure)
            if tsn is not None:
                # ZCL OTA: a server refusing the upgrade answers the Upgrade End Request with a Default Response
                # ABORT; the client then discards the downloaded image. (Upgrade time 0xFFFFFFFF would keep it
                # waiting, holding the image, for a trigger that never comes.)
                yield SendDefaultResponse(tr.key, tsn, Status.ABORT)
            # unsolicited (after a wait): no frame can retract "wait"; the device's next Upgrade End Request
            # for this image gets the ABORT (see _upgrade_end)
            return
        # AWAIT_NEXT_ACTION: "wait" (0xFFFFFFFF); a later Upgrade End Response triggers the apply
        yield SendUpgradeEndResponse(
            tr.key, tsn, tr.manufacturer_code, tr.image_type, tr.file_version, zcl_utc(now), UPGRADE_TIME_WAIT
        )
        tr.status = TransferStatus.AWAITING_APPLY
        yield SetTimer(ApplyRecheckDue(tr.key), max(1.0, decision.delay_s or self.config.apply_recheck_s))

    def _apply_recheck(self, ev: ApplyRecheckDue) -> Flow[None]:
        tr = self.state.transfers.get(ev.key)
        if tr is None or tr.status is not TransferStatus.AWAITING_APPLY:
            return
        decision = yield CoreApplyRequest(tr.token, tr.file_version)
        if decision.action == ApplyAction.AWAIT_NEXT_ACTION:
            yield SetTimer(ApplyRecheckDue(tr.key), max(1.0, decision.delay_s or self.config.apply_recheck_s))
            return
        yield from self._answer_apply(tr, decision, None)  # PROCEED: the trigger; DISCONTINUE: remembered

    def _read_back(self, ev: ReadBackDue) -> Flow[None]:
        """After the upgrade time and the device's reboot, read current_file_version and tell the core."""
        for attempt in range(self.config.readback_attempts):
            if ev.key not in self._verify_pending:
                return  # the device already told us (its Query Next Image after rebooting)
            version = yield ReadVersion(ev.key)
            if version is not None:
                yield from self.report_version(ev.key, int(version), force=True)
                return
            LOGGER.info("%s: version read-back %d failed", ev.key.device_id, attempt + 1)
            yield Sleep(max(1.0, self.config.reboot_wait_s))
        LOGGER.info("%s: version not read back; its next query will report it", ev.key.device_id)

    # ================================================================== notify, stalls, learned caps
    def _device_interviewed(self, ev: DeviceInterviewed) -> Flow[None]:
        """zigpy's own Image Notify after an interview is suppressed (cluster.py); instead the device is notified
        when, and only when, the core's plan says it would be updated now."""
        outcome = yield CorePlanOutcome(ev.key)
        if outcome == "update":
            yield SendImageNotify(ev.key)

    def _schedule_notify(self, key: DeviceKey, delay_s: float) -> Flow[None]:
        if key in self._notify_scheduled:
            return
        self._notify_scheduled.add(key)
        yield SetTimer(NotifyDue(key), max(1.0, delay_s))

    def _notify_due(self, ev: NotifyDue) -> Flow[None]:
        self._notify_scheduled.discard(ev.key)
        yield SendImageNotify(ev.key)

    def _stall_check(self, ev: StallCheckDue) -> Flow[None]:
        for tr in self.state.stalled(self.mono):
            silent = self.mono - tr.last_activity_mono
            reason = (
                f"stalled: no block request for {silent:.0f} s (limit "
                f"{self.state.stall_timeout(tr.manufacturer_code):g} s) after {tr.bytes_downloaded} bytes sent, "
                f"highest offset {tr.highest_offset} of {tr.size}"
            )
            tr.status, tr.failure = TransferStatus.FAILED, reason
            LOGGER.warning("%s: %s", tr.key.device_id, reason)
            if tr.bytes_downloaded:
                yield from self._learn(tr)
            yield CoreDownloadFailed(tr.token, reason)
        yield SetTimer(StallCheckDue(), self.stall_check_interval())

    def _learn(self, tr: OtaDevice) -> Flow[None]:
        cap = self.state.learn_failure(tr.manufacturer_code, tr.model, tr.last_block_size)
        if cap is None:
            return
        LOGGER.warning(
            "learned block size cap %d for manufacturer 0x%04x model %r (failed at %d-byte blocks)",
            cap,
            tr.manufacturer_code,
            tr.model,
            tr.last_block_size,
        )
        yield SaveLearnedCaps(self.state.caps_to_json())
