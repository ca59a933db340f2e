"""otagw's MQTT topic layout and the Home Assistant discovery/state payloads built from device views (pure).

Topics (`base` = mqtt.base_topic, `prefix` = mqtt.discovery_prefix, `<slug>` = the device id with every
character outside [A-Za-z0-9_-] replaced by `_`):

    <base>/status                                   online / offline (retained; offline is the last will)
    <base>/gateway/state                            JSON: adapters, transfers_active, rollouts_active (retained)
    <base>/device/<slug>/state                      JSON state of the device's `update` entity (retained)
    <base>/device/<slug>/attributes                 JSON attributes: otagw state, reason, last install (retained)
    <base>/device/<slug>/install                    command topic: Home Assistant publishes `install` here
    <prefix>/update/<node>/<slug>/config            discovery config of the `update` entity (retained)
    <prefix>/binary_sensor/<node>/adapter_<name>/config, <prefix>/sensor/<node>/{transfers,rollouts}/config
    <prefix>/status                                 Home Assistant's birth message: `online` -> republish

`<node>` is the base topic with `/` replaced by `_`, so two gateways on one broker need two base topics.
Discovery configs use Home Assistant's full key names (no abbreviations) and follow its MQTT `update` schema:
`state_topic` carries JSON with `installed_version`, `latest_version`, `title`, `release_summary`,
`release_url`, `in_progress` and `update_percentage`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

PAYLOAD_INSTALL = "install"
ONLINE, OFFLINE = "online", "offline"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
RELEASE_SUMMARY_MAX = 255  # Home Assistant's limit for release_summary


def slug(device_id: str) -> str:
    return _UNSAFE.sub("_", device_id)


@dataclass(frozen=True, slots=True)
class Topics:
    base: str = "otagw"
    prefix: str = "homeassistant"

    @property
    def node(self) -> str:
        return self.base.replace("/", "_")

    @property
    def availability(self) -> str:
        return f"{self.base}/status"

    @property
    def gateway_state(self) -> str:
        return f"{self.base}/gateway/state"

    @property
    def ha_status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def install_filter(self) -> str:
        return f"{self.base}/device/+/install"

    def device_state(self, s: str) -> str:
        return f"{self.base}/device/{s}/state"

    def device_attributes(self, s: str) -> str:
        return f"{self.base}/device/{s}/attributes"

    def device_install(self, s: str) -> str:
        return f"{self.base}/device/{s}/install"

    def update_config(self, s: str) -> str:
        return f"{self.prefix}/update/{self.node}/{s}/config"

    def entity_config(self, component: str, object_id: str) -> str:
        return f"{self.prefix}/{component}/{self.node}/{object_id}/config"

    def install_slug(self, topic: str) -> str | None:
        """The slug of `<base>/device/<slug>/install`, or None for any other topic."""
        head, tail = f"{self.base}/device/", "/install"
        if topic.startswith(head) and topic.endswith(tail):
            s = topic[len(head) : -len(tail)]
            return s if s and "/" not in s else None
        return None


@dataclass(frozen=True, slots=True)
class GatewayIdentity:
    """The gateway as a Home Assistant device (every otagw device is `via_device` it)."""

    version: str
    name: str = "otagw"
    configuration_url: str | None = None  # the dashboard, when the API listens

    def identifier(self, topics: Topics) -> str:
        return f"otagw_gateway_{topics.node}"


@dataclass(frozen=True, slots=True)
class DeviceView:
    """What Home Assistant shows of one device record (built by `gateway.integrations.mqtt.view`)."""

    device_id: str
    protocol: str
    network: str
    address: str
    name: str
    manufacturer: str | None
    model: str | None
    hw_version: str | None
    installed_version: str | None
    latest_version: str | None
    in_progress: bool
    update_percentage: int | None
    title: str
    release_summary: str
    release_url: str | None
    state: str
    state_since: float
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return slug(self.device_id)

    def identifiers(self) -> list[str]:
        """Stable ids for HA's device registry: otagw's device id plus the protocol's own address."""
        ids = [f"otagw_{self.slug}"]
        if self.protocol == "zigbee":
            ids.append(f"zigbee_{self.address.replace(':', '').lower()}")
        elif self.protocol == "matter":  # a node id is unique within its fabric only
            ids.append(f"matter_{slug(self.network)}_{self.address.lower()}")
        return ids


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _availability(topics: Topics) -> list[dict[str, str]]:
    return [{"topic": topics.availability, "payload_available": ONLINE, "payload_not_available": OFFLINE}]


def _origin(gw: GatewayIdentity) -> dict[str, str]:
    return {"name": "otagw", "sw_version": gw.version}


def gateway_device(topics: Topics, gw: GatewayIdentity) -> dict[str, Any]:
    dev: dict[str, Any] = {
        "identifiers": [gw.identifier(topics)],
        "name": gw.name,
        "manufacturer": "otagw",
        "model": "Matter + Zigbee OTA gateway",
        "sw_version": gw.version,
    }
    if gw.configuration_url:
        dev["configuration_url"] = gw.configuration_url
    return dev


def update_config(topics: Topics, gw: GatewayIdentity, view: DeviceView) -> dict[str, Any]:
    """Discovery config of the device's `update` entity."""
    s = view.slug
    device: dict[str, Any] = {
        "identifiers": view.identifiers(),
        "name": view.name,
        "via_device": gw.identifier(topics),
    }
    for key, value in (
        ("manufacturer", view.manufacturer),
        ("model", view.model),
        ("sw_version", view.installed_version),
        ("hw_version", view.hw_version),
    ):
        if value:
            device[key] = value
    return {
        "name": "Firmware",
        "unique_id": f"{topics.node}_{s}_firmware",
        "device_class": "firmware",
        "entity_category": "config",
        "state_topic": topics.device_state(s),
        "latest_version_topic": topics.device_state(s),
        "latest_version_template": "{{ value_json.latest_version }}",
        "command_topic": topics.device_install(s),
        "payload_install": PAYLOAD_INSTALL,
        "json_attributes_topic": topics.device_attributes(s),
        "availability": _availability(topics),
        "availability_mode": "latest",
        "device": device,
        "origin": _origin(gw),
        "qos": 1,
    }


def update_state(view: DeviceView, note: str | None = None) -> dict[str, Any]:
    """The JSON on the entity's state topic. `note` (an install refusal) leads the release summary."""
    summary = f"{note} | {view.release_summary}" if note else view.release_summary
    if len(summary) > RELEASE_SUMMARY_MAX:
        summary = summary[: RELEASE_SUMMARY_MAX - 1] + "…"
    return {
        "installed_version": view.installed_version,
        "latest_version": view.latest_version,
        "title": view.title,
        "release_summary": summary,
        "release_url": view.release_url,
        "in_progress": view.in_progress,
        "update_percentage": view.update_percentage if view.in_progress else None,
    }


def gateway_configs(topics: Topics, gw: GatewayIdentity, adapters: list[str]) -> dict[str, dict[str, Any]]:
    """Discovery configs of the gateway's own entities, by config topic."""
    dev = gateway_device(topics, gw)
    common: dict[str, Any] = {
        "state_topic": topics.gateway_state,
        "availability": _availability(topics),
        "device": dev,
        "origin": _origin(gw),
        "entity_category": "diagnostic",
    }
    out: dict[str, dict[str, Any]] = {}
    for name in adapters:
        obj = f"adapter_{slug(name)}"
        out[topics.entity_config("binary_sensor", obj)] = {
            **common,
            "name": f"{name.capitalize()} adapter",
            "unique_id": f"{topics.node}_{obj}",
            "device_class": "running",
            "value_template": "{{ 'ON' if value_json.adapters.get('" + name + "') == 'running' else 'OFF' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
        }
    for obj, label, key in (
        ("transfers_active", "Transfers in flight", "transfers_active"),
        ("rollouts_active", "Active rollouts", "rollouts_active"),
    ):
        out[topics.entity_config("sensor", obj)] = {
            **common,
            "name": label,
            "unique_id": f"{topics.node}_{obj}",
            "state_class": "measurement",
            "value_template": "{{ value_json." + key + " }}",
        }
    return out
