"""Benchmark of the update core: decision latency, sustained decisions/s with state persisted, start-up time.

    python bench/bench_core.py [--devices 10000] [--images 1000] [--concurrency 64]

Set-up: a real ImageStore (catalog.db + blobs) holding `--images` small OTA images (half Matter, half Zigbee,
5 versions per product), `--devices` device endpoints (half Matter on 4 fabrics, half Zigbee on 10 PANs, a fifth
sleepy), one active rollout, default policy (budgets: 16 global, 4 per network). Every decision is committed to
state.db before it is answered. Prints figures only; the machine and disk decide the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.core.interface import Available, DeviceInfo, DeviceKey
from gateway.core.service import UpdateCore
from gateway.formats import build_matter_image, build_zigbee_image
from gateway.store.store import ImageStore


def devices(n: int) -> list[DeviceInfo]:
    out = []
    for i in range(n):
        sleepy = i % 5 == 0
        if i % 2 == 0:
            prod = (i // 2) % 50
            key = DeviceKey("matter", f"fabric:{i % 4:016x}", f"{i:016X}", 0)
            out.append(
                DeviceInfo(
                    key,
                    vendor_id=0xFFF1,
                    product_id=0x8000 + prod,
                    current_version=1,
                    current_version_string="1",
                    sleepy=sleepy,
                )
            )
        else:
            prod = (i // 2) % 50
            ieee = ":".join(f"{b:02x}" for b in i.to_bytes(8, "big"))
            key = DeviceKey("zigbee", f"pan:{i % 10:04x}", ieee, 1)
            out.append(
                DeviceInfo(
                    key,
                    vendor_id=0x117C,
                    product_id=0x2800 + prod,
                    current_version=1,
                    sleepy=sleepy,
                    model=f"M{prod}",
                )
            )
    return out


async def fill_store(store: ImageStore, n: int) -> None:
    per = 5
    products = max(1, n // (2 * per))
    for p in range(products):
        for v in range(2, 2 + per):
            payload = bytes([p & 0xFF, v]) * 2048
            m = build_matter_image(
                payload,
                vendor_id=0xFFF1,
                product_id=0x8000 + p,
                software_version=v,
                software_version_string=f"{v}.0",
            )
            await store.add_bytes(m, file_name=f"m{p}-{v}.ota", source="bench")
            z = build_zigbee_image(payload, manufacturer_code=0x117C, image_type=0x2800 + p, file_version=v)
            await store.add_bytes(z, file_name=f"z{p}-{v}.ota", source="bench")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def main(n_dev: int, n_img: int, conc: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        cfg = parse_config({"data_dir": str(data)})
        store = ImageStore(data)
        await store.open()
        t = time.perf_counter()
        await fill_store(store, n_img)
        entries = await store.list()
        print(
            f"catalog: {len(entries)} images imported in {time.perf_counter() - t:.1f} s (set-up, not core)"
        )
        devs = devices(n_dev)

        core = UpdateCore(cfg, store, SystemClock(), auto_sweep=False)
        t = time.perf_counter()
        await core.start()
        print(f"start-up, empty state: {(time.perf_counter() - t) * 1000:.0f} ms")
        target = next(
            e for e in entries if e.protocol == "matter" and e.product_id == 0x8000 and e.numeric_version == 6
        )
        await core.create_rollout(target.image_id, waves=["1", "10%", "100%"])

        t = time.perf_counter()
        for d in devs:
            await core.observe(d)
        dt = time.perf_counter() - t
        print(f"observe (record created + persisted): {n_dev / dt:,.0f}/s")

        # 1) latency: one device at a time (the decision is committed before it returns)
        lat: list[float] = []
        outcomes: dict[str, int] = {}
        for d in devs:
            t0 = time.perf_counter()
            res = await core.query(d)
            lat.append(time.perf_counter() - t0)
            outcomes[type(res).__name__] = outcomes.get(type(res).__name__, 0) + 1
        print(
            f"query latency, sequential, {n_dev} decisions: p50 {statistics.median(lat) * 1e6:.0f} us, "
            f"p99 {pct(lat, 0.99) * 1e6:.0f} us, max {max(lat) * 1e3:.1f} ms; outcomes {outcomes}"
        )
        print(f"  sequential throughput: {n_dev / sum(lat):,.0f} decisions/s")

        # 2) sustained: `conc` devices asking at once, several rounds (group commit batches their writes)
        rounds = 3
        sem = asyncio.Semaphore(conc)
        lat2: list[float] = []

        async def one(d: DeviceInfo) -> None:
            async with sem:
                t0 = time.perf_counter()
                await core.query(d)
                lat2.append(time.perf_counter() - t0)

        t = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(one(d) for d in devs))
        dt = time.perf_counter() - t
        print(
            f"sustained, {conc} concurrent, {rounds * n_dev} decisions: {rounds * n_dev / dt:,.0f} decisions/s "
            f"(p50 {statistics.median(lat2) * 1e3:.2f} ms, p99 {pct(lat2, 0.99) * 1e3:.2f} ms incl. queueing)"
        )

        # 3) transfer bookkeeping: progress calls for the live transfers
        live = [r for r in core.list_devices({"state": "querying"})]
        t = time.perf_counter()
        calls = 0
        for r in live:
            assert r.token is not None and r.target_size is not None
            for off in range(0, r.target_size, 64):
                await core.progress(r.token, off, 64)
                calls += 1
        dt = time.perf_counter() - t
        if calls:
            print(f"progress: {calls / dt:,.0f} block reports/s ({len(live)} transfers)")

        t = time.perf_counter()
        await core.sweep()
        print(f"sweep over {n_dev} devices: {(time.perf_counter() - t) * 1000:.0f} ms")
        t = time.perf_counter()
        plan = core.plan()
        print(f"plan (dry run) for {len(plan)} devices: {(time.perf_counter() - t) * 1000:.0f} ms")
        await core.stop()

        # 4) start-up with that state
        hist_rows = 0
        core = UpdateCore(cfg, store, SystemClock(), auto_sweep=False)
        t = time.perf_counter()
        await core.start()
        dt = time.perf_counter() - t
        async with core._db.conn.execute("SELECT count(*) FROM history") as cur:
            row = await cur.fetchone()
            hist_rows = row[0] if row else 0
        print(
            f"start-up with {len(core.list_devices())} devices, {hist_rows} history rows, {len(entries)} images, "
            f"1 rollout: {dt * 1000:.0f} ms"
        )
        res = await core.query(devs[0])
        assert not isinstance(res, Available) or res.token
        await core.stop()
        await store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--images", type=int, default=1_000)
    ap.add_argument("--concurrency", type=int, default=64)
    a = ap.parse_args()
    asyncio.run(main(a.devices, a.images, a.concurrency))
