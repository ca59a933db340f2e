"""Zigbee OTA server benchmark on the hardware-free harness: otagw's server vs zigpy's own update_firmware().

One command, prints figures:

    python bench/bench_zigbee.py [--image-kib 200] [--rounds 3] [--fleet 200] [--fleet-kib 16] [--budget 8]

1. Same harness, same image (a valid 200 KiB Zigbee OTA file), one device, 50-byte blocks on both sides
   (zigpy caps most manufacturers at 50; otagw configured with default_max_block_bytes 50): wall time and
   blocks/s for otagw (real UpdateCore + ImageStore) and for zigpy's `device.update_firmware()`, and their ratio.
   `--rounds` alternates the two (zigpy first in odd rounds, otagw first in even ones) and reports each side's
   best and median round, so load from other processes on a shared machine hits both alike.
2. Server-side CPU per block: CPU spent in zigpy's inbound packet processing plus in the server's request
   handling (every task the otagw adapter spawns, incl. core.progress, or zigpy's OTAManager handlers), divided
   by blocks served. The simulated device's own work is excluded.
3. Default configuration, same device asking for 64-byte blocks: otagw's default cap (64) vs zigpy's fixed 50;
   compared as image transfer time (block counts differ).
4. A fleet of simulated devices updating under a per-PAN budget through the real core: wall time, clock
   time, peak transfers at once, peak RSS of the process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zigpy.ota
import zigpy.ota.manager
import zigpy.ota.providers
from zigpy.ota.image import parse_ota_image

from adapters.zigbee.adapter import ZigbeeAdapter
from adapters.zigbee.sim import Behaviour, SimControllerApplication, SimNetwork, SimOtaDevice
from adapters.zigbee.sim.app import fast_zigpy_timing
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.service import UpdateCore
from gateway.formats import build_zigbee_image
from gateway.store.store import ImageStore

MFR, ITYPE, NEW = 0x117C, 0x2811, 0x300


class CpuMeter:
    """Accumulates process CPU time spent in chosen synchronous calls and coroutine steps."""

    def __init__(self) -> None:
        self.cpu = 0.0

    def call(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*a: Any, **kw: Any) -> Any:
            t0 = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                self.cpu += time.process_time() - t0

        return wrapped

    def coro(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        meter = self

        class _Timed:
            def __init__(self, aw: Awaitable[Any]) -> None:
                self.aw = aw

            def __await__(self) -> Generator[Any, Any, Any]:
                gen = self.aw.__await__()
                send: Any = None
                exc: BaseException | None = None
                while True:
                    t0 = time.process_time()
                    try:
                        y = gen.throw(exc) if exc is not None else gen.send(send)
                    except StopIteration as stop:
                        meter.cpu += time.process_time() - t0
                        return stop.value
                    meter.cpu += time.process_time() - t0
                    try:
                        send, exc = (yield y), None
                    except BaseException as e:  # forward cancellation etc. into the coroutine
                        send, exc = None, e

        async def wrapped(*a: Any, **kw: Any) -> Any:
            return await _Timed(fn(*a, **kw))

        return wrapped

    def timed(self, aw: Awaitable[Any]) -> Coroutine[Any, Any, Any]:
        """`aw` as a coroutine whose steps are metered (for wrapping what a task will run)."""
        return self.coro(lambda: aw)()


def make_image(kib: int, version: int = NEW) -> bytes:
    payload = bytes((i * 131 + 7) & 0xFF for i in range(kib * 1024 - 62))
    return build_zigbee_image(payload, manufacturer_code=MFR, image_type=ITYPE, file_version=version)


def device(n: int, clock: ManualClock, **kw: Any) -> SimOtaDevice:
    return SimOtaDevice(
        f"00:0d:6f:00:00:01:{n >> 8:02x}:{n & 0xFF:02x}",
        0x2000 + n,
        clock,
        manufacturer_code=MFR,
        image_type=ITYPE,
        file_version=NEW - 1,
        seed=n + 1,
        **kw,
    )


def initialized(app: Any, dev: SimOtaDevice) -> bool:
    zdev = app.devices.get(dev.ieee)
    return zdev is not None and zdev.is_initialized


async def until(
    cond: Callable[[], bool], net: SimNetwork, clock: ManualClock | None = None, step_s: float = 1.0
) -> None:
    """Spin the loop (and the clock, if given, when the network is idle) until `cond`."""
    spins = 0
    while not cond():
        await asyncio.sleep(0)
        spins += 1
        if clock is not None and spins % 2000 == 0 and net.is_idle():
            await net.settle(guard_s=0.5)
            if not cond():
                await clock.advance(step_s)


async def bench_otagw(
    image: bytes, tmp: Path, max_data_size: int = 50, cap: int | None = 50
) -> dict[str, float]:
    clock = ManualClock()
    zigbee: dict[str, Any] = {"enabled": True}
    if cap is not None:
        zigbee["default_max_block_bytes"] = cap
    # auto_approve: the bench measures transfers, not the approval step (off by default since approval states)
    cfg = parse_config({"data_dir": str(tmp), "zigbee": zigbee, "policy": {"auto_approve": True}})
    store = ImageStore(tmp, clock=clock)
    await store.open()
    await store.add_bytes(image, file_name="bench.ota")
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    net = SimNetwork(clock)
    dev = net.add(
        device(1, clock, behaviour=Behaviour(max_data_size=max_data_size, answers_notify=False, reboot_s=0))
    )
    adapter = ZigbeeAdapter(cfg.zigbee, core, clock, tmp, app_cls=SimControllerApplication.bound_to(net))
    meter = CpuMeter()
    spawn = adapter._spawn
    # every task the adapter starts (request handlers, page streams, timers) runs metered
    adapter._spawn = lambda coro, name: spawn(meter.timed(coro), name)  # type: ignore[method-assign,assignment,return-value]
    await adapter.start()
    assert adapter.app is not None
    adapter.app.packet_received = meter.call(adapter.app.packet_received)  # type: ignore[method-assign]
    net.add_idle_hook(adapter.is_idle)
    net.start()
    net.join(dev)
    await until(lambda: initialized(adapter.app, dev), net, clock)
    await net.settle()
    meter.cpu = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    dev.check_in()
    await until(lambda: bool(dev.stats.upgrade_end_responses), net, clock)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    blocks = dev.stats.block_responses
    ok = dev.completed_images[-1] == image
    await adapter.stop()
    await net.stop()
    await core.stop()
    await store.close()
    return {"wall": wall, "blocks": blocks, "server_cpu": meter.cpu, "cpu": cpu, "ok": ok}


async def bench_zigpy(image: bytes, tmp: Path, max_data_size: int = 50) -> dict[str, float]:
    clock = ManualClock()
    net = SimNetwork(clock)
    # zigpy starts with Image Notify
    dev = net.add(device(1, clock, behaviour=Behaviour(max_data_size=max_data_size, reboot_s=0)))
    cfg = parse_config({"zigbee": {"enabled": True}})
    from adapters.zigbee.radio import start_controller

    app = await start_controller(cfg.zigbee, tmp, SimControllerApplication.bound_to(net))
    meter = CpuMeter()
    app.packet_received = meter.call(app.packet_received)  # type: ignore[method-assign]
    mgr = zigpy.ota.manager.OTAManager
    saved = (mgr._image_block_req, mgr._image_query_req, mgr._upgrade_end)
    mgr._image_block_req = meter.coro(mgr._image_block_req)  # type: ignore[method-assign]
    mgr._image_query_req = meter.coro(mgr._image_query_req)  # type: ignore[method-assign]
    mgr._upgrade_end = meter.coro(mgr._upgrade_end)  # type: ignore[method-assign]
    try:
        net.start()
        net.join(dev)
        await until(
            lambda: initialized(app, dev) and dev.state == "idle" and dev.stats.queries > 0, net, clock
        )
        await net.settle()
        zdev = app.get_device(ieee=dev.ieee)
        fw, _ = parse_ota_image(image)
        ota_image = zigpy.ota.OtaImageWithMetadata(
            metadata=zigpy.ota.providers.BaseOtaImageMetadata(
                file_version=NEW, manufacturer_id=MFR, image_type=ITYPE
            ),
            firmware=fw,
        )
        meter.cpu = 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        task = asyncio.ensure_future(zdev.update_firmware(ota_image))
        await until(lambda: bool(dev.stats.upgrade_end_responses), net, clock)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        blocks = dev.stats.block_responses
        ok = dev.completed_images[-1] == image
    finally:
        mgr._image_block_req, mgr._image_query_req, mgr._upgrade_end = saved  # type: ignore[method-assign]
        await app.shutdown()
        await net.stop()
    return {"wall": wall, "blocks": blocks, "server_cpu": meter.cpu, "cpu": cpu, "ok": ok}


async def bench_fleet(image: bytes, tmp: Path, n: int, budget: int) -> dict[str, float]:
    clock = ManualClock()
    cfg = parse_config(
        {
            "data_dir": str(tmp),
            "zigbee": {"enabled": True},
            "policy": {
                "auto_approve": True,
                # the simulated network's extended PAN id: Zigbee devices are keyed by it
                "budgets": {"per_network": {"epid:00a1b2c3d4e5f607": budget}, "global": max(budget, 16)},
                "busy_retry_s": 30,
            },
        }
    )
    store = ImageStore(tmp, clock=clock)
    await store.open()
    await store.add_bytes(image, file_name="fleet.ota")
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    net = SimNetwork(clock)
    net.keep_logs = False
    devs = [net.add(device(i, clock, behaviour=Behaviour(reboot_s=5))) for i in range(n)]
    peak = 0
    # devices that may be mid-download: a device only gets there by accepting a block (which calls watch), so
    # counting over these equals counting over the whole fleet, without an O(fleet) scan per block
    started: set[SimOtaDevice] = set()

    def watch(dev: SimOtaDevice) -> None:
        nonlocal peak
        started.add(dev)
        for d in [d for d in started if d.offset == 0 or d.offset >= d.image_size]:
            started.discard(d)  # back at 0 / complete: only a new accepted block brings it back
        peak = max(peak, sum(1 for d in started if d.state == "downloading" and 0 < d.offset < d.image_size))

    for d in devs:
        d.on_block = watch
    adapter = ZigbeeAdapter(cfg.zigbee, core, clock, tmp, app_cls=SimControllerApplication.bound_to(net))
    await adapter.start()
    net.add_idle_hook(adapter.is_idle)
    net.start()
    t0, clock0 = time.perf_counter(), clock.monotonic()
    await net.join_all()

    async def advance(s: float) -> None:
        await clock.advance(s)
        await core.sweep()

    await net.run_until(
        lambda: all(d.file_version == NEW for d in devs), step_s=5.0, max_s=7 * 86400, advance=advance
    )
    wall, clock_s = time.perf_counter() - t0, clock.monotonic() - clock0
    ok = all(d.completed_images and d.completed_images[-1] == image for d in devs)
    blocks = sum(d.stats.block_responses for d in devs)
    await adapter.stop()
    await net.stop()
    await core.stop()
    await store.close()
    return {"wall": wall, "clock": clock_s, "peak": peak, "ok": ok, "blocks": blocks}


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-kib", type=int, default=200)
    ap.add_argument(
        "--rounds", type=int, default=3, help="alternating otagw/zigpy rounds (best and median shown)"
    )
    ap.add_argument("--fleet", type=int, default=200)
    ap.add_argument("--fleet-kib", type=int, default=16, help="image size for the fleet run (200 = slow)")
    ap.add_argument("--budget", type=int, default=8, help="per-PAN transfer budget for the fleet run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    image = make_image(args.image_kib)
    print(
        f"image: {len(image)} bytes, harness: SimNetwork + zigpy 2.4 codec on both sides, "
        f"{args.rounds} alternating round(s) per figure"
    )
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    ours64: list[dict[str, float]] = []
    theirs64: list[dict[str, float]] = []
    with fast_zigpy_timing():
        small = make_image(8)  # a warm-up run of each first: lazy imports, first-call paths
        for name, run in (("zigpy", bench_zigpy), ("otagw", bench_otagw)):
            with tempfile.TemporaryDirectory() as d:
                await run(small, Path(d))
            del name
        for i in range(args.rounds):
            order = [("zigpy", theirs), ("otagw", ours)]
            for name, out in order if i % 2 == 0 else order[::-1]:
                with tempfile.TemporaryDirectory() as d:
                    gc.collect()
                    out.append(
                        await (
                            bench_zigpy(image, Path(d)) if name == "zigpy" else bench_otagw(image, Path(d))
                        )
                    )
            order64 = [("zigpy", theirs64), ("otagw", ours64)]
            for name, out in order64 if i % 2 == 0 else order64[::-1]:
                with tempfile.TemporaryDirectory() as d:
                    gc.collect()
                    out.append(
                        await (
                            bench_zigpy(image, Path(d), max_data_size=64)
                            if name == "zigpy"
                            else bench_otagw(image, Path(d), max_data_size=64, cap=None)
                        )
                    )

    def rate(r: dict[str, float]) -> float:
        return r["blocks"] / r["wall"]

    print("1. equal block size: device asks 50, both serve 50-byte blocks")
    for name, rs in (("otagw server", ours), ("zigpy update_firmware()", theirs)):
        best = max(rs, key=rate)
        print(
            f"  {name:26s} {best['blocks']:6.0f} blocks; best {rate(best):5.0f} blocks/s"
            f" ({best['wall']:5.2f} s), median {statistics.median(map(rate, rs)):5.0f} blocks/s;"
            f" server CPU {1e6 * statistics.median(r['server_cpu'] / r['blocks'] for r in rs):5.0f} us/block;"
            f" whole process {1e6 * statistics.median(r['cpu'] / r['blocks'] for r in rs):5.0f} us/block;"
            f" bytes match: {all(r['ok'] for r in rs)}"
        )
    cpu_o = statistics.median(r["server_cpu"] / r["blocks"] for r in ours)
    cpu_z = statistics.median(r["server_cpu"] / r["blocks"] for r in theirs)
    print(
        f"  ratio otagw/zigpy blocks/s: best {max(map(rate, ours)) / max(map(rate, theirs)):.2f},"
        f" median {statistics.median(map(rate, ours)) / statistics.median(map(rate, theirs)):.2f}"
        f"  (server CPU per block: {cpu_o / cpu_z:.2f}x)"
    )
    print("2. default configuration: device asks 64; otagw serves its default cap 64, zigpy its fixed 50")
    for name, rs in (("otagw server (64-byte)", ours64), ("zigpy update_firmware() (50)", theirs64)):
        best = min(rs, key=lambda r: r["wall"])
        print(
            f"  {name:28s} {best['blocks']:6.0f} blocks; image in best {best['wall']:5.2f} s,"
            f" median {statistics.median(r['wall'] for r in rs):5.2f} s"
            f" ({len(image) / best['wall'] / 1024:5.1f} KiB/s); bytes match: {all(r['ok'] for r in rs)}"
        )
    print(
        f"  ratio otagw/zigpy image throughput: best {min(r['wall'] for r in theirs64) / min(r['wall'] for r in ours64):.2f},"
        f" median {statistics.median(r['wall'] for r in theirs64) / statistics.median(r['wall'] for r in ours64):.2f}"
    )
    fleet_image = make_image(args.fleet_kib)
    rss0 = rss_mib()
    with fast_zigpy_timing(), tempfile.TemporaryDirectory() as d3:
        f = await bench_fleet(fleet_image, Path(d3), args.fleet, args.budget)
    print(
        f"fleet: {args.fleet} devices x {len(fleet_image)} bytes, per-PAN budget {args.budget}: "
        f"{f['wall']:.1f} s wall, {f['clock'] / 3600:.2f} h simulated, {f['blocks']:.0f} blocks, "
        f"peak {f['peak']:.0f} transfers at once, all bytes match: {f['ok']}"
    )
    print(f"peak RSS: {rss_mib():.0f} MiB (before fleet {rss0:.0f} MiB)")


if __name__ == "__main__":
    asyncio.run(main())
