"""The air behind the simulated NCP: simulated devices join, announce themselves and speak ZDO/ZCL over APS.

The devices are the project's existing simulated nodes (`adapters/zigbee/sim/device.py`, `SimOtaDevice`): they
answer zigpy's interview (Node/Active EP/Simple descriptors, Basic attributes) and run the ZCL OTA client. They
talk to a "network" object through two members only, `from_device(packet)` and the `waiting` set; `RadioAir`
provides both, so the same device models run over the fake radio (`SimNetwork`) and over this NCP.

A device hears and is heard only by an NCP whose network is up with the identity (PAN id, extended PAN id,
channel, network key) the device joined with. So a fresh NCP restored from a backup reaches the devices again,
and one with a different network does not. Joining needs permit-join open on the NCP; the NCP then emits the
Trust Centre (and, for end devices, child) join callbacks and the device broadcasts its Device_annce.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import bellows.types as bt
import zigpy.types as t
import zigpy.zdo.types as zdo_t

from adapters.zigbee.sim.device import SimOtaDevice
from adapters.zigbee.sim.ncp.ncp import NetworkIdentity, SimNcp
from gateway.clock import Clock

LOGGER = logging.getLogger(__name__)

DEVICE_ANNCE = 0x0013


class RadioAir:
    """Routes APS frames between NCPs and simulated devices that share a network identity."""

    def __init__(self, clock: Clock, tick_s: float = 1.0) -> None:
        self.clock = clock
        self.tick_s = tick_s
        self.devices: dict[t.EUI64, SimOtaDevice] = {}
        self.waiting: set[SimOtaDevice] = set()  # read by SimOtaDevice while it awaits an answer
        self.ncps: list[SimNcp] = []
        self.joined: dict[t.EUI64, NetworkIdentity] = {}
        self.relays: dict[t.EUI64, list[int]] = {}  # devices reached through routers (source routes)
        self.tx_count = 0  # NCP -> device frames delivered
        self.rx_count = 0  # device -> NCP frames delivered
        self._ticker: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ topology
    def attach(self, ncp: SimNcp) -> None:
        ncp.air = self
        if ncp not in self.ncps:
            self.ncps.append(ncp)

    def detach(self, ncp: SimNcp) -> None:
        if ncp in self.ncps:
            self.ncps.remove(ncp)
        ncp.air = None

    def add(self, device: SimOtaDevice, *, relays: list[int] | None = None) -> SimOtaDevice:
        self.devices[device.ieee] = device
        # the device model only uses from_device() and `waiting`, which this class provides
        device.network = self  # type: ignore[assignment]
        if relays:
            self.relays[device.ieee] = list(relays)
        return device

    def ncp_changed(self, ncp: SimNcp) -> None:
        LOGGER.debug("sim air: NCP %s network %s", ncp.eui64, "up" if ncp.identity else "down")

    def _ncp_for(self, device: SimOtaDevice) -> SimNcp | None:
        ident = self.joined.get(device.ieee)
        if ident is None:
            return None
        for ncp in self.ncps:
            if ncp.identity == ident:
                return ncp
        return None

    def _device_at(self, ncp: SimNcp, nwk: int) -> SimOtaDevice | None:
        ident = ncp.identity
        for dev in self.devices.values():
            if dev.nwk == nwk and ident is not None and self.joined.get(dev.ieee) == ident:
                return dev
        return None

    def eui64_of(self, ncp: SimNcp, nwk: int) -> bt.EUI64 | None:
        dev = self._device_at(ncp, nwk)
        return bt.EUI64(dev.ieee) if dev is not None else None

    # ------------------------------------------------------------------ joining
    def join(self, device: SimOtaDevice) -> bool:
        """The device looks for an open network and joins it; False when no NCP permits joining."""
        ncp = next((n for n in self.ncps if n.permit_open()), None)
        if ncp is None or ncp.identity is None:
            return False
        self.joined[device.ieee] = ncp.identity
        device.wake(30.0)
        ncp.device_joined(device.nwk, bt.EUI64(device.ieee), end_device=device.b.sleepy)
        self.announce(device)
        return True

    def announce(self, device: SimOtaDevice) -> None:
        capability = 0x80 if device.b.sleepy else 0x8E  # allocate address (+ FFD, mains, rx-on-when-idle)
        body = t.NWK(device.nwk).serialize() + device.ieee.serialize() + bytes([capability])
        self._from(device, zdo_t.ZDOCmd.Device_annce, body, broadcast=True)

    def leave(self, device: SimOtaDevice) -> None:
        ncp = self._ncp_for(device)
        self.joined.pop(device.ieee, None)
        if ncp is not None:
            ncp.device_left(device.nwk, bt.EUI64(device.ieee))

    def _from(self, device: SimOtaDevice, cluster: int, body: bytes, *, broadcast: bool) -> None:
        ncp = self._ncp_for(device)
        if ncp is None:
            return
        # the device's own APS counter and ZDO sequence, so its announce looks like any frame it sends
        device._aps = (device._aps + 1) & 0xFF
        aps = bt.EmberApsFrame(
            profileId=0,
            clusterId=cluster,
            sourceEndpoint=0,
            destinationEndpoint=0,
            options=bt.EmberApsOption.APS_OPTION_NONE,
            groupId=0,
            sequence=device._aps,
        )
        tsn = device._next_tsn()
        ncp.incoming(device.nwk, aps, bytes([tsn]) + body, broadcast=broadcast)

    # ------------------------------------------------------------------ frames
    def from_device(self, packet: t.ZigbeePacket) -> bool:
        """Device -> coordinator. False when no NCP on the device's network hears it."""
        src_addr = packet.src.address if packet.src is not None else None
        src = int(src_addr) if isinstance(src_addr, int) else -1  # devices send from their NWK address
        device = next((d for d in self.devices.values() if d.nwk == src), None)
        ncp = self._ncp_for(device) if device is not None else None
        if device is None or ncp is None:
            return False
        aps = bt.EmberApsFrame(
            profileId=packet.profile_id,
            clusterId=packet.cluster_id,
            sourceEndpoint=packet.src_ep or 0,
            destinationEndpoint=packet.dst_ep or 0,
            options=bt.EmberApsOption.APS_OPTION_ENCRYPTION
            if packet.profile_id
            else bt.EmberApsOption.APS_OPTION_NONE,
            groupId=0,
            sequence=packet.tsn or 0,
        )
        self.rx_count += 1
        ncp.incoming(
            device.nwk,
            aps,
            packet.data.serialize(),
            relays=self.relays.get(device.ieee),
            sender_eui64=bt.EUI64(device.ieee),
            lqi=packet.lqi or 255,
            rssi=packet.rssi or -45,
        )
        return True

    def _packet(
        self, ncp: SimNcp, dst: t.AddrModeAddress, aps: bt.EmberApsFrame, payload: bytes
    ) -> t.ZigbeePacket:
        return t.ZigbeePacket(
            src=t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=t.NWK(ncp.nvm.node_id)),
            src_ep=t.uint8_t(aps.sourceEndpoint),
            dst=dst,
            dst_ep=t.uint8_t(aps.destinationEndpoint),
            tsn=t.uint8_t(aps.sequence),
            profile_id=t.uint16_t(aps.profileId),
            cluster_id=t.uint16_t(aps.clusterId),
            data=t.SerializableBytes(payload),
        )

    def unicast(self, ncp: SimNcp, dest: int, aps: bt.EmberApsFrame, payload: bytes) -> bool:
        """NCP -> one device; True when it was delivered (MAC/APS acknowledged)."""
        dev = self._device_at(ncp, dest)
        if dev is None or not dev.reachable():
            return False
        self.tx_count += 1
        dev.receive(
            self._packet(ncp, t.AddrModeAddress(addr_mode=t.AddrMode.NWK, address=t.NWK(dest)), aps, payload)
        )
        return True

    def broadcast(self, ncp: SimNcp, dest: int, aps: bt.EmberApsFrame, payload: bytes) -> None:
        ident = ncp.identity
        for dev in list(self.devices.values()):
            if ident is not None and self.joined.get(dev.ieee) == ident and dev.accepts_broadcast(dest):
                dst = t.AddrModeAddress(addr_mode=t.AddrMode.Broadcast, address=t.BroadcastAddress(dest))
                dev.receive(self._packet(ncp, dst, aps, payload))

    def multicast(self, ncp: SimNcp, aps: bt.EmberApsFrame, payload: bytes) -> None:
        """The simulated devices are members of no group: a multicast reaches nobody (and is not an error)."""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
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

    def stats(self) -> dict[str, Any]:
        return {"tx": self.tx_count, "rx": self.rx_count, "joined": len(self.joined)}
