"""The records repository contract, run against both backends: SQLite (state.db) and a real PostgreSQL server.

Every behaviour the core relies on - round-tripping every record field, group-committed concurrent writes,
history order and limits, pruning, rollout insert/load and the compare-and-set step that two writers cannot both
win - must be the same on both engines.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import fields, replace
from pathlib import Path

import asyncpg
import pytest

from gateway.config import PolicySelector, StoreConfig, parse_config
from gateway.core.pg_repository import PostgresRecordsRepository
from gateway.core.records import DeviceRecord, HistoryEntry, StateDBError
from gateway.core.repository import (
    RecordsRepository,
    RolloutChange,
    SQLiteRecordsRepository,
    make_repository,
)
from gateway.core.rollouts import Rollout, RolloutStatus, parse_waves
from gateway.core.schema import MIGRATIONS, SCHEMA_VERSION, render
from gateway.core.states import DeviceState
from tests.fleet.conftest import create_database, drop_database
from tests.fleet.pgcluster import PgCluster

T0 = 1_700_000_000.0


@pytest.fixture(params=["sqlite", "postgres"])
async def repo(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[RecordsRepository]:
    r: RecordsRepository
    cluster: PgCluster | None = None
    if request.param == "sqlite":
        r = SQLiteRecordsRepository(tmp_path / "state.db")
    else:
        cluster = request.getfixturevalue("pg_cluster")
        dsn = await create_database(cluster)
        r = PostgresRecordsRepository(StoreConfig(backend="postgres", dsn=dsn, tls_mode="disable"))
    await r.open()
    yield r
    await r.close()
    if cluster is not None:
        await drop_database(cluster, dsn)


def full_record(i: int = 0) -> DeviceRecord:
    """A record with every field set to a non-default value (so a dropped column shows)."""
    return DeviceRecord(
        device_id=f"zigbee:pan:1a2b:00124b00{i:08x}:1",
        protocol="zigbee",
        network="pan:1a2b",
        address=f"00124b00{i:08x}",
        endpoint=1,
        first_seen=T0,
        last_seen=T0 + 5.25,
        state=DeviceState.DOWNLOADING,
        state_since=T0 + 1.5,
        state_reason="offered",
        resume_state=DeviceState.WAITING_TO_APPLY,
        vendor_id=0x117C,
        product_id=0x0104,
        vendor_name="IKEA",
        model="TRADFRI bulb",
        hardware_version=1,
        current_version=0xFFFF_FFF0,  # 32-bit unsigned file versions overflow a 32-bit signed INTEGER
        current_version_string="2.3.093",
        sleepy=False,
        tags=("kitchen", "canary"),
        extra={"manufacturer_code": 4476, "nested": {"a": [1, 2]}},
        target_image_id="abcd" * 4,
        target_version=0xFFFF_FFF1,
        target_version_string="2.3.094",
        target_size=5 << 30,  # > 2 GiB: byte counts are 64-bit on both engines
        token=bytes(range(16)),
        token_issued_at=T0 + 2.0,
        bytes_sent=(5 << 30) + 1,
        acked_offset=4096,
        last_progress_at=T0 + 3.0,
        apply_at=T0 + 4.0,
        verify_deadline=T0 + 600.0,
        rollout_id="r1",
        rollout_wave=2,
        rollout_failures=1,
        attempts=3,
        failures=1,
        next_retry_at=T0 + 60.0,
        last_error="timeout",
        reported_status="downloading",
        reported_percent=42,
        last_query=T0 + 5.0,
        present=False,
    )


def rollout(rollout_id: str = "r1") -> Rollout:
    return Rollout(
        rollout_id=rollout_id,
        name="spring",
        image_id="abcd" * 4,
        image_sha256="ef" * 32,
        protocol="zigbee",
        vendor_id=0x117C,
        product_id=0x0104,
        numeric_version=0xFFFF_FFF1,
        version_string="2.3.094",
        selector=PolicySelector(protocol="zigbee"),
        waves=parse_waves(["1", "10%", "100%"]),
        soak_s=3600.0,
        max_failures=3,
        max_failure_rate=0.1,
        wave_deadline_s=None,
        status=RolloutStatus.ACTIVE,
        status_reason="",
        current_wave=0,
        wave_opened_at=T0,
        wave_completed_at=None,
        created_at=T0,
        updated_at=T0,
    )


def step(expect_wave: int, to_wave: int, at: float) -> RolloutChange:
    return RolloutChange(
        rollout_id="r1",
        expect_status=RolloutStatus.ACTIVE,
        expect_wave=expect_wave,
        status=RolloutStatus.ACTIVE,
        status_reason="",
        current_wave=to_wave,
        wave_opened_at=at,
        wave_completed_at=None,
        at=at,
        event="wave_opened",
        event_reason=f"wave {to_wave}",
    )


async def test_every_record_field_round_trips(repo: RecordsRepository) -> None:
    rec = full_record()
    await repo.write(devices=[rec])
    got = await repo.get_device(rec.device_id)
    assert got is not None
    for f in fields(DeviceRecord):
        assert getattr(got, f.name) == getattr(rec, f.name), f.name
    # an upsert replaces every column, including back to NULL/defaults
    blank = DeviceRecord(rec.device_id, "zigbee", "pan:1a2b", rec.address, 1, T0, T0)
    await repo.write(devices=[blank])
    assert await repo.load_devices() == [blank]
    assert await repo.get_device("nope") is None


async def test_concurrent_writes_are_all_committed(repo: RecordsRepository) -> None:
    recs = [replace(full_record(i), token=bytes([i]) * 16) for i in range(200)]
    hist = [HistoryEntry(r.device_id, T0 + i, "idle", "querying", "query", None, None, None) for i, r in
            enumerate(recs)]  # fmt: skip
    await asyncio.gather(*(repo.write(devices=[r], history=[h]) for r, h in zip(recs, hist, strict=True)))
    loaded = {r.device_id: r for r in await repo.load_devices()}
    assert loaded == {r.device_id: r for r in recs}
    assert await repo.history(recs[7].device_id) == [hist[7]]


async def test_duplicate_token_is_refused_and_nothing_of_the_batch_lands(repo: RecordsRepository) -> None:
    a = full_record(1)
    await repo.write(devices=[a])
    b = replace(full_record(2), token=a.token)
    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        await repo.write(
            devices=[b], history=[HistoryEntry(b.device_id, T0, None, "idle", "seen", None, None, None)]
        )
    assert await repo.get_device(b.device_id) is None
    assert await repo.history(b.device_id) == []


async def test_history_order_limit_and_prune(repo: RecordsRepository) -> None:
    dev = "matter:fab:1:2:0"
    entries = [
        HistoryEntry(dev, T0 + i, "idle" if i else None, "querying", f"step {i}", "img", 7, i * 100)
        for i in range(6)
    ]
    for e in entries:
        await repo.write(history=[e])
    await repo.write(history=[HistoryEntry("other", T0, None, "idle", "x", None, None, None)])
    assert await repo.history(dev) == entries
    assert await repo.history(dev, limit=2) == entries[-2:]
    await repo.prune_history(T0 + 3)
    assert await repo.history(dev) == entries[3:]
    assert await repo.history("other") == []


async def test_rollout_round_trip_and_compare_and_set(repo: RecordsRepository) -> None:
    r = rollout()
    dv0 = await repo.data_version()
    await repo.insert_rollout(r, "created", "by test")
    (loaded,) = await repo.load_rollouts()
    assert (loaded.rollout_id, loaded.selector, loaded.waves, loaded.numeric_version) == (
        r.rollout_id,
        r.selector,
        r.waves,
        r.numeric_version,
    )
    assert loaded.status is RolloutStatus.ACTIVE and loaded.max_failure_rate == 0.1
    # the same step attempted by many writers at once: exactly one wins
    results = await asyncio.gather(*(repo.update_rollout_if(step(0, 1, T0 + 10 + i)) for i in range(20)))
    assert sum(results) == 1
    assert not await repo.update_rollout_if(step(0, 1, T0 + 99))  # stale expectation
    assert await repo.update_rollout_if(step(1, 2, T0 + 100))
    (loaded,) = await repo.load_rollouts()
    assert loaded.current_wave == 2 and loaded.wave_opened_at == T0 + 100
    events = await repo.rollout_events("r1")
    assert [(e["event"], e["wave"]) for e in events] == [
        ("created", 0),
        ("wave_opened", 1),
        ("wave_opened", 2),
    ]
    # operator command: status only, conditional on status; resuming clears the thresholds
    halt = RolloutChange("r1", RolloutStatus.ACTIVE, None, RolloutStatus.HALTED, "too many failures", 2,
                         None, None, T0 + 200, "halted", "auto")  # fmt: skip
    assert await repo.update_rollout_if(halt)
    resume = RolloutChange("r1", RolloutStatus.HALTED, None, RolloutStatus.ACTIVE, "", 2, T0 + 300, None,
                           T0 + 300, "resumed", "operator", clear_thresholds=True)  # fmt: skip
    assert await repo.update_rollout_if(resume)
    assert not await repo.update_rollout_if(resume)
    (loaded,) = await repo.load_rollouts()
    assert loaded.status is RolloutStatus.ACTIVE and loaded.max_failures is None and loaded.current_wave == 2
    assert await repo.data_version() != dv0 or isinstance(repo, SQLiteRecordsRepository)


async def test_reopen_keeps_everything_and_does_not_migrate_twice(repo: RecordsRepository) -> None:
    rec = full_record()
    await repo.write(devices=[rec])
    await repo.close()
    await repo.open()
    assert await repo.load_devices() == [rec]


async def test_two_repositories_on_one_postgres_migrate_once_and_share(pg_dsn: str) -> None:
    cfg = StoreConfig(backend="postgres", dsn=pg_dsn, tls_mode="disable")
    a, b = PostgresRecordsRepository(cfg), PostgresRecordsRepository(cfg)
    await asyncio.gather(a.open(), b.open())  # racing migrators: the advisory lock serialises them
    try:
        assert await a.schema_version() == SCHEMA_VERSION == await b.schema_version()
        await a.write(devices=[full_record()])
        assert await b.load_devices() == [full_record()]
        dv = await b.data_version()
        await a.insert_rollout(rollout(), "created", "")
        assert await b.data_version() != dv  # the other gateway sees the rollout change
    finally:
        await a.close()
        await b.close()


async def test_newer_schema_is_refused(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute(
        "CREATE TABLE otagw_schema (version BIGINT NOT NULL); INSERT INTO otagw_schema VALUES (999)"
    )
    await conn.close()
    repo = PostgresRecordsRepository(StoreConfig(backend="postgres", dsn=pg_dsn, tls_mode="disable"))
    with pytest.raises(StateDBError, match="schema version 999 is newer"):
        await repo.open()


async def test_unreachable_server_is_a_precise_error_without_the_password() -> None:
    cfg = StoreConfig(backend="postgres", dsn="postgresql://gw:s3cret@127.0.0.1:1/otagw", tls_mode="disable",
                      connect_timeout_s=2)  # fmt: skip
    with pytest.raises(StateDBError) as info:
        await PostgresRecordsRepository(cfg).open()
    assert "postgresql://gw@127.0.0.1:1/otagw: cannot open device state database" in str(info.value)
    assert "s3cret" not in str(info.value)


def test_one_migration_list_renders_for_both_dialects() -> None:
    for _, stmts in MIGRATIONS:
        for stmt in stmts:
            lite, pg = render(stmt, "sqlite"), render(stmt, "postgres")
            assert "{" not in lite.replace("'{}'", "") and "{" not in pg.replace("'{}'", "")
    lite_all = " ".join(render(s, "sqlite") for _, ss in MIGRATIONS for s in ss)
    pg_all = " ".join(render(s, "postgres") for _, ss in MIGRATIONS for s in ss)
    assert "BIGINT" not in lite_all and "AUTOINCREMENT" in lite_all
    assert " REAL" not in pg_all and "BYTEA" in pg_all


def test_store_config_selects_the_backend(tmp_path: Path) -> None:
    assert isinstance(make_repository(parse_config({"data_dir": str(tmp_path)})), SQLiteRecordsRepository)
    cfg = parse_config(
        {"data_dir": str(tmp_path), "store": {"backend": "postgres", "dsn": "postgresql://a@b/c"}}
    )
    assert isinstance(make_repository(cfg), PostgresRecordsRepository)
