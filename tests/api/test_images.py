"""Image routes against the real store: streamed upload with validation, dedup and size limit; list, show,
download (with ranges), delete (refused while in use)."""

from __future__ import annotations

import hashlib

from tests.api.conftest import ApiHarness, matter_image, zigbee_image

OCTET = {"Content-Type": "application/octet-stream"}


async def upload(h: ApiHarness, data: bytes, name: str = "fw.ota", expect: int = 201) -> dict:
    return await h.call("POST", f"/api/v1/images?file_name={name}", expect, data=data, headers=OCTET)


async def test_upload_list_show_download_delete(harness: ApiHarness) -> None:
    h = harness
    zb = zigbee_image()
    body = await upload(h, zb, "light.zigbee")
    assert body["created"] is True
    img = body["image"]
    assert img["protocol"] == "zigbee" and img["vendor_id"] == 0x1135 and img["numeric_version"] == 0x100
    assert img["sha256"] == hashlib.sha256(zb).hexdigest() and img["size"] == len(zb)
    assert img["source"] == "api" and img["file_name"] == "light.zigbee"
    # same bytes again: deduplicated
    again = await upload(h, zb, "light.zigbee", expect=200)
    assert again["created"] is False and again["image"]["image_id"] == img["image_id"]

    mt = await upload(h, matter_image(), "dimmer.ota")
    assert mt["image"]["protocol"] == "matter"

    listed = await h.call("GET", "/api/v1/images", 200)
    assert {i["image_id"] for i in listed} == {img["image_id"], mt["image"]["image_id"]}
    only = await h.call("GET", "/api/v1/images?protocol=matter", 200)
    assert [i["protocol"] for i in only] == ["matter"]

    shown = await h.call("GET", f"/api/v1/images/{img['image_id']}", 200)
    assert shown["in_use"] is False and shown["package_id"] == img["package_id"]
    by_prefix = await h.call("GET", f"/api/v1/images/{img['sha256'][:12]}", 200)
    assert by_prefix["image_id"] == img["image_id"]

    resp = await h.client.get(
        f"/api/v1/images/{img['image_id']}/download",
        headers={"Authorization": f"Bearer {h.config.api.token}"},
    )
    assert resp.status == 200
    assert await resp.read() == zb
    assert resp.headers["ETag"] == f'"{img["sha256"]}"'
    assert 'filename="light.zigbee"' in resp.headers["Content-Disposition"]

    await h.call("DELETE", f"/api/v1/images/{img['image_id']}", 204)
    await h.call("GET", f"/api/v1/images/{img['image_id']}", 404)
    await h.call("DELETE", f"/api/v1/images/{img['image_id']}", 404)
    assert [i["protocol"] for i in await h.call("GET", "/api/v1/images", 200)] == ["matter"]


async def test_range_download(harness: ApiHarness) -> None:
    h = harness
    zb = zigbee_image()
    img = (await upload(h, zb))["image"]
    auth = {"Authorization": f"Bearer {h.config.api.token}"}
    url = f"/api/v1/images/{img['image_id']}/download"
    for header, want in (("bytes=10-19", zb[10:20]), ("bytes=100-", zb[100:]), ("bytes=-7", zb[-7:])):
        resp = await h.client.get(url, headers={**auth, "Range": header})
        assert resp.status == 206, header
        assert await resp.read() == want
    assert resp.headers["Content-Range"] == f"bytes {len(zb) - 7}-{len(zb) - 1}/{len(zb)}"
    body = await h.call("GET", url, 416, headers={"Range": f"bytes={len(zb)}-"})
    assert body["error"]["field"] == "Range"
    await h.call("GET", url, 416, headers={"Range": "items=1-2"})


async def test_invalid_image_is_rejected_with_defect_and_offset(harness: ApiHarness) -> None:
    h = harness
    bad = bytearray(zigbee_image())
    bad[0] ^= 0xFF  # break the magic
    body = await upload(h, bytes(bad), expect=422)
    assert body["error"]["code"] == "invalid_image"
    assert body["error"]["field"] == "body" and body["error"]["offset"] == 0 and body["error"]["defect"]
    truncated = zigbee_image()[:-10]
    body = await upload(h, truncated, expect=422)
    assert body["error"]["offset"] is not None
    assert await h.call("GET", "/api/v1/images", 200) == []  # nothing half-written
    assert not any((h.config.data_dir / "blobs" / "tmp").iterdir())


async def test_upload_size_limit(harness: ApiHarness) -> None:
    h = harness  # images.max_upload_mib = 1 in the harness
    big = zigbee_image(payload=b"\0" * (1024 * 1024 + 10))
    body = await upload(h, big, expect=413)
    assert body["error"]["code"] == "too_large" and body["error"]["field"] == "body"

    async def chunked():  # no Content-Length: the store stops the stream
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    body = await upload(h, chunked(), expect=413)  # type: ignore[arg-type]
    assert body["error"]["code"] == "too_large"
    assert await h.call("GET", "/api/v1/images", 200) == []


async def test_upload_needs_a_plain_file_name(harness: ApiHarness) -> None:
    h = harness
    body = await h.call("POST", "/api/v1/images", 422, data=zigbee_image(), headers=OCTET)
    assert body["error"]["field"] == "file_name"
    for name in ("../../etc/passwd", "a%2Fb.ota", ".."):
        body = await upload(h, zigbee_image(), name, expect=422)
        assert body["error"]["field"] == "file_name", name
    assert await h.call("GET", "/api/v1/images", 200) == []


async def test_bad_refs_and_queries(harness: ApiHarness) -> None:
    h = harness
    body = await h.call("GET", "/api/v1/images/not-hex", 404)
    assert body["error"]["field"] == "ref"
    body = await h.call("GET", "/api/v1/images?protocol=thread", 422)
    assert body["error"]["field"] == "protocol"
    body = await h.call("GET", "/api/v1/images?bogus=1", 422)
    assert body["error"]["field"] == "bogus"


async def test_delete_refused_while_in_use(harness: ApiHarness) -> None:
    h = harness
    img = (await upload(h, zigbee_image()))["image"]
    rollout = await h.call(
        "POST", "/api/v1/rollouts", 201, json={"image": img["image_id"], "waves": ["100%"]}
    )
    body = await h.call("DELETE", f"/api/v1/images/{img['image_id']}", 409)
    assert body["error"]["code"] == "image_in_use"
    assert rollout["rollout_id"] in body["error"]["message"]
    shown = await h.call("GET", f"/api/v1/images/{img['image_id']}", 200)
    assert shown["in_use"] is True
    await h.call("POST", f"/api/v1/rollouts/{rollout['rollout_id']}/abort", 200)
    await h.call("DELETE", f"/api/v1/images/{img['image_id']}", 204)
