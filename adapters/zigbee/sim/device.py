"""Simulated Zigbee OTA client devices that speak raw ZCL/ZDO through zigpy's codec (hardware-free harness).

A `SimOtaDevice` is one node with one application endpoint carrying Basic (server) and OTA Upgrade (client). It
answers the ZDO interview zigpy runs after a join, Read Attributes on Basic and on its OTA client cluster (with
the direction bit flipped, as a client cluster must), and runs the ZCL OTA client procedure:

    Image Notify / periodic timer -> Query Next Image -> Image Block (or Image Page) requests until the image is
    assembled -> verify -> Upgrade End Request -> apply at the upgrade time (or wait for a later Upgrade End
    Response when told 0xFFFFFFFF) -> reboot -> report the new current file version.

It honours WAIT_FOR_DATA (request time, MinimumBlockPeriod), its own MinimumBlockPeriod between requests,
Image Page response spacing, response timeouts with retries (fresh sequence numbers, as zigpy drops identical
frames), and resumes a partial download when the server offers the same image again. `Behaviour` selects the
awkward ones: page mode, larger block requests, sleepy (reachable only around its own periodic check-ins),
stalls, INVALID_IMAGE (or any Upgrade End status), duplicate and overlapping block requests, malformed frames.

All timing uses the injected clock; the network's tick drives response timeouts and periodic queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import zigpy.types as t
import zigpy.zdo.types as zdo_t
from zigpy.ota.image import parse_ota_image
from zigpy.zcl import foundation
from zigpy.zcl.clusters.general import Basic, Ota, PowerConfiguration

from gateway.clock import Clock

if TYPE_CHECKING:
    from adapters.zigbee.sim.app import SimNetwork

LOGGER = logging.getLogger(__name__)

PROFILE_HA = 0x0104
UPGRADE_WAIT = 0xFFFFFFFF
S = foundation.Status
OTA_ID = Ota.cluster_id
BASIC_ID = Basic.cluster_id
POWER_ID = PowerConfiguration.cluster_id


@dataclass
class Behaviour:
    """How a simulated device deviates from (or exercises optional parts of) the plain OTA client."""

    page_mode: bool = False  # Image Page Requests instead of Image Block Requests
    page_size: int = 512
    response_spacing_ms: int = 0
    max_data_size: int = 64  # maximum_data_size asked for in each request
    min_block_period_ms: int = 0  # the device's own MinimumBlockPeriod (sent in the request)
    sleepy: bool = False  # rx off when idle: reachable only shortly after it transmits
    awake_window_s: float = 3.0
    query_interval_s: float | None = None  # periodic Query Next Image (None: only on Image Notify)
    stall_at: int | None = None  # stop requesting once this offset is reached ...
    stall_for_s: float | None = None  # ... for this long (None: for good)
    end_status: foundation.Status = foundation.Status.SUCCESS  # status reported in Upgrade End Request
    duplicate_every: int = 0  # every Nth block request is sent twice (new sequence number)
    overlap_every: int = 0  # every Nth block request starts half a block early
    malformed_first: bool = False  # first block request goes out truncated (then a proper one)
    reboot_s: float = 5.0  # unreachable this long while applying the image
    response_timeout_s: float = 5.0
    max_retries: int = 3
    notify_delay_max_s: float = 0.0  # random delay before answering an Image Notify
    resume_partial: bool = True  # keep a partial download and resume it when offered again
    hardware_version: int | None = 1
    answers_notify: bool = True  # False: ignores Image Notify (queries only on its own schedule)
    # what happens at the apply: "new_version" (the image took), "never_back" (bricked: never heard again),
    # "old_version" (the bootloader rejected the image and booted the old one)
    after_apply: Literal["new_version", "never_back", "old_version"] = "new_version"
    # battery model: None = mains powered (unless sleepy: a battery without a Power Configuration cluster);
    # a number = battery powered, charge in percent, answered as BatteryPercentageRemaining (half-percent units)
    # and BatteryVoltage; tests change it to let the battery drain or recover
    battery_percent: float | None = None
    battery_full_v: float = 3.0

    @property
    def on_battery(self) -> bool:
        return self.sleepy or self.battery_percent is not None


@dataclass
class DeviceStats:
    queries: int = 0
    block_requests: int = 0
    page_requests: int = 0
    block_responses: int = 0
    waits: int = 0
    bytes_received: int = 0
    unexpected_responses: list[tuple[int, str]] = field(default_factory=list)
    default_responses: list[tuple[int, int, int]] = field(default_factory=list)  # (tsn, command, status)
    notifies: int = 0
    timeouts: int = 0
    upgrade_end_responses: list[tuple[int, int]] = field(default_factory=list)  # (current_time, upgrade_time)
    applied_at: list[float] = field(default_factory=list)  # wall time of each apply
    responses_per_tsn: Counter[int] = field(default_factory=Counter)
    block_log: list[tuple[float, int, int]] = field(default_factory=list)  # (clock monotonic, offset, length)


class SimOtaDevice:
    """One simulated OTA client node (see module docstring)."""

    def __init__(
        self,
        ieee: str,
        nwk: int,
        clock: Clock,
        *,
        manufacturer_code: int,
        image_type: int,
        file_version: int,
        model: str = "SimLight",
        manufacturer: str = "otagw-sim",
        endpoint: int = 1,
        behaviour: Behaviour | None = None,
        seed: int = 0,
    ) -> None:
        self.ieee = t.EUI64.convert(ieee)
        self.nwk = nwk
        self.clock = clock
        self.manufacturer_code = manufacturer_code
        self.image_type = image_type
        self.file_version = file_version
        self.model = model
        self.manufacturer = manufacturer
        self.endpoint = endpoint
        self.b = behaviour or Behaviour()
        self.rng = random.Random(seed or hash(ieee))
        self.network: SimNetwork | None = None
        self.stats = DeviceStats()
        self.on_block: Callable[[SimOtaDevice], None] | None = None  # test hook, called per accepted block

        # transfer state
        self.image_ident: tuple[int, int, int] | None = None  # (manufacturer, type, version) being downloaded
        self.image_size = 0
        self.assembled = bytearray()
        self.offset = 0
        self.highest_requested = 0
        self.pending_version: int | None = None  # downloaded, waiting for the upgrade time
        self.state = (
            "idle"  # idle | querying | downloading | ending | waiting_apply | apply_scheduled | rebooting
        )
        self.completed_images: list[bytes] = []
        self.end_sent = 0

        self._tsn = self.rng.randrange(256)
        self._aps = 0
        self._inbox: asyncio.Queue[t.ZigbeePacket] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._session: asyncio.Task[None] | None = None
        self._rx: asyncio.Queue[tuple[foundation.ZCLHeader, Any]] = asyncio.Queue()
        self._deadline: float | None = None
        self._timeout_fut: asyncio.Future[None] | None = None
        self._outstanding: set[int] = set()
        self._delivered_request = False
        self._awake_until = -1.0
        self._offline_until = -1.0
        self._next_query_at: float | None = None
        self._stalled_once = False
        self._requests_sent = 0
        self._malformed_done = False

    # ================================================================== lifecycle
    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        if self.b.query_interval_s is not None and self._next_query_at is None:
            self._next_query_at = self.clock.monotonic() + self.rng.uniform(0, self.b.query_interval_s)

    async def stop(self) -> None:
        tasks = [x for x in (self._runner, self._session, *self._tasks) if x is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._runner = self._session = None
        self._tasks.clear()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ================================================================== radio-level behaviour
    @property
    def awaiting_response(self) -> bool:
        """A request reached the gateway and its answer has not arrived (used by SimNetwork.settle)."""
        return self._delivered_request and self._timeout_fut is not None and not self._timeout_fut.done()

    def reachable(self) -> bool:
        now = self.clock.monotonic()
        if now < self._offline_until:
            return False
        return not self.b.sleepy or now <= self._awake_until

    def accepts_broadcast(self, address: int) -> bool:
        if self.clock.monotonic() < self._offline_until:
            return False
        # 0xFFFD = rx-on-when-idle only; 0xFFFF = all (a sleepy node gets it from its parent only if awake)
        return self.reachable() if address == 0xFFFF else not self.b.sleepy

    def wake(self, seconds: float) -> None:
        """Poll the parent fast for a while (after joining, a sleepy device stays reachable for its interview)."""
        self._awake_until = max(self._awake_until, self.clock.monotonic() + seconds)

    def receive(self, packet: t.ZigbeePacket) -> None:
        self._inbox.put_nowait(packet)

    def on_tick(self, now: float) -> None:
        if self._deadline is not None and now >= self._deadline and self._timeout_fut is not None:
            self._deadline = None
            if not self._timeout_fut.done():
                self._timeout_fut.set_result(None)
        if self._next_query_at is not None and now >= self._next_query_at and self.b.query_interval_s:
            self._next_query_at = now + self.b.query_interval_s
            self.check_in()

    # ================================================================== sending
    def _next_tsn(self) -> int:
        self._tsn = (self._tsn + 1) & 0xFF
        return self._tsn

    def _send(
        self,
        cluster_id: int,
        data: bytes,
        *,
        profile: int = PROFILE_HA,
        src_ep: int | None = None,
        dst_ep: int = 1,
    ) -> bool:
        if self.network is None or self.clock.monotonic() < self._offline_until:
            return False
        self._awake_until = self.clock.monotonic() + self.b.awake_window_s
        self._aps = (self._aps + 1) & 0xFF
        packet = t.ZigbeePacket(
            src=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=t.NWK(self.nwk)),
            src_ep=t.uint8_t(self.endpoint if src_ep is None else src_ep),
            dst=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=t.NWK(0x0000)),
            dst_ep=t.uint8_t(dst_ep),
            tsn=t.uint8_t(self._aps),
            profile_id=t.uint16_t(profile),
            cluster_id=t.uint16_t(cluster_id),
            data=t.SerializableBytes(data),
            lqi=t.uint8_t(255),
            rssi=t.int8s(-45),
        )
        return self.network.from_device(packet)

    def _zcl(
        self,
        cluster_id: int,
        command_id: int,
        payload: bytes,
        *,
        tsn: int | None = None,
        general: bool = False,
        direction: foundation.Direction = foundation.Direction.Client_to_Server,
        disable_default_response: bool = True,
    ) -> int:
        tsn = self._next_tsn() if tsn is None else tsn
        hdr = foundation.ZCLHeader(
            frame_control=foundation.FrameControl(
                frame_type=foundation.FrameType.GLOBAL_COMMAND
                if general
                else foundation.FrameType.CLUSTER_COMMAND,
                is_manufacturer_specific=0,
                direction=direction,
                disable_default_response=int(disable_default_response),
                reserved=0,
            ),
            tsn=tsn,
            command_id=command_id,
        )
        self._send(cluster_id, hdr.serialize() + payload)
        return tsn

    def _ota_request(self, command: str, *, truncate: int = 0, **fields: Any) -> int:
        cmd = getattr(Ota.ServerCommandDefs, command)
        payload = cmd.schema(**fields).serialize()
        if truncate:
            payload = payload[:-truncate]
        tsn = self._next_tsn()
        self._outstanding.add(tsn)
        hdr = foundation.ZCLHeader.cluster(tsn, cmd.id, direction=foundation.Direction.Client_to_Server)
        self._delivered_request = self._send(OTA_ID, hdr.serialize() + payload)
        self._requests_sent += 1
        return tsn

    # ================================================================== receiving
    async def _run(self) -> None:
        while True:
            packet = await self._inbox.get()
            try:
                self._handle(packet)
            except Exception:  # a bug in the simulator must be loud in tests, but not kill the node
                LOGGER.exception("sim device %s failed on %r", self.ieee, packet)

    def _handle(self, packet: t.ZigbeePacket) -> None:
        data = packet.data.serialize()
        if packet.profile_id == 0 or packet.dst_ep == 0:
            self._handle_zdo(packet.cluster_id, data)
            return
        hdr, rest = foundation.ZCLHeader.deserialize(data)
        if packet.cluster_id in (BASIC_ID, POWER_ID) and self.b.battery_percent is not None:
            self._handle_basic(hdr, rest, packet.cluster_id)
        elif packet.cluster_id == BASIC_ID:
            self._handle_basic(hdr, rest)
        elif packet.cluster_id == OTA_ID:
            self._handle_ota(
                hdr, rest, broadcast=packet.dst is not None and packet.dst.addr_mode == t.AddrMode.Broadcast
            )
        elif not hdr.frame_control.disable_default_response and hdr.frame_control.is_cluster:
            self._default_rsp(packet.cluster_id, hdr, S.UNSUP_CLUSTER_COMMAND)

    def _default_rsp(self, cluster_id: int, hdr: foundation.ZCLHeader, status: foundation.Status) -> None:
        schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Default_Response].schema
        self._zcl(
            cluster_id,
            foundation.GeneralCommand.Default_Response,
            schema(command_id=hdr.command_id, status=status).serialize(),
            tsn=hdr.tsn,
            general=True,
            direction=hdr.direction.flip(),
        )

    # ------------------------------------------------------------------ ZDO interview
    def _handle_zdo(self, cluster_id: int, data: bytes) -> None:
        tsn = data[0]
        if cluster_id == zdo_t.ZDOCmd.Node_Desc_req:
            flags = zdo_t.MACCapabilityFlags.AllocateAddress
            if not self.b.sleepy:
                flags |= zdo_t.MACCapabilityFlags.RxOnWhenIdle | zdo_t.MACCapabilityFlags.FullFunctionDevice
            if not self.b.on_battery:
                flags |= zdo_t.MACCapabilityFlags.MainsPowered
            desc = zdo_t.NodeDescriptor(
                logical_type=zdo_t.LogicalType.EndDevice if self.b.sleepy else zdo_t.LogicalType.Router,
                complex_descriptor_available=0,
                user_descriptor_available=0,
                reserved=0,
                aps_flags=0,
                frequency_band=zdo_t.FrequencyBand.Freq2400MHz,
                mac_capability_flags=flags,
                manufacturer_code=self.manufacturer_code,
                maximum_buffer_size=82,
                maximum_incoming_transfer_size=82,
                server_mask=0,
                maximum_outgoing_transfer_size=82,
                descriptor_capability_field=zdo_t.DescriptorCapability.NONE,
            )
            body = zdo_t.Status.SUCCESS.serialize() + t.NWK(self.nwk).serialize() + desc.serialize()
            self._send(zdo_t.ZDOCmd.Node_Desc_rsp, bytes([tsn]) + body, profile=0, src_ep=0, dst_ep=0)
        elif cluster_id == zdo_t.ZDOCmd.Active_EP_req:
            body = (
                zdo_t.Status.SUCCESS.serialize()
                + t.NWK(self.nwk).serialize()
                + t.LVList[t.uint8_t, t.uint8_t]([self.endpoint]).serialize()
            )
            self._send(zdo_t.ZDOCmd.Active_EP_rsp, bytes([tsn]) + body, profile=0, src_ep=0, dst_ep=0)
        elif cluster_id == zdo_t.ZDOCmd.Simple_Desc_req:
            sd = zdo_t.SizePrefixedSimpleDescriptor(
                endpoint=self.endpoint,
                profile=PROFILE_HA,
                device_type=0x0100,
                device_version=1,
                input_clusters=[BASIC_ID, POWER_ID] if self.b.battery_percent is not None else [BASIC_ID],
                output_clusters=[OTA_ID],
            )
            body = zdo_t.Status.SUCCESS.serialize() + t.NWK(self.nwk).serialize() + sd.serialize()
            self._send(zdo_t.ZDOCmd.Simple_Desc_rsp, bytes([tsn]) + body, profile=0, src_ep=0, dst_ep=0)
        # everything else (permit join, leave, ...) is ignored, like many end devices do

    # ------------------------------------------------------------------ attributes
    def _attribute(self, cluster_id: int, attrid: int) -> tuple[Any, int] | None:
        """(value, zcl type id) of one attribute, or None when unsupported."""
        if cluster_id == BASIC_ID:
            defs = Basic.AttributeDefs
            values: dict[int, Any] = {
                defs.zcl_version.id: 8,
                defs.power_source.id: 0x03 if self.b.on_battery else 0x01,
                defs.manufacturer.id: self.manufacturer,
                defs.model.id: self.model,
            }
            if self.b.hardware_version is not None:
                values[defs.hw_version.id] = self.b.hardware_version
            cluster_defs: Any = Basic
        elif cluster_id == POWER_ID:
            pct = self.b.battery_percent
            if pct is None:
                return None
            defs_p = PowerConfiguration.AttributeDefs
            values = {
                defs_p.battery_percentage_remaining.id: max(0, min(200, round(pct * 2))),
                # a coin cell's voltage falls with its charge; 100 mV units
                defs_p.battery_voltage.id: round(self.b.battery_full_v * 10 * (0.8 + 0.2 * pct / 100)),
            }
            cluster_defs = PowerConfiguration
        else:
            defs_o = Ota.AttributeDefs
            values = {
                defs_o.current_file_version.id: self.file_version,
                defs_o.manufacturer_id.id: self.manufacturer_code,
                defs_o.image_type_id.id: self.image_type,
                defs_o.minimum_block_req_delay.id: self.b.min_block_period_ms,
                defs_o.file_offset.id: self.offset,
                defs_o.image_upgrade_status.id: {"downloading": 1, "waiting_apply": 3}.get(self.state, 0),
                defs_o.upgrade_server_id.id: t.EUI64.convert("00:12:4b:00:0a:7e:c0:01"),
            }
            if self.pending_version is not None:
                values[defs_o.downloaded_file_version.id] = self.pending_version
            cluster_defs = Ota
        if attrid not in values:
            return None
        attr_def = cluster_defs.attributes[attrid]
        return attr_def.type(values[attrid]), attr_def.zcl_type

    def _read_attributes(self, cluster_id: int, hdr: foundation.ZCLHeader, rest: bytes) -> None:
        req_schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Read_Attributes].schema
        req: Any
        req, _ = req_schema.deserialize(rest)
        records = []
        for attrid in req.attribute_ids:
            found = self._attribute(cluster_id, attrid)
            if found is None:
                records.append(foundation.ReadAttributeRecord(attrid=attrid, status=S.UNSUPPORTED_ATTRIBUTE))
            else:
                value, type_id = found
                records.append(
                    foundation.ReadAttributeRecord(
                        attrid=attrid,
                        status=S.SUCCESS,
                        value=foundation.TypeValue(type=t.uint8_t(type_id), value=value),
                    )
                )
        rsp_schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Read_Attributes_rsp].schema
        # a response travels opposite to the request: Basic server answers server->client, OTA *client* answers
        # client->server
        self._zcl(
            cluster_id,
            foundation.GeneralCommand.Read_Attributes_rsp,
            rsp_schema(status_records=records).serialize(),
            tsn=hdr.tsn,
            general=True,
            direction=hdr.direction.flip(),
        )

    def _handle_basic(self, hdr: foundation.ZCLHeader, rest: bytes, cluster_id: int = BASIC_ID) -> None:
        """A server cluster that only has attributes (Basic, Power Configuration)."""
        if hdr.frame_control.is_general and hdr.command_id == foundation.GeneralCommand.Read_Attributes:
            self._read_attributes(cluster_id, hdr, rest)
        elif not hdr.frame_control.disable_default_response:
            self._default_rsp(
                cluster_id,
                hdr,
                S.UNSUP_GENERAL_COMMAND if hdr.frame_control.is_general else S.UNSUP_CLUSTER_COMMAND,
            )

    # ------------------------------------------------------------------ OTA client
    def _handle_ota(self, hdr: foundation.ZCLHeader, rest: bytes, *, broadcast: bool) -> None:
        if hdr.frame_control.is_general:
            if hdr.command_id == foundation.GeneralCommand.Read_Attributes:
                self._read_attributes(OTA_ID, hdr, rest)
            elif hdr.command_id == foundation.GeneralCommand.Default_Response:
                schema = foundation.GENERAL_COMMANDS[foundation.GeneralCommand.Default_Response].schema
                rsp: Any
                rsp, _ = schema.deserialize(rest)
                self.stats.default_responses.append((hdr.tsn, rsp.command_id, rsp.status))
                self._count_response(hdr.tsn, "default_response")
                self._rx.put_nowait((hdr, rsp))
            return
        if hdr.direction != foundation.Direction.Server_to_Client:
            LOGGER.warning("sim %s: OTA frame with client->server direction from the server", self.ieee)
            return
        cmd_def = Ota.client_commands.get(hdr.command_id)
        if cmd_def is None:
            if not hdr.frame_control.disable_default_response:
                self._default_rsp(OTA_ID, hdr, S.UNSUP_CLUSTER_COMMAND)
            return
        cmd, _ = cmd_def.schema.deserialize(rest)
        name = cmd_def.name
        if name == "image_notify":
            self.stats.notifies += 1
            self._on_notify(cmd, broadcast)
        elif (
            name == "upgrade_end_response"
            and self.state in ("waiting_apply", "apply_scheduled")
            and not self._tsn_outstanding(hdr.tsn)
        ):
            # unsolicited Upgrade End Response: the server's later trigger
            self._on_upgrade_end_response(cmd)
        else:
            if name == "image_block_response":
                self.stats.block_responses += 1
            self._count_response(hdr.tsn, name)
            self._rx.put_nowait((hdr, cmd))
        if not hdr.frame_control.disable_default_response and name in (
            "image_notify",
            "upgrade_end_response",
        ):
            self._default_rsp(OTA_ID, hdr, S.SUCCESS)

    def _tsn_outstanding(self, tsn: int) -> bool:
        return tsn in self._outstanding

    def _count_response(self, tsn: int, name: str) -> None:
        self.stats.responses_per_tsn[tsn] += 1
        if tsn in self._outstanding:
            self._outstanding.discard(tsn)
        elif not (self.b.page_mode and name == "image_block_response"):
            self.stats.unexpected_responses.append((tsn, name))

    def _on_notify(self, cmd: Any, broadcast: bool) -> None:
        if self.state not in ("idle",) or not self.b.answers_notify:
            return
        pt = cmd.payload_type
        if (
            pt >= Ota.ImageNotifyCommand.PayloadType.QueryJitter_ManufacturerCode
            and cmd.manufacturer_code not in (self.manufacturer_code, 0xFFFF)
        ):
            return
        if (
            pt >= Ota.ImageNotifyCommand.PayloadType.QueryJitter_ManufacturerCode_ImageType
            and cmd.image_type not in (self.image_type, 0xFFFF)
        ):
            return
        if (
            pt >= Ota.ImageNotifyCommand.PayloadType.QueryJitter_ManufacturerCode_ImageType_NewFileVersion
            and cmd.new_file_version == self.file_version
        ):
            return
        if broadcast and self.rng.randint(1, 100) > cmd.query_jitter:
            return
        delay = self.rng.uniform(0, self.b.notify_delay_max_s) if self.b.notify_delay_max_s else 0.0
        self._spawn(self._delayed_check_in(delay))

    async def _delayed_check_in(self, delay: float) -> None:
        if delay:
            await self.clock.sleep(delay)
        self.check_in()

    def check_in(self) -> None:
        """Start a Query Next Image session now (periodic timer, notify, or a test poking the device)."""
        if self._session is not None and not self._session.done():
            return
        if self.state not in ("idle",) or self.clock.monotonic() < self._offline_until:
            return
        self._session = asyncio.get_running_loop().create_task(self._ota_session())

    async def _await_rx(self, timeout_s: float | None = None) -> tuple[foundation.ZCLHeader, Any] | None:
        """Next OTA response, or None after the (clock) response timeout."""
        if not self._rx.empty():
            return self._rx.get_nowait()
        loop = asyncio.get_running_loop()
        self._timeout_fut = loop.create_future()
        self._deadline = self.clock.monotonic() + (timeout_s or self.b.response_timeout_s)
        getter = loop.create_task(self._rx.get())
        network = self.network
        if network is not None:
            network.waiting.add(self)  # `awaiting_response` can only be true in here
        try:
            waiters: set[asyncio.Future[Any]] = {getter, self._timeout_fut}
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if network is not None:
                network.waiting.discard(self)
            self._deadline = None
            if not self._timeout_fut.done():
                self._timeout_fut.set_result(None)
            if not getter.done():
                getter.cancel()
        if getter in done and not getter.cancelled():
            return getter.result()
        self.stats.timeouts += 1
        return None

    async def _exchange(self, send: Any, accept: Any) -> tuple[foundation.ZCLHeader, Any] | None:
        """send() a request, wait for a response accept(hdr, cmd) likes; retry with fresh TSNs on timeout."""
        for _attempt in range(self.b.max_retries + 1):
            tsn = send()
            while True:
                got = await self._await_rx()
                if got is None:
                    break  # timeout -> retry
                hdr, cmd = got
                if accept(tsn, hdr, cmd):
                    return got
        return None

    # ------------------------------------------------------------------ the OTA client procedure
    async def _ota_session(self) -> None:
        try:
            await self._query_and_download()
        finally:
            if self.state in ("querying", "downloading", "ending"):
                self.state = "idle"

    def _query_fields(self) -> dict[str, Any]:
        fc = Ota.QueryNextImageCommand.FieldControl(0)
        fields: dict[str, Any] = dict(
            manufacturer_code=self.manufacturer_code,
            image_type=self.image_type,
            current_file_version=self.file_version,
        )
        if self.b.hardware_version is not None:
            fc |= Ota.QueryNextImageCommand.FieldControl.HardwareVersion
            fields["hardware_version"] = self.b.hardware_version
        fields["field_control"] = fc
        return fields

    async def _query_and_download(self) -> None:
        self.state = "querying"
        self.stats.queries += 1
        got = await self._exchange(
            lambda: self._ota_request("query_next_image", **self._query_fields()),
            lambda tsn, hdr, cmd: hdr.tsn == tsn and hdr.command_id in (0x02, 0x0B),
        )
        if got is None or hdr_is_default(got[0]) or got[1].status != S.SUCCESS:
            self.state = "idle"
            return
        rsp = got[1]
        if (
            rsp.manufacturer_code not in (self.manufacturer_code, 0xFFFF)
            or rsp.image_type not in (self.image_type, 0xFFFF)
            or rsp.file_version == self.file_version
        ):
            self.state = "idle"
            return
        ident = (rsp.manufacturer_code, rsp.image_type, rsp.file_version)
        if not (self.b.resume_partial and self.image_ident == ident and self.image_size == rsp.image_size):
            self.image_ident, self.image_size = ident, rsp.image_size
            self.assembled = bytearray(rsp.image_size)
            self.offset = 0
        self.state = "downloading"
        await self._download()

    def _block_fields(self, offset: int) -> dict[str, Any]:
        assert self.image_ident is not None
        mfr, itype, ver = self.image_ident
        fc = Ota.ImageBlockCommand.FieldControl(0)
        fields: dict[str, Any] = dict(
            manufacturer_code=mfr,
            image_type=itype,
            file_version=ver,
            file_offset=offset,
            maximum_data_size=self.b.max_data_size,
        )
        if self.b.min_block_period_ms:
            fc |= Ota.ImageBlockCommand.FieldControl.MinimumBlockPeriod
            fields["minimum_block_period"] = self.b.min_block_period_ms
        fields["field_control"] = fc
        return fields

    async def _download(self) -> None:
        retries = 0
        while self.offset < self.image_size:
            if self.b.stall_at is not None and not self._stalled_once and self.offset >= self.b.stall_at:
                self._stalled_once = True
                if self.b.stall_for_s is None:
                    self.state = "idle"  # gives up silently; keeps the partial image for a later resume
                    return
                await self.clock.sleep(self.b.stall_for_s)
            got = await self._request_next()
            if got is None:
                retries += 1
                if retries > self.b.max_retries:
                    self.state = "idle"  # server gone: keep partial, resume on the next check-in
                    return
                continue
            retries = 0
            hdr, cmd = got
            if hdr_is_default(hdr):
                self.state = "idle"
                return
            if cmd.status == S.WAIT_FOR_DATA:
                self.stats.waits += 1
                self.b.min_block_period_ms = max(self.b.min_block_period_ms, int(cmd.minimum_block_period))
                delay = cmd.request_time - cmd.current_time if cmd.current_time else cmd.request_time
                if delay > 0:
                    await self.clock.sleep(delay)
                continue
            if cmd.status != S.SUCCESS:  # ABORT or anything else ends this download
                self.image_ident = None
                self.state = "idle"
                return
            if self.b.min_block_period_ms and self.offset < self.image_size:
                await self.clock.sleep(self.b.min_block_period_ms / 1000)
        await self._finish_download()

    def _accept_block(self, cmd: Any) -> bool:
        """Store a SUCCESS block if it fits; True when it advanced (or re-confirmed) the image."""
        if (
            self.image_ident is None
            or (cmd.manufacturer_code, cmd.image_type, cmd.file_version) != self.image_ident
        ):
            return False
        off, data = int(cmd.file_offset), bytes(cmd.image_data)
        if off > self.offset or off + len(data) > self.image_size or not data:
            return False
        if (
            off < self.offset
            and bytes(self.assembled[off : off + len(data)][: self.offset - off]) != data[: self.offset - off]
        ):
            raise AssertionError(f"server re-sent different bytes at offset {off}")
        self.assembled[off : off + len(data)] = data
        self.stats.bytes_received += len(data)
        self.stats.block_log.append((self.clock.monotonic(), off, len(data)))
        self.offset = max(self.offset, off + len(data))
        if self.on_block is not None:
            self.on_block(self)
        return True

    async def _request_next(self) -> tuple[foundation.ZCLHeader, Any] | None:
        """One block (or page) request/response round; None on timeout."""
        n = self.stats.block_requests + self.stats.page_requests + 1
        if self.b.page_mode:
            return await self._request_page()
        offset = self.offset
        if self.b.overlap_every and n % self.b.overlap_every == 0 and offset > 0:
            offset = max(0, offset - max(1, self.b.max_data_size // 2))
        self.stats.block_requests += 1
        if self.b.malformed_first and not self._malformed_done:
            self._malformed_done = True
            self._ota_request("image_block", truncate=3, **self._block_fields(offset))
            got = await self._await_rx()
            if got is not None and hdr_is_default(got[0]):
                pass  # the server answered MALFORMED_COMMAND, as it should
        tsn = self._ota_request("image_block", **self._block_fields(offset))
        if self.b.duplicate_every and n % self.b.duplicate_every == 0:
            self._ota_request("image_block", **self._block_fields(offset))
        while True:
            got = await self._await_rx()
            if got is None:
                return None
            hdr, cmd = got
            if hdr_is_default(hdr):
                return got if hdr.tsn == tsn else None
            if hdr.command_id != 0x05:
                continue
            if cmd.status != S.SUCCESS:
                return got
            if self._accept_block(cmd) and hdr.tsn == tsn:
                return got

    async def _request_page(self) -> tuple[foundation.ZCLHeader, Any] | None:
        assert self.image_ident is not None
        mfr, itype, ver = self.image_ident
        start = self.offset
        page_end = min(self.image_size, start + self.b.page_size)
        self.stats.page_requests += 1
        self._ota_request(
            "image_page",
            field_control=0,
            manufacturer_code=mfr,
            image_type=itype,
            file_version=ver,
            file_offset=start,
            maximum_data_size=self.b.max_data_size,
            page_size=self.b.page_size,
            response_spacing=self.b.response_spacing_ms,
        )
        last = None
        while self.offset < page_end:
            # blocks of a page come response_spacing apart: allow that per block on top of the timeout
            got = await self._await_rx(self.b.response_timeout_s + self.b.response_spacing_ms / 1000)
            if got is None:
                return last  # partial page: caller asks again from self.offset
            hdr, cmd = got
            if hdr_is_default(hdr) or hdr.command_id != 0x05:
                continue
            if cmd.status != S.SUCCESS:
                return got
            self._accept_block(cmd)
            last = got
            # the rest of the page comes response_spacing apart on the server's clock: not "awaiting" any more,
            # or SimNetwork.settle() would wait for frames that need the clock to advance
            self._delivered_request = False
        return last

    async def _finish_download(self) -> None:
        assert self.image_ident is not None
        mfr, itype, ver = self.image_ident
        status = self.b.end_status
        data = bytes(self.assembled)
        if status == S.SUCCESS:
            try:
                img, _ = parse_ota_image(data)
                h = img.header
                if (h.manufacturer_id, h.image_type, h.file_version) != (mfr, itype, ver):
                    status = S.INVALID_IMAGE
            except Exception:  # any parse failure means a corrupt image
                status = S.INVALID_IMAGE
        self.completed_images.append(data)
        self.state = "ending"
        self.end_sent += 1
        got = await self._exchange(
            lambda: self._ota_request(
                "upgrade_end", status=status, manufacturer_code=mfr, image_type=itype, file_version=ver
            ),
            lambda tsn, hdr, cmd: hdr.tsn == tsn and hdr.command_id in (0x07, 0x0B),
        )
        self.image_ident = None
        self.assembled = bytearray()
        self.offset = 0
        if status != S.SUCCESS or got is None or hdr_is_default(got[0]):
            self.state = "idle"
            return
        self.pending_version = ver
        self._on_upgrade_end_response(got[1])

    def _on_upgrade_end_response(self, cmd: Any) -> None:
        self.stats.upgrade_end_responses.append((int(cmd.current_time), int(cmd.upgrade_time)))
        if self.pending_version is None or cmd.file_version != self.pending_version:
            return
        if cmd.upgrade_time == UPGRADE_WAIT:
            self.state = "waiting_apply"
            return
        delay = cmd.upgrade_time - cmd.current_time if cmd.current_time else cmd.upgrade_time
        self.state = "apply_scheduled"
        self._spawn(self._apply_after(max(0, delay)))

    async def _apply_after(self, delay: float) -> None:
        if delay:
            await self.clock.sleep(delay)
        if self.pending_version is None:
            return
        self.stats.applied_at.append(self.clock.now())
        if self.b.after_apply == "never_back":
            self.pending_version = None
            self._offline_until = math.inf  # no frame will ever come from it again
            self.state = "gone"
            return
        if self.b.after_apply == "new_version":
            self.file_version = self.pending_version
        self.pending_version = None
        self._offline_until = self.clock.monotonic() + self.b.reboot_s
        self.state = "rebooting"
        if self.b.reboot_s:
            await self.clock.sleep(self.b.reboot_s)
        self.state = "idle"
        # back up: tell the server what runs now, as clients do after an upgrade
        self.check_in()

    # ------------------------------------------------------------------ extra client commands for tests
    async def query_specific_file(self, file_version: int) -> Any:
        """Send Query Specific File for `file_version`; returns the response (or None)."""
        got = await self._exchange(
            lambda: self._ota_request(
                "query_specific_file",
                request_node_addr=self.ieee,
                manufacturer_code=self.manufacturer_code,
                image_type=self.image_type,
                file_version=file_version,
                current_zigbee_stack_version=2,
            ),
            lambda tsn, hdr, cmd: hdr.tsn == tsn and hdr.command_id in (0x09, 0x0B),
        )
        return None if got is None else got[1]

    def send_raw_ota(self, frame: bytes) -> None:
        """Inject an arbitrary OTA-cluster frame (malformed-frame tests)."""
        self._send(OTA_ID, frame)


def hdr_is_default(hdr: foundation.ZCLHeader) -> bool:
    return hdr.frame_control.is_general and hdr.command_id == foundation.GeneralCommand.Default_Response
