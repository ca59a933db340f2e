"""Rollout-engine leadership on a real PostgreSQL server: one leader, failover after its lease, fencing."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import asyncpg

from gateway.config import StoreConfig
from gateway.core.pg_repository import PostgresRecordsRepository
from gateway.fleet.db import connect_pool, migrate_fleet
from gateway.fleet.leader import LeaderLease
from tests.fleet.test_repository_contract import T0, rollout, step


async def _expire(pool: asyncpg.Pool) -> None:
    """The leader stops renewing (killed, or stalled) and its lease runs out - moved into the past, no sleep."""
    await pool.execute("UPDATE fleet_leases SET lease_until = clock_timestamp() - interval '1 second'")


async def test_one_leader_among_racing_campaigns_then_failover(pg_dsn: str) -> None:
    cfg = StoreConfig(backend="postgres", dsn=pg_dsn, tls_mode="disable")
    pools = [await connect_pool(cfg, max_size=2) for _ in range(3)]
    try:
        await migrate_fleet(pools[0])
        leases = [LeaderLease(p, f"gw{i}", lease_s=30) for i, p in enumerate(pools)]
        for _ in range(5):  # repeated rounds: the holder renews, nobody else gets in
            won = await asyncio.gather(*(lease.campaign() for lease in leases))
            assert sum(f is not None for f in won) == 1
        leader = next(lease for lease in leases if lease.fence is not None)
        assert leader.fence is not None and leader.fence.epoch == 1  # renewals keep the epoch
        await _expire(pools[0])
        won = await asyncio.gather(*(lease.campaign() for lease in leases))
        winners = [f for f in won if f is not None]
        assert len(winners) == 1 and winners[0].epoch == 2
        new_leader = next(lease for lease in leases if lease.fence is not None)
        assert await new_leader.current() == (new_leader.holder, 2, True)
        await new_leader.resign()
        assert (await leases[0].campaign()) is not None
        assert leases[0].fence is not None and leases[0].fence.epoch == 3
    finally:
        for p in pools:
            await p.close()


async def test_deposed_leader_cannot_advance_a_wave(pg_dsn: str) -> None:
    cfg = StoreConfig(backend="postgres", dsn=pg_dsn, tls_mode="disable")
    old_repo, new_repo = PostgresRecordsRepository(cfg), PostgresRecordsRepository(cfg)
    await old_repo.open()
    await new_repo.open()
    pool = await connect_pool(cfg, max_size=2)
    try:
        await migrate_fleet(pool)
        await old_repo.insert_rollout(rollout(), "created", "")
        old, new = LeaderLease(pool, "gwOld", 30), LeaderLease(pool, "gwNew", 30)
        f_old = await old.campaign()
        assert f_old is not None and await new.campaign() is None
        old_repo.fence = (f_old.name, f_old.holder, f_old.epoch)
        assert await old_repo.update_rollout_if(step(0, 1, T0 + 1))
        await _expire(pool)  # old leader stalls past its lease
        f_new = await new.campaign()
        assert f_new is not None
        new_repo.fence = (f_new.name, f_new.holder, f_new.epoch)
        # the stalled leader wakes up and tries the step it had computed: fenced out, even though (status, wave)
        # still match
        assert not await old_repo.update_rollout_if(step(1, 2, T0 + 2))
        assert await new_repo.update_rollout_if(step(1, 2, T0 + 3))
        # even re-winning the lease later does not let the old epoch write
        await _expire(pool)
        f_again = await old.campaign()
        assert f_again is not None and f_again.epoch == 3
        assert not await old_repo.update_rollout_if(replace(step(2, 3, T0 + 4)))
        events = await new_repo.rollout_events("r1")
        assert [e["wave"] for e in events] == [0, 1, 2]
    finally:
        await pool.close()
        await old_repo.close()
        await new_repo.close()
