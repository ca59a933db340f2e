"""Zigbee2MQTT's OTA client code (zigbee-herdsman 10.x + zigbee-herdsman-converters 26.x from tests/js, unmodified)
with otagw's published index as `ota.zigbee_ota_override_index_location`: a fake device is matched against the
index, the image is downloaded and checked against the index's sha512, and staging decides what it finds.

No skip: tests/js/node_modules is installed by scripts/test (`npm ci`); a missing node is a failure."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from gateway.formats import build_zigbee_image
from tests.publish.conftest import PublishHarness

JS = Path(__file__).resolve().parents[1] / "js"

DEVICE = {
    "ieeeAddr": "0x000b57fffe123456",
    "modelID": "TRADFRI bulb E27 WS opal 980lm",
    "manufacturerName": "IKEA of Sweden",
    "manufacturerCode": 0x117C,
    "imageType": 0x2101,
    "fileVersion": 0x10,
}


async def herdsman_check(pub: PublishHarness, tmp: Path, device: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(JS / "z2m_ota_check.mjs"), f"{pub.root('z2m-home')}/index.json", str(tmp), json.dumps(device),
        cwd=JS, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def test_herdsman_finds_and_downloads_only_what_is_staged(pub: PublishHarness, tmp_path: Path) -> None:
    data = build_zigbee_image(
        bytes(range(256)) * 40, manufacturer_code=0x117C, image_type=0x2101, file_version=0x20, header_string="IKEA"
    )
    other = build_zigbee_image(b"\x01" * 900, manufacturer_code=0x1135, image_type=0x0001, file_version=0x99)
    image_id = await pub.add_zigbee(data, "tradfri-0020.ota")
    await pub.store.approve(await pub.add_zigbee(other, "other.ota"))

    before = await herdsman_check(pub, tmp_path, DEVICE)
    assert before["definition"] is not None  # zigbee-herdsman-converters knows the device
    assert before["meta"] is None  # not approved: absent from the index Z2M reads

    await pub.store.approve(image_id, selector={"networks": ["z2m-home"]})
    found = await herdsman_check(pub, tmp_path, DEVICE)
    assert found["available"] is True
    assert found["meta"]["fileVersion"] == 0x20 and found["meta"]["url"].startswith(pub.root("z2m-home"))
    assert found["image"] == {"fileVersion": 0x20, "imageType": 0x2101, "manufacturerCode": 0x117C, "size": len(data)}

    # a device already on that version: herdsman sees the image but no update
    same = await herdsman_check(pub, tmp_path, {**DEVICE, "fileVersion": 0x20})
    assert same["available"] is False

    await pub.store.revoke(image_id)
    assert (await herdsman_check(pub, tmp_path, DEVICE))["meta"] is None
