"""The composition root wires publishing: `otagw run` with `publish.controllers` serves the catalog under
/publish/ with the controller's catalog-read token, subscribes to a z2m controller's broker (a real mosquitto)
and records its devices, and /metrics counts the controller's downloads."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import aiomqtt
import yaml

from gateway.api.credentials import CredentialStore
from gateway.clock import ManualClock
from gateway.config import load_config
from gateway.formats import build_zigbee_image
from gateway.service import Gateway
from tests.publish.conftest import ADMIN

DEVICES = [
    {"ieee_address": "0x00124b0000000001", "type": "Coordinator", "friendly_name": "Coordinator"},
    {
        "ieee_address": "0x0017880100aabbcc",
        "type": "Router",
        "friendly_name": "desk lamp",
        "manufacturer": "Signify Netherlands B.V.",
        "model_id": "LWB010",
        "power_source": "Mains (single phase)",
        "manufacturer_code": 0x100B,
        "image_type": 0x0103,
        "software_build_id": "1.50.2_r30933",
    },
]


async def test_gateway_publishes_and_observes_its_controller(tmp_path: Path, broker: int) -> None:
    cfg_path = tmp_path / "otagw.yaml"
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "data_dir": "data",
                "api": {"listen": "127.0.0.1:0", "token": ADMIN},
                "matter": {"enabled": False},
                "publish": {
                    "controllers": [
                        {
                            "name": "z2m-home",
                            "kind": "z2m",
                            "credential": "z2m-home",
                            "bridge": {"host": "127.0.0.1", "port": broker},
                        }
                    ]
                },
            }
        )
    )
    config = load_config(cfg_path)
    _, token = CredentialStore(config.data_dir).create("z2m-home", "catalog-read")
    gw = Gateway(config, clock=ManualClock())
    await gw.start()
    try:
        assert gw.store is not None and gw.core is not None and gw.api_url is not None
        data = build_zigbee_image(b"\x42" * 1500, manufacturer_code=0x100B, image_type=0x0103, file_version=0x500)
        res = await gw.store.add_bytes(data, file_name="hue.ota", source="cli")
        await gw.store.approve(res.entry.image_id)
        await gw.core.catalog_changed()
        root = f"{gw.api_url}/publish/z2m-home/{token}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{root}/index.json") as r:
                index = await r.json()
            assert [(i["manufacturerCode"], i["imageType"], i["fileVersion"]) for i in index] == [(0x100B, 0x0103, 0x500)]
            async with s.get(index[0]["url"]) as r:
                assert await r.read() == data

            async with aiomqtt.Client("127.0.0.1", broker, identifier="fake-z2m") as z2m:
                await z2m.publish("zigbee2mqtt/bridge/devices", json.dumps(DEVICES), retain=True)
                state = json.dumps({"update": {"installed_version": 0x400, "state": "available"}})
                device_id = "zigbee:z2m-home:00:17:88:01:00:aa:bb:cc:1"
                for _ in range(200):  # until the gateway's subscriber (started with it) has seen both messages
                    await z2m.publish("zigbee2mqtt/desk lamp", state)
                    rec = gw.core.get_device(device_id)
                    if rec is not None and rec.current_version == 0x400:
                        break
                    await asyncio.sleep(0.05)
            rec = gw.core.get_device(device_id)
            assert rec is not None and (rec.vendor_id, rec.product_id, rec.current_version) == (0x100B, 0x0103, 0x400)
            plan = {p.device_id: p for p in gw.core.plan()}
            assert plan[device_id].outcome == "update" and plan[device_id].image_id == res.entry.image_id

            async with s.get(f"{gw.api_url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}) as r:
                text = await r.text()
            assert (
                f'otagw_publish_downloads_completed_total{{controller="z2m-home",image="{res.entry.image_id}"}} 1.0'
                in text
            )
    finally:
        await gw.stop()
