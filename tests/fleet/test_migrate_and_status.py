"""`otagw store migrate --to postgres` (lossless, verified, refuses a non-empty target) and `otagw fleet status`
showing real gateways started on a PostgreSQL store (alive while heartbeating, gone after leaving)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import yaml
from click.testing import CliRunner, Result

from gateway.cli import main as cli_main
from gateway.clock import ManualClock
from gateway.config import StoreConfig, load_config
from gateway.core.pg_repository import PostgresRecordsRepository
from gateway.core.records import HistoryEntry
from gateway.core.repository import SQLiteRecordsRepository
from gateway.fleet.migrate import _canonical
from gateway.service import Gateway
from tests.fleet.test_repository_contract import T0, full_record, rollout, step


def _write_config(tmp_path: Path, name: str, **extra: object) -> Path:
    data = {"data_dir": f"data-{name}", "api": {"enabled": False}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def _cli(*args: str) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, cli_main, list(args))


async def test_migrate_sqlite_to_postgres_is_lossless_and_verified(tmp_path: Path, pg_dsn: str) -> None:
    cfg_path = _write_config(tmp_path, "a")
    lite = SQLiteRecordsRepository(tmp_path / "data-a" / "state.db")
    await lite.open()
    recs = [
        replace(full_record(i), token=i.to_bytes(16, "big"), extra={"i": i, "utf8": "ü€"})
        for i in range(2500)
    ]
    hist = [
        HistoryEntry(r.device_id, T0 + i / 3, None, "idle", "seen", None, None, None)
        for i, r in enumerate(recs)
    ]
    await lite.write(devices=recs, history=hist)
    await lite.prune_history(T0 + 10)  # ids with gaps: they must be kept, not renumbered
    await lite.insert_rollout(rollout(), "created", "")
    assert await lite.update_rollout_if(step(0, 1, T0 + 5))
    want_devices = await lite.load_devices()
    want_hist = await lite.history(recs[-1].device_id)
    want_events = await lite.rollout_events("r1")
    await lite.close()

    res = await _cli("-c", str(cfg_path), "store", "migrate", "--to", "postgres", "--dsn", pg_dsn)
    assert res.exit_code == 0, res.output
    assert "devices: 2500 rows copied" in res.output and "history: 2470 rows copied" in res.output

    pg = PostgresRecordsRepository(StoreConfig(backend="postgres", dsn=pg_dsn, tls_mode="disable"))
    await pg.open()
    try:
        assert sorted(await pg.load_devices(), key=lambda r: r.device_id) == sorted(
            want_devices, key=lambda r: r.device_id
        )
        assert await pg.history(recs[-1].device_id) == want_hist
        assert await pg.rollout_events("r1") == want_events
        # the identity sequences continue after the copied ids: the gateway can keep writing
        assert await pg.update_rollout_if(step(1, 2, T0 + 6))
        await pg.write(history=[HistoryEntry("x", T0, None, "idle", "after", None, None, None)])
        assert len(await pg.history("x")) == 1
    finally:
        await pg.close()

    # a second migration into the now non-empty database is refused, naming the table, and changes nothing
    res = await _cli("-c", str(cfg_path), "store", "migrate", "--to", "postgres", "--dsn", pg_dsn)
    assert res.exit_code == 2
    assert "table devices already holds 2500 rows; migrate into an empty database" in res.output
    assert "otagw-test-password" not in res.output


async def test_migrate_errors_are_one_line(tmp_path: Path, pg_dsn: str) -> None:
    cfg_path = _write_config(tmp_path, "none")
    res = await _cli("-c", str(cfg_path), "store", "migrate", "--to", "postgres", "--dsn", pg_dsn)
    assert res.exit_code == 2 and "no device state database to migrate" in res.output
    res = await _cli("-c", str(cfg_path), "store", "migrate", "--to", "postgres")
    assert res.exit_code == 2 and "give --dsn or set store.dsn" in res.output
    res = await _cli("-c", str(cfg_path), "store", "migrate", "--to", "postgres", "--dsn", "mysql://x")
    assert res.exit_code == 2 and "--dsn" in res.output and "postgresql://" in res.output


def test_verification_digest_tells_types_apart() -> None:
    values = [None, 1, 1.0, "1", b"1", True, 0.1 + 0.2, 0.3]
    assert (
        len({_canonical(v) for v in values}) == len(values) - 1
    )  # only True == 1 (SQLite stores bools as 1)


async def test_fleet_status_shows_gateways_started_on_postgres(tmp_path: Path, pg_dsn: str) -> None:
    store = {"backend": "postgres", "dsn": pg_dsn, "tls_mode": "disable"}
    gws = []
    for name, site in (("gw-a", "north"), ("gw-b", "south")):
        cfg = load_config(_write_config(tmp_path, name, store=store, gateway={"id": name, "site": site}))
        gw = Gateway(cfg, plugins=(), clock=ManualClock())
        await gw.start()
        gws.append(gw)
    cfg_path = _write_config(tmp_path, "cli", store=store)
    try:
        res = await _cli("-c", str(cfg_path), "fleet", "status", "--json")
        assert res.exit_code == 0, res.output
        status = json.loads(res.output)
        assert [(g["id"], g["site"], g["alive"], g["devices"]) for g in status["gateways"]] == [
            ("gw-a", "north", True, 0),
            ("gw-b", "south", True, 0),
        ]
        res = await _cli("-c", str(cfg_path), "fleet", "status")
        assert "gw-a" in res.output and "yes" in res.output
    finally:
        await gws[0].stop()
    res = await _cli("-c", str(cfg_path), "fleet", "status", "--json")
    alive = {g["id"]: g["alive"] for g in json.loads(res.output)["gateways"]}
    assert alive == {"gw-a": False, "gw-b": True}
    await gws[1].stop()
    res = await _cli("-c", str(_write_config(tmp_path, "lite")), "fleet", "status")
    assert res.exit_code == 2 and "store.backend is 'sqlite'; the fleet needs 'postgres'" in res.output


async def test_gateway_with_unreachable_database_fails_to_start_with_one_line(tmp_path: Path) -> None:
    from gateway.service import GatewayStartError

    store = {"backend": "postgres", "dsn": "postgresql://gw:pw@127.0.0.1:1/x", "tls_mode": "disable",
             "connect_timeout_s": 2}  # fmt: skip
    gw = Gateway(load_config(_write_config(tmp_path, "bad", store=store)), plugins=(), clock=ManualClock())
    try:
        await gw.start()
    except GatewayStartError as exc:
        assert "postgresql://gw@127.0.0.1:1/x: cannot open device state database" in str(exc)
        assert "pw@" not in str(exc)
    else:
        raise AssertionError("started without its database")


async def test_add_gateway_and_budget_commands(tmp_path: Path, pg_dsn: str) -> None:
    import asyncpg

    store = {"backend": "postgres", "dsn": pg_dsn, "tls_mode": "disable"}
    cfg_path = _write_config(tmp_path, "admin", store=store)
    pw_file = tmp_path / "gw-x.pw"
    res = await _cli(
        "-c", str(cfg_path), "fleet", "add-gateway", "gw-x", "--site", "east", "--password-file", str(pw_file)
    )
    assert res.exit_code == 0, res.output
    assert pw_file.stat().st_mode & 0o777 == 0o600
    conn = await asyncpg.connect(
        pg_dsn.replace("otagw:otagw-test-password", f"otagw_gw_gw-x:{pw_file.read_text().strip()}")
    )
    try:
        assert await conn.fetchval("SELECT otagw_my_site()") == "east"
    finally:
        await conn.close()
    res = await _cli(
        "-c", str(cfg_path), "fleet", "add-gateway", "gw-x", "--site", "east", "--password-file", str(pw_file)
    )
    assert res.exit_code == 2 and "File exists" in res.output  # never overwrites a secret
    res = await _cli(
        "-c",
        str(cfg_path),
        "fleet",
        "add-gateway",
        "GW X",
        "--site",
        "east",
        "--password-file",
        str(tmp_path / "p2"),
    )
    assert res.exit_code == 2 and "gateway id 'GW X'" in res.output
    res = await _cli(
        "-c", str(cfg_path), "fleet", "budget", "global=2", "site:east=1", "network:east/pan:1a2b=1"
    )
    assert res.exit_code == 0, res.output
    status = json.loads((await _cli("-c", str(cfg_path), "fleet", "status", "--json")).output)
    assert status["budgets"]["global"] == {"limit": 2, "used": 0}
    res = await _cli("-c", str(cfg_path), "fleet", "budget", "global=2", "sites:x=1")
    assert res.exit_code == 2 and "argument 2 'sites:x=1'" in res.output


async def test_fleet_api_route(tmp_path: Path, pg_dsn: str) -> None:
    import aiohttp

    token = "t" * 40
    store = {"backend": "postgres", "dsn": pg_dsn, "tls_mode": "disable"}
    api = {"enabled": True, "listen": "127.0.0.1:0", "token": token}
    cfg = load_config(
        _write_config(tmp_path, "api", store=store, api=api, gateway={"id": "gw-api", "site": "x"})
    )
    gw = Gateway(cfg, plugins=(), clock=ManualClock())
    lite = Gateway(load_config(_write_config(tmp_path, "lite-api", api=api)), plugins=(), clock=ManualClock())
    await gw.start()
    await lite.start()
    try:
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{gw.api_url}/api/v1/fleet", headers=auth) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert [(g["id"], g["site"], g["alive"]) for g in body["gateways"]] == [("gw-api", "x", True)]
            async with http.get(f"{gw.api_url}/api/v1/fleet") as resp:
                assert resp.status == 401
            async with http.get(f"{lite.api_url}/api/v1/fleet", headers=auth) as resp:
                assert resp.status == 404
                assert "not in a fleet" in (await resp.json())["error"]["message"]
    finally:
        await gw.stop()
        await lite.stop()
