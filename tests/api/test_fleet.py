"""Devices, plan, the reference-003 version query and status report, and IP downloads as transfers, against the
real update core."""

from __future__ import annotations

import pytest

from gateway.api.app import SERVICES_KEY
from tests.api.conftest import TOKEN, ApiHarness, zigbee_image

OCTET = {"Content-Type": "application/octet-stream"}
IEEE = "00:11:22:33:44:55:66:77"
DEVICE = {
    "protocol": "zigbee",
    "network": "pan:1a2b",
    "address": IEEE,
    "endpoint": 1,
    "vendor_id": 0x1135,
    "product_id": 1,
    "current_version": 0x100,
    "model": "FLS-PP3",
}
DEVICE_ID = f"zigbee:pan:1a2b:{IEEE}:1"
KEY = {k: DEVICE[k] for k in ("protocol", "network", "address", "endpoint")}


async def add_image(h: ApiHarness, version: int = 0x200) -> dict:
    body = await h.call(
        "POST", "/api/v1/images?file_name=fw.zigbee", 201, data=zigbee_image(version=version), headers=OCTET
    )
    return body["image"]


async def query(
    h: ApiHarness, device: dict | None = None, installed: list[str] | None = None, expect: int = 200
) -> dict:
    return await h.call(
        "POST", "/api/v1/query", expect, json={"device": device or DEVICE, "installed": installed or []}
    )


async def test_query_offers_the_manifest_and_download_counts_as_transfer(harness: ApiHarness) -> None:
    h = harness
    img = await add_image(h)
    ans = await query(h)
    assert ans["decision"] == "available"
    assert ans["callback_interval"] == h.config.policy.callback_interval_s
    [pkg] = ans["packages"]
    for key in (
        "package_id",
        "bucket",
        "file_name",
        "manifest_version",
        "name",
        "version",
        "description",
        "size",
        "license",
        "license_url",
        "copyright",
        "owner",
        "packager",
        "release_date",
        "content_type",
        "sha256",
    ):
        assert key in pkg
    assert pkg["sha256"] == img["sha256"] and pkg["size"] == img["size"]
    token = ans["token"]
    assert len(bytes.fromhex(token)) >= 8
    # complete: following it as given makes the download this device's transfer
    assert ans["download_url"] == f"/api/v1/images/{img['image_id']}/download?transfer={token}"

    dev = await h.call("GET", f"/api/v1/devices/{DEVICE_ID}", 200)
    assert dev["state"] == "querying" and dev["target_image_id"] == img["image_id"]
    assert "token" not in dev
    assert [e["new_state"] for e in dev["history"]][-1] == "querying"

    resp = await h.client.get(ans["download_url"], headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status == 200
    assert await resp.read() == zigbee_image(version=0x200)
    dev = await h.call("GET", f"/api/v1/devices/{DEVICE_ID}", 200)
    assert dev["state"] == "downloaded" and dev["percent"] == 100 and dev["bytes_sent"] == img["size"]

    # 003 status reports move the record on
    await h.call("POST", "/api/v1/status", 200, json={"device": KEY, "status": "Updating", "percent": 100})
    assert (await h.call("GET", f"/api/v1/devices/{DEVICE_ID}", 200))["state"] == "applying"
    await h.call("POST", "/api/v1/status", 200, json={"device": KEY, "status": "Successfully Updated"})
    assert (await h.call("GET", f"/api/v1/devices/{DEVICE_ID}", 200))["state"] == "verifying"
    # the device asks again with its new version: verified
    ans = await query(h, {**DEVICE, "current_version": 0x200})
    assert ans["decision"] == "not_available" and ans["packages"] == []
    dev = await h.call("GET", f"/api/v1/devices/{DEVICE_ID}", 200)
    assert dev["state"] == "updated" and dev["current_version"] == 0x200

    metrics = await h.call("GET", "/metrics", 200)
    assert 'otagw_query_decisions_total{outcome="available"} 1.0' in metrics
    assert 'otagw_query_decisions_total{outcome="not_available"} 1.0' in metrics
    assert f'otagw_bytes_served_total{{protocol="zigbee"}} {float(img["size"])}' in metrics
    assert 'otagw_transfers_active{protocol="zigbee"} 0.0' in metrics


async def test_download_with_a_dead_transfer_token_is_refused(harness: ApiHarness) -> None:
    h = harness
    img = await add_image(h)
    body = await h.call("GET", f"/api/v1/images/{img['image_id']}/download?transfer={'ab' * 16}", 409)
    assert body["error"]["field"] == "transfer"
    body = await h.call("GET", f"/api/v1/images/{img['image_id']}/download?transfer=xyz", 422)
    assert body["error"]["field"] == "transfer"


async def test_failed_status_report_and_filters(harness: ApiHarness) -> None:
    h = harness
    await add_image(h)
    await query(h)
    other = {**DEVICE, "address": "00:11:22:33:44:55:66:88", "current_version": 0x200}
    await query(h, other)
    await h.call(
        "POST",
        "/api/v1/status",
        200,
        json={"device": KEY, "status": "Failed to Update", "error": "flash write error"},
    )
    dev = await h.call("GET", f"/api/v1/devices/{DEVICE_ID}", 200)
    assert dev["state"] == "failed" and "flash write error" in dev["state_reason"]
    assert dev["reported_status"] == "Failed to Update"

    all_devs = await h.call("GET", "/api/v1/devices", 200)
    assert len(all_devs) == 2
    assert [d["device_id"] for d in await h.call("GET", "/api/v1/devices?state=failed", 200)] == [DEVICE_ID]
    both = await h.call("GET", "/api/v1/devices?state=failed&state=idle&state=updated", 200)
    assert len(both) == 2
    assert await h.call("GET", "/api/v1/devices?protocol=matter", 200) == []
    assert len(await h.call("GET", "/api/v1/devices?network=pan:*", 200)) == 2
    assert await h.call("GET", "/api/v1/devices?model=TRADFRI*", 200) == []
    assert len(await h.call("GET", f"/api/v1/devices?vendor_id={0x1135}&present=true", 200)) == 2
    body = await h.call("GET", "/api/v1/devices?state=exploded", 422)
    assert body["error"]["field"].startswith("state")
    body = await h.call("GET", "/api/v1/devices?vendor_id=abc", 422)
    assert body["error"]["field"] == "vendor_id"
    await h.call("GET", "/api/v1/devices/zigbee:nope", 404)

    assert f'otagw_device_failures{{device_id="{DEVICE_ID}"}} 1.0' in await h.call("GET", "/metrics", 200)

    plan = await h.call("GET", "/api/v1/plan", 200)
    assert {p["device_id"] for p in plan} == {d["device_id"] for d in all_devs}


async def test_not_available_answer_has_the_callback_interval(harness: ApiHarness) -> None:
    ans = await query(harness)  # no image at all
    assert ans == {
        "packages": [],
        "callback_interval": harness.config.policy.callback_interval_s,
        "decision": "not_available",
        "reason": ans["reason"],
        "token": None,
        "download_url": None,
        "delay_s": 0,
        "consent_needed": False,
    }
    assert ans["reason"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'{"installed": []}', 422, "device"),
        (b'{"device": {"protocol": "thread", "network": "x", "address": "y"}}', 422, "device.protocol"),
        (
            b'{"device": {"protocol": "zigbee", "network": "x", "address": "y", "endpoint": 300}}',
            422,
            "device.endpoint",
        ),
        (
            b'{"device": {"protocol": "zigbee", "network": "x", "address": "y", "vendorid": 1}}',
            422,
            "device.vendorid",
        ),
        (
            b'{"device": {"protocol": "zigbee", "network": "x", "address": "y"}, "installed": [1]}',
            422,
            "installed[0]",
        ),
    ],
)
async def test_query_malformed_input(harness: ApiHarness, body: bytes, status: int, field: str) -> None:
    ans = await harness.call(
        "POST", "/api/v1/query", status, data=body, headers={"Content-Type": "application/json"}
    )
    assert ans["error"]["field"] == field
    assert await harness.call("GET", "/api/v1/devices", 200) == []  # nothing recorded


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"status": "Exploded"}, "status"),
        ({"percent": 101}, "percent"),
        ({"device": None}, "device"),
        ({"error": "x" * 2000}, "error"),
    ],
)
async def test_status_report_malformed_input(harness: ApiHarness, patch: dict, field: str) -> None:
    body = {
        "device": {"protocol": "matter", "network": "fabric:1", "address": "0000000000000001"},
        "status": "Downloading",
        "percent": 5,
        **patch,
    }
    ans = await harness.call("POST", "/api/v1/status", 422, json=body)
    assert ans["error"]["field"] == field
    assert await harness.call("GET", "/api/v1/devices", 200) == []


async def test_large_json_body_is_refused(harness: ApiHarness) -> None:
    ans = await harness.call(
        "POST",
        "/api/v1/query",
        413,
        data=b'{"x": "' + b"a" * (1 << 20) + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert ans["error"]["code"] == "too_large"


async def test_notify_device_answers_precisely(harness: ApiHarness) -> None:
    """POST /devices/{id}/notify: 404 for an unknown device, 409 when no adapter can reach it, 200 with what was
    sent, 502 when the device does not answer (the protocol adapter's "query now")."""
    from gateway.core.interface import DeviceInfo, DeviceKey

    await harness.call("POST", "/api/v1/devices/matter:nope:1:0/notify", 404)
    key = DeviceKey("matter", "fabric:0102030405060708", "0000000000001001", 0)
    await harness.core.observe(DeviceInfo(key, vendor_id=0xFFF1, product_id=0x8000, current_version=1))
    path = f"/api/v1/devices/{key.device_id}/notify"
    body = await harness.call("POST", path, 409)  # the harness gateway runs no adapter
    assert body["error"]["code"] == "not_available"
    svc = harness.app[SERVICES_KEY]
    sent: list[str] = []

    async def notify(device_id: str) -> str:
        sent.append(device_id)
        if len(sent) > 1:
            raise TimeoutError("no answer within 20 s")
        return "AnnounceOTAProvider"

    svc.notify_device = notify
    body = await harness.call("POST", path, 200)
    assert body == {"device_id": key.device_id, "sent": "AnnounceOTAProvider"}
    body = await harness.call("POST", path, 502)
    assert body["error"]["code"] == "device_unreachable" and "no answer" in body["error"]["message"]
    assert sent == [key.device_id, key.device_id]
