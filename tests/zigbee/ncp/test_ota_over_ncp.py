"""A full Zigbee OTA through otagw's Zigbee adapter, bellows and the simulated NCP (the radio path for real).

The adapter is started through otagw's own config path (`zigbee.radio.type: ezsp`, a `socket://` device), so
bellows forms the network on the simulated NCP; the device joins, zigpy interviews it, and it downloads a
generated image of an odd size block by block over ASH/EZSP. The image must arrive byte-exact and the record
must show the new version read back from the device after it applied the image.

The core, the adapter and the devices run on a ManualClock; bellows and the loopback socket run in real time,
so the test polls (small real waits while I/O flows) and advances the manual clock only when nothing is in
flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from adapters.zigbee.adapter import ZigbeeAdapter
from adapters.zigbee.sim.device import Behaviour, SimOtaDevice
from adapters.zigbee.sim.ncp.ncp import SimNcp
from adapters.zigbee.sim.ncp.network import RadioAir
from adapters.zigbee.sim.ncp.server import NcpServer
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore
from tests.store_helpers import zigbee_image

MFR, ITYPE, NEW = 0x117C, 0x2811, 0x0203


async def run_until(
    cond: Callable[[], bool], clock: ManualClock, core: UpdateCore, air: RadioAir, max_s: float
) -> None:
    used = 0.0
    loop = asyncio.get_running_loop()
    while not cond():
        if used > max_s:
            raise AssertionError(f"condition not met within {max_s} s of clock time")
        quiet_since = loop.time()
        # let real I/O (bellows <-> NCP) run until no device has a request in flight for a moment
        while loop.time() - quiet_since < 0.02:
            await asyncio.sleep(0.005)
            if any(d.awaiting_response for d in air.waiting):
                quiet_since = loop.time()
            if cond():
                return
        await clock.advance(1.0)
        await core.sweep()
        used += 1.0


async def test_full_update_through_bellows_and_the_ncp(tmp_path: Path) -> None:
    clock = ManualClock()
    loop = asyncio.get_running_loop()
    image = zigbee_image(MFR, ITYPE, NEW, size=20_011)  # odd size: the last block is short
    air = RadioAir(clock)
    ncp = SimNcp("00:0b:57:ff:fe:00:cc:03", loop.time)
    air.attach(ncp)
    server = NcpServer(ncp)
    path = await server.start_tcp()
    dev = SimOtaDevice(
        "00:0d:6f:00:00:00:01:01",
        0x4321,
        clock,
        manufacturer_code=MFR,
        image_type=ITYPE,
        file_version=NEW - 1,
        behaviour=Behaviour(max_data_size=64),
    )
    air.add(dev)
    air.start()
    cfg = parse_config(
        {
            "data_dir": str(tmp_path),
            "zigbee": {"enabled": True, "radio": {"type": "ezsp", "device": path, "startup_timeout_s": 20}},
        }
    )
    store = ImageStore(tmp_path, clock=clock)
    await store.open()
    await store.add_bytes(image, file_name="odd.ota")
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    adapter = ZigbeeAdapter(cfg.zigbee, core, clock, tmp_path)
    try:
        await adapter.start()
        app = adapter.app
        assert app is not None and ncp.network_up
        await app.permit(60)
        assert air.join(dev)
        await run_until(lambda: dev.file_version == NEW, clock, core, air, max_s=900)
        assert dev.completed_images[-1] == image  # byte-exact over ASH/EZSP
        pan = app.state.network_info.pan_id
        key = f"zigbee:pan:{pan:04x}:{dev.ieee}:1"
        await run_until(lambda: core.get_device(key).state == "updated", clock, core, air, max_s=900)
        rec = core.get_device(key)
        assert rec.current_version == NEW  # read back from the device after it rebooted
        assert dev.stats.unexpected_responses == [] and ncp.unmodelled == []
        blocks = dev.stats.block_requests
        assert blocks >= len(image) // 64
        assert ncp.command_log.count("sendUnicast") >= blocks
    finally:
        await adapter.stop()
        await air.stop()
        await server.close()
        await core.stop()
        await store.close()
