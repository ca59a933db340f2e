"""Per-gateway database roles on a real PostgreSQL server: a gateway sees and writes only its site's devices,
cannot create or retarget rollouts, cannot change budgets, and still does its job (records, rollout progress,
fleet membership and budget slots)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import asyncpg
import pytest

from gateway.config import StoreConfig
from gateway.core.pg_repository import PostgresRecordsRepository
from gateway.core.records import HistoryEntry
from gateway.fleet.budget import FleetBudget, FleetMember, SlotRequest
from gateway.fleet.db import connect_pool, migrate_fleet
from gateway.fleet.roles import install_row_security, provision_gateway
from tests.fleet.test_repository_contract import T0, full_record, rollout, step


@dataclass
class Site:
    dsn: str
    repo: PostgresRecordsRepository


def _with_user(dsn: str, user: str, password: str) -> str:
    rest = dsn.split("@", 1)[1]
    return f"postgresql://{user}:{password}@{rest}"


@pytest.fixture
async def sites(pg_dsn: str) -> AsyncIterator[dict[str, Site]]:
    admin_cfg = StoreConfig(backend="postgres", dsn=pg_dsn, tls_mode="disable")
    admin = PostgresRecordsRepository(admin_cfg)
    await admin.open()
    await migrate_fleet(admin.pool)
    await admin.insert_rollout(rollout(), "created", "by operator")
    async with admin.pool.acquire() as conn:
        await install_row_security(conn)
        await install_row_security(conn)  # idempotent
        out: dict[str, Site] = {}
        for gw, site in (("gw-n", "north"), ("gw-s", "south")):
            role = await provision_gateway(conn, gw, site, f"pw-{gw}")
            dsn = _with_user(pg_dsn, role, f"pw-{gw}")
            repo = PostgresRecordsRepository(
                StoreConfig(backend="postgres", dsn=dsn, tls_mode="disable"), gw, site
            )
            await repo.open()  # schema is current: no DDL attempted with the gateway's role
            out[site] = Site(dsn, repo)
    yield out
    for s in out.values():
        await s.repo.close()
    await admin.close()


async def test_a_gateway_sees_and_writes_only_its_site(sites: dict[str, Site]) -> None:
    north, south = sites["north"].repo, sites["south"].repo
    n_rec, s_rec = full_record(1), replace(full_record(2), token=b"s" * 16)
    await north.write(
        devices=[n_rec], history=[HistoryEntry(n_rec.device_id, T0, None, "idle", "n", None, None, None)]
    )
    await south.write(
        devices=[s_rec], history=[HistoryEntry(s_rec.device_id, T0, None, "idle", "s", None, None, None)]
    )
    assert await north.load_devices() == [n_rec]
    assert await north.get_device(s_rec.device_id) is None  # by id, bypassing the owner filter: RLS hides it
    assert await north.history(s_rec.device_id) == []
    conn = await asyncpg.connect(sites["north"].dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM devices") == 1
        assert await conn.fetchval("SELECT count(*) FROM history") == 1
        # writing a row for another site, or taking over another site's device, is refused by the database
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
            await conn.execute("UPDATE devices SET site = 'south'")
        forged = PostgresRecordsRepository(
            north.cfg, "gw-n", "south"
        )  # a compromised gateway lying about its site
        await forged.open()
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await forged.write(devices=[replace(full_record(3), token=b"f" * 16)])
            with pytest.raises(asyncpg.PostgresError):
                await forged.write(devices=[replace(s_rec, last_error="stolen")])
        finally:
            await forged.close()
        assert await conn.execute("DELETE FROM devices WHERE site = 'south'") == "DELETE 0"
    finally:
        await conn.close()
    got = await south.get_device(s_rec.device_id)
    assert got == s_rec


async def test_a_gateway_cannot_change_the_catalog_of_rollouts_or_budgets(sites: dict[str, Site]) -> None:
    north = sites["north"].repo
    # the rollout engine's progress is allowed (any gateway may be the elected engine)
    assert await north.update_rollout_if(step(0, 1, T0 + 1))
    conn = await asyncpg.connect(sites["north"].dsn)
    try:
        for stmt in (
            "UPDATE rollouts SET image_id = 'evil'",
            "UPDATE rollouts SET waves = '[\"100%\"]'",
            "INSERT INTO fleet_budgets (scope, max_slots) VALUES ('global', 1000)",
            "UPDATE fleet_budgets SET max_slots = 1000",
            "UPDATE fleet_roles SET site = 'south'",
            "DROP TABLE devices",
            "CREATE TABLE x (a int)",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(stmt)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await north.insert_rollout(rollout("r2"), "created", "not an operator")
    finally:
        await conn.close()


async def test_fleet_membership_and_budgets_work_under_gateway_roles(
    sites: dict[str, Site], pg_dsn: str
) -> None:
    admin = await connect_pool(StoreConfig(backend="postgres", dsn=pg_dsn, tls_mode="disable"), max_size=1)
    await FleetBudget(admin, "", "").set_limits({"global": 1})
    pools = {s: await connect_pool(StoreConfig(backend="postgres", dsn=v.dsn, tls_mode="disable"), max_size=2)
             for s, v in sites.items()}  # fmt: skip
    try:
        n, s = (
            FleetMember(pools["north"], "gw-n", "north", "1", 30),
            FleetMember(pools["south"], "gw-s", "south", "1", 30),
        )
        await n.register()
        await s.register()
        bn, bs = FleetBudget(pools["north"], "gw-n", "north"), FleetBudget(pools["south"], "gw-s", "south")
        assert (await bn.acquire(SlotRequest("d1", "zigbee", "pan:1")))[0]
        assert await bs.acquire(SlotRequest("d2", "zigbee", "pan:1")) == (
            False,
            "fleet budget global is full",
        )
        await bs.release("d1")  # not its slot: RLS makes this a no-op
        assert (await bn.used())["global"] == 1
        # a gateway cannot register as another gateway or in another site
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await FleetMember(pools["north"], "gw-s", "south", "1", 30).register()
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await bs.set_limits({"global": 100})
        assert await n.heartbeat() and await s.heartbeat()
        await n.leave()
        assert (await bs.acquire(SlotRequest("d2", "zigbee", "pan:1")))[0]
    finally:
        for p in pools.values():
            await p.close()
        await admin.close()
