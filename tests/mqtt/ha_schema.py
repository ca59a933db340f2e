"""Home Assistant's MQTT discovery schemas (update, sensor, binary_sensor) and the update state JSON, as checks.

Written from Home Assistant's own definitions: `homeassistant/components/mqtt/update.py` (PLATFORM_SCHEMA_MODERN
= MQTT_RO_SCHEMA + command_topic, device_class, entity_picture, latest_version_template/_topic, name,
payload_install, release_summary, release_url, retain, title), `schemas.py` (MQTT_ENTITY_COMMON_SCHEMA:
availability, device, origin, enabled_by_default, entity_category, icon, json_attributes_*, object_id, unique_id,
encoding, qos) and its discovery abbreviations, plus the update state payload (installed_version, latest_version,
title, release_summary (max 255), release_url, entity_picture, in_progress, update_percentage).
Stricter than Home Assistant in one way: an unknown key is an error here (HA silently drops it), which catches
typos that would otherwise just lose a setting.
"""

from __future__ import annotations

import re
from typing import Any

ABBREVIATIONS = {
    "avty": "availability",
    "avty_t": "availability_topic",
    "avty_mode": "availability_mode",
    "avty_tpl": "availability_template",
    "cmd_t": "command_topic",
    "dev": "device",
    "dev_cla": "device_class",
    "en": "enabled_by_default",
    "ent_cat": "entity_category",
    "ent_pic": "entity_picture",
    "e": "encoding",
    "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "l_ver_t": "latest_version_topic",
    "l_ver_tpl": "latest_version_template",
    "o": "origin",
    "obj_id": "object_id",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_inst": "payload_install",
    "pl_on": "payload_on",
    "pl_off": "payload_off",
    "rel_s": "release_summary",
    "rel_u": "release_url",
    "ret": "retain",
    "stat_cla": "state_class",
    "stat_t": "state_topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
DEVICE_ABBREVIATIONS = {
    "cu": "configuration_url",
    "cns": "connections",
    "ids": "identifiers",
    "mf": "manufacturer",
    "mdl": "model",
    "mdl_id": "model_id",
    "hw": "hw_version",
    "sw": "sw_version",
    "sa": "suggested_area",
    "sn": "serial_number",
    "via_device": "via_device",
}

STR, BOOL, INT = (str,), (bool,), (int,)
TOPIC_ANY = "topic"


def _expand(cfg: dict[str, Any], table: dict[str, str]) -> dict[str, Any]:
    return {table.get(k, k): v for k, v in cfg.items()}


def _valid_topic(value: Any, where: str, *, publish: bool) -> list[str]:
    if not isinstance(value, str) or not value:
        return [f"{where}: a topic must be a non-empty string"]
    if len(value.encode()) > 65535 or "\0" in value:
        return [f"{where}: invalid topic"]
    if publish and ("+" in value or "#" in value):
        return [f"{where}: a publish topic cannot hold wildcards"]
    return []


COMMON = {
    "availability_topic": TOPIC_ANY,
    "availability_mode": ("all", "any", "latest"),
    "availability_template": STR,
    "payload_available": STR,
    "payload_not_available": STR,
    "enabled_by_default": BOOL,
    "entity_category": ("config", "diagnostic"),
    "icon": STR,
    "json_attributes_topic": TOPIC_ANY,
    "json_attributes_template": STR,
    "object_id": STR,
    "default_entity_id": STR,
    "unique_id": STR,
    "encoding": STR,
    "qos": (0, 1, 2),
    "name": (str, type(None)),
    "state_topic": TOPIC_ANY,
    "value_template": STR,
}
PLATFORM_KEYS: dict[str, dict[str, Any]] = {
    "update": {
        "command_topic": "publish",
        "device_class": ("firmware", None),
        "entity_picture": STR,
        "latest_version_template": STR,
        "latest_version_topic": TOPIC_ANY,
        "payload_install": STR,
        "release_summary": STR,
        "release_url": STR,
        "retain": BOOL,
        "title": STR,
    },
    "sensor": {
        "device_class": (str, type(None)),
        "state_class": ("measurement", "total", "total_increasing", None),
        "unit_of_measurement": (str, type(None)),
        "force_update": BOOL,
        "expire_after": INT,
        "suggested_display_precision": INT,
        "last_reset_value_template": STR,
    },
    "binary_sensor": {
        "device_class": (
            "battery",
            "connectivity",
            "problem",
            "running",
            "update",
            "power",
            "plug",
            "safety",
            None,
        ),
        "payload_on": STR,
        "payload_off": STR,
        "force_update": BOOL,
        "expire_after": INT,
        "off_delay": INT,
    },
}
REQUIRED = {"sensor": ("state_topic",), "binary_sensor": ("state_topic",), "update": ()}
DEVICE_KEYS = {
    "configuration_url": STR,
    "connections": list,
    "hw_version": STR,
    "identifiers": (list, str),
    "manufacturer": STR,
    "model": STR,
    "model_id": STR,
    "name": STR,
    "serial_number": STR,
    "suggested_area": STR,
    "sw_version": STR,
    "via_device": STR,
}


def _check_value(key: str, spec: Any, value: Any, where: str) -> list[str]:
    if spec == TOPIC_ANY:
        return _valid_topic(value, f"{where}.{key}", publish=False)
    if spec == "publish":
        return _valid_topic(value, f"{where}.{key}", publish=True)
    if isinstance(spec, tuple) and spec and all(isinstance(x, type) for x in spec):
        if isinstance(value, bool) and bool not in spec:
            return [f"{where}.{key}: expected {spec}, got a boolean"]
        return [] if isinstance(value, spec) else [f"{where}.{key}: expected {spec}, got {value!r}"]
    if isinstance(spec, tuple):
        if any(isinstance(x, type) for x in spec):
            ok = value in [x for x in spec if not isinstance(x, type)] or isinstance(
                value, tuple(x for x in spec if isinstance(x, type))
            )
        else:
            ok = value in spec and not (isinstance(value, bool) and True not in spec)
        return [] if ok else [f"{where}.{key}: {value!r} is not one of {spec}"]
    if isinstance(spec, type):
        return [] if isinstance(value, spec) else [f"{where}.{key}: expected {spec.__name__}"]
    raise AssertionError(spec)


def check_discovery(component: str, raw: dict[str, Any]) -> list[str]:
    """Problems with one discovery config (empty list: Home Assistant accepts it)."""
    errors: list[str] = []
    cfg = _expand(raw, ABBREVIATIONS)
    allowed = {**COMMON, **PLATFORM_KEYS[component]}
    for key in REQUIRED[component]:
        if key not in cfg:
            errors.append(f"{component}: {key} is required")
    for key, value in cfg.items():
        if key in ("availability", "device", "origin"):
            continue
        if key not in allowed:
            errors.append(f"{component}: unknown key {key!r}")
            continue
        errors += _check_value(key, allowed[key], value, component)
    if "availability" in cfg:
        if "availability_topic" in cfg:
            errors.append(f"{component}: availability and availability_topic exclude each other")
        avty = cfg["availability"]
        if not isinstance(avty, list) or not avty:
            errors.append(f"{component}.availability: expected a non-empty list")
        else:
            for i, item in enumerate(avty):
                item = _expand(item, ABBREVIATIONS | {"t": "topic"})
                if "topic" not in item:
                    errors.append(f"{component}.availability[{i}]: topic is required")
                for k, v in item.items():
                    if k == "topic":
                        errors += _valid_topic(v, f"{component}.availability[{i}].topic", publish=False)
                    elif k in ("payload_available", "payload_not_available", "value_template"):
                        errors += _check_value(k, STR, v, f"{component}.availability[{i}]")
                    else:
                        errors.append(f"{component}.availability[{i}]: unknown key {k!r}")
    if "device" in cfg:
        if "unique_id" not in cfg:
            errors.append(f"{component}: device needs unique_id (HA ties entities to devices by it)")
        dev = _expand(cfg["device"], DEVICE_ABBREVIATIONS)
        if not dev.get("identifiers") and not dev.get("connections"):
            errors.append(f"{component}.device: needs identifiers or connections")
        for k, v in dev.items():
            if k not in DEVICE_KEYS:
                errors.append(f"{component}.device: unknown key {k!r}")
            else:
                errors += _check_value(k, DEVICE_KEYS[k], v, f"{component}.device")
        ids = dev.get("identifiers")
        if isinstance(ids, list) and not all(isinstance(x, str) and x for x in ids):
            errors.append(f"{component}.device.identifiers: every identifier must be a non-empty string")
    if "origin" in cfg:
        origin = _expand(cfg["origin"], {"sw": "sw_version", "url": "support_url"})
        if not isinstance(origin.get("name"), str):
            errors.append(f"{component}.origin: name is required")
        for k in origin:
            if k not in ("name", "sw_version", "support_url"):
                errors.append(f"{component}.origin: unknown key {k!r}")
    if component == "update" and ("command_topic" in cfg) != ("payload_install" in cfg):
        errors.append("update: command_topic and payload_install go together (HA publishes payload_install)")
    return errors


_DISCOVERY_TAIL = re.compile(
    r"(?P<component>[a-z_]+)/(?:(?P<node>[A-Za-z0-9_-]+)/)?(?P<object>[A-Za-z0-9_-]+)/config"
)


def discovery_topic(topic: str, prefix: str = "homeassistant") -> tuple[str, str] | None:
    """(component, object id) of `<prefix>/<component>/[<node_id>/]<object_id>/config`, or None."""
    if not topic.startswith(prefix + "/"):
        return None
    m = _DISCOVERY_TAIL.fullmatch(topic[len(prefix) + 1 :])
    return (m.group("component"), m.group("object")) if m else None


STATE_KEYS: dict[str, Any] = {
    "installed_version": (str, type(None)),
    "latest_version": (str, type(None)),
    "title": STR,
    "release_summary": (str, type(None)),
    "release_url": (str, type(None)),
    "entity_picture": (str, type(None)),
    "in_progress": BOOL,
    "update_percentage": (int, float, type(None)),
}


def check_update_state(state: dict[str, Any]) -> list[str]:
    errors = []
    for k, v in state.items():
        if k not in STATE_KEYS:
            errors.append(f"state: unknown key {k!r}")
        else:
            errors += _check_value(k, STATE_KEYS[k], v, "state")
    pct = state.get("update_percentage")
    if isinstance(pct, int | float) and not 0 <= pct <= 100:
        errors.append(f"state.update_percentage: {pct} outside 0..100")
    if isinstance(state.get("release_summary"), str) and len(state["release_summary"]) > 255:
        errors.append("state.release_summary: longer than 255 characters")
    return errors
