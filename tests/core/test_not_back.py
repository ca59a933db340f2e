"""Update safety through the core's own interface (issue 18 "a device that does not come back", issue 11 small
things): not heard after an apply within a per-vendor deadline, back on the old version, attempts capped and the
device parked until a person acts, the last query answer recorded, bytes downloaded of a finished transfer."""

from __future__ import annotations

from gateway.core.interface import ApplyAction, Available, Continue, DeviceInfo, NotAvailable
from gateway.core.rollouts import RolloutStatus
from gateway.core.service import UpdateCore
from gateway.core.states import DeviceState as S
from tests.core.conftest import CoreFactory, matter_dev


async def applied(core: UpdateCore, dev: DeviceInfo) -> Available:
    """Query, download everything and get told to install now."""
    res = await core.query(dev)
    assert isinstance(res, Available), res
    size = res.image.size
    for off in range(0, size, 4096):
        assert isinstance(await core.progress(res.token, off, min(4096, size - off)), Continue)
    await core.download_complete(res.token)
    dec = await core.apply_request(res.token, res.image.numeric_version)
    assert dec.action == ApplyAction.PROCEED
    return res


async def test_not_heard_after_apply_is_not_back(make_core: CoreFactory, clock) -> None:
    core = await make_core(verify_deadline_s=600)
    seen = []
    core.events.add_listener(seen.append)
    dev = matter_dev(1)
    await applied(core, dev)
    await clock.advance(599)
    await core.sweep()
    assert core.get_device(dev.key.device_id).state == S.APPLYING  # type: ignore[union-attr]
    await clock.advance(1)
    await core.sweep()
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.FAILED and rec.failure_kind == "not_back"
    assert rec.state_reason.startswith("not back after update: not heard within 600 s")
    assert "deadline 2023-11-14T22:23:20+00:00" in rec.state_reason  # the time it was given up on
    assert core.metrics()["updates_not_back"] == {"matter": 1}
    assert any(e.kind == "state" and e.new == "failed" and "not back" in e.reason for e in seen)
    # a failed download is a different kind
    other = matter_dev(2)
    res = await core.query(other)
    assert isinstance(res, Available)
    await core.download_failed(res.token, "CRC error")
    assert core.get_device(other.key.device_id).failure_kind == "download"  # type: ignore[union-attr]


async def test_per_vendor_deadline_from_policy_rules(make_core: CoreFactory, clock) -> None:
    core = await make_core(
        verify_deadline_s=600,
        rules=[{"name": "slow-vendor", "match": {"vendor_id": [0xFFF2]}, "verify_deadline_s": 3600}],
    )
    fast, slow = matter_dev(1), matter_dev(2, vendor=0xFFF2)
    core.store.add(  # the same image for the slow vendor's product
        __import__("tests.core.conftest", fromlist=["make_entry"]).make_entry(vendor=0xFFF2, version=3)
    )
    await core.catalog_changed()
    await applied(core, fast)
    await applied(core, slow)
    await clock.advance(601)
    await core.sweep()
    assert core.get_device(fast.key.device_id).state == S.FAILED  # type: ignore[union-attr]
    assert core.get_device(slow.key.device_id).state == S.APPLYING  # type: ignore[union-attr]
    await clock.advance(3000)
    await core.sweep()
    rec = core.get_device(slow.key.device_id)
    assert rec is not None and rec.state == S.FAILED and "within 3600 s" in rec.state_reason


async def test_back_on_old_version_fails_and_is_parked_until_retry(make_core: CoreFactory, clock) -> None:
    core = await make_core(verify_deadline_s=600)
    for e in [e for e in core.store.entries.values() if e.numeric_version == 2]:
        del core.store.entries[e.image_id]  # only the image that did not take: nothing else to fall back to
    await core.catalog_changed()
    dev = matter_dev(1)
    res = await applied(core, dev)
    await clock.advance(120)
    await core.observe(matter_dev(1, version=1))  # heard again (e.g. the read-back), still on version 1
    await clock.advance(600)
    await core.sweep()
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.FAILED and rec.failure_kind == "old_version"
    assert "came back on its old version" in rec.state_reason
    assert rec.blocked_image_id == res.image.image_id
    # not offered the same image again, even after the back-off; the reason says what to do
    await clock.advance(86400)
    again = await core.query(dev)
    assert isinstance(again, NotAvailable) and "parked as failed" in again.reason
    assert f"otagw devices retry {dev.key.device_id}" in again.reason
    plan = {p.device_id: p for p in core.plan()}
    assert "parked" in plan[dev.key.device_id].reason
    assert core.metrics()["devices_parked"] == {"matter": 1}
    # a person acts
    await core.retry_device(dev.key.device_id)
    assert isinstance(await core.query(dev), Available)


async def test_asking_again_on_the_old_version_after_apply_parks_at_once(make_core: CoreFactory, clock) -> None:
    core = await make_core()
    dev = matter_dev(1)
    await applied(core, dev)
    await clock.advance(30)
    res = await core.query(dev)  # came back asking with version 1
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.failure_kind == "old_version" and rec.blocked_image_id is not None
    assert isinstance(res, NotAvailable) and "did not take" in res.reason


async def test_attempts_are_capped_then_parked(make_core: CoreFactory, clock) -> None:
    core = await make_core(max_attempts=3, retry_backoff_s=60)
    seen = []
    core.events.add_listener(seen.append)
    dev = matter_dev(1)
    for attempt in range(1, 4):
        res = await core.query(dev)
        assert isinstance(res, Available), (attempt, res)
        await core.download_failed(res.token, f"radio noise {attempt}")
        await clock.advance(86400)  # past any back-off
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.failures == 3 and rec.blocked_image_id is not None
    assert "3 failed attempts (policy.max_attempts 3)" in (rec.blocked_reason or "")
    res = await core.query(dev)
    assert isinstance(res, NotAvailable) and "parked" in res.reason
    assert [e.kind for e in seen].count("attention") == 1
    # a new image acts: it is offered
    from tests.core.conftest import make_entry

    core.store.add(make_entry(version=4, added_at=clock.now()))
    await core.catalog_changed()
    res = await core.query(dev)
    assert isinstance(res, Available) and res.image.numeric_version == 4


async def test_cli_retry_in_another_process_reaches_the_gateway(make_core: CoreFactory, clock, tmp_path) -> None:
    gw = await make_core(max_attempts=1)
    dev = matter_dev(1)
    res = await gw.query(dev)
    assert isinstance(res, Available)
    await gw.download_failed(res.token, "boom")
    cli = await make_core(role="client", max_attempts=1)
    assert cli.get_device(dev.key.device_id).blocked_image_id is not None  # type: ignore[union-attr]
    await cli.retry_device(dev.key.device_id, by="cli")
    await clock.advance(86400)
    await gw.sweep()  # notices the other process's commit
    rec = gw.get_device(dev.key.device_id)
    assert rec is not None and rec.blocked_image_id is None and rec.failures == 0
    assert isinstance(await gw.query(dev), Available)


async def test_rollout_halts_on_not_back_failures(make_core: CoreFactory, clock) -> None:
    core = await make_core(verify_deadline_s=600)
    for i in range(4):
        await core.observe(matter_dev(i))
    v3 = next(e for e in core.store.entries.values() if e.numeric_version == 3)
    r = await core.create_rollout(v3.image_id, waves=["100%"], soak_s=0, max_failures=1)
    for i in range(2):
        await applied(core, matter_dev(i))
    await clock.advance(601)
    await core.sweep()
    r = core.get_rollout(r.rollout_id)
    assert r is not None and r.status == RolloutStatus.HALTED, r
    assert "exceeding max_failures 1" in r.status_reason


async def test_last_answer_and_bytes_downloaded_are_recorded(make_core: CoreFactory, clock) -> None:
    core = await make_core()
    up_to_date = matter_dev(1, version=3)
    res = await core.query(up_to_date)
    assert isinstance(res, NotAvailable)
    rec = core.get_device(up_to_date.key.device_id)
    assert rec is not None and rec.state == S.IDLE
    assert rec.last_answer == "NotAvailable" and rec.last_answer_reason == res.reason and res.reason
    dev = matter_dev(2)
    await applied(core, dev)
    await core.report_version(dev.key, 3, "3.0")
    d = core.get_device(dev.key.device_id).to_dict()  # type: ignore[union-attr]
    assert d["state"] == "updated" and d["bytes_downloaded"] == 20_000 and d["percent"] == 100
    assert d["last_answer"] == "Available"
    assert core.get_device(up_to_date.key.device_id).to_dict()["bytes_downloaded"] is None  # type: ignore[union-attr]


async def test_low_battery_is_deferred_then_offered_once_it_recovers(make_core: CoreFactory) -> None:
    core = await make_core(rules=[{"name": "sensors", "match": {"tags": ["strict"]}, "min_battery_percent": 50}])
    low = matter_dev(1, power_source="battery", battery_percent=12)
    res = await core.query(low)
    assert res.__class__.__name__ == "Busy"
    assert "deferred: battery at 12 % is below the minimum 30 % (policy defaults" in res.reason
    plan = {p.device_id: p for p in core.plan()}
    assert plan[low.key.device_id].outcome == "later" and "battery at 12 %" in plan[low.key.device_id].reason
    rec = core.get_device(low.key.device_id)
    assert rec is not None and rec.battery_percent == 12 and rec.power_source == "battery"
    assert rec.last_answer == "Busy" and "battery" in (rec.last_answer_reason or "")
    # mains devices have no minimum, whatever an old battery reading says; unknown charge is not guessed
    assert isinstance(await core.query(matter_dev(2, power_source="mains", battery_percent=5)), Available)
    assert isinstance(await core.query(matter_dev(3, power_source="battery")), Available)
    # a rule raises the minimum for some devices
    strict = matter_dev(4, power_source="battery", battery_percent=40, tags=("strict",))
    res = await core.query(strict)
    assert "below the minimum 50 % (rules sensors" in res.reason
    # recovered: offered at the next query
    assert isinstance(await core.query(matter_dev(1, power_source="battery", battery_percent=80)), Available)


async def test_state_db_from_before_the_safety_columns_migrates(tmp_path) -> None:
    """The safety columns' migration step adds only nullable columns: a version-1 database loads with them empty."""
    import sqlite3

    from gateway.core.repository import MIGRATIONS, SQLiteRecordsRepository
    from gateway.core.schema import render

    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    for stmt in MIGRATIONS[0][1]:
        conn.execute(render(stmt, "sqlite"))
    conn.execute(
        "INSERT INTO devices (device_id, protocol, network, address, endpoint, state, state_since, first_seen,"
        " last_seen) VALUES ('matter:fabric:aa:01:0', 'matter', 'fabric:aa', '01', 0, 'failed', 1, 1, 1)"
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    repo = SQLiteRecordsRepository(path)
    await repo.open()
    try:
        (rec,) = await repo.load_devices()
        assert rec.state == S.FAILED and rec.failure_kind is None and rec.blocked_image_id is None
        assert rec.power_source is None and rec.battery_percent is None and rec.last_answer is None
        rec.blocked_image_id, rec.battery_percent = "abc", 55
        await repo.write([rec], [])
        assert await repo.parked_devices() == {rec.device_id}
        assert await repo.lift_block(rec.device_id)
        (again,) = await repo.load_devices()
        assert again.blocked_image_id is None and again.battery_percent == 55
    finally:
        await repo.close()
