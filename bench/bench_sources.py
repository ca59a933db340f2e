"""Firmware sources benchmark: checking a 5,000-entry Zigbee2MQTT index, and matching 10,000 devices against it.

Run: `python bench/bench_sources.py`. A local aiohttp server serves a generated index in the Koenkk format. The check
is the whole metadata path of an otagw source (HTTP GET with validators, zigpy's RemoteZ2MProvider parsing and
schema validation, conversion, state written to disk); the peer is zigpy's own `RemoteZ2MProvider.load_index()`
against the same server. Peak memory is tracemalloc's peak during the check. Matching finds, for each of 10,000
devices, the best entry it could use (what decides which files are downloaded).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zigpy.ota.providers as zp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.core.records import DeviceRecord
from gateway.sources.manager import SourceManager
from gateway.store.store import ImageStore

ENTRIES = 5_000
DEVICES = 10_000


def make_index(n: int, rng: random.Random) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        mfr, itype = 0x1000 + i % 400, i % 13
        item: dict[str, object] = {
            "fileVersion": 0x100 + i // 400,
            "fileSize": 100_000 + i,
            "manufacturerCode": mfr,
            "imageType": itype,
            "sha512": hashlib.sha512(str(i).encode()).hexdigest(),
            "url": f"https://example.invalid/images/{mfr:04x}/{itype:04x}/{i}.ota",
        }
        if rng.random() < 0.3:
            item["modelId"] = f"MODEL-{i % 50}"
        if rng.random() < 0.1:
            item["minFileVersion"] = 0x10
        out.append(item)
    return out


def devices(n: int, rng: random.Random) -> list[DeviceRecord]:
    out = []
    for i in range(n):
        ieee = ":".join(f"{b:02x}" for b in i.to_bytes(8, "big"))
        out.append(
            DeviceRecord(
                f"zigbee:pan:1:{ieee}:1", "zigbee", "pan:1", ieee, 1, 0.0, 0.0,
                vendor_id=0x1000 + rng.randrange(500), product_id=rng.randrange(13),
                current_version=rng.randrange(0x100, 0x110), model=f"MODEL-{rng.randrange(60)}",
            )
        )  # fmt: skip
    return out


async def main() -> None:
    rng = random.Random(1)
    body = json.dumps(make_index(ENTRIES, rng)).encode()

    async def index(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/index.json", index)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("/index.json"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = parse_config(
                {
                    "data_dir": tmp,
                    "sources": [
                        {"name": "z2m", "type": "z2m", "enabled": True, "url": url, "download": "manual"}
                    ],
                }
            )
            store = ImageStore(cfg.data_dir)
            await store.open()
            manager = SourceManager(cfg, store, SystemClock())
            times, peaks = [], []
            for _ in range(3):
                manager.states["z2m"].validators.clear()  # a full fetch each round, not a 304
                t0 = time.perf_counter()
                report = await manager.check("z2m")
                times.append(time.perf_counter() - t0)
                assert report.entries == ENTRIES and not report.errors, report
            # memory in a separate run: tracemalloc slows everything down several times
            manager.states["z2m"].validators.clear()
            tracemalloc.start()
            await manager.check("z2m")
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            peer_times = []
            for _ in range(3):
                provider = zp.RemoteZ2MProvider(url=url)
                t0 = time.perf_counter()
                metas = await provider.load_index()
                peer_times.append(time.perf_counter() - t0)
                assert metas is not None and len(metas) == ENTRIES
            fleet = devices(DEVICES, rng)
            entries = manager.entries("z2m")
            match_times = []
            for _ in range(3):
                t0 = time.perf_counter()
                wanted = manager.wanted(entries, fleet)
                match_times.append(time.perf_counter() - t0)
            await manager.stop()
            await store.close()
    finally:
        await server.close()
    check, peer, match = (
        statistics.median(times),
        statistics.median(peer_times),
        statistics.median(match_times),
    )
    print(f"index: {ENTRIES} entries, {len(body) / 1e6:.1f} MB JSON")
    print(f"check (fetch + zigpy parse/validate + convert + state): {check * 1000:.0f} ms median of 3")
    print(f"  peak Python memory during the check: {max(peaks) / 1e6:.1f} MB")
    print(
        f"  zigpy RemoteZ2MProvider.load_index alone: {peer * 1000:.0f} ms; ratio otagw/zigpy = {check / peer:.2f}"
    )
    print(
        f"matching {DEVICES} devices against {ENTRIES} entries: {match * 1000:.0f} ms "
        f"({match / DEVICES * 1e6:.1f} us/device); {len(wanted)} entries wanted"
    )


if __name__ == "__main__":
    asyncio.run(main())
