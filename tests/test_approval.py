"""Approval (issue 18): nothing is offered until approved; approve/revoke through the store, CLI and API; rollouts
approve for their devices and withdraw on abort; auto_approve is opt-in and never reaches upstream-source images."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from store_helpers import matter_image, zigbee_image

from gateway.api.app import ApiServices, create_app
from gateway.cli import main
from gateway.clock import ManualClock
from gateway.config import parse_config
from gateway.core.interface import Available, NotAvailable
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore
from tests.core.conftest import matter_dev, zigbee_dev

TOKEN = "t" * 32


async def _stack(tmp_path: Path, **policy: Any) -> tuple[ImageStore, UpdateCore, ManualClock]:
    cfg = parse_config({"data_dir": str(tmp_path), "policy": policy})
    clock = ManualClock(1_700_000_000.0)
    store = ImageStore(tmp_path, clock=clock)
    await store.open()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    return store, core, clock


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[ImageStore, UpdateCore, ManualClock]]:
    store, core, clock = await _stack(tmp_path)
    yield store, core, clock
    await core.stop()
    await store.close()


async def test_default_is_explicit_approval(stack: tuple[ImageStore, UpdateCore, ManualClock]) -> None:
    store, core, _ = stack
    assert core.config.policy.auto_approve is False
    added = (await store.add_bytes(matter_image(version=2), file_name="m2.ota", source="cli")).entry
    assert added.approval == "available"
    await core.catalog_changed()
    res = await core.query(matter_dev(1, version=1))
    assert isinstance(res, NotAvailable)
    assert res.reason.startswith("update 1.0.2 (2) available (added via cli), not approved")
    assert f"otagw image approve {added.image_id}" in res.reason
    plan = {p.device_id: p for p in core.plan()}
    assert plan[matter_dev(1).key.device_id].outcome == "none"

    approved = await store.approve(added.image_id)
    assert (approved.approval, approved.approved_for, approved.approved_by) == ("approved", None, "cli")
    await core.catalog_changed()
    assert isinstance(await core.query(matter_dev(1, version=1)), Available)

    await store.revoke(added.image_id)
    await core.catalog_changed()
    assert isinstance(await core.query(matter_dev(2, version=1)), NotAvailable)


async def test_approval_for_a_device_filter(stack: tuple[ImageStore, UpdateCore, ManualClock]) -> None:
    store, core, _ = stack
    e = (await store.add_bytes(zigbee_image(version=0x200), file_name="z.ota")).entry
    lab, other = zigbee_dev(1, version=0x100, model="LAB-BULB"), zigbee_dev(2, version=0x100, model="BULB")
    approved = await store.approve(e.image_id, selector={"model": ["LAB*"]})
    assert json.loads(approved.approved_for or "") == {"model": ["LAB*"]}
    await core.catalog_changed()
    assert isinstance(await core.query(lab), Available)
    res = await core.query(other)
    assert isinstance(res, NotAvailable) and "not approved" in res.reason


async def test_auto_approve_opt_in_never_covers_upstream_images(tmp_path: Path) -> None:
    store, core, _ = await _stack(tmp_path, auto_approve=True)
    try:
        local = (await store.add_bytes(matter_image(version=2), file_name="m.ota", source="cli")).entry
        upstream = (
            await store.add_bytes(matter_image(pid=0x8002, version=2), file_name="u.ota", source="source:dcl")
        ).entry
        await core.catalog_changed()
        assert isinstance(await core.query(matter_dev(1)), Available)  # local image: auto-approved
        res = await core.query(matter_dev(2, product=0x8002))
        assert isinstance(res, NotAvailable)
        assert "available from source dcl, not approved" in res.reason
        await store.approve(upstream.image_id)
        await core.catalog_changed()
        assert isinstance(await core.query(matter_dev(3, product=0x8002)), Available)
        assert local.approval == "available"  # auto-approve is policy, not a stored state
    finally:
        await core.stop()
        await store.close()


async def test_pin_counts_as_approval(tmp_path: Path) -> None:
    store, core, _ = await _stack(tmp_path, rules=[{"name": "pin", "pin_version": 2}])
    try:
        await store.add_bytes(matter_image(version=2), file_name="m.ota")
        await core.catalog_changed()
        assert isinstance(await core.query(matter_dev(1)), Available)
    finally:
        await core.stop()
        await store.close()


async def test_rollout_approves_for_its_devices_and_abort_withdraws(
    stack: tuple[ImageStore, UpdateCore, ManualClock],
) -> None:
    store, core, _ = stack
    e = (await store.add_bytes(matter_image(version=2), file_name="m.ota")).entry
    await core.catalog_changed()
    config = core.config
    app = create_app(ApiServices(core=core, store=store, config=config, token=TOKEN, progress_interval=0))
    client = TestClient(TestServer(app))
    await client.start_server()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        resp = await client.post(
            "/api/v1/rollouts",
            json={"image": e.image_id, "waves": ["100%"], "selector": {"tags": ["lab"]}},
            headers=auth,
        )
        assert resp.status == 201, await resp.text()
        rollout_id = (await resp.json())["rollout_id"]
        got = await store.get(e.image_id)
        assert got.approval == "approved" and got.approved_by == f"rollout {rollout_id}"
        assert json.loads(got.approved_for or "") == {"tags": ["lab"]}
        resp = await client.post(f"/api/v1/rollouts/{rollout_id}/abort", headers=auth)
        assert resp.status == 200
        assert (await store.get(e.image_id)).approval == "available"
        # a person's approval is never narrowed or withdrawn by a rollout
        resp = await client.post(f"/api/v1/images/{e.image_id}/approve", json={}, headers=auth)
        assert resp.status == 200 and (await resp.json())["approval"] == "approved"
        resp = await client.post(
            "/api/v1/rollouts",
            json={"image": e.image_id, "waves": ["1"], "selector": {"tags": ["x"]}},
            headers=auth,
        )
        rid2 = (await resp.json())["rollout_id"]
        await client.post(f"/api/v1/rollouts/{rid2}/abort", headers=auth)
        got = await store.get(e.image_id)
        assert (got.approval, got.approved_for, got.approved_by) == ("approved", None, "api")
        resp = await client.post(f"/api/v1/images/{e.image_id}/revoke", headers=auth)
        assert resp.status == 200 and (await resp.json())["approval"] == "available"
        resp = await client.post(
            f"/api/v1/images/{e.image_id}/approve", json={"selector": {"model": ["X*"]}}, headers=auth
        )
        assert json.loads((await resp.json())["approved_for"]) == {"model": ["X*"]}
        resp = await client.post("/api/v1/images/ffffffffffffffff/approve", json={}, headers=auth)
        assert resp.status == 404
    finally:
        await client.close()


def test_cli_add_says_reach_and_approve_command(tmp_path: Path) -> None:
    cfg = tmp_path / "otagw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n")

    async def seed() -> None:  # a fleet of two matching devices and one other, as a gateway would record
        store, core, _ = await _stack(tmp_path / "data")
        try:
            await core.observe(matter_dev(1, version=1))
            await core.observe(matter_dev(2, version=1))
            await core.observe(matter_dev(3, version=1, product=0x9999))
        finally:
            await core.stop()
            await store.close()

    asyncio.run(seed())
    f = tmp_path / "m.ota"
    f.write_bytes(matter_image(version=5))
    runner = CliRunner()
    out = runner.invoke(main, ["-c", str(cfg), "image", "add", str(f)])
    assert out.exit_code == 0, out.output
    line = next(ln for ln in out.output.splitlines() if "not approved" in ln)
    image_id = line.split(":")[0]
    assert line == (
        f"{image_id}: available, not approved; would reach 2 devices now. "
        f"Approve with: otagw image approve {image_id}"
    )
    out = runner.invoke(main, ["-c", str(cfg), "image", "list"])
    assert "APPROVAL" in out.output and "available" in out.output
    out = runner.invoke(
        main, ["-c", str(cfg), "image", "approve", image_id, "--devices", "*0000000000000001*"]
    )
    assert out.exit_code == 0, out.output
    assert (
        "approved for devices=['*0000000000000001*']" in out.output
        and "applies to 1 device now" in out.output
    )
    out = runner.invoke(main, ["-c", str(cfg), "image", "revoke", image_id])
    assert out.exit_code == 0 and "available, not approved" in out.output
    out = runner.invoke(main, ["-c", str(cfg), "image", "approve", "nothex"])
    assert out.exit_code == 2 and "expected an image id" in out.output
