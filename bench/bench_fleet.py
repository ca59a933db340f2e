"""Benchmark of the fleet store: the update core's decisions on PostgreSQL vs SQLite, and N gateways sharing
fleet budgets on one PostgreSQL primary.

    python bench/bench_fleet.py [--devices 2000] [--images 200] [--gateways 20] [--fleet-devices 4000]
                                [--global-budget 16]

1) Same load on both backends: an `UpdateCore` over a real ImageStore with `--images` images, `--devices`
   endpoints, one rollout; sequential `query` (each decision committed before it returns: p50/p99, decisions/s)
   and 64 concurrent callers (group commit). PostgreSQL is a local cluster started by the bench (Debian's
   server, unprivileged, fsync on, synchronous_commit off - the durability of SQLite's WAL + synchronous=NORMAL
   that state.db uses); the ratio PG/SQLite is printed.
2) `--gateways` simulated gateways (asyncio tasks, each with its own connection pool of 2, its own records
   repository and its own fleet membership) drive `--fleet-devices` devices through a global budget of
   `--global-budget` slots (plus 4 per site), `--per-gateway` devices at once per gateway: each device acquires
   a slot (asking again 5 ms after a Busy while the fleet is full),
   writes 4 progress updates of its record, writes its final record and releases. Prints total time,
   slot acquisitions/s, record writes/s, the peak number of slots held at once (must be <= the budget), and the
   PostgreSQL server's CPU seconds per second of wall time.

The machine decides the numbers (this project's CI box has 2 cores shared with other work).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_core import devices as bench_devices
from bench.bench_core import fill_store, pct
from gateway.clock import SystemClock
from gateway.config import Config, StoreConfig, parse_config
from gateway.core.pg_repository import PostgresRecordsRepository
from gateway.core.records import DeviceRecord
from gateway.core.service import UpdateCore
from gateway.core.states import DeviceState
from gateway.fleet.budget import FleetBudget, FleetMember, SlotRequest
from gateway.fleet.db import connect_pool, migrate_fleet
from gateway.store.store import ImageStore
from tests.fleet.pgcluster import PgCluster, running_cluster


async def create_db(cluster: PgCluster, name: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(cluster.dsn())
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    return cluster.dsn(database=name)


async def decisions(cfg: Config, store: ImageStore, n_dev: int, label: str) -> tuple[float, float, float]:
    entries = await store.list()
    core = UpdateCore(cfg, store, SystemClock(), auto_sweep=False)
    await core.start()
    target = next(
        e for e in entries if e.protocol == "matter" and e.product_id == 0x8000 and e.numeric_version == 6
    )
    await core.create_rollout(target.image_id, waves=["1", "10%", "100%"])
    devs = bench_devices(n_dev)
    t = time.perf_counter()
    for d in devs:
        await core.observe(d)
    observe_rate = n_dev / (time.perf_counter() - t)
    lat: list[float] = []
    for d in devs:
        t0 = time.perf_counter()
        await core.query(d)
        lat.append(time.perf_counter() - t0)
    seq_rate = n_dev / sum(lat)
    sem = asyncio.Semaphore(64)
    lat2: list[float] = []

    async def one(d: object) -> None:
        async with sem:
            t0 = time.perf_counter()
            await core.query(d)  # type: ignore[arg-type]
            lat2.append(time.perf_counter() - t0)

    t = time.perf_counter()
    await asyncio.gather(*(one(d) for d in devs))
    conc_rate = n_dev / (time.perf_counter() - t)
    await core.stop()
    print(
        f"{label:>10}: observe {observe_rate:,.0f}/s; query sequential p50 {statistics.median(lat) * 1e3:.2f} ms "
        f"p99 {pct(lat, 0.99) * 1e3:.2f} ms = {seq_rate:,.0f} decisions/s; 64 concurrent {conc_rate:,.0f} "
        f"decisions/s (p99 {pct(lat2, 0.99) * 1e3:.1f} ms incl. queueing)"
    )
    return seq_rate, conc_rate, pct(lat, 0.99)


async def fleet(cluster: PgCluster, n_gw: int, n_dev: int, budget: int, per_gateway: int) -> None:
    dsn = await create_db(cluster, "fleet")
    cfg = StoreConfig(backend="postgres", dsn=dsn, tls_mode="disable", pool_size=2)
    admin = await connect_pool(cfg, max_size=2)
    await migrate_fleet(admin)
    sites = max(1, n_gw // 5)
    limits = {"global": budget, **{f"site:s{i}": 4 for i in range(sites)}}
    await FleetBudget(admin, "", "").set_limits(limits)
    gws = []
    for g in range(n_gw):
        site = f"s{g % sites}"
        repo = PostgresRecordsRepository(cfg)
        await repo.open()
        pool = await connect_pool(cfg, max_size=2)
        member = FleetMember(pool, f"gw{g}", site, "bench", lease_s=60)
        await member.register()
        gws.append((repo, pool, FleetBudget(pool, f"gw{g}", site)))
    held = 0
    peak = 0
    acquisitions = 0
    busy = 0
    writes = 0

    async def gateway(g: int) -> None:
        nonlocal held, peak, acquisitions, busy, writes
        repo, _, b = gws[g]
        mine = [
            DeviceRecord(f"gw{g}:zigbee:{i:06d}", "zigbee", f"pan:{g:04x}", f"{i:016x}", 1, 0.0, 0.0)
            for i in range(g, n_dev, n_gw)
        ]
        pending = list(mine)

        async def device_worker() -> None:
            nonlocal held, peak, acquisitions, busy, writes
            while pending:
                rec = pending.pop(0)
                await one_device(rec)

        async def one_device(rec: DeviceRecord) -> None:
            nonlocal held, peak, acquisitions, busy, writes
            while True:
                ok, _why = await b.acquire(SlotRequest(rec.device_id, rec.protocol, rec.network))
                if ok:
                    break
                busy += 1
                await asyncio.sleep(0.005)  # a real gateway answers Busy/Wait; the device asks again later
            acquisitions += 1
            held += 1
            peak = max(peak, held)
            for off in range(4):
                progress = replace(rec, state=DeviceState.DOWNLOADING, acked_offset=off * 4096)
                await repo.write(devices=[progress])
                writes += 1
            held -= 1
            await b.release(rec.device_id)
            await repo.write(devices=[replace(rec, state=DeviceState.UPDATED)])
            writes += 1

        await asyncio.gather(*(device_worker() for _ in range(per_gateway)))

    cpu0 = cluster.server_cpu_s()
    t = time.perf_counter()
    await asyncio.gather(*(gateway(g) for g in range(n_gw)))
    dt = time.perf_counter() - t
    cpu = cluster.server_cpu_s() - cpu0
    print(
        f"fleet: {n_gw} gateways ({sites} sites), {n_dev} devices, global budget {budget}: {dt:.1f} s total; "
        f"{acquisitions / dt:,.0f} slot grants/s ({busy} busy answers), {writes / dt:,.0f} record writes/s; "
        f"peak slots held {peak} (budget {budget}: {'OK' if peak <= budget else 'EXCEEDED'}); "
        f"PostgreSQL CPU {cpu:.1f} s = {cpu / dt:.2f} cores"
    )
    updated = await admin.fetchval("SELECT count(*) FROM devices WHERE state = 'updated'")
    print(f"fleet: {updated}/{n_dev} devices recorded updated")
    for repo, pool, _ in gws:
        await repo.close()
        await pool.close()
    await admin.close()


async def compare_decisions(cluster: PgCluster, a: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = ImageStore(Path(tmp) / "images")
        await store.open()
        await fill_store(store, a.images)
        lite_cfg = parse_config({"data_dir": str(Path(tmp) / "lite")})
        pg_dsn = await create_db(cluster, "decisions")
        pg_cfg = parse_config(
            {
                "data_dir": str(Path(tmp) / "pg"),
                "store": {"backend": "postgres", "dsn": pg_dsn, "tls_mode": "disable"},
            }
        )
        s_seq, s_conc, s_p99 = await decisions(lite_cfg, store, a.devices, "SQLite")
        p_seq, p_conc, p_p99 = await decisions(pg_cfg, store, a.devices, "PostgreSQL")
        print(
            f"ratio PostgreSQL/SQLite: sequential {p_seq / s_seq:.2f}x decisions/s, "
            f"concurrent {p_conc / s_conc:.2f}x, p99 latency {p_p99 / s_p99:.2f}x"
        )
        await store.close()


async def main(a: argparse.Namespace) -> None:
    gen = running_cluster(durable=True)
    cluster = next(gen)
    try:
        if not a.skip_decisions:
            await compare_decisions(cluster, a)
        await fleet(cluster, a.gateways, a.fleet_devices, a.global_budget, a.per_gateway)
    finally:
        for _ in gen:
            pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=2000)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--gateways", type=int, default=20)
    ap.add_argument("--fleet-devices", type=int, default=4000)
    ap.add_argument("--global-budget", type=int, default=16)
    ap.add_argument("--per-gateway", type=int, default=4, help="devices each gateway transfers to at once")
    ap.add_argument("--skip-decisions", action="store_true", help="only the fleet part")
    asyncio.run(main(ap.parse_args()))
