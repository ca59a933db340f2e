"""Two radios in one gateway (`zigbee.radios`), each coordinator of its own network, through bellows and two
simulated NCPs: each network keeps its own per-network budget, one image update runs across both, and the records
name each network by its extended PAN id. A radio that is absent leaves the other serving.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from adapters.zigbee.multi import ZigbeeRadios
from adapters.zigbee.sim.device import Behaviour, SimOtaDevice
from adapters.zigbee.sim.ncp.ncp import SimNcp
from adapters.zigbee.sim.ncp.network import RadioAir
from adapters.zigbee.sim.ncp.server import NcpServer
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore
from tests.store_helpers import zigbee_image
from tests.zigbee.ncp.test_ota_over_ncp import ITYPE, MFR, NEW

SETTLE_GUARD_S = 2.0  # real seconds run_until waits for the radio to go quiet before advancing the clock


class TwoRadios:
    def __init__(self, clock: ManualClock, tmp_path: Path) -> None:
        self.clock, self.tmp_path = clock, tmp_path
        self.airs: list[RadioAir] = []
        self.servers: list[NcpServer] = []
        self.devices: list[tuple[int, SimOtaDevice]] = []
        self.peak_by_network: dict[str, int] = {}
        self.both_active = False

    async def ncp(self, n: int) -> str:
        air = RadioAir(self.clock)
        ncp = SimNcp(f"00:0b:57:ff:fe:00:dd:{n:02x}", asyncio.get_running_loop().time)
        air.attach(ncp)
        server = NcpServer(ncp)
        path = await server.start_tcp()
        air.start()
        self.airs.append(air)
        self.servers.append(server)
        return path

    def device(self, radio: int, n: int) -> SimOtaDevice:
        dev = SimOtaDevice(
            f"00:0d:6f:00:00:0{radio}:01:{n:02x}", 0x4400 + 16 * radio + n, self.clock,
            manufacturer_code=MFR, image_type=ITYPE, file_version=NEW - 1, seed=16 * radio + n,
            # they also ask on their own now and then, as real devices do (an Image Notify can be missed)
            behaviour=Behaviour(max_data_size=64, query_interval_s=900),
        )  # fmt: skip
        self.airs[radio].add(dev)
        dev.start()
        self.devices.append((radio, dev))
        return dev

    async def run_until(self, core: UpdateCore, cond: Any, max_s: float = 1800, step_s: float = 1.0) -> None:
        used = 0.0
        loop = asyncio.get_running_loop()
        while not cond():
            if used > max_s:
                raise AssertionError(f"condition not met within {max_s} s of clock time")
            quiet_since = started = loop.time()
            # bounded: an answer lost on the radio (the device dozed off) leaves a device awaiting it until its
            # response timeout, which runs on the injected clock - so advance the clock after SETTLE_GUARD_S anyway
            while loop.time() - quiet_since < 0.02 and loop.time() - started < SETTLE_GUARD_S:
                await asyncio.sleep(0.005)
                if any(d.awaiting_response for air in self.airs for d in air.waiting):
                    quiet_since = loop.time()
                self._watch(core)
                if cond():
                    return
            await self.clock.advance(step_s)
            await core.sweep()
            used += step_s

    def _watch(self, core: UpdateCore) -> None:
        by_network = dict(core._ledger.budget.by_network)
        for net, used in by_network.items():
            self.peak_by_network[net] = max(self.peak_by_network.get(net, 0), used)
        if sum(1 for used in by_network.values() if used > 0) >= 2:
            self.both_active = True


@contextlib.asynccontextmanager
async def two_radios(
    tmp_path: Path, *, auto_approve: bool
) -> AsyncIterator[tuple[TwoRadios, UpdateCore, ImageStore, Any]]:
    """Two simulated NCPs, the core and `ZigbeeRadios` on them (per-network budget 1, global 10)."""
    clock = ManualClock()
    rig = TwoRadios(clock, tmp_path)
    paths = [await rig.ncp(1), await rig.ncp(2)]
    cfg = parse_config(
        {
            "data_dir": str(tmp_path),
            "policy": {"auto_approve": auto_approve, "budgets": {"per_network_default": 1, "global": 10}},
            "zigbee": {
                "enabled": True,
                "radios": [
                    {"name": "kitchen", "type": "ezsp", "device": paths[0], "startup_timeout_s": 20},
                    {"name": "garden", "type": "ezsp", "device": paths[1], "startup_timeout_s": 20},
                ],
            },
        }
    )
    store = ImageStore(tmp_path, clock=clock)
    await store.open()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    radios = ZigbeeRadios(cfg.zigbee, core, clock, tmp_path)
    try:
        await radios.start()
        yield rig, core, store, radios
    finally:
        await radios.stop()
        for air in rig.airs:
            await air.stop()
        for server in rig.servers:
            await server.close()
        await core.stop()
        await store.close()


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[TwoRadios, UpdateCore, ImageStore, Any]]:
    async with two_radios(tmp_path, auto_approve=True) as started:
        yield started


async def test_two_networks_own_budgets_one_update_across_both(two: Any, tmp_path: Path) -> None:
    rig, core, store, radios = two
    assert radios.errors == {} and all(s.ncp.network_up for s in rig.servers)
    kitchen, garden = radios.running("kitchen"), radios.running("garden")
    epids = {kitchen.app.state.network_info.extended_pan_id, garden.app.state.network_info.extended_pan_id}
    assert len(epids) == 2  # two networks
    for radio, adapter in ((0, kitchen), (1, garden)):
        await adapter.app.permit(60)
        for n in range(2):
            assert rig.airs[radio].join(rig.device(radio, n))
    image = zigbee_image(MFR, ITYPE, NEW, size=4_001)
    await store.add_bytes(image, file_name="both.ota")
    await core.catalog_changed()
    await rig.run_until(core, lambda: all(d.file_version == NEW for _, d in rig.devices), max_s=3600)
    assert all(d.completed_images[-1] == image for _, d in rig.devices)
    networks = {f"epid:{str(e).replace(':', '')}" for e in epids}
    assert set(rig.peak_by_network) == networks
    assert all(peak == 1 for peak in rig.peak_by_network.values()), rig.peak_by_network  # own budget each
    assert rig.both_active  # the two networks transferred at the same time: one update across both
    records = [r for r in core._book.devices.values() if r.protocol == "zigbee"]
    assert {r.network for r in records} == networks and len(records) == 4
    # each radio has its own zigpy database and its own backups folder
    assert (tmp_path / "zigbee-kitchen.db").exists() and (tmp_path / "zigbee-garden.db").exists()
    assert list((tmp_path / "zigbee-backups" / "kitchen").glob("auto-*.json"))
    assert radios.health()["radios"]["garden"] == {"radio": "up", "reconnects": 0, "error": None}


async def test_an_absent_radio_leaves_the_other_serving(tmp_path: Path) -> None:
    clock = ManualClock()
    rig = TwoRadios(clock, tmp_path)
    path = await rig.ncp(1)
    cfg = parse_config(
        {
            "data_dir": str(tmp_path),
            "zigbee": {
                "enabled": True,
                "radios": [
                    {"name": "a", "device": path, "startup_timeout_s": 20},
                    {"name": "b", "device": "/dev/otagw-absent-b", "startup_timeout_s": 5},
                ],
            },
        }
    )
    store = ImageStore(tmp_path, clock=clock)
    await store.open()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    radios = ZigbeeRadios(cfg.zigbee, core, clock, tmp_path)
    try:
        await radios.start()
        assert radios.running("a").app is not None and rig.servers[0].ncp.network_up
        assert radios.errors == {
            "b": "zigbee radio 'ezsp' at '/dev/otagw-absent-b': no such device (No such file or directory)"
        }
        assert radios.health()["radios"]["b"]["error"].endswith("no such device (No such file or directory)")
        with pytest.raises(LookupError, match="radio: 'c' is not one of a, b"):
            radios.running("c")
    finally:
        await radios.stop()
        for air in rig.airs:
            await air.stop()
        for server in rig.servers:
            await server.close()
        await core.stop()
        await store.close()
