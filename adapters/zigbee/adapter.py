"""The Zigbee adapter: otagw as the OTA Upgrade cluster (0x0019) server of a zigpy network, driven by the core.

`ZigbeeAdapter(config, core, clock, data_dir)` starts zigpy's `ControllerApplication` for the configured radio
(adapters/zigbee/radio.py), takes over the OTA cluster's server side for every device (cluster.py) and turns
each request into calls on the neutral core (gateway/core/interface.py):

    Query Next Image / Query Specific File -> core.query -> SUCCESS (image manufacturer, type, version, size)
                                              or NO_IMAGE_AVAILABLE (Busy: NO_IMAGE now, Image Notify later)
    Image Block / Image Page              -> core.progress per block -> block from the store by offset, or
                                              WAIT_FOR_DATA (request time + MinimumBlockPeriod)
    Upgrade End SUCCESS                   -> core.download_complete + core.apply_request -> Upgrade End Response
                                              (now / at a time / 0xFFFFFFFF then a later triggering response)
    Upgrade End INVALID_IMAGE / ...       -> core.download_failed with the reason
    after the upgrade time + reboot wait  -> read current_file_version back -> core.report_version

Joins, interviews and leaves keep the core's device records current (`observe`, `device_left`). Block sizing,
learned caps, resume and stall detection live in ota_server.py (sans-I/O); budgets and policy live in the
core — this module only asks. All waiting goes through the injected clock.
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
from zigpy.zcl.clusters.general import Basic, Ota

from adapters.zigbee.cluster import OtaTakeover
from adapters.zigbee.ota_server import (
    IMAGE_BLOCK_RESPONSE_ID,
    UPGRADE_TIME_WAIT,
    OtaDevice,
    OtaServerState,
    TransferStatus,
    encode_image_block_response,
    zcl_utc,
)
from adapters.zigbee.radio import AdapterStartError, start_controller
from gateway.clock import Clock
from gateway.config import ZigbeeConfig
from gateway.core.interface import (
    ApplyAction,
    ApplyDecision,
    Available,
    Busy,
    DeviceInfo,
    DeviceKey,
    UnknownToken,
    UpdateCoreInterface,
    Wait,
)

LOGGER = logging.getLogger(__name__)

S = foundation.Status
LEARNED_CAPS_FILE = "zigbee-learned-block-caps.json"
UPGRADE_END_FAILURES = {S.INVALID_IMAGE, S.REQUIRE_MORE_IMAGE, S.ABORT}
OTA_CLUSTER = t.ClusterId(Ota.cluster_id)
IBR_COMMAND = t.uint8_t(IMAGE_BLOCK_RESPONSE_ID)

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
    ) -> None:
        self.config = config
        self.core = core
        self.clock = clock
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._app_cls = app_cls
        self.app: ControllerApplication | None = None
        self._owns_app = False
        self.state = OtaServerState(config)
        self._takeover: OtaTakeover | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._locks: dict[DeviceKey, asyncio.Lock] = {}
        self._observed: dict[DeviceKey, DeviceInfo] = {}
        self._known_version: dict[DeviceKey, int] = {}
        self._verify_pending: set[DeviceKey] = set()
        self._notify_scheduled: set[DeviceKey] = set()
        self._page_tasks: dict[DeviceKey, asyncio.Task[Any]] = {}
        self._apply_tasks: dict[DeviceKey, asyncio.Task[Any]] = {}
        self._inflight = 0
        self.malformed: list[str] = []  # recent malformed-frame descriptions (for the API / tests)
        self._handlers: dict[int, Callable[[Ota, foundation.ZCLHeader, Any], Awaitable[None]]] = {
            Ota.ServerCommandDefs.query_next_image.id: self._query_next_image,
            Ota.ServerCommandDefs.image_block.id: self._image_block,
            Ota.ServerCommandDefs.image_page.id: self._image_page,
            Ota.ServerCommandDefs.upgrade_end.id: self._upgrade_end,
            Ota.ServerCommandDefs.query_specific_file.id: self._query_specific_file,
        }

    # ================================================================== lifecycle
    async def start(self) -> None:
        """Start the radio and take over OTA. Raises AdapterStartError (the gateway goes on without Zigbee)."""
        app = await start_controller(self.config, self.data_dir, self._app_cls)
        self._owns_app = True
        await self.attach(app)

    async def attach(self, app: ControllerApplication) -> None:
        """Serve OTA on an already running application (used by start() and by the harness)."""
        self.app = app
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
        self._spawn(self._stall_watchdog(), "stall watchdog")
        self._spawn(self._notify_loop(), "notify due devices")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._takeover is not None:
            self._takeover.remove()
            self._takeover = None
        if self.app is not None and self._owns_app:
            await self.app.shutdown()
        self.app = None

    def is_idle(self) -> bool:
        """No request is being processed right now (clock waits don't count); for the harness."""
        return self._inflight == 0

    @property
    def transfers(self) -> dict[DeviceKey, OtaDevice]:
        return self.state.transfers

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
        assert self.app is not None
        return f"pan:{int(self.app.state.network_info.pan_id):04x}"

    def _key(self, cluster: Ota) -> DeviceKey:
        """The cluster's DeviceKey, cached on the cluster instance (asked for on every block) per PAN id."""
        assert self.app is not None
        pan_id = self.app.state.network_info.pan_id
        cached = cluster.__dict__.get("_otagw_key")
        if cached is not None and cached[0] == pan_id:
            key: DeviceKey = cached[1]
            return key
        key = DeviceKey(
            "zigbee",
            f"pan:{int(pan_id):04x}",
            str(cluster.endpoint.device.ieee),
            cluster.endpoint.endpoint_id,
        )
        cluster.__dict__["_otagw_key"] = (pan_id, key)
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
        )

    async def _observe(self, info: DeviceInfo) -> None:
        if self._observed.get(info.key) == info:
            return
        self._observed[info.key] = info
        if info.current_version is not None:
            self._known_version.setdefault(info.key, info.current_version)
        try:
            await self.core.observe(info)
        except Exception:  # a record we could not store must not break OTA serving
            LOGGER.exception("core.observe failed for %s", info.key.device_id)

    async def _report_version(self, key: DeviceKey, version: int, *, force: bool = False) -> None:
        changed = self._known_version.get(key) not in (None, version)
        self._known_version[key] = version
        if not (force or changed or key in self._verify_pending):
            return
        self._verify_pending.discard(key)
        LOGGER.info("%s runs file version 0x%08x", key.device_id, version)
        try:
            await self.core.report_version(key, version, f"0x{version:08x}")
        except Exception:
            LOGGER.exception("core.report_version failed for %s", key.device_id)

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
                        await basic.read_attributes([Basic.AttributeDefs.hw_version.name], allow_cache=True)
                info = self._info(cluster)
                await self._observe(info)
                if info.current_version is not None:
                    await self._report_version(info.key, info.current_version)

    def _on_device_left(self, device: Any) -> None:
        if self.app is None:
            return
        pan = self._pan()
        keys = [
            k
            for k in {*self._observed, *self.state.transfers}
            if k.address == str(device.ieee) and k.network == pan
        ]
        for key in keys:
            self.state.transfers.pop(key, None)
            self._observed.pop(key, None)
            self._spawn(self.core.device_left(key), f"left {key.device_id}")

    def _on_malformed(self, device: Any, endpoint: int, frame: bytes, problem: str) -> None:
        text = (
            f"malformed OTA frame from {device.ieee} endpoint {endpoint}: {problem}; frame: {frame.hex(' ')}"
        )
        LOGGER.warning("%s", text)
        self.malformed = [*self.malformed[-49:], text]

    # ================================================================== request dispatch
    def _on_request(self, cluster: Ota, hdr: foundation.ZCLHeader, args: Any) -> None:
        """Called synchronously by zigpy for each OTA cluster command from a device."""
        if hdr.direction != foundation.Direction.Client_to_Server:
            return  # server->client frames from a device (another OTA server?) are not for us
        handler = self._handlers.get(hdr.command_id)
        if handler is None or isinstance(args, bytes | bytearray):
            LOGGER.warning(
                "unsupported OTA command 0x%02x from %s: %r",
                hdr.command_id,
                cluster.endpoint.device.ieee,
                args,
            )
            cluster.send_default_rsp(hdr, S.UNSUP_CLUSTER_COMMAND)
            return
        self._inflight += 1  # counted from now so the harness sees the request as in progress
        self._spawn(self._run_handler(handler, cluster, hdr, args), f"OTA 0x{hdr.command_id:02x}")

    async def _run_handler(
        self,
        handler: Callable[[Ota, foundation.ZCLHeader, Any], Awaitable[None]],
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
                await handler(cluster, hdr, args)
        except Exception:  # one bad exchange never takes the adapter down
            LOGGER.exception(
                "OTA command 0x%02x from %s failed", hdr.command_id, cluster.endpoint.device.ieee
            )
        finally:
            self._inflight -= 1

    async def _send(self, what: str, cluster: Ota, coro: Awaitable[Any]) -> bool:
        """Await one zigpy send; delivery failures are logged, never raised."""
        try:
            await coro
            return True
        except (zigpy.exceptions.ZigbeeException, TimeoutError, OSError) as exc:
            LOGGER.info("%s to %s not delivered: %s", what, cluster.endpoint.device.ieee, exc)
            return False

    async def _block_status(self, cluster: Ota, status: Any, tsn: int) -> None:
        """Answer an Image Block/Page Request with a bare status (ABORT, MALFORMED_COMMAND)."""
        await self._send(status.name, cluster, cluster.image_block_response(status=status, tsn=tsn))

    async def _reject_out_of_range(
        self, cluster: Ota, tr: OtaDevice, what: str, offset: int, limit: str, tsn: int
    ) -> None:
        LOGGER.warning(
            "%s: %s at offset %d (size %d, %s) is out of range",
            tr.key.device_id,
            what,
            offset,
            tr.size,
            limit,
        )
        await self._block_status(cluster, S.MALFORMED_COMMAND, tsn)

    # ------------------------------------------------------------------ Query Next Image
    async def _query_next_image(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> None:
        info = self._info(cluster, qni=cmd)
        key = info.key
        await self._observe(info)
        await self._report_version(key, int(cmd.current_file_version))
        result = await self.core.query(info)
        if isinstance(result, Available):
            try:
                tr = self._new_transfer(cluster, result)
            except UnknownToken as exc:
                LOGGER.warning("%s: core offered an image it cannot open: %s", key.device_id, exc)
                await self._send(
                    "Query Next Image Response",
                    cluster,
                    cluster.query_next_image_response(status=S.NO_IMAGE_AVAILABLE, tsn=hdr.tsn),
                )
                return
            await self._send(
                "Query Next Image Response",
                cluster,
                cluster.query_next_image_response(
                    status=S.SUCCESS,
                    manufacturer_code=tr.manufacturer_code,
                    image_type=tr.image_type,
                    file_version=tr.file_version,
                    image_size=tr.size,
                    tsn=hdr.tsn,
                ),
            )
            LOGGER.info("%s: offered %s (%d bytes)", key.device_id, result.image.image_id, tr.size)
            return
        await self._send(
            "Query Next Image Response",
            cluster,
            cluster.query_next_image_response(status=S.NO_IMAGE_AVAILABLE, tsn=hdr.tsn),
        )
        if isinstance(result, Busy) and info.sleepy is False:
            # mains-powered devices get an Image Notify when the core expects room; sleepy ones ask again
            self._schedule_notify(cluster, result.retry_after_s)

    def _new_transfer(self, cluster: Ota, result: Available) -> OtaDevice:
        key = self._key(cluster)
        reader = self.core.open_image(result.token)
        now_m = self.clock.monotonic()
        mbp = cluster.get(Ota.AttributeDefs.minimum_block_req_delay.name)
        tr = OtaDevice(
            key=key,
            token=result.token,
            image=result.image,
            reader=reader,
            started_mono=now_m,
            manufacturer_code=result.image.vendor_id,
            image_type=result.image.product_id,
            file_version=result.image.numeric_version,
            model=cluster.endpoint.device.model,
            last_activity_mono=now_m + result.delay_s,
            not_before_wall=self.clock.now() + result.delay_s,
            device_min_block_period_ms=int(mbp or 0),
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

    async def _resume(
        self, cluster: Ota, manufacturer_code: int, image_type: int, file_version: int
    ) -> OtaDevice | None:
        """A device asks for blocks of an image we hold no transfer for (gateway restart, stall expiry): ask the
        core again on its behalf and continue if it still offers that very image."""
        key = self._key(cluster)
        known = self._observed.get(key)
        base = self._info(cluster)
        info = DeviceInfo(
            key=key,
            vendor_id=manufacturer_code,
            product_id=image_type,
            vendor_name=base.vendor_name,
            model=base.model,
            hardware_version=base.hardware_version,
            current_version=(known.current_version if known else None)
            if known and known.current_version is not None
            else base.current_version,
            current_version_string=base.current_version_string,
            sleepy=base.sleepy,
            extra=base.extra,
        )
        active = getattr(self.core, "active_transfer", None)
        ti = active(key) if callable(active) else None
        if (
            ti is not None
            and ti.image.numeric_version == file_version
            and ti.state in ("querying", "downloading", "downloaded", "waiting_to_apply")
        ):
            result: Any = Available(
                ti.token,
                ti.image,
                0,
                resume_offset=ti.acked_offset,
                reason="re-attached to the live transfer",
            )
        else:
            result = await self.core.query(info)
        if not isinstance(result, Available):
            LOGGER.info(
                "%s asks for blocks of 0x%08x but the core has nothing for it (%s)",
                key.device_id,
                file_version,
                type(result).__name__,
            )
            return None
        try:
            tr = self._new_transfer(cluster, result)
        except UnknownToken:
            return None
        if not tr.matches(manufacturer_code, image_type, file_version):
            LOGGER.info(
                "%s asks for 0x%08x but the core now offers 0x%08x",
                key.device_id,
                file_version,
                tr.file_version,
            )
            self.state.transfers.pop(key, None)
            with contextlib.suppress(Exception):
                await self.core.download_failed(
                    tr.token, f"device asked for file version 0x{file_version:08x}"
                )
            return None
        tr.resumed = True
        tr.last_activity_mono = self.clock.monotonic()
        tr.not_before_wall = 0.0
        LOGGER.info("%s: resuming transfer of %s", key.device_id, tr.image.image_id)
        return tr

    async def _transfer_for(self, cluster: Ota, cmd: Any) -> OtaDevice | None:
        key = self._key(cluster)
        tr = self.state.transfers.get(key)
        if (
            tr is not None
            and tr.matches(cmd.manufacturer_code, cmd.image_type, cmd.file_version)
            and tr.status is TransferStatus.DOWNLOADING
        ):
            return tr
        return await self._resume(cluster, cmd.manufacturer_code, cmd.image_type, cmd.file_version)

    # ------------------------------------------------------------------ blocks
    async def _wait_for_data(
        self, cluster: Ota, tr: OtaDevice, tsn: int | None, retry_after_s: float
    ) -> None:
        now = self.clock.now()
        # the device stays silent meanwhile: that is not a stall
        tr.last_activity_mono = max(tr.last_activity_mono, self.clock.monotonic() + retry_after_s)
        await self._send(
            "WAIT_FOR_DATA",
            cluster,
            cluster.image_block_response(
                status=S.WAIT_FOR_DATA,
                current_time=zcl_utc(now),
                request_time=zcl_utc(now + retry_after_s),
                minimum_block_period=self.state.pacing_period_ms(tr),
                tsn=tsn,
            ),
        )

    async def _pre_block_checks(self, cluster: Ota, tr: OtaDevice, tsn: int | None) -> bool:
        """WAIT_FOR_DATA for a delayed start or to push the configured pacing; True when the block may go."""
        now = self.clock.now()
        if now < tr.not_before_wall:
            await self._wait_for_data(cluster, tr, tsn, tr.not_before_wall - now)
            return False
        if self.state.needs_pacing_push(tr):
            tr.paced = True
            await self._wait_for_data(cluster, tr, tsn, 0)
            return False
        return True

    async def _serve_block(
        self,
        cluster: Ota,
        tr: OtaDevice,
        offset: int,
        requested: int,
        tsn: int | None,
        manufacturer_code: int,
    ) -> bool:
        """Ask the core, then send one block (or WAIT_FOR_DATA). True when a block went out."""
        n = min(self.state.block_size(manufacturer_code, tr.model, requested), tr.size - offset)
        decision = await self.core.progress(tr.token, offset, n)
        if isinstance(decision, Wait):
            await self._wait_for_data(cluster, tr, tsn, decision.retry_after_s)
            return False
        data = tr.read(offset, n)
        ok = await self._send(
            "Image Block Response", cluster, self._image_block_response(cluster, tr, offset, data, tsn)
        )
        if ok:
            self.state.record_block(tr, offset, len(data), self.clock.monotonic())
        return ok

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
        return cluster.image_block_response(  # type: ignore[no-any-return]
            status=S.SUCCESS,
            manufacturer_code=tr.manufacturer_code,
            image_type=tr.image_type,
            file_version=tr.file_version,
            file_offset=offset,
            image_data=data,
            tsn=tsn,
            priority=t.PacketPriority.LOW,
        )

    async def _image_block(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> None:
        tr = await self._transfer_for(cluster, cmd)
        if tr is None:
            await self._block_status(cluster, S.ABORT, hdr.tsn)
            return
        if getattr(cmd, "minimum_block_period", None) is not None:
            tr.device_min_block_period_ms = int(cmd.minimum_block_period)
        offset = int(cmd.file_offset)
        if offset >= tr.size or cmd.maximum_data_size == 0:
            limit = f"max {cmd.maximum_data_size}"
            await self._reject_out_of_range(cluster, tr, "Image Block Request", offset, limit, hdr.tsn)
            return
        tr.last_activity_mono = max(tr.last_activity_mono, self.clock.monotonic())
        if not await self._pre_block_checks(cluster, tr, hdr.tsn):
            return
        try:
            await self._serve_block(
                cluster, tr, offset, int(cmd.maximum_data_size), hdr.tsn, int(cmd.manufacturer_code)
            )
        except UnknownToken as exc:
            # the core ended this episode (expired, cancelled, superseded): one fresh attempt, else ABORT
            LOGGER.info("%s: %s", tr.key.device_id, exc)
            self.state.transfers.pop(tr.key, None)
            tr2 = await self._resume(cluster, cmd.manufacturer_code, cmd.image_type, cmd.file_version)
            if tr2 is None or not await self._pre_block_checks(cluster, tr2, hdr.tsn):
                if tr2 is None:
                    await self._block_status(cluster, S.ABORT, hdr.tsn)
                return
            await self._serve_block(
                cluster, tr2, offset, int(cmd.maximum_data_size), hdr.tsn, int(cmd.manufacturer_code)
            )

    async def _image_page(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> None:
        tr = await self._transfer_for(cluster, cmd)
        if tr is None:
            await self._block_status(cluster, S.ABORT, hdr.tsn)
            return
        offset = int(cmd.file_offset)
        if offset >= tr.size or cmd.maximum_data_size == 0 or cmd.page_size == 0:
            limit = f"page {cmd.page_size}"
            await self._reject_out_of_range(cluster, tr, "Image Page Request", offset, limit, hdr.tsn)
            return
        tr.last_activity_mono = max(tr.last_activity_mono, self.clock.monotonic())
        if not await self._pre_block_checks(cluster, tr, hdr.tsn):
            return
        # a new page request supersedes a page still being streamed (the device timed out on it)
        old = self._page_tasks.pop(tr.key, None)
        if old is not None:
            old.cancel()
        self._inflight += 1
        self._page_tasks[tr.key] = self._spawn(
            self._stream_page(cluster, tr, hdr, cmd), f"page {tr.key.device_id}"
        )

    async def _stream_page(self, cluster: Ota, tr: OtaDevice, hdr: foundation.ZCLHeader, cmd: Any) -> None:
        """Send a page as consecutive Image Block Responses, `response_spacing` ms apart (clock)."""
        try:
            offset = int(cmd.file_offset)
            end = min(tr.size, offset + int(cmd.page_size))
            spacing_ms = max(int(cmd.response_spacing), self.config.page_response_spacing_min_ms)
            tsn: int | None = hdr.tsn  # first response answers the request; the rest carry fresh numbers
            while (
                offset < end
                and self.state.transfers.get(tr.key) is tr
                and tr.status is TransferStatus.DOWNLOADING
            ):
                n = min(
                    self.state.block_size(int(cmd.manufacturer_code), tr.model, int(cmd.maximum_data_size)),
                    end - offset,
                )
                try:
                    if not await self._serve_block(cluster, tr, offset, n, tsn, int(cmd.manufacturer_code)):
                        return
                except UnknownToken as exc:
                    LOGGER.info("%s: %s", tr.key.device_id, exc)
                    self.state.transfers.pop(tr.key, None)
                    await self._block_status(cluster, S.ABORT, tsn)
                    return
                offset += n
                tsn = None
                if offset < end and spacing_ms:
                    await self._sleep(spacing_ms / 1000)
        finally:
            self._inflight -= 1
            if self._page_tasks.get(tr.key) is asyncio.current_task():
                self._page_tasks.pop(tr.key, None)

    # ------------------------------------------------------------------ Upgrade End
    async def _upgrade_end(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> None:
        key = self._key(cluster)
        status = S(cmd.status)
        tr = self.state.transfers.get(key)
        if (
            tr is None
            or not tr.matches(cmd.manufacturer_code, cmd.image_type, cmd.file_version)
            or tr.status is TransferStatus.FAILED
        ):
            tr = (
                await self._resume(cluster, cmd.manufacturer_code, cmd.image_type, cmd.file_version)
                if status == S.SUCCESS
                else None
            )
        if tr is None:
            LOGGER.info(
                "%s: Upgrade End (%s) for 0x%08x, which it was not offered",
                key.device_id,
                status.name,
                cmd.file_version,
            )
            if not hdr.frame_control.disable_default_response or status == S.SUCCESS:
                cluster.send_default_rsp(hdr, S.SUCCESS if status != S.SUCCESS else S.ABORT)
            return
        page = self._page_tasks.pop(key, None)
        if page is not None:
            page.cancel()
        if status == S.SUCCESS:
            if tr.status is TransferStatus.DOWNLOADING:
                tr.status = TransferStatus.COMPLETE
                await self.core.download_complete(tr.token)
            decision = await self.core.apply_request(tr.token, tr.file_version)
            await self._answer_apply(cluster, tr, decision, hdr.tsn)
            return
        reason = (
            f"device reported {status.name} in Upgrade End Request after {tr.bytes_downloaded} bytes sent "
            f"(highest offset {tr.highest_offset} of {tr.size})"
        )
        if status == S.ABORT:
            self._learn(tr)
        if status not in UPGRADE_END_FAILURES:
            reason = f"device ended the download with status 0x{int(status):02x}: " + reason
        tr.status, tr.failure = TransferStatus.FAILED, reason
        LOGGER.warning("%s: %s", key.device_id, reason)
        await self.core.download_failed(tr.token, reason)
        if not hdr.frame_control.disable_default_response:
            cluster.send_default_rsp(hdr, S.SUCCESS)

    async def _answer_apply(
        self, cluster: Ota, tr: OtaDevice, decision: ApplyDecision, tsn: int | None
    ) -> None:
        now = self.clock.now()
        if decision.action == ApplyAction.PROCEED:
            at = decision.apply_at if decision.apply_at is not None else now + decision.delay_s
            at = max(at, now)
            sent = await self._send(
                "Upgrade End Response",
                cluster,
                cluster.upgrade_end_response(
                    manufacturer_code=tr.manufacturer_code,
                    image_type=tr.image_type,
                    file_version=tr.file_version,
                    current_time=zcl_utc(now),
                    upgrade_time=zcl_utc(at),
                    tsn=tsn,
                ),
            )
            if not sent and tsn is None:
                # an unsolicited trigger that did not arrive (sleepy device): try again later
                tr.status = TransferStatus.AWAITING_APPLY
                self._schedule_apply_recheck(cluster, tr, self.config.apply_recheck_s)
                return
            tr.status = TransferStatus.APPLY_SCHEDULED
            self._verify_pending.add(tr.key)
            LOGGER.info(
                "%s: apply %s at %s",
                tr.key.device_id,
                tr.image.image_id,
                "once" if at <= now else f"+{at - now:.0f}s",
            )
            self._spawn(self._read_back(cluster, tr, at - now), f"read back {tr.key.device_id}")
            return
        # AWAIT_NEXT_ACTION (and DISCONTINUE): "wait" — 0xFFFFFFFF; a later Upgrade End Response triggers it
        await self._send(
            "Upgrade End Response (wait)",
            cluster,
            cluster.upgrade_end_response(
                manufacturer_code=tr.manufacturer_code,
                image_type=tr.image_type,
                file_version=tr.file_version,
                current_time=zcl_utc(now),
                upgrade_time=UPGRADE_TIME_WAIT,
                tsn=tsn,
            ),
        )
        if decision.action == ApplyAction.DISCONTINUE:
            tr.status, tr.failure = (
                TransferStatus.FAILED,
                f"policy discontinued the update: {decision.reason}",
            )
            LOGGER.info("%s: %s", tr.key.device_id, tr.failure)
            return
        tr.status = TransferStatus.AWAITING_APPLY
        self._schedule_apply_recheck(cluster, tr, decision.delay_s or self.config.apply_recheck_s)

    def _schedule_apply_recheck(self, cluster: Ota, tr: OtaDevice, delay_s: float) -> None:
        old = self._apply_tasks.pop(tr.key, None)
        if old is not None and old is not asyncio.current_task():
            old.cancel()
        self._apply_tasks[tr.key] = self._spawn(
            self._apply_recheck(cluster, tr, delay_s), f"apply {tr.key.device_id}"
        )

    async def _apply_recheck(self, cluster: Ota, tr: OtaDevice, delay_s: float) -> None:
        await self.clock.sleep(max(1.0, delay_s))
        if self.state.transfers.get(tr.key) is not tr or tr.status is not TransferStatus.AWAITING_APPLY:
            return
        async with self._busy(), self._locks.setdefault(tr.key, asyncio.Lock()):
            decision = await self.core.apply_request(tr.token, tr.file_version)
            if decision.action == ApplyAction.PROCEED:
                await self._answer_apply(cluster, tr, decision, None)  # unsolicited: the trigger
            elif decision.action == ApplyAction.AWAIT_NEXT_ACTION:
                self._schedule_apply_recheck(cluster, tr, decision.delay_s or self.config.apply_recheck_s)
            else:
                tr.status, tr.failure = (
                    TransferStatus.FAILED,
                    f"policy discontinued the update: {decision.reason}",
                )

    async def _read_back(self, cluster: Ota, tr: OtaDevice, apply_in_s: float) -> None:
        """After the upgrade time and the device's reboot, read current_file_version and tell the core."""
        await self.clock.sleep(max(0.0, apply_in_s) + self.config.reboot_wait_s)
        for attempt in range(self.config.readback_attempts):
            if tr.key not in self._verify_pending:
                return  # the device already told us (its Query Next Image after rebooting)
            try:
                async with self._busy():
                    ok, _failed = await cluster.read_attributes(
                        [Ota.AttributeDefs.current_file_version.name], allow_cache=False
                    )
                version = ok.get(Ota.AttributeDefs.current_file_version.name)
                if version is not None:
                    async with self._busy():
                        await self._report_version(tr.key, int(version), force=True)
                    return
            except (zigpy.exceptions.ZigbeeException, TimeoutError) as exc:
                LOGGER.info("%s: version read-back %d failed: %s", tr.key.device_id, attempt + 1, exc)
            await self.clock.sleep(max(1.0, self.config.reboot_wait_s))
        LOGGER.info("%s: version not read back; its next query will report it", tr.key.device_id)

    # ------------------------------------------------------------------ Query Specific File
    async def _query_specific_file(self, cluster: Ota, hdr: foundation.ZCLHeader, cmd: Any) -> None:
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
        )
        result = await self.core.query(info)
        if isinstance(result, Available) and result.image.numeric_version == int(cmd.file_version):
            tr = self._new_transfer(cluster, result)
            await self._send(
                "Query Specific File Response",
                cluster,
                cluster.query_specific_file_response(
                    status=S.SUCCESS,
                    manufacturer_code=tr.manufacturer_code,
                    image_type=tr.image_type,
                    file_version=tr.file_version,
                    image_size=tr.size,
                    tsn=hdr.tsn,
                ),
            )
            return
        # Not the file it asked for. The offer the core just made stays open (no failure is recorded): the
        # device's next Query Next Image gets it, or the core expires it.
        await self._send(
            "Query Specific File Response",
            cluster,
            cluster.query_specific_file_response(status=S.NO_IMAGE_AVAILABLE, tsn=hdr.tsn),
        )

    # ================================================================== stalls and learned caps
    async def _stall_watchdog(self) -> None:
        interval = max(1.0, self.state.min_stall_timeout() / 4)
        while True:
            await self.clock.sleep(interval)
            for tr in self.state.stalled(self.clock.monotonic()):
                silent = self.clock.monotonic() - tr.last_activity_mono
                reason = (
                    f"stalled: no block request for {silent:.0f} s (limit "
                    f"{self.state.stall_timeout(tr.manufacturer_code):g} s) after {tr.bytes_downloaded} bytes sent, "
                    f"highest offset {tr.highest_offset} of {tr.size}"
                )
                tr.status, tr.failure = TransferStatus.FAILED, reason
                LOGGER.warning("%s: %s", tr.key.device_id, reason)
                if tr.bytes_downloaded:
                    self._learn(tr)
                async with self._busy():
                    try:
                        await self.core.download_failed(tr.token, reason)
                    except Exception:
                        LOGGER.exception("core.download_failed failed for %s", tr.key.device_id)

    def _learn(self, tr: OtaDevice) -> None:
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
        if self.data_dir is not None:
            try:
                self.data_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.data_dir / (LEARNED_CAPS_FILE + ".tmp")
                tmp.write_text(self.state.caps_to_json(), encoding="utf-8")
                tmp.replace(self.data_dir / LEARNED_CAPS_FILE)
            except OSError as exc:
                LOGGER.warning("cannot save learned block caps: %s", exc)

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

    def _schedule_notify(self, cluster: Ota, delay_s: float) -> None:
        key = self._key(cluster)
        if key in self._notify_scheduled:
            return
        self._notify_scheduled.add(key)

        async def later() -> None:
            try:
                await self.clock.sleep(max(1.0, delay_s))
            finally:
                self._notify_scheduled.discard(key)
            async with self._busy():
                await self.notify([key])

        self._spawn(later(), f"notify {key.device_id}")

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
                "Image Notify", cluster, cluster.image_notify(query_jitter=100, retries=0, **fields)
            )
        return results

    async def notify_due(self) -> int:
        """Image Notify the devices of this PAN the core says have an update due and were not offered it yet
        (`core.devices_to_notify()`, when the core offers it): unicast a few, broadcast for many."""
        due = getattr(self.core, "devices_to_notify", None)
        if self.app is None or not callable(due):
            return 0
        pan = self._pan()
        keys = [k for k in due() if k.protocol == "zigbee" and k.network == pan]
        if not keys:
            return 0
        results = await self.notify(keys)
        mark = getattr(self.core, "mark_notified", None)
        if callable(mark):
            for key in keys:
                if results.get(key, not results):  # broadcast ({}): all count as notified
                    await mark(key, "Image Notify sent" + (" (broadcast)" if not results else ""))
        return len(keys)

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
                profile=0x0104,
                cluster=Ota.cluster_id,
                src_ep=1,
                dst_ep=0xFF,
                grpid=0,
                radius=0,
                sequence=tsn,
                data=hdr.serialize() + payload.serialize(),
                broadcast_address=t.BroadcastAddress.RX_ON_WHEN_IDLE,
            )
        except (zigpy.exceptions.ZigbeeException, OSError) as exc:
            LOGGER.warning("Image Notify broadcast failed: %s", exc)
