"""The same Zigbee OTA update through bellows + the simulated EZSP NCP vs through the fake radio.

One command, prints figures:

    python bench/bench_zigbee_ncp.py [--image-kib 200] [--block 50] [--profile]

Both runs use otagw's real Zigbee adapter, UpdateCore and ImageStore and the same simulated device asking for
50-byte Image Blocks. The fake radio hands zigpy packets straight to the device; the NCP run goes through
bellows' EZSP and ASH layers, a loopback TCP socket and the simulated NCP (ASH + EZSP v13), as with a real
network-attached coordinator. Printed per run: wall time, blocks/s, process CPU per block; for the NCP run
also the simulator's own share (ASH/EZSP/NCP code, which a real NCP runs on its own chip) and, with
`--profile`, where the process CPU goes (bellows, zigpy, otagw, simulator, asyncio and the rest).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bellows.ezsp

from adapters.zigbee.adapter import ZigbeeAdapter
from adapters.zigbee.sim import Behaviour, SimControllerApplication, SimNetwork, SimOtaDevice
from adapters.zigbee.sim.app import fast_zigpy_timing
from adapters.zigbee.sim.ncp.ncp import SimNcp
from adapters.zigbee.sim.ncp.network import RadioAir
from adapters.zigbee.sim.ncp.server import NcpServer
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.service import UpdateCore
from gateway.formats import build_zigbee_image
from gateway.store.store import ImageStore

MFR, ITYPE, NEW = 0x117C, 0x2811, 0x300


def make_image(kib: int) -> bytes:
    payload = bytes((i * 131 + 7) & 0xFF for i in range(kib * 1024 - 62))
    return build_zigbee_image(payload, manufacturer_code=MFR, image_type=ITYPE, file_version=NEW)


def make_device(clock: ManualClock, block: int) -> SimOtaDevice:
    return SimOtaDevice(
        "00:0d:6f:00:00:02:00:01",
        0x3001,
        clock,
        manufacturer_code=MFR,
        image_type=ITYPE,
        file_version=NEW - 1,
        behaviour=Behaviour(max_data_size=block, answers_notify=False, reboot_s=0),
    )


class SimCpu:
    """CPU spent inside the NCP simulator's entry points (what a real NCP does on its own chip)."""

    def __init__(self) -> None:
        self.cpu = 0.0

    def wrap(self, obj: Any, name: str) -> None:
        fn = getattr(obj, name)

        def metered(*a: Any, **kw: Any) -> Any:
            t0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                self.cpu += time.process_time() - t0

        setattr(obj, name, metered)


async def until(cond: Callable[[], bool], real_wait: bool) -> None:
    # a slow poll: the loop stays free for the transfer and the poll itself costs next to no CPU
    while not cond():
        await asyncio.sleep(0.02)


async def run(
    image: bytes, block: int, *, ncp_path: bool, profile: cProfile.Profile | None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        clock = ManualClock()
        dev = make_device(clock, block)
        server: NcpServer | None = None
        sim = SimCpu()
        net: Any
        if ncp_path:
            net = RadioAir(clock)
            ncp = SimNcp("00:0b:57:ff:fe:00:dd:04", loop.time)
            net.attach(ncp)
            server = NcpServer(ncp)
            path = await server.start_tcp()
            for name in ("feed", "_flush", "_pump_callbacks", "_on_timer"):
                sim.wrap(server, name)
            sim.wrap(net, "from_device")  # device -> NCP: the NCP's receive and incomingMessageHandler
            radio = {"type": "ezsp", "device": path, "startup_timeout_s": 30}
            app_cls = None
        else:
            net = SimNetwork(clock)
            radio = {}
            app_cls = SimControllerApplication.bound_to(net)
        net.add(dev)
        cfg = parse_config(
            {
                "data_dir": str(tmp),
                "zigbee": {"enabled": True, "default_max_block_bytes": block, "radio": radio},
            }
        )
        store = ImageStore(tmp, clock=clock)
        await store.open()
        await store.add_bytes(image, file_name="bench.ota")
        core = UpdateCore(cfg, store, clock, auto_sweep=False)
        await core.start()
        adapter = ZigbeeAdapter(cfg.zigbee, core, clock, tmp, app_cls=app_cls)
        await adapter.start()
        app = adapter.app
        assert app is not None
        net.start()
        if ncp_path:
            await app.permit(60)
            assert net.join(dev)
        else:
            net.join(dev)
        await until(lambda: dev.ieee in app.devices and app.devices[dev.ieee].is_initialized, ncp_path)
        await asyncio.sleep(0.2 if ncp_path else 0)
        sim.cpu = 0.0
        if profile is not None:
            profile.enable()
        t0, c0 = time.perf_counter(), time.process_time()
        dev.check_in()
        await until(lambda: bool(dev.stats.upgrade_end_responses), ncp_path)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if profile is not None:
            profile.disable()
        ok = dev.completed_images[-1] == image
        result = {
            "wall": wall,
            "blocks": dev.stats.block_responses,
            "cpu": cpu,
            "sim_cpu": sim.cpu,
            "ok": ok,
            "ash": server.link.counters if server is not None else None,
        }
        await asyncio.sleep(0.3 if ncp_path else 0)  # let the last exchanges (default responses) finish
        await adapter.stop()
        await net.stop()
        if server is not None:
            await server.close()
        await core.stop()
        await store.close()
        return result


CATEGORIES = (
    ("NCP simulator", "adapters/zigbee/sim/ncp/"),
    ("simulated device", "adapters/zigbee/sim/"),
    ("otagw adapter", "adapters/zigbee/"),
    ("otagw core", "gateway/"),
    ("bellows", "/bellows/"),
    ("zigpy", "/zigpy/"),
    ("asyncio", "/asyncio/"),
)


def breakdown(profile: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(profile)
    totals: dict[str, float] = {}
    for (filename, _line, _fn), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        label = next((lbl for lbl, frag in CATEGORIES if frag in filename), "other (stdlib, builtins)")
        totals[label] = totals.get(label, 0.0) + tottime
    return totals


def line(name: str, r: dict[str, Any]) -> str:
    b = r["blocks"]
    return (
        f"{name:<26} {r['wall']:7.2f} s  {b / r['wall']:8.0f} blocks/s  {1e6 * r['cpu'] / b:7.0f} µs CPU/block"
        f"  byte-exact={r['ok']}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-kib", type=int, default=200)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--profile", action="store_true", help="profile the NCP run and show where CPU goes")
    args = ap.parse_args()
    # bellows waits 2 s for a zigbeed-style reset after its own resets on socket:// paths (start-up only)
    bellows.ezsp.NETWORK_COORDINATOR_STARTUP_RESET_WAIT = 0.05
    image = make_image(args.image_kib)
    print(f"image {len(image)} bytes, {args.block}-byte blocks, one device")
    with fast_zigpy_timing():
        fake = await run(image, args.block, ncp_path=False, profile=None)
        prof = cProfile.Profile() if args.profile else None
        ncp = await run(image, args.block, ncp_path=True, profile=prof)
    print(line("fake radio", fake))
    print(line("bellows + NCP simulator", ncp))
    sim_us = 1e6 * ncp["sim_cpu"] / ncp["blocks"]
    host_us = 1e6 * (ncp["cpu"] - ncp["sim_cpu"]) / ncp["blocks"]
    print(f"  of which NCP simulator   {sim_us:7.0f} µs CPU/block (a real NCP does this on its own chip)")
    print(f"  gateway side (rest)      {host_us:7.0f} µs CPU/block")
    print(f"  ASH: {ncp['ash']}")
    print(
        f"ratio NCP/fake: blocks/s {ncp['blocks'] / ncp['wall'] / (fake['blocks'] / fake['wall']):.2f}, "
        f"CPU/block {(ncp['cpu'] / ncp['blocks']) / (fake['cpu'] / fake['blocks']):.2f} "
        f"(gateway side only: {(host_us / (1e6 * fake['cpu'] / fake['blocks'])):.2f})"
    )
    if prof is not None:
        totals = breakdown(prof)
        whole = sum(totals.values())
        print("profile of the NCP run (own time by package; profiling inflates the totals):")
        for label, secs in sorted(totals.items(), key=lambda kv: -kv[1]):
            print(f"  {label:<26} {100 * secs / whole:5.1f} %  {1e6 * secs / ncp['blocks']:7.0f} µs/block")


if __name__ == "__main__":
    asyncio.run(main())
