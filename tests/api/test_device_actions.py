"""The owner's device actions over HTTP against the real core: rename (PATCH), pin / exclude (the policy applies them
at once), update one device now (a single-device rollout, or 409 saying why the policy refuses), retry a failed
device, Zigbee manufacturer names, admin-only access; `otagw devices rename` from another process reaching a
running core; and the schema step that adds the override columns to an existing state.db."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from click.testing import CliRunner

from gateway.api.auth import CREDENTIALS_KEY
from gateway.api.credentials import CredentialStore
from gateway.cli import main
from gateway.core.interface import Available, DeviceInfo, DeviceKey
from gateway.core.repository import MIGRATIONS, SQLiteRecordsRepository
from gateway.core.schema import SCHEMA_VERSION, render
from gateway.core.service import UpdateCore
from gateway.core.states import DeviceState
from tests.api.conftest import TOKEN, ApiHarness, zigbee_image

OCTET = {"Content-Type": "application/octet-stream"}
KEY = DeviceKey("zigbee", "pan:1a2b", "00:11:22:33:44:55:66:01", 1)
DEV = KEY.device_id
PATH = "/api/v1/devices/" + DEV


async def setup(h: ApiHarness, version: int = 0x200) -> dict:
    img = (
        await h.call(
            "POST",
            "/api/v1/images?file_name=fw.zigbee",
            201,
            data=zigbee_image(version=version),
            headers=OCTET,
        )
    )["image"]
    # 0x1135: dresden elektronik in the shipped manufacturer table; the device reports no ManufacturerName
    await h.core.observe(
        DeviceInfo(KEY, vendor_id=0x1135, product_id=1, current_version=0x100, model="FLS-PP3")
    )
    return img


async def test_rename_names_and_manufacturer(harness: ApiHarness) -> None:
    h = harness
    await setup(h)
    d = await h.call("GET", PATH, 200)
    assert d["name"] is None and d["manufacturer_name"] == "dresden elektronik"
    assert d["display_name"] == "dresden elektronik FLS-PP3"
    d = await h.call("PATCH", PATH, 200, json={"name": "  Kitchen lamp "})
    assert d["name"] == "Kitchen lamp" and d["display_name"] == "Kitchen lamp"
    assert (await h.call("GET", "/api/v1/devices", 200))[0]["display_name"] == "Kitchen lamp"
    # stored on the record: a fresh core over the same state.db reads it back
    repo = SQLiteRecordsRepository(h.config.data_dir / "state.db")
    await repo.open()
    try:
        stored = await repo.get_device(DEV)
        assert stored is not None and stored.name == "Kitchen lamp"
    finally:
        await repo.close()
    d = await h.call("PATCH", PATH, 200, json={"name": ""})
    assert d["name"] is None and d["display_name"] == "dresden elektronik FLS-PP3"
    err = await h.call("PATCH", PATH, 422, json={"name": "x" * 65})
    assert err["error"]["field"] == "name"
    err = await h.call("PATCH", PATH, 422, json={"name": "bad\nname"})
    assert err["error"]["field"] == "name"
    err = await h.call("PATCH", "/api/v1/devices/zigbee:pan:1a2b:00:00:00:00:00:00:00:09:1", 404, json={})
    assert err["error"]["field"] == "device_id"


async def test_update_now_through_policy(harness: ApiHarness) -> None:
    h = harness
    img = await setup(h)
    # excluded: the policy refuses, and the answer says why
    await h.call("PATCH", PATH, 200, json={"excluded": True})
    err = await h.call("POST", PATH + "/update", 409, json={})
    assert err["error"]["code"] == "policy_refuses" and "excluded" in err["error"]["message"]
    assert h.core.list_rollouts() == []
    # pinned to another version: refused, naming the pin
    d = await h.call("PATCH", PATH, 200, json={"excluded": False, "pinned_version": "0x100"})
    assert d["pinned_version"] == "0x100" and d["excluded"] is False
    err = await h.call("POST", PATH + "/update", 409, json={})
    assert "pinned" in err["error"]["message"]
    # the pin also holds the device back from what it asks for itself
    answer = await h.core.query(DeviceInfo(KEY, vendor_id=0x1135, product_id=1, current_version=0x100))
    assert not isinstance(answer, Available)
    await h.call("PATCH", PATH, 200, json={"pinned_version": None})
    # allowed: a single-device rollout of the newest applicable image, one wave, no soak
    r = await h.call("POST", PATH + "/update", 201, json={})
    assert r["image_id"] == img["image_id"] and r["selector"]["devices"] == [DEV]
    assert [w["spec"] for w in r["waves"]] == ["100%"] and r["soak_s"] == 0 and r["waves"][0]["members"] == 1
    assert h.core.get_device(DEV).state == DeviceState.UPDATE_AVAILABLE
    # busy now: a second "update now" says so
    answer = await h.core.query(DeviceInfo(KEY, vendor_id=0x1135, product_id=1, current_version=0x100))
    assert isinstance(answer, Available)
    err = await h.call("POST", PATH + "/update", 409, json={})
    assert "busy" in err["error"]["message"]
    # a named image that does not fit the device
    other = (
        await h.call(
            "POST",
            "/api/v1/images?file_name=o.zigbee",
            201,
            data=zigbee_image(version=0x300, manufacturer=0x117C),
            headers=OCTET,
        )
    )["image"]
    await h.core.download_failed(answer.token, "test: transfer aborted")
    err = await h.call("POST", PATH + "/update", 409, json={"image": other["image_id"]})
    assert "manufacturer" in err["error"]["message"]


async def test_retry_failed_device(harness: ApiHarness) -> None:
    h = harness
    await setup(h)
    err = await h.call("POST", PATH + "/retry", 409)
    assert err["error"]["code"] == "cannot_retry" and "not failed" in err["error"]["message"]
    answer = await h.core.query(DeviceInfo(KEY, vendor_id=0x1135, product_id=1, current_version=0x100))
    assert isinstance(answer, Available)
    await h.core.download_failed(answer.token, "radio lost the device")
    d = await h.call("GET", PATH, 200)
    assert (
        d["state"] == "failed"
        and d["last_error"] == "download failed: radio lost the device"
        and d["next_retry_at"] is not None
    )
    d = await h.call("POST", PATH + "/retry", 200)
    assert d["state"] == "update_available" and d["next_retry_at"] is None
    answer = await h.core.query(DeviceInfo(KEY, vendor_id=0x1135, product_id=1, current_version=0x100))
    assert isinstance(answer, Available)  # no back-off wait


async def test_device_actions_are_admin_only(harness: ApiHarness) -> None:
    h = harness
    await setup(h)
    store: CredentialStore = h.app[CREDENTIALS_KEY]
    _, secret = store.create("lamp", "query,status,download", DEV)
    for method, path, body in (
        ("PATCH", PATH, {"name": "x"}),
        ("POST", PATH + "/update", {}),
        ("POST", PATH + "/retry", None),
    ):
        await h.call(method, path, 401, auth=False, json=body)
        err = await h.call(method, path, 403, headers={"Authorization": f"Bearer {secret}"}, json=body)
        assert err["error"]["code"] in ("forbidden", "insufficient_scope")
    assert h.core.get_device(DEV).name is None and h.core.list_rollouts() == []


async def test_cli_rename_reaches_running_core(harness: ApiHarness, tmp_path: Path) -> None:
    h = harness
    await setup(h)
    cfg = tmp_path / "otagw.yaml"
    cfg.write_text(f"data_dir: {h.config.data_dir}\napi:\n  token: {TOKEN}\n")
    out = await asyncio.to_thread(
        CliRunner().invoke, main, ["--config", str(cfg), "devices", "rename", "66:01", "Hall light"]
    )
    assert out.exit_code == 0, out.output
    assert "named 'Hall light'" in out.output
    await h.core.sweep()  # the running gateway merges what another process committed
    d = await h.call("GET", PATH, 200)
    assert d["name"] == "Hall light" and d["display_name"] == "Hall light"
    out = await asyncio.to_thread(
        CliRunner().invoke, main, ["--config", str(cfg), "devices", "rename", "nope", "x"]
    )
    assert out.exit_code != 0 and "no device matching" in out.output


async def test_schema_step_adds_override_columns(tmp_path: Path) -> None:
    """A state.db written before the override columns existed is upgraded in place, rows kept."""
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    version, stmts = MIGRATIONS[0]
    assert version == 1
    for s in stmts:
        conn.execute(render(s, "sqlite"))
    conn.execute(
        "INSERT INTO devices (device_id, protocol, network, address, endpoint, state, state_since, first_seen,"
        " last_seen) VALUES (?, 'zigbee', 'pan:1a2b', '00:11:22:33:44:55:66:01', 1, 'idle', 0, 0, 0)",
        (DEV,),
    )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    repo = SQLiteRecordsRepository(db)
    await repo.open()
    try:
        rec = await repo.get_device(DEV)
        assert rec is not None and rec.name is None and rec.pinned_version is None and rec.excluded is False
        assert await repo.set_overrides(DEV, {"name": "Porch", "excluded": True})
        rec = await repo.get_device(DEV)
        assert rec is not None and rec.name == "Porch" and rec.excluded is True
    finally:
        await repo.close()
    # every later step runs too (4: update-safety columns)
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


async def test_core_rejects_unknown_override(harness: ApiHarness) -> None:
    core: UpdateCore = harness.core
    await setup(harness)
    try:
        await core.set_overrides(DEV, token=b"x")
    except ValueError as exc:
        assert "not an override column" in str(exc)
    else:
        raise AssertionError("an unknown override was accepted")


async def test_matter_names_from_basic_information(harness: ApiHarness) -> None:
    """Matter: NodeLabel (kept by the adapter in `extra`) names the device; VendorName / ProductName otherwise."""
    h = harness
    labelled = DeviceKey("matter", "fabric:2906c908d115d362", "000000000000ABCD", 0)
    plain = DeviceKey("matter", "fabric:2906c908d115d362", "000000000000ABCE", 0)
    await h.core.observe(
        DeviceInfo(
            labelled,
            vendor_id=0xFFF1,
            product_id=0x8000,
            current_version=1,
            current_version_string="1.0",
            vendor_name="Acme",
            model="Dimmer",
            extra={"node_label": "Porch light"},
        )
    )
    await h.core.observe(
        DeviceInfo(
            plain, vendor_id=0xFFF1, product_id=0x8000, current_version=1, vendor_name="Acme", model="Dimmer"
        )
    )
    d = await h.call("GET", "/api/v1/devices/" + labelled.device_id, 200)
    assert d["display_name"] == "Porch light" and d["manufacturer_name"] == "Acme"
    d = await h.call("GET", "/api/v1/devices/" + plain.device_id, 200)
    assert d["display_name"] == "Acme Dimmer"
    # the owner's name wins over the node's label
    d = await h.call("PATCH", "/api/v1/devices/" + labelled.device_id, 200, json={"name": "Front door"})
    assert d["display_name"] == "Front door"
