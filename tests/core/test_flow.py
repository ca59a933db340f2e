"""The update flow through the neutral interface: query, transfer, apply, verification, failures, restart."""

from __future__ import annotations

import pytest

from gateway.core.interface import (
    ApplyAction,
    Available,
    Busy,
    Continue,
    NotAvailable,
    ReportedStatus,
    StatusReport,
    UnknownToken,
)
from gateway.core.states import DeviceState as S
from tests.core.conftest import CoreFactory, FakeStore, make_entry, matter_dev, zigbee_dev


async def download(core, token: bytes, size: int, block: int = 4096) -> None:
    for off in range(0, size, block):
        assert isinstance(await core.progress(token, off, min(block, size - off)), Continue)
    await core.download_complete(token)


async def test_happy_path_is_verified_and_recorded(make_core: CoreFactory) -> None:
    core = await make_core()
    dev = matter_dev(1, version=1)
    res = await core.query(dev)
    assert isinstance(res, Available), res
    assert res.image.numeric_version == 3 and len(res.token) >= 8
    assert "3.0" in res.reason
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.QUERYING and rec.target_version == 3
    reader = core.open_image(res.token)
    assert reader.size == 20_000 and len(reader.read(19_990, 100)) == 10
    await download(core, res.token, 20_000)
    assert core.get_device(dev.key.device_id).state == S.DOWNLOADED  # type: ignore[union-attr]
    dec = await core.apply_request(res.token, 3)
    assert dec.action == ApplyAction.PROCEED and dec.delay_s == 0
    assert core.get_device(dev.key.device_id).state == S.APPLYING  # type: ignore[union-attr]
    # a success *claim* is not success
    await core.status_report(dev.key, StatusReport(ReportedStatus.SUCCESSFULLY_UPDATED, 100))
    assert core.get_device(dev.key.device_id).state == S.VERIFYING  # type: ignore[union-attr]
    await core.report_version(dev.key, 3, "3.0")
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.UPDATED and rec.current_version == 3
    assert rec.bytes_sent == 20_000 and rec.acked_offset == 20_000
    hist = [(h.old_state, h.new_state) for h in await core.history(dev.key.device_id)]
    assert hist == [
        ("idle", "querying"),
        ("querying", "downloading"),
        ("downloading", "downloaded"),
        ("downloaded", "applying"),
        ("applying", "verifying"),
        ("verifying", "updated"),
    ]
    again = await core.query(matter_dev(1, version=3))
    assert isinstance(again, NotAvailable) and again.callback_interval_s == 86400
    m = core.metrics()
    assert m["updates_succeeded"] == {"matter": 1} and m["bytes_served"] == {"matter": 20_000}
    assert m["decisions"] == {"Available": 1, "NotAvailable": 1}
    with pytest.raises(UnknownToken):
        await core.progress(res.token, 0, 10)


async def test_apply_without_version_report_fails_at_deadline(make_core: CoreFactory, clock) -> None:
    core = await make_core(verify_deadline_s=600)
    dev = matter_dev(1)
    res = await core.query(dev)
    assert isinstance(res, Available)
    await download(core, res.token, res.image.size)
    await core.apply_request(res.token, 3)
    await clock.advance(599)
    await core.sweep()
    assert core.get_device(dev.key.device_id).state == S.APPLYING  # type: ignore[union-attr]
    await clock.advance(2)
    await core.sweep()
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.FAILED
    # never heard again after the apply: "not back" (issue 18), not a failed download
    assert "not back after update: not heard within 600 s" in (rec.last_error or "")
    assert rec.failure_kind == "not_back"


async def test_device_back_on_old_version_fails_and_is_parked(make_core: CoreFactory) -> None:
    """Issue 18: the update did not take, so the device is not offered it again until a person acts."""
    core = await make_core(retry_backoff_s=300)
    dev = matter_dev(1)
    res = await core.query(dev)
    assert isinstance(res, Available)
    await download(core, res.token, res.image.size)
    await core.apply_request(res.token, 3)
    again = await core.query(matter_dev(1, version=1))
    assert isinstance(again, NotAvailable) and "parked as failed" in again.reason
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.FAILED and "came back" in (rec.last_error or "")
    assert rec.failure_kind == "old_version" and rec.blocked_image_id == res.image.image_id


async def test_offsets_count_repeats_but_resume_only_contiguous(make_core: CoreFactory) -> None:
    core = await make_core()
    dev = zigbee_dev(1)
    core.store.add(make_entry("zigbee", 0x117C, 0x2811, 5, size=1000))  # type: ignore[attr-defined]
    await core.catalog_changed()
    res = await core.query(dev)
    assert isinstance(res, Available) and res.image.numeric_version == 5
    await core.progress(res.token, 0, 100)
    await core.progress(res.token, 200, 100)  # gap: not acknowledged contiguously
    await core.progress(res.token, 0, 100)  # repeat: over-counts bytes_sent (reference 004)
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.acked_offset == 100 and rec.bytes_sent == 300
    await core.progress(res.token, 100, 100)
    assert core.get_device(dev.key.device_id).acked_offset == 200  # type: ignore[union-attr]
    await core.progress(res.token, 150, 900)  # overlaps and runs past the end: capped at the size
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.acked_offset == 1000 and rec.percent == 100


async def test_unknown_tokens(make_core: CoreFactory) -> None:
    core = await make_core()
    with pytest.raises(UnknownToken):
        core.open_image(b"\x00" * 16)
    with pytest.raises(UnknownToken):
        await core.progress(b"\x00" * 16, 0, 1)
    dec = await core.apply_request(b"\x00" * 16, 3)
    assert dec.action == ApplyAction.DISCONTINUE
    await core.download_complete(b"\x00" * 16)  # no-op
    await core.download_failed(b"\x00" * 16, "x")


async def test_apply_version_mismatch_discontinues(make_core: CoreFactory) -> None:
    core = await make_core()
    res = await core.query(matter_dev(1))
    assert isinstance(res, Available)
    dec = await core.apply_request(res.token, 7)
    assert dec.action == ApplyAction.DISCONTINUE and "offered 3" in dec.reason


async def test_stale_transfer_expires_and_restart_resumes(make_core: CoreFactory, clock, tmp_path) -> None:
    core = await make_core(stale_transfer_s=600, progress_persist_s=0)
    dev = matter_dev(1)
    res = await core.query(dev)
    assert isinstance(res, Available)
    await core.progress(res.token, 0, 4096)
    await core.progress(res.token, 4096, 4096)
    await core.stop()
    # crash/restart: the transfer is still live and resumes from the acknowledged offset
    core2 = await make_core(stale_transfer_s=600)
    info = core2.active_transfer(dev.key)
    assert (
        info is not None
        and info.token == res.token
        and info.acked_offset == 8192
        and info.state == "downloading"
    )
    again = await core2.query(dev)
    assert isinstance(again, Available) and again.token == res.token and again.resume_offset == 8192
    assert "resuming at offset 8192" in again.reason
    assert isinstance(await core2.progress(res.token, 8192, 4096), Continue)
    await clock.advance(601)
    await core2.stop()
    core3 = await make_core(stale_transfer_s=600)  # start() sweeps: the silent transfer expired while down
    rec = core3.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.FAILED and "transfer expired" in (rec.last_error or "")
    assert core3.active_transfer(dev.key) is None
    assert core3.check_invariants() == []


async def test_download_failed_and_status_failure(make_core: CoreFactory) -> None:
    core = await make_core(retry_backoff_s=0)
    res = await core.query(matter_dev(1))
    assert isinstance(res, Available)
    await core.download_failed(res.token, "BDX timeout")
    rec = core.get_device(matter_dev(1).key.device_id)
    assert rec is not None and rec.state == S.FAILED and rec.last_error == "download failed: BDX timeout"
    res2 = await core.query(matter_dev(1))
    assert isinstance(res2, Available) and res2.token != res.token
    assert core.get_device(matter_dev(1).key.device_id).attempts == 2  # type: ignore[union-attr]
    await core.status_report(matter_dev(1).key, StatusReport(ReportedStatus.FAILED_TO_UPDATE, error="flash"))
    assert "flash" in (core.get_device(matter_dev(1).key.device_id).last_error or "")  # type: ignore[union-attr]
    assert core.metrics()["transfers_failed"] == {"matter": 2}


async def test_budgets_busy_then_granted(make_core: CoreFactory) -> None:
    core = await make_core(budgets={"global": 2})
    a, b, c = matter_dev(1), matter_dev(2), matter_dev(3)
    ra, rb = await core.query(a), await core.query(b)
    assert isinstance(ra, Available) and isinstance(rb, Available)
    rc = await core.query(c)
    assert (
        isinstance(rc, Busy) and rc.retry_after_s == 120 and "global transfer budget full (2/2" in rc.reason
    )
    assert core.get_device(c.key.device_id).state == S.UPDATE_AVAILABLE  # type: ignore[union-attr]
    assert c.key in core.devices_to_notify()
    await download(core, ra.token, ra.image.size)  # frees a slot
    rc = await core.query(c)
    assert isinstance(rc, Available)
    assert core.metrics()["transfers_active"] == {"matter": 2}


async def test_per_network_budget_and_routers_first(make_core: CoreFactory) -> None:
    core = await make_core(budgets={"global": 10, "per_network_default": 1})
    core.store.add(make_entry("zigbee", 0x117C, 0x2811, 5, size=1000))  # type: ignore[attr-defined]
    await core.catalog_changed()
    first = await core.query(zigbee_dev(1))
    assert isinstance(first, Available)
    other_pan = await core.query(zigbee_dev(9, pan="pan:ffff"))
    assert isinstance(other_pan, Available)
    router = await core.query(zigbee_dev(2, sleepy=False))
    assert isinstance(router, Busy) and "network pan:1a2b" in router.reason
    await download(core, first.token, 1000)
    # a sleepy end device asking first must not jump the router waiting for the same network
    sleepy = await core.query(zigbee_dev(3, sleepy=True))
    assert isinstance(sleepy, Busy) and "waits for the network pan:1a2b budget first" in sleepy.reason
    assert sleepy.retry_after_s == 240
    assert isinstance(await core.query(zigbee_dev(2, sleepy=False)), Available)


async def test_progress_waits_when_slot_lost_after_budget_reload(make_core: CoreFactory, tmp_path) -> None:
    core = await make_core(budgets={"global": 2})
    ra = await core.query(matter_dev(1))
    assert isinstance(ra, Available)
    from tests.core.conftest import config

    over = core.reload_policy(config(tmp_path, budgets={"global": 1}))
    assert over == []
    rb = await core.query(matter_dev(2))
    assert isinstance(rb, Busy)


async def test_device_left_cancels(make_core: CoreFactory) -> None:
    core = await make_core()
    res = await core.query(matter_dev(1))
    assert isinstance(res, Available)
    await core.device_left(matter_dev(1).key)
    rec = core.get_device(matter_dev(1).key.device_id)
    assert rec is not None and rec.state == S.CANCELLED and not rec.present
    with pytest.raises(UnknownToken):
        await core.progress(res.token, 0, 1)
    assert core.check_invariants() == []


async def test_report_version_on_unknown_device_creates_record(make_core: CoreFactory) -> None:
    core = await make_core()
    await core.report_version(matter_dev(5).key, 9, "9.0")
    rec = core.get_device(matter_dev(5).key.device_id)
    assert rec is not None and rec.current_version == 9 and rec.state == S.IDLE


async def test_installed_package_ids_give_the_version(make_core: CoreFactory, store: FakeStore) -> None:
    core = await make_core()
    v2 = next(e for e in store.entries.values() if e.numeric_version == 2)
    from gateway.core.interface import DeviceInfo

    dev = DeviceInfo(matter_dev(1).key, vendor_id=0xFFF1, product_id=0x8001)
    res = await core.query(dev, installed=[v2.package_id])
    assert isinstance(res, Available) and res.image.numeric_version == 3
    assert core.get_device(dev.key.device_id).current_version == 2  # type: ignore[union-attr]
    unknown = await core.query(DeviceInfo(matter_dev(2).key, vendor_id=0xFFF1, product_id=0x8001))
    assert isinstance(unknown, NotAvailable) and "current version" in unknown.reason
