"""Zigbee2MQTT's devices observed over MQTT: a real mosquitto on a free loopback port, a publisher posting a
retained `zigbee2mqtt/bridge/devices` payload shaped like Zigbee2MQTT's plus a device state with
`update.installed_version`, and otagw's bridge subscriber recording them in the core (protocol zigbee, network =
the controller's name) so plan, rollouts and staging cover them. Bad payloads get precise errors."""

from __future__ import annotations

import asyncio
import json

import aiomqtt
import pytest

from gateway.config import PublishController
from gateway.core.interface import DeviceInfo
from gateway.formats import build_zigbee_image
from gateway.integrations.z2m_bridge import BridgeDevices, BridgePayloadError, run_bridge
from tests.publish.conftest import PublishHarness

BRIDGE_DEVICES = [
    {
        "ieee_address": "0x00124b0024c1d2e3",
        "type": "Coordinator",
        "network_address": 0,
        "supported": True,
        "friendly_name": "Coordinator",
        "interview_completed": True,
        "endpoints": {},
    },
    {
        "ieee_address": "0x000b57fffe8a1b2c",
        "type": "Router",
        "network_address": 40123,
        "supported": True,
        "disabled": False,
        "friendly_name": "kitchen/ceiling",
        "description": None,
        "manufacturer": "IKEA of Sweden",
        "model_id": "TRADFRI bulb E27 WS opal 980lm",
        "power_source": "Mains (single phase)",
        "software_build_id": "2.3.093",
        "date_code": "20211211",
        "interview_completed": True,
        "interviewing": False,
        "definition": {"model": "LED1738G7", "vendor": "IKEA", "description": "TRADFRI bulb E27", "supports_ota": True},
        "endpoints": {"1": {"bindings": [], "clusters": {"input": ["genBasic", "genOnOff"], "output": ["genOta"]}}},
    },
    {
        "ieee_address": "0x54ef44100012ab34",
        "type": "EndDevice",
        "network_address": 1234,
        "supported": True,
        "friendly_name": "hall/motion",
        "manufacturer": "LUMI",
        "model_id": "lumi.motion.ac02",
        "power_source": "Battery",
        "software_build_id": "0.0.0_0025",
        "interview_completed": True,
        "definition": {"model": "RTCGQ14LM", "vendor": "Aqara", "supports_ota": True},
        "endpoints": {"1": {"clusters": {"input": ["genBasic"], "output": ["genOta"]}}},
    },
]


async def test_bridge_devices_become_observed_devices(pub: PublishHarness, broker: int) -> None:
    # an image restricted to the bulb's model lets otagw name its manufacturer code and image type
    data = build_zigbee_image(b"\x33" * 2000, manufacturer_code=0x117C, image_type=0x2101, file_version=0x30)
    image_id = await pub.add_zigbee(data, "tradfri.ota", model_ids=["TRADFRI bulb E27 WS opal 980lm"])
    ctl = PublishController.model_validate(
        {"name": "z2m-home", "kind": "z2m", "credential": "z2m-home", "bridge": {"host": "127.0.0.1", "port": broker}}
    )
    seen: list[DeviceInfo] = []
    versioned = asyncio.Event()

    async def observe(info: DeviceInfo) -> None:
        await pub.core.observe(info)
        seen.append(info)
        if info.current_version is not None:
            versioned.set()

    def identify(model: str) -> tuple[int, int] | None:
        for e in pub.core.catalog_entries():
            if model in e.model_ids:
                return e.vendor_id, e.product_id
        return None

    task = asyncio.create_task(run_bridge(ctl, observe, identify))
    try:
        async with aiomqtt.Client("127.0.0.1", broker, identifier="fake-z2m") as z2m:
            await z2m.publish("zigbee2mqtt/bridge/devices", json.dumps(BRIDGE_DEVICES), retain=True)
            state = {"state": "ON", "brightness": 200, "update": {"state": "idle", "installed_version": 0x10}}
            for _ in range(100):  # the subscriber may connect after our first state message: repeat until seen
                await z2m.publish("zigbee2mqtt/kitchen/ceiling", json.dumps(state))
                try:
                    await asyncio.wait_for(versioned.wait(), 0.2)
                    break
                except TimeoutError:
                    continue
        assert versioned.is_set()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    bulb = pub.core.get_device("zigbee:z2m-home:00:0b:57:ff:fe:8a:1b:2c:1")
    assert bulb is not None
    assert (bulb.vendor_id, bulb.product_id, bulb.current_version) == (0x117C, 0x2101, 0x10)
    assert bulb.model == "TRADFRI bulb E27 WS opal 980lm" and bulb.vendor_name == "IKEA of Sweden"
    assert bulb.sleepy is False
    sensor = pub.core.get_device("zigbee:z2m-home:54:ef:44:10:00:12:ab:34:1")
    assert sensor is not None and sensor.sleepy is True and sensor.model == "lumi.motion.ac02"
    assert pub.core.get_device("zigbee:z2m-home:00:12:4b:00:24:c1:d2:e3:1") is None  # the coordinator is not a device

    # plan covers the observed bulb; approving for its model (a device-level filter) publishes to z2m-home only
    plan = {p.device_id: p for p in pub.core.plan()}
    assert "not approved" in plan[bulb.device_id].reason
    await pub.store.approve(image_id, selector={"model": ["TRADFRI*"]})
    await pub.core.catalog_changed()
    plan = {p.device_id: p for p in pub.core.plan()}
    assert plan[bulb.device_id].outcome == "update" and plan[bulb.device_id].image_id == image_id
    index = await (await pub.client.session.get(f"{pub.root('z2m-home')}/index.json")).json()
    assert [(i["manufacturerCode"], i["fileVersion"], i.get("modelId")) for i in index] == [
        (0x117C, 0x30, "TRADFRI bulb E27 WS opal 980lm")
    ]
    zha = await (await pub.client.session.get(f"{pub.root('zha-garage')}/index.json")).json()
    assert zha == {"firmwares": []}


def test_bad_bridge_payloads_are_named() -> None:
    b = BridgeDevices("z2m-home")
    with pytest.raises(BridgePayloadError, match="not JSON"):
        b.on_devices(b"{")
    with pytest.raises(BridgePayloadError, match="expected a JSON array"):
        b.on_devices(b'{"a": 1}')
    with pytest.raises(BridgePayloadError, match=r"bridge/devices\[1\]: expected an object with ieee_address"):
        b.on_devices(b'[{"ieee_address": "0x0011223344556677"}, 5]')
    with pytest.raises(BridgePayloadError, match="ieee_address '0x12'"):
        b.on_devices(b'[{"ieee_address": "0x12", "friendly_name": "x"}]')
    assert b.on_state("unknown", b'{"update": {"installed_version": 3}}') is None
