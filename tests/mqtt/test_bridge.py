"""The sans-I/O MQTT bridge without a broker: HA-valid discovery, state payloads, rate limiting on an injected
time, final states never held back, removal, full republish on reconnect, and command parsing."""

from __future__ import annotations

import json
from typing import Any

from gateway.config import PolicyConfig
from gateway.core.records import DeviceRecord
from gateway.core.states import DeviceState
from gateway.integrations.mqtt.bridge import (
    Bridge,
    GatewayStatus,
    HomeAssistantOnline,
    InstallCommand,
    InstallResult,
    Publish,
    UnknownInstall,
)
from gateway.integrations.mqtt.discovery import GatewayIdentity, Topics, update_config
from gateway.integrations.mqtt.view import Catalog, device_view
from tests.mqtt.ha_schema import check_discovery, check_update_state, discovery_topic
from tests.store_helpers import entry

IEEE = "00:0d:6f:00:00:00:00:01"
DEVICE_ID = f"zigbee:pan:1a2b:{IEEE}:1"
TOPICS = Topics("otagw", "homeassistant")
GW = GatewayIdentity("1.2.3", configuration_url="http://127.0.0.1:8480")


def record(**kw: Any) -> DeviceRecord:
    base: dict[str, Any] = dict(
        device_id=DEVICE_ID,
        protocol="zigbee",
        network="pan:1a2b",
        address=IEEE,
        endpoint=1,
        first_seen=1.0,
        last_seen=1.0,
        vendor_id=0x117C,
        product_id=0x2811,
        model="SimLight",
        vendor_name="IKEA of Sweden",
        current_version=0x100,
    )
    base.update(kw)
    return DeviceRecord(**base)


CATALOG = Catalog.of([entry("zigbee", 0x117C, 0x2811, 0x200, version_string="0x00000200")])


def view(**kw: Any) -> Any:
    return device_view(record(**kw), CATALOG, PolicyConfig())


def by_topic(pubs: list[Publish]) -> dict[str, Any]:
    return {
        p.topic: (json.loads(p.payload) if p.payload else None) for p in pubs if p.topic != "otagw/status"
    }


def test_discovery_configs_are_valid_for_home_assistant() -> None:
    b = Bridge(TOPICS, GW)
    b.set_device(view(), 0.0)
    b.set_gateway(GatewayStatus({"zigbee": "running", "matter": "failed"}, 0, 0), 0.0)
    pubs = b.connected_now(0.0)
    assert pubs[0] == Publish("otagw/status", b"online")
    configs = {p.topic: json.loads(p.payload) for p in pubs if p.topic.endswith("/config")}
    components = sorted(discovery_topic(t)[0] for t in configs)  # type: ignore[index]
    assert components == ["binary_sensor", "binary_sensor", "sensor", "sensor", "update"]
    for topic, cfg in configs.items():
        comp = discovery_topic(topic)
        assert comp is not None, topic
        assert check_discovery(comp[0], cfg) == [], (topic, cfg)
        assert all(p.retain for p in pubs if p.topic == topic)
    upd = configs["homeassistant/update/otagw/zigbee_pan_1a2b_00_0d_6f_00_00_00_00_01_1/config"]
    assert upd["command_topic"] == "otagw/device/zigbee_pan_1a2b_00_0d_6f_00_00_00_00_01_1/install"
    assert upd["payload_install"] == "install"
    assert upd["device"]["via_device"] == "otagw_gateway_otagw"
    assert "zigbee_000d6f0000000001" in upd["device"]["identifiers"]
    assert upd["device"]["manufacturer"] == "IKEA of Sweden" and upd["device"]["model"] == "SimLight"
    assert upd["device"]["sw_version"] == "0x00000100"
    state = json.loads(next(p.payload for p in pubs if p.topic == upd["state_topic"]))
    assert check_update_state(state) == []
    assert state["installed_version"] == "0x00000100" and state["latest_version"] == "0x00000200"
    assert state["in_progress"] is False and state["update_percentage"] is None


def test_the_validator_catches_what_home_assistant_would_reject() -> None:
    good = update_config(TOPICS, GW, view())
    assert check_discovery("update", good) == []
    assert check_discovery("update", {**good, "comand_topic": "x"})  # typo
    assert check_discovery("update", {**good, "command_topic": "otagw/+/install"})  # wildcard publish
    assert check_discovery("update", {**good, "device": {"name": "x"}})  # no identifiers
    assert check_discovery("update", {k: v for k, v in good.items() if k != "unique_id"})
    assert check_discovery("update", {**good, "entity_category": "primary"})
    assert check_discovery("update", {**good, "availability_topic": "otagw/status"})
    no_install = {k: v for k, v in good.items() if k != "payload_install"}
    assert check_discovery("update", no_install)
    assert check_update_state({"installed_version": 1}) and check_update_state({"update_percentage": 101})


def test_latest_version_shows_policy_hold_back_and_up_to_date() -> None:
    blocked = device_view(
        record(), CATALOG, PolicyConfig.model_validate({"rules": [{"block_versions": [0x200]}]})
    )
    assert blocked.latest_version == "0x00000200"
    assert blocked.release_summary.startswith("held back by policy: ")
    current = view(current_version=0x200)
    assert current.latest_version == current.installed_version == "0x00000200"
    unknown = device_view(record(vendor_id=None), CATALOG, PolicyConfig())
    assert unknown.latest_version == unknown.installed_version


def test_state_publishes_are_rate_limited_during_a_transfer_and_the_final_state_is_not() -> None:
    b = Bridge(TOPICS, GW, state_interval_s=2.0)
    b.set_device(view(), 0.0)
    b.connected_now(0.0)
    state_topic = TOPICS.device_state("zigbee_pan_1a2b_00_0d_6f_00_00_00_00_01_1")
    dl = dict(
        state=DeviceState.DOWNLOADING,
        target_image_id=CATALOG.index.buckets and next(iter(CATALOG.entries)),
        target_version=0x200,
        target_version_string="0x00000200",
        target_size=1000,
    )
    # the transfer starts: published at once
    b.set_device(view(**dl, acked_offset=0), 10.0)
    first = by_topic(b.due(10.0))
    assert first[state_topic]["in_progress"] is True and first[state_topic]["update_percentage"] == 0
    # progress inside the interval is held back, only the newest goes out when the interval has passed
    for t, off in ((10.5, 100), (11.0, 200), (11.5, 300)):
        b.set_device(view(**dl, acked_offset=off), t)
        assert state_topic not in by_topic(b.due(t))
    assert b.next_due() == 12.0
    later = by_topic(b.due(12.0))
    assert later[state_topic]["update_percentage"] == 30
    # the final state goes out at once, even inside the interval
    b.set_device(view(**dl, acked_offset=400), 12.5)
    b.set_device(view(state=DeviceState.UPDATED, current_version=0x200), 12.6)
    final = by_topic(b.due(12.6))
    assert final[state_topic]["installed_version"] == "0x00000200"
    assert final[state_topic]["in_progress"] is False
    assert b.next_due() is None and b.due(100.0) == []


def test_a_device_leaving_removes_its_entity_even_across_a_disconnect() -> None:
    b = Bridge(TOPICS, GW)
    b.set_device(view(), 0.0)
    b.connected_now(0.0)
    b.disconnected()
    b.remove_device(DEVICE_ID)
    assert b.due(1.0) == []  # nothing goes out while disconnected
    pubs = b.connected_now(2.0)
    cleared = {p.topic for p in pubs if p.payload == b""}
    s = "zigbee_pan_1a2b_00_0d_6f_00_00_00_00_01_1"
    assert cleared == {TOPICS.update_config(s), TOPICS.device_state(s), TOPICS.device_attributes(s)}
    assert all(p.retain for p in pubs)
    assert b.connected_now(3.0) == [Publish("otagw/status", b"online")]  # removals go out once


def test_reconnect_republishes_the_current_state_of_every_device() -> None:
    b = Bridge(TOPICS, GW)
    b.set_device(view(), 0.0)
    b.connected_now(0.0)
    b.disconnected()
    b.set_device(view(state=DeviceState.UPDATED, current_version=0x200), 5.0)  # happened while disconnected
    pubs = by_topic(b.connected_now(6.0))
    state = pubs[TOPICS.device_state("zigbee_pan_1a2b_00_0d_6f_00_00_00_00_01_1")]
    assert state["installed_version"] == "0x00000200"
    order = [p.topic for p in b.connected_now(7.0)]
    assert order[0] == "otagw/status"
    assert max(i for i, t in enumerate(order) if t.endswith("/config")) < min(
        i for i, t in enumerate(order) if t.endswith("/state") and t != "otagw/status"
    )


def test_commands_and_install_results() -> None:
    b = Bridge(TOPICS, GW)
    b.set_device(view(), 0.0)
    b.connected_now(0.0)
    topic = TOPICS.device_install("zigbee_pan_1a2b_00_0d_6f_00_00_00_00_01_1")
    assert b.command(topic, b"install") == InstallCommand(DEVICE_ID)
    assert b.command(topic, b"other") is None
    assert b.command("otagw/device/nobody/install", b"install") == UnknownInstall(
        "otagw/device/nobody/install"
    )
    assert b.command("homeassistant/status", b"online") == HomeAssistantOnline()
    assert b.command("homeassistant/status", b"offline") is None
    b.set_install_result(DEVICE_ID, InstallResult("refused", "window closed", 50.0))
    pubs = by_topic(b.due(50.0))
    s = "zigbee_pan_1a2b_00_0d_6f_00_00_00_00_01_1"
    assert pubs[TOPICS.device_attributes(s)]["install"]["result"] == "refused"
    assert pubs[TOPICS.device_state(s)]["release_summary"].startswith("Install refused: window closed")
    assert b.goodbye() == b.last_will() == Publish("otagw/status", b"offline")
