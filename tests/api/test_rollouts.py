"""Rollout routes against the real core: create with waves, list, show with per-wave counts, pause, resume,
abort, the status rules (409), and malformed input naming the field."""

from __future__ import annotations

from gateway.core.interface import DeviceInfo, DeviceKey
from tests.api.conftest import ApiHarness, zigbee_image

OCTET = {"Content-Type": "application/octet-stream"}


async def setup_fleet(h: ApiHarness, n: int = 3) -> dict:
    img = (
        await h.call(
            "POST", "/api/v1/images?file_name=fw.zigbee", 201, data=zigbee_image(version=0x200), headers=OCTET
        )
    )["image"]
    for i in range(n):
        key = DeviceKey("zigbee", "pan:1a2b", f"00:11:22:33:44:55:66:{i:02x}", 1)
        await h.core.observe(DeviceInfo(key, vendor_id=0x1135, product_id=1, current_version=0x100))
    return img


async def test_rollout_lifecycle(harness: ApiHarness) -> None:
    h = harness
    img = await setup_fleet(h)
    r = await h.call(
        "POST",
        "/api/v1/rollouts",
        201,
        json={
            "image": img["image_id"][:10],
            "waves": ["1", "100%"],
            "soak_s": 0,
            "name": "spring",
            "selector": {"protocol": "zigbee", "networks": ["pan:1a2b"]},
        },
    )
    rid = r["rollout_id"]
    assert r["name"] == "spring" and r["status"] == "active" and r["image_id"] == img["image_id"]
    assert [(w["spec"], w["state"], w["members"]) for w in r["waves"]] == [
        ("1", "open", 1),
        ("100%", "pending", 2),
    ]
    assert r["selector"] == {"protocol": "zigbee", "networks": ["pan:1a2b"]}

    assert [x["rollout_id"] for x in await h.call("GET", "/api/v1/rollouts", 200)] == [rid]
    assert (await h.call("GET", f"/api/v1/rollouts/{rid}", 200))["waves"] == r["waves"]

    paused = await h.call("POST", f"/api/v1/rollouts/{rid}/pause", 200)
    assert paused["status"] == "paused"
    assert (await h.call("POST", f"/api/v1/rollouts/{rid}/pause", 200))["status"] == "paused"
    assert (await h.call("POST", f"/api/v1/rollouts/{rid}/resume", 200))["status"] == "active"
    aborted = await h.call("POST", f"/api/v1/rollouts/{rid}/abort", 200)
    assert aborted["status"] == "aborted" and aborted["waves"][0]["state"] == "aborted"
    body = await h.call("POST", f"/api/v1/rollouts/{rid}/resume", 409)
    assert body["error"]["code"] == "rollout_state" and "aborted" in body["error"]["message"]

    metrics = await h.call("GET", "/metrics", 200)
    assert 'otagw_rollouts{status="aborted"} 1.0' in metrics
    assert (
        f'otagw_rollout_wave_devices{{outcome="members",rollout="{rid}",wave="1",wave_state="aborted"}} 2.0'
        in metrics
    )


async def test_unknown_rollout_is_404(harness: ApiHarness) -> None:
    for method, path in (
        ("GET", "/api/v1/rollouts/rnope"),
        ("POST", "/api/v1/rollouts/rnope/pause"),
        ("POST", "/api/v1/rollouts/rnope/resume"),
        ("POST", "/api/v1/rollouts/rnope/abort"),
    ):
        body = await harness.call(method, path, 404)
        assert body["error"]["field"] == "rollout_id"


async def test_create_rollout_bad_input(harness: ApiHarness) -> None:
    h = harness
    img = await setup_fleet(h, 1)
    cases = [
        ({"waves": ["100%"]}, 422, "image"),
        ({"image": img["image_id"]}, 422, "waves"),
        ({"image": img["image_id"], "waves": []}, 422, "waves"),
        ({"image": img["image_id"], "waves": ["0%"]}, 422, "waves"),
        ({"image": img["image_id"], "waves": ["1.5"]}, 422, "waves"),
        ({"image": img["image_id"], "waves": ["1"], "soak_s": -1}, 422, "soak_s"),
        ({"image": img["image_id"], "waves": ["1"], "max_failure_rate": 2}, 422, "max_failure_rate"),
        ({"image": img["image_id"], "waves": ["1"], "selector": {"colour": "red"}}, 422, "selector.colour"),
        ({"image": img["image_id"], "waves": ["1"], "selector": {"protocol": "matter"}}, 422, "selector"),
        ({"image": "ffffffffffffffff", "waves": ["1"]}, 404, "image"),
        ({"image": img["image_id"], "waves": ["1"], "extra": 1}, 422, "extra"),
    ]
    for body, status, field in cases:
        ans = await h.call("POST", "/api/v1/rollouts", status, json=body)
        assert ans["error"]["field"] == field, (body, ans)
    assert await h.call("GET", "/api/v1/rollouts", 200) == []
