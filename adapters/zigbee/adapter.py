"""The Zigbee adapter: otagw as the OTA Upgrade cluster (0x0019) server of a zigpy network, driven by the core.

`ZigbeeAdapter(config, core, clock, data_dir)` starts zigpy's `ControllerApplication` for the configured radio
(adapters/zigbee/radio.py), takes over the OTA cluster's server side for every device (cluster.py) and turns
each request into calls on the neutral core (gateway/core/interface.py):

    Query Next Image / Query Specific File -> core.query -> SUCCESS (image manufacturer, type, version, size)
                                              or NO_IMAGE_AVAILABLE (Busy: NO_IMAGE now, Image Notify later)
    Image Block / Image Page              -> core.progress per block -> block from the store by offset, or
                                              WAIT_FOR_DATA (request time + MinimumBlockPeriod)
    Upgrade End SUCCESS                   -> core.download_complete + core.apply_request -> Upgrade End Response
                                              (now / at a time / 0xFFFFFFFF then a later triggering response);
                                              policy refuses -> Default Response ABORT (the device discards it)
    Upgrade End INVALID_IMAGE / ...       -> core.download_failed with the reason
    after the upgrade time + reboot wait  -> read current_file_version back -> core.report_version

Joins, interviews and leaves keep the core's device records current (`observe`, `device_left`); after an
interview a device is notified only when the core's plan would update it (zigpy's own notify is suppressed).
Every decision above (resume, the apply mapping, page streaming, notify scheduling, version read-back, stalls)
is made by the sans-I/O server in protocol/server.py, block sizing and learned caps in ota_server.py; budgets
and policy live in the core. This module only does I/O: it turns zigpy's decoded requests into server events and performs the
actions the server answers with (frames, core calls, clock timers). All waiting goes through the injected clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import zigpy.exceptions
import zigpy.types as t
from zigpy.application import ControllerApplication
from zigpy.zcl import foundation
from zigpy.zcl.clusters.general import Basic, Ota, PowerConfiguration

from adapters.zigbee.cluster import OtaTakeover
from adapters.zigbee.network import NetworkManager, install_key_redaction, secure_database
from adapters.zigbee.ota_server import (
    IMAGE_BLOCK_RESPONSE_ID,
    UPGRADE_TIME_WAIT,
    OtaDevice,
    OtaServerState,
    encode_image_block_response,
)
from adapters.zigbee.protocol import events as ev
from adapters.zigbee.protocol.events import (
    ApplyRecheckDue,
    DeviceInterviewed,
    Event,
    ImageBlockRequest,
    ImagePageRequest,
    QueryNextImage,
    QuerySpecificFile,
    SetTimer,
    StallCheckDue,
    TimerEvent,
    UpgradeEndRequest,
)
from adapters.zigbee.protocol.server import Flow, OtaServer
from adapters.zigbee.radio import AdapterStartError, start_controller
from gateway.clock import Clock
from gateway.config import ZigbeeConfig
from gateway.core.interface import DeviceInfo, DeviceKey, UnknownToken, UpdateCoreInterface

LOGGER = logging.getLogger(__name__)

S = foundation.Status
LEARNED_CAPS_FILE = "zigbee-learned-block-caps.json"
OTA_CLUSTER = t.ClusterId(Ota.cluster_id)
IBR_COMMAND = t.uint8_t(IMAGE_BLOCK_RESPONSE_ID)
IMAGE_NOTIFY_ID = Ota.ClientCommandDefs.image_notify.id

__all__ = ["AdapterStartError", "ZigbeeAdapter"]


def _plain_block_response(cluster: Ota) -> bool:
    """Whether zigpy would send this cluster's Image Block Response exactly as `encode_image_block_response`
    packs it: zigpy's own schema, no manufacturer code in the header (a quirk may change either). Cached."""
    plain = cluster.__dict__.get("_otagw_plain_ibr")
    if plain is None:
        cmd = cluster.client_commands.get(IMAGE_BLOCK_RESPONSE_ID)
        plain = (
            cmd is not None
            and cmd.schema is Ota.ImageBlockResponseCommand
            and cluster.is_client
            and cluster._get_effective_manufacturer_code(cmd) is None
        )
        cluster.__dict__["_otagw_plain_ibr"] = plain
    return bool(plain)


def network_id(extended_pan_id: Any) -> str:
    """`epid:<16 hex digits>`, most significant byte first (as zigpy prints it, without the colons)."""
    return "epid:" + str(extended_pan_id).replace(":", "").lower()


class _RadioLossListener:
    """zigpy application listener: hands `connection_lost` to the adapter."""

    def __init__(self, adapter: ZigbeeAdapter) -> None:
        self._adapter = adapter

    def connection_lost(self, exc: BaseException | None) -> None:
        self._adapter.radio_lost(exc)


class ZigbeeAdapter:
    """OTA Upgrade cluster server on zigpy; see the module docstring for the flow."""

    def __init__(
        self,
        config: ZigbeeConfig,
        core: UpdateCoreInterface,
        clock: Clock,
        data_dir: Path | None,
        *,
        app_cls: type[ControllerApplication] | None = None,
        backup_subdir: str | None = None,
    ) -> None:
        self.config = config
        self._backup_subdir = backup_subdir  # one folder per radio when there are several
        self.core = core
        self.clock = clock
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._app_cls = app_cls
        self.app: ControllerApplication | None = None
        self._owns_app = False
        self.server = OtaServer(config)
        self._takeover: OtaTakeover | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._locks: dict[DeviceKey, asyncio.Lock] = {}
        self._page_tasks: dict[DeviceKey, asyncio.Task[Any]] = {}
        self._timers: dict[TimerEvent, asyncio.Task[Any]] = {}
        self._inflight = 0
        self.network: NetworkManager | None = None  # network management (form/backup/...), once attached
        self.radio_state = "down"  # up | reconnecting | down
        self.reconnects = 0  # successful reconnects since start
        self._reconnect_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.malformed: list[str] = []  # recent malformed-frame descriptions (for the API / tests)
        self._event_builders: dict[int, Callable[[Ota, foundation.ZCLHeader, Any], Event]] = {
            Ota.ServerCommandDefs.query_next_image.id: self._query_next_image_event,
            Ota.ServerCommandDefs.image_block.id: self._image_block_event,
            Ota.ServerCommandDefs.image_page.id: self._image_page_event,
            Ota.ServerCommandDefs.upgrade_end.id: self._upgrade_end_event,
            Ota.ServerCommandDefs.query_specific_file.id: self._query_specific_file_event,
        }
        # how each server action is performed; every performer takes (action, cluster, request header)
        self._perform: dict[type, Callable[[Any, Ota | None, Any], Awaitable[Any]]] = {
            ev.SendQueryResponse: self._do_send_query_response,
            ev.SendBlock: self._do_send_block,
            ev.SendWaitForData: self._do_send_wait_for_data,
            ev.SendBlockStatus: self._do_send_block_status,
            ev.SendUpgradeEndResponse: self._do_send_upgrade_end_response,
            ev.SendDefaultResponse: self._do_send_default_response,
            ev.SendImageNotify: self._do_send_image_notify,
            ev.DescribeDevice: self._do_describe_device,
            ev.ReadVersion: self._do_read_version,
            ev.CoreObserve: self._do_core_observe,
            ev.CoreReportVersion: self._do_core_report_version,
            ev.CoreStatusReport: self._do_core_status_report,
            ev.CoreQuery: self._do_core_query,
            ev.CoreQueryVersion: self._do_core_query_version,
            ev.CoreActiveTransfer: self._do_core_active_transfer,
            ev.CorePlanOutcome: self._do_core_plan_outcome,
            ev.CoreOpenImage: self._do_core_open_image,
            ev.CoreProgress: self._do_core_progress,
            ev.CoreDownloadComplete: self._do_core_download_complete,
            ev.CoreDownloadFailed: self._do_core_download_failed,
            ev.CoreApplyRequest: self._do_core_apply_request,
            ev.SetTimer: self._do_set_timer,
            ev.Sleep: self._do_sleep,
            ev.StartPageStream: self._do_start_page_stream,
            ev.CancelPageStream: self._do_cancel_page_stream,
            ev.SaveLearnedCaps: self._do_save_learned_caps,
        }

    # ================================================================== lifecycle
    async def start(self) -> None:
        """Start the radio and take over OTA. Raises AdapterStartError (the gateway goes on without Zigbee)."""
        install_key_redaction()
        if self.data_dir is not None:
            secure_database(self.data_dir / self.config.database)
        app = await start_controller(self.config, self.data_dir, self._app_cls)
        self._owns_app = True
        await self.attach(app)
        self.radio_state = "up"

    async def attach(self, app: ControllerApplication) -> None:
        """Serve OTA on an already running application (used by start() and by the harness)."""
        self.app = app
        await self._migrate_network_id()
        self._load_learned_caps()
        self._takeover = OtaTakeover(
            app,
            on_request=self._on_request,
            on_malformed=self._on_malformed,
            on_device_initialized=self._on_device_initialized,
            on_device_left=self._on_device_left,
        )
        self._takeover.install()
        # devices known from zigpy's database: refresh their records from cached attributes (no traffic)
        for device in list(app.devices.values()):
            for cluster in self._takeover.ensure(device):
                await self._observe(self._info(cluster))
        for action in self.server.start():
            await self._perform[type(action)](action, None, None)
        self._spawn(self._notify_loop(), "notify due devices")
        self.network = NetworkManager(app, self.data_dir, backup_subdir=self._backup_subdir)
        if self._owns_app:
            app.add_listener(_RadioLossListener(self))
        if self.data_dir is not None and self.config.backup_interval_s > 0:
            self._spawn(self._backup_loop(), "automatic network backups")

    def health(self) -> dict[str, Any]:
        return {"radio": self.radio_state, "reconnects": self.reconnects}

    # ------------------------------------------------------------------------------------------ reconnect
    RECONNECT_FIRST_S = 1.0
    RECONNECT_MAX_S = 60.0

    def radio_lost(self, exc: BaseException | None) -> None:
        """zigpy/bellows lost the radio (NCP reset, serial unplugged, watchdog): reconnect in the background."""
        if self.app is None or self._stopping or (self.network is not None and self.network.rewriting):
            return
        if self._reconnect_task is not None and not self._reconnect_task.done():
            return
        LOGGER.warning("zigbee radio connection lost (%r); reconnecting", exc)
        self.radio_state = "reconnecting"
        self._reconnect_task = self._spawn(self._reconnect(), "reconnect the zigbee radio")

    async def _reconnect(self) -> None:
        """Restart the network from the radio's own NVM (`auto_form=False`: never form over a lost network),
        first at once, then with doubling waits up to RECONNECT_MAX_S. Transfers resume from their offsets: the
        server's flows and the core's records live on across the reconnect."""
        app = self.app
        assert app is not None
        delay = 0.0
        attempt = 0
        while True:
            if delay:
                await self.clock.sleep(delay)
            attempt += 1
            try:
                with contextlib.suppress(Exception):
                    await app.disconnect()
                async with asyncio.timeout(self.config.radio.startup_timeout_s):
                    await app.startup(auto_form=False)
            except Exception as exc:
                delay = min(self.RECONNECT_MAX_S, max(self.RECONNECT_FIRST_S, delay * 2))
                LOGGER.warning(
                    "zigbee radio reconnect attempt %d failed (%s: %s); next in %.0f s",
                    attempt,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                continue
            self.reconnects += 1
            self.radio_state = "up"
            LOGGER.info("zigbee radio reconnected", extra={"fields": {"attempts": attempt}})
            return

    async def stop(self) -> None:
        self.radio_state = "down"
        self._stopping = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._timers.clear()
        self._page_tasks.clear()
        if self._takeover is not None:
            self._takeover.remove()
            self._takeover = None
        if self.app is not None and self._owns_app:
            await self.app.shutdown()
        self.app = None
        self.network = None

    def is_idle(self) -> bool:
        """No request is being processed right now (clock waits don't count); for the harness."""
        return self._inflight == 0

    @property
    def state(self) -> OtaServerState:
        """The server's transfer records and learned caps (read-only use: tests, API)."""
        return self.server.state

    @property
    def transfers(self) -> dict[DeviceKey, OtaDevice]:
        return self.server.transfers

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"otagw-zigbee {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            LOGGER.error("zigbee adapter task %s failed", task.get_name(), exc_info=task.exception())

    @contextlib.asynccontextmanager
    async def _busy(self) -> Any:
        self._inflight += 1
        try:
            yield
        finally:
            self._inflight -= 1

    async def _sleep(self, seconds: float) -> None:
        """Clock sleep that does not count as in-flight work."""
        self._inflight -= 1
        try:
            await self.clock.sleep(seconds)
        finally:
            self._inflight += 1

    # ================================================================== identities and records
    def _pan(self) -> str:
        """The network's id in device keys: its extended PAN id, which stays when the 16-bit PAN id changes (a
        PAN id conflict, a restore with new settings); records named by the 16-bit PAN id are renamed at start."""
        assert self.app is not None
        return network_id(self.app.state.network_info.extended_pan_id)

    async def _migrate_network_id(self) -> None:
        """Migration step: records from before the extended-PAN-id identity ("pan:<16-bit>") move to it."""
        assert self.app is not None
        rename = getattr(self.core, "rename_network", None)
        if rename is None:
            return
        old = f"pan:{int(self.app.state.network_info.pan_id):04x}"
        moved = await rename("zigbee", old, self._pan())
        if moved:
            LOGGER.info("renamed %d zigbee device records from %s to %s", moved, old, self._pan())

    def _key(self, cluster: Ota) -> DeviceKey:
        """The cluster's DeviceKey, cached on the cluster instance (asked for on every block) per network."""
        assert self.app is not None
        epid = self.app.state.network_info.extended_pan_id
        cached = cluster.__dict__.get("_otagw_key")
        if cached is not None and cached[0] == epid:
            key: DeviceKey = cached[1]
            return key
        key = DeviceKey(
            "zigbee",
            network_id(epid),
            str(cluster.endpoint.device.ieee),
            cluster.endpoint.endpoint_id,
        )
        cluster.__dict__["_otagw_key"] = (epid, key)
        return key

    def _info(self, cluster: Ota, qni: Any = None) -> DeviceInfo:
        device = cluster.endpoint.device
        node_desc = getattr(device, "node_desc", None)
        basic = cluster.endpoint.in_clusters.get(Basic.cluster_id)
        vendor = cluster.get(Ota.AttributeDefs.manufacturer_id.name)
        product = cluster.get(Ota.AttributeDefs.image_type_id.name)
        version = cluster.get(Ota.AttributeDefs.current_file_version.name)
        hw = basic.get(Basic.AttributeDefs.hw_version.name) if basic is not None else None
        mbp = cluster.get(Ota.AttributeDefs.minimum_block_req_delay.name)
        if qni is not None:
            vendor, product, version = qni.manufacturer_code, qni.image_type, qni.current_file_version
            hw = (
                getattr(qni, "hardware_version", None)
                if getattr(qni, "hardware_version", None) is not None
                else hw
            )
        if vendor is None and node_desc is not None:
            vendor = node_desc.manufacturer_code
        sleepy = None if node_desc is None else not bool(node_desc.is_receiver_on_when_idle)
        extra: dict[str, object] = {"nwk": f"0x{int(device.nwk):04x}"}
        if mbp is not None:
            extra["min_block_period_ms"] = int(mbp)
        if node_desc is not None:
            extra["mains_powered"] = bool(node_desc.is_mains_powered)
        power_source, battery = _power(cluster.endpoint, node_desc)
        return DeviceInfo(
            key=self._key(cluster),
            vendor_id=None if vendor is None else int(vendor),
            product_id=None if product is None else int(product),
            vendor_name=device.manufacturer,
            model=device.model,
            hardware_version=None if hw is None else int(hw),
            current_version=None if version is None else int(version),
            current_version_string=None if version is None else f"0x{int(version):08x}",
            sleepy=sleepy,
            extra=extra,
            power_source=power_source,
            battery_percent=battery,
        )

    async def _observe(self, info: DeviceInfo) -> None:
        await self._drive(self.server.observe(info), None)

    async def _report_version(self, key: DeviceKey, version: int) -> None:
        await self._drive(self.server.report_version(key, version), None)

    def _on_device_initialized(self, device: Any) -> None:
        self._spawn(self._refresh_device(device), f"refresh {device.ieee}")

    async def _refresh_device(self, device: Any) -> None:
        """Read OTA client and Basic attributes after an interview, then update the core's record."""
        assert self._takeover is not None
        for cluster in self._takeover.ensure(device):
            async with self._busy():
                with contextlib.suppress(Exception):
                    await cluster.read_attributes(
                        [
                            Ota.AttributeDefs.current_file_version.name,
                            Ota.AttributeDefs.manufacturer_id.name,
                            Ota.AttributeDefs.image_type_id.name,
                            Ota.AttributeDefs.minimum_block_req_delay.name,
                        ],
                        allow_cache=False,
                    )
                basic = cluster.endpoint.in_clusters.get(Basic.cluster_id)
                if basic is not None:
                    with contextlib.suppress(Exception):
                        # PowerSource is not read here: a sleepy device may be asleep and zigpy's wait is not on
                        # the injected clock; the node descriptor (interview) says mains or battery, and a
                        # cached PowerSource (reports, other reads) refines it
                        await basic.read_attributes([Basic.AttributeDefs.hw_version.name], allow_cache=True)
                power = cluster.endpoint.in_clusters.get(PowerConfiguration.cluster_id)
                if power is not None:  # the charge changes: never from the cache
                    with contextlib.suppress(Exception):
                        await power.read_attributes(
                            [
                                PowerConfiguration.AttributeDefs.battery_percentage_remaining.name,
                                PowerConfiguration.AttributeDefs.battery_voltage.name,
                            ],
                            allow_cache=False,
                        )
                info = self._info(cluster)
                await self._observe(info)
                if info.current_version is not None:
                    await self._report_version(info.key, info.current_version)
                await self._drive(self.server.handle(DeviceInterviewed(info.key)), cluster)

    def _on_device_left(self, device: Any) -> None:
        if self.app is None:
            return
        for key in self.server.forget_device(self._pan(), str(device.ieee)):
            self._spawn(self.core.device_left(key), f"left {key.device_id}")

    def _on_malformed(self, device: Any, endpoint: int, frame: bytes, problem: str) -> None:
        text = (
            f"malformed OTA frame from {device.ieee} endpoint {endpoint}: {problem}; frame: {frame.hex(' ')}"
        )
        LOGGER.warning("%s", text)
        self.malformed = [*self.malformed[-49:], text]

    # ================================================================== requests -> events
    def _on_request(self, cluster: Ota, hdr: foundation.ZCLHeader, args: Any) -> None:
        """Called synchronously by zigpy for each OTA cluster command from a device."""
        if hdr.direction != foundation.Direction.Client_to_Server:
            return  # server->client frames from a device (another OTA server?) are not for us
        make_event = self._event_builders.get(hdr.command_id)
        if make_event is None or isinstance(args, bytes | bytearray):
            LOGGER.warning(
                "unsupported OTA command 0x%02x from %s: %r",
                hdr.command_id,
                cluster.endpoint.device.ieee,
                args,
            )
            cluster.send_default_rsp(hdr, S.UNSUP_CLUSTER_COMMAND)
            return
        self._inflight += 1  # counted from now so the harness sees the request as in progress
        self._spawn(self._run_request(make_event, cluster, hdr, args), f"OTA 0x{hdr.command_id:02x}")

    async def _run_request(
        self,
        make_event: Callable[[Ota, foundation.ZCLHeader, Any], Event],
        cluster: Ota,
        hdr: foundation.ZCLHeader,
        args: Any,
    ) -> None:
        try:
            key = self._key(cluster)
            lock = self._locks.get(key)
            if lock is None:
                lock = self._locks[key] = asyncio.Lock()
            async with lock:
                event = make_event(cluster, hdr, args)
                await self._drive(self.server.handle(event), cluster, hdr)
        except Exception:  # one bad exchange never takes the adapter down
            LOGGER.exception(
                "OTA command 0x%02x from %s failed", hdr.command_id, cluster.endpoint.device.ieee
            )
        finally:
            self._inflight -= 1

    def _query_next_image_event(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> Event:
        power = cluster.endpoint.in_clusters.get(PowerConfiguration.cluster_id)
        if power is not None:
            # the charge changes between queries: read it while the device is awake (it just transmitted), so
            # a device deferred for a low battery is offered its update at the query after it recovered
            self._spawn(self._refresh_battery(cluster, power), f"battery {cluster.endpoint.device.ieee}")
        return QueryNextImage(self._key(cluster), hdr.tsn, self._info(cluster, qni=cmd))

    async def _refresh_battery(self, cluster: Ota, power: Any) -> None:
        with contextlib.suppress(Exception):
            await power.read_attributes(
                [PowerConfiguration.AttributeDefs.battery_percentage_remaining.name], allow_cache=False
            )
            await self._observe(self._info(cluster))

    def _query_specific_file_event(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> Event:
        base = self._info(cluster)
        info = DeviceInfo(
            key=base.key,
            vendor_id=int(cmd.manufacturer_code),
            product_id=int(cmd.image_type),
            vendor_name=base.vendor_name,
            model=base.model,
            hardware_version=base.hardware_version,
            current_version=base.current_version,
            current_version_string=base.current_version_string,
            sleepy=base.sleepy,
            extra={**base.extra, "query_specific_file": int(cmd.file_version)},
            power_source=base.power_source,
            battery_percent=base.battery_percent,
        )
        return QuerySpecificFile(base.key, hdr.tsn, info, int(cmd.file_version))

    def _image_block_event(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> Event:
        mbp = getattr(cmd, "minimum_block_period", None)
        return ImageBlockRequest(
            self._key(cluster),
            hdr.tsn,
            int(cmd.manufacturer_code),
            int(cmd.image_type),
            int(cmd.file_version),
            int(cmd.file_offset),
            int(cmd.maximum_data_size),
            None if mbp is None else int(mbp),
        )

    def _image_page_event(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> Event:
        return ImagePageRequest(
            self._key(cluster),
            hdr.tsn,
            int(cmd.manufacturer_code),
            int(cmd.image_type),
            int(cmd.file_version),
            int(cmd.file_offset),
            int(cmd.maximum_data_size),
            int(cmd.page_size),
            int(cmd.response_spacing),
        )

    def _upgrade_end_event(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> Event:
        return UpgradeEndRequest(
            self._key(cluster),
            hdr.tsn,
            int(cmd.status),
            int(cmd.manufacturer_code),
            int(cmd.image_type),
            int(cmd.file_version),
            bool(hdr.frame_control.disable_default_response),
        )

    # ================================================================== actions -> I/O
    async def _drive(
        self, flow: Flow[Any], cluster: Ota | None, hdr: foundation.ZCLHeader | None = None
    ) -> None:
        """Run one server flow to its end: perform each action it yields and send the answer back in.

        `cluster` is the device's OTA cluster the frames go to (None when the device is not known any more: sends
        then fail as undelivered); `hdr` the request that started the flow, for Default Responses."""
        server, clock, perform = self.server, self.clock, self._perform
        answer: Any = None
        while True:
            action = server.step(flow, answer, clock.now(), clock.monotonic())
            if action is None:
                return
            answer = await perform[type(action)](action, cluster, hdr)

    async def _send(self, what: str, cluster: Ota | None, send: Callable[[Ota], Awaitable[Any]]) -> bool:
        """Await one zigpy send; delivery failures are logged, never raised."""
        if cluster is None:
            return False
        try:
            await send(cluster)
            return True
        except (zigpy.exceptions.ZigbeeException, TimeoutError, OSError) as exc:
            LOGGER.info("%s to %s not delivered: %s", what, cluster.endpoint.device.ieee, exc)
            return False

    async def _do_send_query_response(self, a: Any, cluster: Ota | None, hdr: Any) -> bool:
        what = "Query Specific File Response" if a.specific else "Query Next Image Response"
        fields: dict[str, Any] = {"status": foundation.Status(a.status), "tsn": a.tsn}
        if a.status == S.SUCCESS:
            fields.update(
                manufacturer_code=a.manufacturer_code,
                image_type=a.image_type,
                file_version=a.file_version,
                image_size=a.image_size,
            )

        def send(c: Ota) -> Awaitable[Any]:
            if a.specific:
                return c.query_specific_file_response(**fields)
            return c.query_next_image_response(**fields)

        return await self._send(what, cluster, send)

    async def _do_send_block(self, a: Any, cluster: Ota | None, hdr: Any) -> bool:
        if cluster is None:
            return False
        tr: OtaDevice = a.transfer
        data = tr.read(a.offset, a.length)
        try:
            await self._image_block_response(cluster, tr, a.offset, data, a.tsn)
            return True
        except (zigpy.exceptions.ZigbeeException, TimeoutError, OSError) as exc:
            LOGGER.info("Image Block Response to %s not delivered: %s", cluster.endpoint.device.ieee, exc)
            return False

    async def _do_send_wait_for_data(self, a: Any, cluster: Ota | None, hdr: Any) -> bool:
        return await self._send(
            "WAIT_FOR_DATA",
            cluster,
            lambda c: c.image_block_response(
                status=S.WAIT_FOR_DATA,
                current_time=a.current_time,
                request_time=a.request_time,
                minimum_block_period=a.minimum_block_period,
                tsn=a.tsn,
            ),
        )

    async def _do_send_block_status(self, a: Any, cluster: Ota | None, hdr: Any) -> bool:
        status = foundation.Status(a.status)
        return await self._send(
            status.name,
            cluster,
            lambda c: c.image_block_response(status=status, tsn=a.tsn),
        )

    async def _do_send_upgrade_end_response(self, a: Any, cluster: Ota | None, hdr: Any) -> bool:
        wait = a.upgrade_time == UPGRADE_TIME_WAIT
        return await self._send(
            "Upgrade End Response (wait)" if wait else "Upgrade End Response",
            cluster,
            lambda c: c.upgrade_end_response(
                manufacturer_code=a.manufacturer_code,
                image_type=a.image_type,
                file_version=a.file_version,
                current_time=a.current_time,
                upgrade_time=a.upgrade_time,
                tsn=a.tsn,
            ),
        )

    async def _do_send_default_response(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        if cluster is not None and hdr is not None:
            cluster.send_default_rsp(hdr, foundation.Status(a.status))

    async def _do_send_image_notify(self, a: Any, cluster: Ota | None, hdr: Any) -> bool:
        results = await self.notify([a.key])
        return results.get(a.key, False)

    async def _do_describe_device(self, a: Any, cluster: Ota | None, hdr: Any) -> DeviceInfo:
        assert cluster is not None  # only request flows describe their device
        return self._info(cluster)

    async def _do_read_version(self, a: Any, cluster: Ota | None, hdr: Any) -> int | None:
        if cluster is None:
            return None
        try:
            ok, _failed = await cluster.read_attributes(
                [Ota.AttributeDefs.current_file_version.name], allow_cache=False
            )
        except (zigpy.exceptions.ZigbeeException, TimeoutError) as exc:
            LOGGER.info("%s: version read failed: %s", a.key.device_id, exc)
            return None
        version = ok.get(Ota.AttributeDefs.current_file_version.name)
        return None if version is None else int(version)

    async def _do_core_observe(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        try:
            await self.core.observe(a.info)
        except Exception:  # a record we could not store must not break OTA serving
            LOGGER.exception("core.observe failed for %s", a.info.key.device_id)

    async def _do_core_report_version(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        try:
            await self.core.report_version(a.key, a.version, f"0x{a.version:08x}")
        except Exception:
            LOGGER.exception("core.report_version failed for %s", a.key.device_id)

    async def _do_core_status_report(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        try:
            await self.core.status_report(a.key, a.report)
        except Exception:
            LOGGER.exception("core.status_report failed for %s", a.key.device_id)

    async def _do_core_query(self, a: Any, cluster: Ota | None, hdr: Any) -> Any:
        return await self.core.query(a.info)

    async def _do_core_query_version(self, a: Any, cluster: Ota | None, hdr: Any) -> Any:
        return await self.core.query_version(a.info, a.version)

    async def _do_core_active_transfer(self, a: Any, cluster: Ota | None, hdr: Any) -> Any:
        return self.core.active_transfer(a.key)

    async def _do_core_plan_outcome(self, a: Any, cluster: Ota | None, hdr: Any) -> str | None:
        for item in self.core.plan():
            if item.device_id == a.key.device_id:
                return str(item.outcome)
        return None

    async def _do_core_open_image(self, a: Any, cluster: Ota | None, hdr: Any) -> Any:
        try:
            return self.core.open_image(a.token)
        except UnknownToken as exc:
            return exc

    async def _do_core_progress(self, a: Any, cluster: Ota | None, hdr: Any) -> Any:
        try:
            return await self.core.progress(a.token, a.offset, a.nbytes)
        except UnknownToken as exc:
            return exc

    async def _do_core_download_complete(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        await self.core.download_complete(a.token)

    async def _do_core_download_failed(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        try:
            await self.core.download_failed(a.token, a.reason)
        except Exception:
            LOGGER.exception("core.download_failed failed")

    async def _do_core_apply_request(self, a: Any, cluster: Ota | None, hdr: Any) -> Any:
        return await self.core.apply_request(a.token, a.new_version)

    async def _do_set_timer(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        event: TimerEvent = a.event
        old = self._timers.pop(event, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        name = type(event).__name__ + (f" {event.key.device_id}" if hasattr(event, "key") else "")
        self._timers[event] = self._spawn(self._timer(event, a.delay_s), name)

    async def _timer(self, event: TimerEvent, delay_s: float) -> None:
        try:
            await self.clock.sleep(delay_s)
        finally:
            if self._timers.get(event) is asyncio.current_task():
                del self._timers[event]
        key = getattr(event, "key", None)
        cluster = self._find_cluster(key) if key is not None else None
        async with self._busy():
            try:
                if isinstance(event, ApplyRecheckDue):
                    async with self._locks.setdefault(event.key, asyncio.Lock()):
                        await self._drive(self.server.handle(event), cluster)
                else:
                    await self._drive(self.server.handle(event), cluster)
            except Exception:  # a failed timer round must not end the adapter (the stall timer re-arms)
                LOGGER.exception("zigbee timer %s failed", type(event).__name__)
                if isinstance(event, StallCheckDue):
                    await self._do_set_timer(SetTimer(event, self.server.stall_check_interval()), None, None)

    async def _do_sleep(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        await self._sleep(a.seconds)

    async def _do_start_page_stream(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        key = a.request.key
        old = self._page_tasks.pop(key, None)
        if old is not None:
            old.cancel()
        self._inflight += 1
        self._page_tasks[key] = self._spawn(
            self._stream_page(self.server.stream_page(a.request, a.transfer), cluster, key),
            f"page {key.device_id}",
        )

    async def _stream_page(self, flow: Flow[None], cluster: Ota | None, key: DeviceKey) -> None:
        try:
            await self._drive(flow, cluster)
        finally:
            self._inflight -= 1
            if self._page_tasks.get(key) is asyncio.current_task():
                self._page_tasks.pop(key, None)

    async def _do_cancel_page_stream(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        page = self._page_tasks.pop(a.key, None)
        if page is not None:
            page.cancel()

    async def _do_save_learned_caps(self, a: Any, cluster: Ota | None, hdr: Any) -> None:
        if self.data_dir is None:
            return
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.data_dir / (LEARNED_CAPS_FILE + ".tmp")
            tmp.write_text(a.text, encoding="utf-8")
            tmp.replace(self.data_dir / LEARNED_CAPS_FILE)
        except OSError as exc:
            LOGGER.warning("cannot save learned block caps: %s", exc)

    def _image_block_response(
        self, cluster: Ota, tr: OtaDevice, offset: int, data: bytes, tsn: int | None
    ) -> Awaitable[Any]:
        """Send one SUCCESS Image Block Response: packed directly when the cluster is zigpy's plain Ota
        (same bytes, none of the per-reply codec work), through zigpy's command otherwise (quirks)."""
        if _plain_block_response(cluster):
            if tsn is None:
                tsn = cluster.endpoint.device.get_sequence()
            return cluster.endpoint.reply(
                cluster=OTA_CLUSTER,
                sequence=tsn,  # type: ignore[arg-type]  # zigpy annotates uint8_t, takes any int
                command_id=IBR_COMMAND,
                data=encode_image_block_response(
                    tsn, tr.manufacturer_code, tr.image_type, tr.file_version, offset, data
                ),
                priority=t.PacketPriority.LOW,
                aps_encryption=cluster.aps_encryption,
            )
        return cluster.image_block_response(
            status=S.SUCCESS,
            manufacturer_code=tr.manufacturer_code,
            image_type=tr.image_type,
            file_version=tr.file_version,
            file_offset=offset,
            image_data=data,
            tsn=tsn,
            priority=t.PacketPriority.LOW,
        )

    def _load_learned_caps(self) -> None:
        if self.data_dir is None:
            return
        path = self.data_dir / LEARNED_CAPS_FILE
        with contextlib.suppress(OSError):
            self.state.caps_from_json(path.read_text(encoding="utf-8"))

    # ================================================================== Image Notify
    def _find_cluster(self, key: DeviceKey) -> Ota | None:
        if self.app is None or self._takeover is None:
            return None
        device = self.app.devices.get(t.EUI64.convert(key.address))
        if device is None:
            return None
        for cluster in self._takeover.ensure(device):
            if cluster.endpoint.endpoint_id == key.endpoint:
                return cluster
        return None

    async def notify(self, keys: list[DeviceKey] | None = None, image: Any = None) -> dict[DeviceKey, bool]:
        """Image Notify: unicast to `keys`, or one broadcast (with query jitter) for None / many keys.

        Returns per-key delivery for unicasts ({} for a broadcast). A failure (e.g. a sleepy device) is logged
        and otherwise harmless: the device is served at its next check-in.
        """
        if self.app is None:
            return {}
        PT = Ota.ImageNotifyCommand.PayloadType
        fields: dict[str, Any] = {}
        if image is not None:
            fields = dict(
                payload_type=PT.QueryJitter_ManufacturerCode_ImageType_NewFileVersion,
                manufacturer_code=image.vendor_id,
                image_type=image.product_id,
                new_file_version=image.numeric_version,
            )
        else:
            fields = dict(payload_type=PT.QueryJitter)
        if keys is None or len(keys) >= self.config.notify_broadcast_threshold:
            await self._broadcast_notify(fields)
            return {}
        results: dict[DeviceKey, bool] = {}
        for key in keys:
            cluster = self._find_cluster(key)
            if cluster is None:
                results[key] = False
                continue
            # unicast: jitter 100 so the device always answers
            results[key] = await self._send(
                "Image Notify",
                cluster,
                lambda c: c.client_command(IMAGE_NOTIFY_ID, query_jitter=100, retries=0, **fields),
            )
        return results

    async def notify_due(self) -> int:
        """Image Notify the devices of this PAN the core says have an update due and were not offered it yet
        (`core.devices_to_notify()`): unicast a few, broadcast for many."""
        if self.app is None:
            return 0
        pan = self._pan()
        keys = [k for k in self.core.devices_to_notify() if k.protocol == "zigbee" and k.network == pan]
        if not keys:
            return 0
        results = await self.notify(keys)
        for key in keys:
            if results.get(key, not results):  # broadcast ({}): all count as notified
                await self.core.mark_notified(
                    key, "Image Notify sent" + (" (broadcast)" if not results else "")
                )
        return len(keys)

    async def _backup_loop(self) -> None:
        """One backup at start, then every `backup_interval_s`; a failed one is logged and retried next time."""
        while True:
            if self.network is not None:
                try:
                    await self.network.auto_backup(self.config.backup_keep, self.clock.now())
                except Exception as exc:
                    LOGGER.warning("automatic zigbee network backup failed: %s", exc)
            await self.clock.sleep(self.config.backup_interval_s)

    async def _notify_loop(self) -> None:
        while True:
            await self.clock.sleep(self.config.notify_interval_s)
            async with self._busy():
                try:
                    await self.notify_due()
                except Exception:  # a failed notify round is retried next interval
                    LOGGER.exception("Image Notify round failed")

    async def _broadcast_notify(self, fields: dict[str, Any]) -> None:
        assert self.app is not None
        tsn = self.app.get_sequence()
        hdr = foundation.ZCLHeader.cluster(
            tsn, Ota.ClientCommandDefs.image_notify.id, direction=foundation.Direction.Server_to_Client
        )
        payload = Ota.ClientCommandDefs.image_notify.schema(
            query_jitter=self.config.notify_query_jitter, **fields
        )
        try:
            await self.app.broadcast(
                profile=t.uint16_t(0x0104),  # Home Automation
                cluster=Ota.cluster_id,
                src_ep=t.uint8_t(1),
                dst_ep=t.uint8_t(0xFF),
                grpid=t.uint16_t(0),
                radius=0,
                sequence=t.uint8_t(tsn),
                data=hdr.serialize() + payload.serialize(),
                broadcast_address=t.BroadcastAddress.RX_ON_WHEN_IDLE,
            )
        except (zigpy.exceptions.ZigbeeException, OSError) as exc:
            LOGGER.warning("Image Notify broadcast failed: %s", exc)


# Basic PowerSource (ZCL 3.2.2.2.8): low 7 bits are the primary source; 0x03 is battery, 0x01/0x02/0x04-0x06 mains
# or DC. Bit 7 says a battery *backs up* the primary source: still a mains device.
_BATTERY_SOURCE = 0x03


def _power(endpoint: Any, node_desc: Any) -> tuple[str | None, int | None]:
    """(power source, battery percent) as the device told them (zigpy's attribute cache), never guessed from the
    model: Basic PowerSource first, the node descriptor's mains-powered flag otherwise; the charge from Power
    Configuration BatteryPercentageRemaining (half-percent units, 0xFF = unknown)."""
    source: str | None = None
    basic = endpoint.in_clusters.get(Basic.cluster_id)
    raw = basic.get(Basic.AttributeDefs.power_source.name) if basic is not None else None
    if raw is not None:
        source = "battery" if int(raw) & 0x7F == _BATTERY_SOURCE else "mains"
    elif node_desc is not None:
        source = "mains" if node_desc.is_mains_powered else "battery"
    percent: int | None = None
    power = endpoint.in_clusters.get(PowerConfiguration.cluster_id)
    if power is not None:
        half = power.get(PowerConfiguration.AttributeDefs.battery_percentage_remaining.name)
        if half is not None and int(half) != 0xFF:
            percent = min(100, int(half) // 2)
    return source, percent
