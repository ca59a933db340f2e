"""Full Zigbee OTA updates through otagw's Zigbee adapter, bellows and the simulated NCP (the radio path for real).

The adapter is started through otagw's own config path (`zigbee.radio.type: ezsp`, a `socket://` device), so
bellows forms the network on the simulated NCP; the device joins, zigpy interviews it, and it downloads a
generated image of an odd size over ASH/EZSP, in Image Block and in Image Page mode. The image must arrive
byte-exact and the record must show the new version read back from the device after it applied the image. An
NCP that resets itself mid-transfer costs a reconnect the adapter makes by itself, not the download: the device
resumes from its offset.

The core, the adapter and the devices run on a ManualClock; bellows and the loopback socket run in real time,
so the helper polls (small real waits while I/O flows) and advances the manual clock only when no device has a
request in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from zigpy.zcl import foundation

from adapters.zigbee.adapter import ZigbeeAdapter
from adapters.zigbee.sim.device import Behaviour, SimOtaDevice
from adapters.zigbee.sim.ncp.ash import ResetCode
from adapters.zigbee.sim.ncp.ncp import SimNcp
from adapters.zigbee.sim.ncp.network import RadioAir
from adapters.zigbee.sim.ncp.server import NcpServer
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore
from tests.store_helpers import zigbee_image

MFR, ITYPE, NEW = 0x117C, 0x2811, 0x0203


def ota_sha(image: bytes) -> str:
    return hashlib.sha256(image).hexdigest()


SETTLE_GUARD_S = 2.0  # real seconds run_until waits for the radio to go quiet before advancing the clock


@dataclass
class OtaRig:
    clock: ManualClock
    air: RadioAir
    ncp: SimNcp
    server: NcpServer
    core: UpdateCore
    store: ImageStore
    adapter: ZigbeeAdapter

    async def run_until(self, cond: Callable[[], bool], max_s: float = 900, step_s: float = 1.0) -> None:
        used = 0.0
        loop = asyncio.get_running_loop()
        while not cond():
            if used > max_s:
                raise AssertionError(f"condition not met within {max_s} s of clock time")
            quiet_since = started = loop.time()
            # let real I/O (bellows <-> NCP) run until no device has a request in flight for a moment
            # bounded: an answer lost on the radio (the device dozed off) leaves a device awaiting it until its
            # response timeout, which runs on the injected clock - so advance the clock after SETTLE_GUARD_S anyway
            while loop.time() - quiet_since < 0.02 and loop.time() - started < SETTLE_GUARD_S:
                await asyncio.sleep(0.005)
                if any(d.awaiting_response for d in self.air.waiting):
                    quiet_since = loop.time()
                if cond():
                    return
            await self.clock.advance(step_s)
            await self.core.sweep()
            used += step_s

    def device(self, n: int, behaviour: Behaviour) -> SimOtaDevice:
        dev = SimOtaDevice(
            f"00:0d:6f:00:00:00:01:{n:02x}", 0x4300 + n, self.clock,
            manufacturer_code=MFR, image_type=ITYPE, file_version=NEW - 1, behaviour=behaviour, seed=n,
        )  # fmt: skip
        self.air.add(dev)
        dev.start()
        return dev

    async def add_image(self, image: bytes) -> None:
        await self.store.add_bytes(image, file_name="odd.ota")
        await self.core.catalog_changed()  # as the API's upload does

    async def join(self, dev: SimOtaDevice) -> None:
        app = self.adapter.app
        assert app is not None
        await app.permit(60)
        assert self.air.join(dev)

    def state(self, key: str) -> str | None:
        rec = self.core.get_device(key)
        return rec.state if rec is not None else None

    def record_key(self, dev: SimOtaDevice) -> str:
        assert self.adapter.app is not None
        epid = str(self.adapter.app.state.network_info.extended_pan_id).replace(":", "")
        return f"zigbee:epid:{epid}:{dev.ieee}:1"


@contextlib.asynccontextmanager
async def ota_rig(tmp_path: Path, eui64: str, **zigbee: object) -> AsyncIterator[OtaRig]:
    """otagw's Zigbee adapter on bellows against a fresh NCP simulator (`zigbee` adds adapter settings)."""
    clock = ManualClock()
    loop = asyncio.get_running_loop()
    air = RadioAir(clock)
    ncp = SimNcp(eui64, loop.time)
    air.attach(ncp)
    server = NcpServer(ncp)
    path = await server.start_tcp()
    air.start()
    cfg = parse_config(
        {
            "data_dir": str(tmp_path),
            "policy": {"auto_approve": True},  # these tests are about the radio path, not approval
            "zigbee": {
                "enabled": True,
                **zigbee,
                "radio": {"type": "ezsp", "device": path, "startup_timeout_s": 20},
            },
        }
    )
    store = ImageStore(tmp_path, clock=clock)
    await store.open()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    adapter = ZigbeeAdapter(cfg.zigbee, core, clock, tmp_path)
    rig = OtaRig(clock, air, ncp, server, core, store, adapter)
    try:
        await adapter.start()
        assert ncp.network_up
        yield rig
    finally:
        await adapter.stop()
        await air.stop()
        await server.close()
        await core.stop()
        await store.close()


@pytest.fixture
async def ota(tmp_path: Path) -> AsyncIterator[OtaRig]:
    async with ota_rig(tmp_path, "00:0b:57:ff:fe:00:cc:03") as rig:
        yield rig


@pytest.mark.parametrize(
    "behaviour",
    [Behaviour(max_data_size=64), Behaviour(page_mode=True, page_size=1024, max_data_size=64)],
    ids=["image-block", "image-page"],
)
async def test_full_update_through_bellows_and_the_ncp(ota: OtaRig, behaviour: Behaviour) -> None:
    image = zigbee_image(MFR, ITYPE, NEW, size=12_011)  # odd size: the last block is short
    await ota.add_image(image)
    dev = ota.device(1, behaviour)
    await ota.join(dev)
    await ota.run_until(lambda: dev.file_version == NEW)
    assert dev.completed_images[-1] == image  # byte-exact over ASH/EZSP
    key = ota.record_key(dev)
    await ota.run_until(lambda: ota.state(key) == "updated")
    assert ota.core.get_device(key).current_version == NEW  # read back from the device after it rebooted
    assert dev.stats.unexpected_responses == [] and ota.ncp.unmodelled == []
    requests = dev.stats.page_requests if behaviour.page_mode else dev.stats.block_requests
    assert requests >= (len(image) // 1024 if behaviour.page_mode else len(image) // 64)
    assert ota.ncp.command_log.count("sendUnicast") >= len(image) // 64  # every block crossed the NCP


async def test_ncp_reset_mid_transfer_resumes_from_the_offset(ota: OtaRig) -> None:
    image = zigbee_image(MFR, ITYPE, NEW, size=16_001)
    await ota.add_image(image)
    dev = ota.device(2, Behaviour(max_data_size=64))
    app = ota.adapter.app
    assert app is not None
    lost: list[Exception] = []

    class Listener:
        def connection_lost(self, exc: Exception) -> None:
            lost.append(exc)

    app.add_listener(Listener())
    reset_at: list[int] = []

    def maybe_reset(d: SimOtaDevice) -> None:
        if not reset_at and d.offset >= len(image) // 3:
            reset_at.append(d.offset)
            ota.server.reboot(ResetCode.WATCHDOG)  # the NCP's watchdog fires mid-transfer

    dev.on_block = maybe_reset
    await ota.join(dev)
    await ota.run_until(lambda: bool(lost))
    assert reset_at
    images_before = [e.sha256 for e in await ota.store.list()]
    # the adapter reconnects by itself (auto_form=False: the network comes back from the NCP's NVM)
    await ota.run_until(lambda: ota.adapter.radio_state == "up" and ota.adapter.reconnects == 1, max_s=120)
    assert ota.ncp.network_up and ota.server.connections == 2
    assert ota.adapter.health() == {"radio": "up", "reconnects": 1}
    key = ota.record_key(dev)
    assert ota.core.get_device(key) is not None  # the record survived the reconnect
    await ota.run_until(lambda: dev.file_version == NEW)
    assert dev.completed_images[-1] == image
    offsets = [offset for _t, offset, _n in dev.stats.block_log]
    restart = offsets.index(reset_at[0])
    assert min(offsets[restart:]) >= reset_at[0] - 64  # resumed where it was, not from zero
    assert [e.sha256 for e in await ota.store.list()] == images_before == [ota_sha(image)]  # catalog intact
    await ota.run_until(lambda: ota.state(key) == "updated")
    assert ota.core.get_device(key).current_version == NEW


async def test_sleepy_device_is_served_when_it_checks_in(ota: OtaRig) -> None:
    dev = ota.device(3, Behaviour(sleepy=True, query_interval_s=600, max_data_size=64))
    await ota.join(dev)
    key = ota.record_key(dev)
    await ota.run_until(
        lambda: ota.core.get_device(key) is not None and ota.core.get_device(key).sleepy is True
    )
    image = zigbee_image(MFR, ITYPE, NEW, size=3_001)
    await ota.add_image(image)
    await ota.clock.advance(30)  # it dozes off: unicasts to it now fail at the NCP (messageSentHandler)
    await ota.run_until(lambda: dev.file_version == NEW, step_s=30, max_s=2 * 3600)
    assert dev.completed_images[-1] == image
    await ota.run_until(lambda: ota.state(key) == "updated", step_s=30, max_s=2 * 3600)


async def test_invalid_image_and_malformed_frames_over_the_ncp(ota: OtaRig) -> None:
    S = foundation.Status
    await ota.add_image(zigbee_image(MFR, ITYPE, NEW, size=2_001))
    bad = ota.device(4, Behaviour(end_status=S.INVALID_IMAGE))
    odd = ota.device(5, Behaviour(malformed_first=True))
    await ota.join(bad)
    await ota.join(odd)
    bad_key = ota.record_key(bad)
    await ota.run_until(lambda: ota.state(bad_key) == "failed", max_s=120)
    assert "INVALID_IMAGE" in ota.core.get_device(bad_key).state_reason
    # ZCL: a non-SUCCESS Upgrade End Request is answered with a Default Response SUCCESS (sent after the record)
    await ota.run_until(
        lambda: any(c == 0x06 and st == S.SUCCESS for _, c, st in bad.stats.default_responses), 10
    )
    await ota.run_until(lambda: odd.file_version == NEW)
    assert any(cmd == 0x03 and st == S.MALFORMED_COMMAND for _, cmd, st in odd.stats.default_responses)
    assert bad.file_version != NEW and ota.ncp.unmodelled == []
