"""Core defects from issue 10 / 11, each reproduced on the real image store or through the core's own calls:
a corrupt blob must invalidate its image and end its offers; NotifyUpdateApplied's token must be checked; budget
slots restored after a restart must respect the limits (12 downloads under a budget of 10)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.clock import ManualClock
from gateway.core.events import CoreEvent
from gateway.core.interface import Available, Continue, NotAvailable, ReportedStatus, UnknownToken, Wait
from gateway.core.service import UpdateCore
from gateway.core.states import DeviceState as S
from gateway.formats import build_matter_image
from gateway.store.store import ImageStore
from tests.core.conftest import CoreFactory, FakeStore, config, make_entry, matter_dev


def _matter_file(version: int) -> bytes:
    body = bytes((i * 131 + version) & 0xFF for i in range(4000))
    return build_matter_image(
        body,
        vendor_id=0xFFF1,
        product_id=0x8001,
        software_version=version,
        software_version_string=f"{version}.0",
    )


async def test_corrupt_blob_invalidates_image_and_ends_its_offers(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    store = ImageStore(tmp_path / "images")
    await store.open()
    core = UpdateCore(config(tmp_path), store, clock, auto_sweep=False)
    try:
        v2 = (await store.add_bytes(_matter_file(2), file_name="fw2.ota")).entry
        v3 = (await store.add_bytes(_matter_file(3), file_name="fw3.ota")).entry
        await core.start()
        seen: list[CoreEvent] = []
        core.events.add_listener(seen.append)
        dev = matter_dev(1)

        offer = await core.query(dev)
        assert isinstance(offer, Available) and offer.image.image_id == v3.image_id
        # the stored file rots after it was imported
        store.blobs.path_for(v3.sha256).write_bytes(b"\0" * v3.size)

        caplog.set_level(logging.INFO)
        caplog.clear()
        with pytest.raises(UnknownToken, match=f"image {v3.image_id} is corrupt"):
            core.open_image(offer.token)
        # one log line, no traceback
        mine = [r for r in caplog.records if r.name.startswith("gateway.core")]
        assert len(mine) == 1 and mine[0].levelno == logging.WARNING and mine[0].exc_info is None
        assert "corrupt" in mine[0].getMessage()
        # the offer ended at once and gave back its budget slot
        rec = core.get_device(dev.key.device_id)
        assert rec is not None and rec.state == S.CANCELLED and "corrupt" in rec.state_reason
        assert core.metrics()["transfers_active"].get("matter", 0) == 0
        assert core.metrics()["images_invalidated"] == {"matter": 1}
        assert [e.data for e in seen if e.kind == "image"] == [{"image_id": v3.image_id}]
        assert core.check_invariants() == []
        await core.sweep()  # waits for the background commit
        assert (await store.get(v3.image_id)).valid is False
        with pytest.raises(UnknownToken):
            await core.progress(offer.token, 0, 64)

        # the next query gets the next good image, and a second attempt logs nothing new
        nxt = await core.query(dev)
        assert isinstance(nxt, Available) and nxt.image.image_id == v2.image_id
        assert core.open_image(nxt.token).read(0, 4)
        assert len([r for r in caplog.records if r.name.startswith("gateway.core")]) == 1

        # the operator removes the bad image and adds a good newer one: offered at the next query, and plan says so
        await store.remove(v3.image_id)
        v4 = (await store.add_bytes(_matter_file(4), file_name="fw4.ota")).entry
        await core.catalog_changed()
        plan = {p.device_id: p for p in core.plan()}
        assert plan[dev.key.device_id].image_id in (v2.image_id, None)  # v2 transfer still in progress
        again = await core.query(dev)
        assert isinstance(again, Available) and again.image.image_id == v4.image_id
        assert core.open_image(again.token).read(0, 4)
    finally:
        await core.stop()
        await store.close()


async def test_corrupt_blob_survives_catalog_reread_before_commit(tmp_path: Path, clock: ManualClock) -> None:
    """Until the catalog row says invalid, re-reading the catalog must not make the image valid again."""
    store = ImageStore(tmp_path / "images")
    await store.open()
    core = UpdateCore(config(tmp_path), store, clock, auto_sweep=False)
    try:
        v3 = (await store.add_bytes(_matter_file(3), file_name="fw3.ota")).entry
        await core.start()
        offer = await core.query(matter_dev(1))
        assert isinstance(offer, Available)
        store.blobs.path_for(v3.sha256).unlink()
        with pytest.raises(UnknownToken, match="corrupt"):
            core.open_image(offer.token)
        await core.catalog_changed()  # may run before the background task committed valid=0
        res = await core.query(matter_dev(2))
        assert isinstance(res, NotAvailable) and "invalid" in res.reason
    finally:
        await core.stop()
        await store.close()


async def test_update_applied_requires_the_current_token(make_core: CoreFactory) -> None:
    core = await make_core()
    dev = matter_dev(1)
    offer = await core.query(dev)
    assert isinstance(offer, Available)
    await core.download_complete(offer.token)
    await core.apply_request(offer.token, offer.image.numeric_version)
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.APPLYING

    with pytest.raises(UnknownToken, match=r"not the token of device .* current offer"):
        await core.update_applied(dev.key, b"\x99" * 16)
    rec = core.get_device(dev.key.device_id)
    assert rec is not None and rec.state == S.APPLYING and "refused" in (rec.last_error or "")
    with pytest.raises(UnknownToken, match="has no record"):
        await core.update_applied(matter_dev(2).key, offer.token)
    await core.observe(matter_dev(4, version=3))  # up to date: never offered anything
    with pytest.raises(UnknownToken, match="never offered"):
        await core.update_applied(matter_dev(4).key, offer.token)

    await core.update_applied(dev.key, offer.token)
    rec = core.get_device(dev.key.device_id)
    assert (
        rec is not None
        and rec.state == S.VERIFYING
        and rec.reported_status == ReportedStatus.SUCCESSFULLY_UPDATED
    )


async def test_restart_restores_slots_within_the_budget(
    make_core: CoreFactory, store: FakeStore, tmp_path: Path
) -> None:
    """A device resumed from a paused rollout rests in a transfer state without a slot; a restart used to grant
    every stored transfer a slot, so the network ran more downloads than its budget allowed."""
    other = store.add(make_entry(product=0x8002, version=5))
    budgets = {"global": 10, "per_network_default": 1}
    core = await make_core(budgets=budgets)
    rollout = await core.create_rollout(
        make_entry(version=3, valid=True, size=20_000).image_id, waves=["100%"]
    )
    a = await core.query(matter_dev(1))
    assert isinstance(a, Available) and a.image.numeric_version == 3
    await core.pause_rollout(rollout.rollout_id)
    c = await core.query(matter_dev(3, product=0x8002))  # takes the network's only slot meanwhile
    assert isinstance(c, Available) and c.image.image_id == other.image_id
    await core.resume_rollout(rollout.rollout_id)
    assert core.check_invariants() == []
    await core.stop()

    again = await make_core(budgets=budgets)
    assert again.check_invariants() == []
    answers = [await again.progress(t, 0, 64) for t in (a.token, c.token)]
    assert sum(isinstance(x, Continue) for x in answers) == 1
    assert sum(isinstance(x, Wait) for x in answers) == 1
    assert again.check_invariants() == []
