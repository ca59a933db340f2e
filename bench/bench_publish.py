"""Published catalog: index generation for 5,000 images, and image serving to 50 concurrent clients.

    python bench/bench_publish.py [--images 5000] [--clients 50] [--size-mib 1] [--rounds 4]

1. A real ImageStore (on /dev/shm when present) with N small Zigbee images (policy.auto_approve, so every image
   is published), the API + publish routes on loopback: GET index.json for a z2m and a zigpy controller, cold
   (SHA-512 / SHA3-256 computed and cached) and warm (cached digests; staging + rendering + JSON), median of 5.
2. One image of --size-mib, downloaded by --clients concurrent aiohttp clients, --rounds each, through
   `/publish/<controller>/<token>/images/...` (token check, staging check, chunked reads from the blob store):
   aggregate MiB/s and first-byte latency p50/p99; the peer is aiohttp's own `web.FileResponse` (sendfile) of the
   same blob file, without any check. Client and server share this process (and the machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.api.app import ApiServices, create_app
from gateway.api.credentials import CredentialStore
from gateway.clock import SystemClock
from gateway.config import parse_config
from gateway.core.service import UpdateCore
from gateway.formats import build_zigbee_image
from gateway.publish.routes import attach
from gateway.publish.service import Publisher
from gateway.store.store import ImageStore


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def download_all(urls: list[str], clients: int, rounds: int) -> tuple[float, list[float], int]:
    first: list[float] = []
    total = 0
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def one(url: str) -> int:
            t0 = time.perf_counter()
            async with session.get(url) as resp:
                resp.raise_for_status()
                n = 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    if n == 0:
                        first.append(time.perf_counter() - t0)
                    n += len(chunk)
                return n

        async def client(i: int) -> int:
            got = 0
            for r in range(rounds):
                got += await one(urls[(i + r) % len(urls)])
            return got

        t0 = time.perf_counter()
        for got in await asyncio.gather(*(client(i) for i in range(clients))):
            total += got
        wall = time.perf_counter() - t0
    return wall, first, total


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--size-mib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        cfg = parse_config(
            {
                "data_dir": f"{tmp}/data",
                "api": {"token": "bench-admin-token-0123456789"},
                "policy": {"auto_approve": True},
                "publish": {
                    "controllers": [
                        {"name": "z2m", "kind": "z2m", "credential": "z2m"},
                        {"name": "zha", "kind": "zigpy", "credential": "zha"},
                    ]
                },
            }
        )
        store = ImageStore(cfg.data_dir)
        await store.open()
        t0 = time.perf_counter()
        for i in range(args.images):
            data = build_zigbee_image(
                i.to_bytes(4, "big") * 64, manufacturer_code=0x1000 + i % 50, image_type=i, file_version=i + 1
            )
            await store.add_bytes(data, file_name=f"img-{i}.ota", source="cli")
        print(f"setup: {args.images} images imported in {time.perf_counter() - t0:.1f} s")
        big = build_zigbee_image(
            os.urandom(int(args.size_mib * (1 << 20))), manufacturer_code=0x117C, image_type=0xBEEF, file_version=9
        )
        big_entry = (await store.add_bytes(big, file_name="big.ota", source="cli")).entry
        core = UpdateCore(cfg, store, SystemClock(), auto_sweep=False)
        await core.start()
        creds = CredentialStore(cfg.data_dir)
        tokens = {n: creds.create(n, "catalog-read")[1] for n in ("z2m", "zha")}
        publisher = Publisher(cfg, store, core)
        svc = ApiServices(core=core, store=store, config=cfg, token=cfg.api.token or "", credentials=creds)
        app = create_app(svc)
        attach(app, publisher, creds)
        runner, url = await serve(app)
        try:
            async with aiohttp.ClientSession() as s:
                for name in ("z2m", "zha"):
                    idx = f"{url}/publish/{name}/{tokens[name]}/index.json"
                    times = []
                    for _ in range(6):
                        t = time.perf_counter()
                        async with s.get(idx) as r:
                            body = await r.json()
                        times.append(time.perf_counter() - t)
                    n = len(body) if isinstance(body, list) else len(body["firmwares"])
                    print(
                        f"index {name:4s}: {n} images, cold {times[0] * 1000:.0f} ms, "
                        f"warm median {statistics.median(times[1:]) * 1000:.0f} ms"
                    )
            img_url = f"{url}/publish/z2m/{tokens['z2m']}/images/{big_entry.sha256}/big.ota"
            wall, first, total = await download_all([img_url], args.clients, args.rounds)
            mib = total / (1 << 20)
            print(
                f"otagw publish: {args.clients} clients x {args.rounds} x {args.size_mib:g} MiB: {mib / wall:.0f} MiB/s, "
                f"first byte p50 {pct(first, 50) * 1000:.1f} ms p99 {pct(first, 99) * 1000:.1f} ms"
            )
            peer = web.Application()
            blob = store.blobs.path_for(big_entry.sha256)

            async def plain(request: web.Request) -> web.FileResponse:
                return web.FileResponse(blob)

            peer.router.add_get("/big.ota", plain)
            prunner, purl = await serve(peer)
            try:
                pwall, pfirst, ptotal = await download_all([f"{purl}/big.ota"], args.clients, args.rounds)
            finally:
                await prunner.cleanup()
            pmib = ptotal / (1 << 20)
            print(
                f"peer aiohttp FileResponse: {pmib / pwall:.0f} MiB/s, first byte p50 {pct(pfirst, 50) * 1000:.1f} ms "
                f"p99 {pct(pfirst, 99) * 1000:.1f} ms"
            )
            print(f"ratio otagw/peer throughput: {(mib / wall) / (pmib / pwall):.2f}")
        finally:
            await runner.cleanup()
            await core.stop()
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
