"""The runtime starts the MQTT integration from the config (`mqtt.enabled`); entities of devices that left while
otagw was down are cleared; the mqtt section's errors are precise: bad broker URL, TLS keys without mqtts://, a
password file others can read (the password never logged)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.clock import ManualClock
from gateway.config import ConfigError, load_config, parse_config
from gateway.core.service import UpdateCore
from gateway.integrations.mqtt.client import MqttIntegration, MqttSetupError, read_password
from gateway.integrations.mqtt.discovery import slug
from gateway.service import Gateway
from tests.api.conftest import TOKEN
from tests.core.conftest import FakeStore, make_entry, zigbee_dev
from tests.mqtt.conftest import Broker, subscriber
from tests.mqtt.ha_schema import check_discovery, discovery_topic


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "otagw.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def test_gateway_publishes_its_entities_and_says_goodbye(
    tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTAGW_MQTT_PASSWORD", "s3cret-never-logged")
    cfg = load_config(
        write(
            tmp_path,
            {
                "data_dir": "data",
                "api": {"listen": "127.0.0.1:0", "token": TOKEN},
                "matter": {"enabled": False},
                "mqtt": {
                    "enabled": True,
                    "broker": broker.url,
                    "base_topic": "site1/otagw",
                    "username": "otagw",
                },
            },
        )
    )
    caplog.set_level(logging.DEBUG)
    async with subscriber(broker) as sub:
        gw = Gateway(cfg)  # matter and zigbee disabled: no adapter starts
        await gw.start()
        try:
            await sub.wait_for(lambda: "site1/otagw/gateway/state" in sub.retained, what="gateway state")
            assert sub.retained["site1/otagw/status"] == b"online"
            state = sub.json("site1/otagw/gateway/state")
            assert state == {
                "adapters": {"matter": "disabled", "zigbee": "disabled"},
                "transfers_active": 0,
                "rollouts_active": 0,
            }
            adapter_cfg = sub.json("homeassistant/binary_sensor/site1_otagw/adapter_zigbee/config")
            assert check_discovery("binary_sensor", adapter_cfg) == []
            cfgs = [t for t in sub.retained if t.startswith("homeassistant/sensor/site1_otagw/")]
            assert len(cfgs) == 2
            for t in cfgs:
                comp = discovery_topic(t)
                assert comp is not None and check_discovery(comp[0], sub.json(t)) == []
                assert sub.json(t)["device"]["configuration_url"] == gw.api_url
        finally:
            await gw.stop()
        await sub.wait_for(lambda: sub.retained.get("site1/otagw/status") == b"offline", what="offline")
    assert "s3cret-never-logged" not in caplog.text


@pytest.mark.parametrize(
    ("mqtt", "message"),
    [
        ({"broker": "tcp://host:1883"}, "mqtt.broker: Value error, expected mqtt://HOST[:PORT]"),
        ({"broker": "mqtt://host:99999"}, "mqtt.broker"),
        ({"tls_ca_file": "ca.pem"}, "TLS settings need an mqtts:// broker URL"),
        ({"broker": "mqtts://h", "tls_cert_file": "c.pem"}, "tls_cert_file and tls_key_file go together"),
        ({"base_topic": "otagw/#"}, "mqtt.base_topic"),
        ({"brokr": "mqtt://h"}, "mqtt.brokr: unknown key"),
    ],
)
def test_mqtt_config_errors_name_the_key(tmp_path: Path, mqtt: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {"mqtt": mqtt}))
    assert message in str(err.value)
    assert str(tmp_path / "otagw.yaml") in str(err.value)


def test_mqtt_urls_paths_and_password_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTAGW_MQTT_PASSWORD", raising=False)
    cfg = load_config(write(tmp_path, {"mqtt": {"broker": "mqtts://[::1]", "password_file": "pw"}})).mqtt
    assert (cfg.host, cfg.port, cfg.tls) == ("::1", 8883, True)
    assert cfg.password_file == tmp_path / "pw"  # relative to the config file's folder
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    pw.chmod(0o644)
    with pytest.raises(MqttSetupError, match="readable by others"):
        read_password(cfg)
    pw.chmod(0o600)
    assert read_password(cfg) == "hunter2"
    assert parse_config({}).mqtt.port == 1883 and parse_config({}).mqtt.enabled is False


async def test_a_device_that_left_while_otagw_was_down_loses_its_retained_entity(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = parse_config({"data_dir": str(tmp_path / "d"), "mqtt": {"enabled": True, "broker": broker.url}})
    core = UpdateCore(cfg, FakeStore(), ManualClock(), auto_sweep=False)
    await core.start()
    stayed, left = zigbee_dev(1, 0x100), zigbee_dev(2, 0x100)
    await core.observe(stayed)
    await core.observe(left)
    await core.device_left(left.key)
    stale = f"homeassistant/update/otagw/{slug(left.key.device_id)}/config"
    async with subscriber(broker) as sub:
        await sub.publish_retained(stale, b'{"name": "from the last run"}')
        await sub.wait_for(lambda: stale in sub.retained, what="stale config")
        mq = MqttIntegration(cfg.mqtt, core, core.store, core.clock, policy=lambda: cfg.policy)
        await mq.start()
        try:
            await sub.wait_for(lambda: stale not in sub.retained, what="stale config cleared")
            kept = f"homeassistant/update/otagw/{slug(stayed.key.device_id)}/config"
            await sub.wait_for(lambda: kept in sub.retained, what="present device's config")
        finally:
            await mq.stop()
            await core.stop()


async def test_a_new_image_in_the_catalog_shows_as_an_update_within_the_refresh_interval(
    tmp_path: Path, broker: Broker
) -> None:
    cfg = parse_config({"data_dir": str(tmp_path / "d"), "mqtt": {"enabled": True, "broker": broker.url}})
    clock = ManualClock()
    store = FakeStore()
    core = UpdateCore(cfg, store, clock, auto_sweep=False)
    await core.start()
    dev = zigbee_dev(1, 0x100)
    await core.observe(dev)
    state_t = f"otagw/device/{slug(dev.key.device_id)}/state"
    async with subscriber(broker) as sub:
        mq = MqttIntegration(cfg.mqtt, core, store, clock, policy=lambda: cfg.policy)
        await mq.start()
        try:
            await sub.wait_for(lambda: state_t in sub.retained, what="state")
            assert (
                sub.json(state_t)["latest_version"] == sub.json(state_t)["installed_version"] == "0x00000100"
            )
            store.add(make_entry("zigbee", 0x117C, 0x2811, 0x200))  # imported by the CLI, say
            await clock.advance(cfg.mqtt.gateway_interval_s)
            await sub.wait_for(lambda: sub.json(state_t)["latest_version"] == "0x00000200", what="new latest")
        finally:
            await mq.stop()
            await core.stop()
