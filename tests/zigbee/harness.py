"""Test scaffolding: a whole Zigbee gateway stack on the simulated network, with the real core and store.

`make_stack()` builds ImageStore + UpdateCore (ManualClock, no auto sweep) + SimNetwork with simulated devices +
ZigbeeAdapter started through otagw's config path (radio.start_controller with the fake-radio app class), then
joins the devices so zigpy interviews them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.zigbee.adapter import ZigbeeAdapter
from adapters.zigbee.sim import SimControllerApplication, SimNetwork, SimOtaDevice
from gateway.clock import ManualClock
from gateway.config import Config, parse_config
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore
from tests.store_helpers import zigbee_image

SIM_NETWORK = "epid:00a1b2c3d4e5f607"  # the simulated network's extended PAN id (adapters/zigbee/sim/app.py)

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures" / "zigbee"
IKEA = FIXTURES / "ikea-mgm210l-light-cws-cv-rgbw-v268572245.ota"  # mfr 4476 type 10242, 228582 B
DRESDEN = FIXTURES / "1135-0000-201000A0-FLS-PP3_RGBW.zigbee"  # mfr 4405 type 0, 197247 B
SENGLED = FIXTURES / "RDL2016091_1_E11-G13_V0.0.9_20170921_release.ota"  # mfr 4448 type 3, 116478 B

VENDOR = {IKEA: (4476, 10242, 268572245), DRESDEN: (4405, 0, 0x201000A0), SENGLED: (4448, 3, 9)}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip("shared fixtures not present")  # on the allow-list: generated equivalents run instead
    return path


@dataclass
class Stack:
    clock: ManualClock
    config: Config
    store: ImageStore
    core: UpdateCore
    network: SimNetwork
    adapter: ZigbeeAdapter
    data_dir: Path
    extra_adapters: list[ZigbeeAdapter] = field(default_factory=list)

    @property
    def app(self) -> Any:
        return self.adapter.app

    def record(self, dev: SimOtaDevice) -> Any:
        return self.core.get_device(f"zigbee:{SIM_NETWORK}:{dev.ieee}:{dev.endpoint}")

    async def run_until(self, cond: Any, *, step_s: float = 1.0, max_s: float = 3600.0) -> float:
        async def advance(s: float) -> None:
            await self.clock.advance(s)
            await self.core.sweep()

        return await self.network.run_until(cond, step_s=step_s, max_s=max_s, advance=advance)

    async def start_adapter(self) -> ZigbeeAdapter:
        adapter = ZigbeeAdapter(
            self.config.zigbee,
            self.core,
            self.clock,
            self.data_dir,
            app_cls=SimControllerApplication.bound_to(self.network),
        )
        await adapter.start()
        self.network.add_idle_hook(adapter.is_idle)
        return adapter

    async def restart_gateway(self) -> None:
        """Stop the adapter (and zigpy app), then start a fresh one on the same database and devices."""
        old = self.adapter
        self.network._idle_hooks.remove(old.is_idle)
        await old.stop()
        self.adapter = await self.start_adapter()

    async def close(self) -> None:
        await self.adapter.stop()
        await self.network.stop()
        await self.core.stop()
        await self.store.close()


async def make_stack(
    tmp_path: Path,
    devices: list[SimOtaDevice] | None = None,
    images: list[Path | bytes] | None = None,
    *,
    clock: ManualClock | None = None,
    policy: dict[str, Any] | None = None,
    zigbee: dict[str, Any] | None = None,
    join: bool = True,
) -> Stack:
    clock = clock or ManualClock()
    cfg = parse_config(
        {
            "data_dir": str(tmp_path),
            "policy": {"auto_approve": True, **(policy or {})},
            "zigbee": {"enabled": True, **(zigbee or {})},
        }
    )
    store = ImageStore(tmp_path, clock=clock)
    await store.open()
    for i, img in enumerate(images or []):
        if isinstance(img, bytes):
            await store.add_bytes(img, file_name=f"synthetic-{i}.ota")
        else:
            await store.add_file(img)
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    network = SimNetwork(clock)
    for dev in devices or []:
        network.add(dev)
    stack = Stack(clock, cfg, store, core, network, None, tmp_path)  # type: ignore[arg-type]
    stack.adapter = await stack.start_adapter()
    network.start()
    if join:
        await network.join_all()
        await network.settle()
    return stack


def synthetic(mfr: int = 0x117C, itype: int = 0x2811, version: int = 0x200, size: int = 6000) -> bytes:
    """A valid Zigbee OTA file built by otagw's own codec (fast tests; vendor files prove the real thing)."""
    return zigbee_image(mfr, itype, version, size)


def sim_device(n: int, clock: ManualClock, vendor: tuple[int, int, int], **kw: Any) -> SimOtaDevice:
    mfr, itype, version = vendor
    kw.setdefault("file_version", max(0, version - 1))
    return SimOtaDevice(
        f"00:0d:6f:00:00:00:{n >> 8:02x}:{n & 0xFF:02x}",
        0x1000 + n,
        clock,
        manufacturer_code=mfr,
        image_type=itype,
        seed=n + 1,
        **kw,
    )
