"""Image store benchmark: import throughput (1 MiB and 16 MiB Matter images) and version selection latency.

Run: `python bench/bench_store.py`. Import covers the whole path: temp blob write + SHA-256, parse and Matter
digest verification, fsync, rename, catalog transaction. Selection picks an image for random devices among
10,000 catalog entries through `SelectionIndex` (target: well under 1 ms), compared with a linear scan.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.formats import build_matter_image
from gateway.store.catalog import make_image_id, make_package_id
from gateway.store.model import CatalogEntry, DeviceDescriptor, ProtocolName
from gateway.store.selection import SelectionIndex, select_image
from gateway.store.store import ImageStore

MIB = 1 << 20


async def bench_import(size_mib: int, rounds: int) -> float:
    base = os.urandom(size_mib * MIB)
    with tempfile.TemporaryDirectory() as tmp:
        store = ImageStore(Path(tmp) / "data")
        await store.open()
        times = []
        for i in range(rounds):
            data = build_matter_image(
                base[:-8] + i.to_bytes(8, "little"),  # new content each round: no idempotent shortcut
                vendor_id=0xFFF1,
                product_id=0x8001,
                software_version=i + 1,
                software_version_string=f"1.{i}",
            )
            t0 = time.perf_counter()
            res = await store.add_bytes(data, file_name=f"fw{i}.ota", source="bench")
            times.append(time.perf_counter() - t0)
            assert res.created
        await store.close()
    return size_mib / statistics.median(times)


def _entry(i: int, rng: random.Random) -> CatalogEntry:
    protocol: ProtocolName = "matter" if i % 2 else "zigbee"
    vendor = rng.randrange(0x1000, 0x1000 + 50)
    product = rng.randrange(0, 40)
    if protocol == "zigbee" and rng.random() < 0.01:
        vendor = 0xFFFF
    version = rng.randrange(1, 1000)
    sha = hashlib.sha256(str(i).encode()).hexdigest()
    image_id = make_image_id(sha)
    return CatalogEntry(
        image_id=image_id,
        sha256=sha,
        package_id=make_package_id(protocol, vendor, product, version, None, image_id),
        bucket=protocol,
        file_name=f"{i}.ota",
        manifest_version="1",
        name=str(i),
        version=str(version),
        description=None,
        size=1000,
        license=None,
        license_url=None,
        copyright=None,
        owner=None,
        packager="bench",
        release_date=None,
        content_type="application/octet-stream",
        protocol=protocol,
        vendor_id=vendor,
        product_id=product,
        numeric_version=version,
        version_string=str(version),
        min_applicable=rng.choice([None, 0, 100]),
        max_applicable=rng.choice([None, 900]),
        min_hw=rng.choice([None, 1]),
        max_hw=rng.choice([None, 5]),
        valid=rng.random() > 0.05,
        model_ids=rng.choice([(), ("m1",)]),
    )


def bench_selection(n: int = 10_000, queries: int = 20_000) -> tuple[float, float, float, float]:
    rng = random.Random(1)
    entries = [_entry(i, rng) for i in range(n)]
    t0 = time.perf_counter()
    index = SelectionIndex.build(entries)
    build_ms = (time.perf_counter() - t0) * 1000
    devices = [
        DeviceDescriptor(
            rng.choice(["matter", "zigbee"]),
            rng.randrange(0x1000, 0x1000 + 50),
            rng.randrange(0, 40),
            rng.randrange(0, 1000),
            hardware_version=rng.choice([None, 2]),
            model=rng.choice([None, "m1"]),
        )
        for _ in range(queries)
    ]
    lat = []
    for d in devices:
        t = time.perf_counter_ns()
        index.select(d)
        lat.append(time.perf_counter_ns() - t)
    lat.sort()
    p50 = lat[len(lat) // 2] / 1000
    p99 = lat[int(len(lat) * 0.99)] / 1000
    linear = []
    for d in devices[:200]:
        t = time.perf_counter_ns()
        select_image(entries, d)
        linear.append(time.perf_counter_ns() - t)
    linear_p50 = sorted(linear)[len(linear) // 2] / 1000
    return p50, p99, linear_p50, build_ms


def main() -> None:
    for size, rounds in ((1, 20), (16, 5)):
        rate = asyncio.run(bench_import(size, rounds))
        print(f"import {size:>2} MiB Matter image: {rate:8.1f} MiB/s (median of {rounds})")
    p50, p99, linear_p50, build_ms = bench_selection()
    print(
        f"selection among 10,000 entries (SelectionIndex): p50 {p50:.1f} µs, p99 {p99:.1f} µs  (target < 1000 µs)"
    )
    print(
        f"  index build {build_ms:.1f} ms; linear scan p50 {linear_p50:.0f} µs; index speed-up x{linear_p50 / p50:.0f}"
    )


if __name__ == "__main__":
    main()
