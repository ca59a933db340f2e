"""A fake-radio zigpy `ControllerApplication` and the simulated network it talks to (hardware-free harness).

`SimControllerApplication` implements zigpy's abstract radio methods the way a radio library does, except that
`send_packet` hands each outgoing `ZigbeePacket` to a `SimNetwork` instead of a serial port. The network routes it
to simulated devices (adapters/zigbee/sim/device.py), which answer by injecting raw frames with
`app.packet_received()`. Everything between — ZDO interview, ZCL codec, duplicate filtering, request matching,
otagw's OTA takeover — is the real zigpy code path.

The network outlives any one application, so a test can shut the gateway down mid-transfer and start a new
application on the same devices (a gateway restart). `settle()` waits until every simulated device has its
answer (spinning the loop, never sleeping) so tests can advance a `ManualClock` deterministically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import zigpy.device
import zigpy.endpoint
import zigpy.exceptions
import zigpy.profiles.zha
import zigpy.state
import zigpy.types as t
import zigpy.zdo.types as zdo_t
from zigpy.application import ControllerApplication

from gateway.clock import Clock

if TYPE_CHECKING:
    from adapters.zigbee.sim.device import SimOtaDevice

LOGGER = logging.getLogger(__name__)

COORDINATOR_IEEE = t.EUI64.convert("00:12:4b:00:0a:7e:c0:01")
DEFAULT_PAN_ID = 0x1A2B


@contextlib.contextmanager
def fast_zigpy_timing() -> Iterator[None]:
    """Zero zigpy's own real-time retry and post-OTA delays for the harness (production code is untouched)."""
    saved = (
        zigpy.device.DEFAULT_REQUEST_RETRY_DELAY,
        zigpy.device.AFTER_OTA_ATTR_READ_DELAY,
    )
    zigpy.device.DEFAULT_REQUEST_RETRY_DELAY = 0
    zigpy.device.AFTER_OTA_ATTR_READ_DELAY = 0
    try:
        yield
    finally:
        zigpy.device.DEFAULT_REQUEST_RETRY_DELAY, zigpy.device.AFTER_OTA_ATTR_READ_DELAY = saved


class SimNetwork:
    """The air: routes frames between one (replaceable) application and the simulated devices."""

    def __init__(self, clock: Clock, pan_id: int = DEFAULT_PAN_ID, tick_s: float = 1.0) -> None:
        self.clock = clock
        self.pan_id = pan_id
        self.tick_s = tick_s
        self.devices: dict[t.EUI64, SimOtaDevice] = {}
        self.app: ControllerApplication | None = None
        self.tx_log: list[t.ZigbeePacket] = []  # gateway -> devices
        self.rx_log: list[t.ZigbeePacket] = []  # devices -> gateway
        self.keep_logs = True
        self._ticker: asyncio.Task[None] | None = None
        self._idle_hooks: list[Callable[[], bool]] = []
        self._by_nwk: dict[int, SimOtaDevice] = {}
        # devices inside a response wait (the only ones that can be `awaiting_response`): keeps is_idle(),
        # asked on every loop step while settling, independent of the fleet size
        self.waiting: set[SimOtaDevice] = set()

    # ------------------------------------------------------------------ topology
    def add(self, device: SimOtaDevice) -> SimOtaDevice:
        self.devices[device.ieee] = device
        self._by_nwk[device.nwk] = device
        device.network = self
        return device

    def by_nwk(self, nwk: int) -> SimOtaDevice | None:
        dev = self._by_nwk.get(nwk)
        if dev is not None and dev.nwk == nwk and self.devices.get(dev.ieee) is dev:
            return dev
        for dev in self.devices.values():  # a device whose address changed after add()
            if dev.nwk == nwk:
                self._by_nwk[nwk] = dev
                return dev
        return None

    def attach(self, app: ControllerApplication) -> None:
        self.app = app

    def detach(self, app: ControllerApplication | None = None) -> None:
        if app is None or self.app is app:
            self.app = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the devices' timer tick (response timeouts, periodic queries)."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())
        for dev in self.devices.values():
            dev.start()

    async def stop(self) -> None:
        for dev in self.devices.values():
            await dev.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    async def _tick_loop(self) -> None:
        while True:
            await self.clock.sleep(self.tick_s)
            now = self.clock.monotonic()
            for dev in list(self.devices.values()):
                dev.on_tick(now)

    async def join_all(self) -> None:
        """Announce every device (Device_annce path) so zigpy interviews it."""
        for dev in self.devices.values():
            self.join(dev)

    def join(self, device: SimOtaDevice) -> None:
        if self.app is None:
            raise RuntimeError("no application attached")
        device.wake(30.0)
        self.app.handle_join(nwk=t.NWK(device.nwk), ieee=device.ieee, parent_nwk=t.NWK(0x0000))

    # ------------------------------------------------------------------ frames
    async def deliver(self, packet: t.ZigbeePacket) -> None:
        """Gateway -> device(s). Raises DeliveryError like a radio whose unicast got no MAC/APS ack."""
        if self.keep_logs:
            self.tx_log.append(packet)
        dst = packet.dst
        assert dst is not None
        address: Any = dst.address  # NWK, EUI64 or broadcast address, by addr_mode
        if dst.addr_mode == t.AddrMode.Broadcast:
            for dev in list(self.devices.values()):
                if dev.accepts_broadcast(int(address)):
                    dev.receive(packet)
            return
        if dst.addr_mode == t.AddrMode.IEEE:
            target = self.devices.get(t.EUI64(address))
        elif dst.addr_mode == t.AddrMode.NWK:
            target = self.by_nwk(int(address))
        else:  # group addressing is not used by the OTA server
            return
        if target is None or not target.reachable():
            raise zigpy.exceptions.DeliveryError(
                f"no ack from 0x{int(address):04X}", status=t.MACStatus.MAC_NO_ACK
            )
        target.receive(packet)

    def from_device(self, packet: t.ZigbeePacket) -> bool:
        """Device -> gateway; False when no gateway is listening (the frame is lost)."""
        if self.keep_logs:
            self.rx_log.append(packet)
        if self.app is None:
            return False
        try:
            self.app.packet_received(packet)
        except Exception as exc:
            # zigpy 2.4 raises on a ZCL header it cannot read (after otagw has logged it); a radio library's
            # receive callback would swallow and log this, so the harness does too
            LOGGER.info("zigpy rejected frame %s: %r", packet.data.serialize().hex(" "), exc)
        return True

    # ------------------------------------------------------------------ determinism helpers
    def add_idle_hook(self, hook: Callable[[], bool]) -> None:
        self._idle_hooks.append(hook)

    def is_idle(self) -> bool:
        return not any(dev.awaiting_response for dev in self.waiting) and all(h() for h in self._idle_hooks)

    async def settle(self, guard_s: float = 5.0) -> bool:
        """Spin the loop until no device awaits an answer (and hooks agree) for a while; never sleeps."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + guard_s
        quiet = 0
        while loop.time() < deadline:
            await asyncio.sleep(0)
            if self.is_idle():
                quiet += 1
                if quiet >= 30:
                    return True
            else:
                quiet = 0
        return False

    async def run_until(
        self,
        cond: Callable[[], bool],
        *,
        step_s: float = 1.0,
        max_s: float = 3600.0,
        advance: Callable[[float], Any] | None = None,
    ) -> float:
        """Settle, check `cond`, advance the ManualClock by `step_s`; repeat. Returns clock seconds used."""
        adv = advance or getattr(self.clock, "advance", None)
        if adv is None:
            raise TypeError("run_until needs a ManualClock (or an advance callable)")
        used = 0.0
        while True:
            if not await self.settle():
                busy = [str(d.ieee) for d in self.waiting if d.awaiting_response]
                LOGGER.warning("settle guard expired (devices awaiting an answer: %s)", busy or "none")
            if cond():
                return used
            if used >= max_s:
                raise AssertionError(f"condition not met within {max_s} s of clock time")
            await adv(step_s)
            used += step_s


class SimControllerApplication(ControllerApplication):
    """zigpy application over a `SimNetwork` instead of a radio. Bind a network with `bound_to()`."""

    network: ClassVar[SimNetwork | None] = None

    @classmethod
    def bound_to(cls, network: SimNetwork) -> type[SimControllerApplication]:
        """A subclass whose instances use `network` (zigpy constructs the app itself in `new()`)."""
        return type("BoundSimControllerApplication", (cls,), {"network": network})

    # ------------------------------------------------------------------ radio methods
    async def connect(self) -> None:
        if self.network is None:
            raise ConnectionRefusedError("simulated radio has no network")
        self.network.attach(self)

    async def disconnect(self) -> None:
        if self.network is not None:
            self.network.detach(self)

    async def start_network(self) -> None:
        await self.load_network_info()
        self.devices.pop(COORDINATOR_IEEE, None)
        coord = self.add_device(COORDINATOR_IEEE, t.NWK(0x0000))
        coord.node_desc = zdo_t.NodeDescriptor(
            logical_type=zdo_t.LogicalType.Coordinator,
            complex_descriptor_available=0,
            user_descriptor_available=0,
            reserved=0,
            aps_flags=0,
            frequency_band=zdo_t.NodeDescriptor.FrequencyBand.Freq2400MHz,
            mac_capability_flags=zdo_t.NodeDescriptor.MACCapabilityFlags.AllocateAddress,
            manufacturer_code=0x1234,
            maximum_buffer_size=82,
            maximum_incoming_transfer_size=82,
            server_mask=0,
            maximum_outgoing_transfer_size=82,
            descriptor_capability_field=0,
        )
        ep = coord.add_endpoint(1)
        ep.profile_id = 0x0104
        ep.device_type = zigpy.profiles.zha.DeviceType.CONFIGURATION_TOOL
        ep.status = zigpy.endpoint.Status.ZDO_INIT
        coord.model = "otagw simulated coordinator"
        coord.manufacturer = "otagw"
        coord.status = zigpy.device.Status.ENDPOINTS_INIT

    async def load_network_info(self, *, load_devices: bool = False) -> None:
        pan = self.network.pan_id if self.network is not None else DEFAULT_PAN_ID
        self.state.node_info = zigpy.state.NodeInfo(
            nwk=t.NWK(0x0000),
            ieee=COORDINATOR_IEEE,
            logical_type=zdo_t.LogicalType.Coordinator,
            model="otagw sim",
            manufacturer="otagw",
            version="1",
        )
        self.state.network_info = zigpy.state.NetworkInfo(
            extended_pan_id=t.ExtendedPanId(t.EUI64.convert("00:a1:b2:c3:d4:e5:f6:07")),
            pan_id=t.PanId(pan),
            channel=t.uint8_t(15),
            channel_mask=t.Channels.from_channel_list([15]),  # type: ignore[misc]  # classmethod zigpy types as method
            network_key=zigpy.state.Key(key=t.KeyData(range(16)), seq=t.uint8_t(0), tx_counter=t.uint32_t(0)),
        )

    async def write_network_info(self, *, network_info: Any, node_info: Any) -> None:
        self.state.network_info = network_info
        self.state.node_info = node_info

    async def reset_network_info(self) -> None:
        pass

    async def force_remove(self, dev: zigpy.device.Device) -> None:
        pass

    async def add_endpoint(self, descriptor: zdo_t.SimpleDescriptor) -> None:
        pass

    async def permit_ncp(self, time_s: int = 60) -> None:
        pass

    async def permit_with_link_key(self, node: t.EUI64, link_key: t.KeyData, time_s: int = 60) -> None:
        pass

    async def _network_scan(self, channels: t.Channels, duration_exp: int) -> Any:  # pragma: no cover
        raise NotImplementedError
        yield

    async def _packet_capture(self, channel: int) -> Any:  # pragma: no cover
        raise NotImplementedError
        yield

    async def _packet_capture_change_channel(self, channel: int) -> None:  # pragma: no cover
        raise NotImplementedError

    async def _subscribe_to_multicast_group(self, group_id: t.Group, endpoint_id: int) -> None:
        pass

    async def _unsubscribe_from_multicast_group(self, group_id: t.Group, endpoint_id: int) -> None:
        pass

    async def send_packet(self, packet: t.ZigbeePacket) -> None:
        if self.network is None:
            raise zigpy.exceptions.DeliveryError("simulated radio detached")
        # ZDO to the coordinator itself (e.g. permit-join broadcasts we also receive) is dropped silently
        await self.network.deliver(packet)
