"""Observe a Zigbee2MQTT controller's devices from its MQTT topics and record them in the core.

Zigbee2MQTT publishes its device list (retained) on `<base_topic>/bridge/devices` and each device's state on
`<base_topic>/<friendly_name>`, whose `update.installed_version` is the OTA file version once Z2M checked it.
`BridgeDevices` is the sans-I/O part (payloads in, `DeviceInfo` out: protocol zigbee, network = the controller's
name, address = IEEE, endpoint 1); `run_bridge` is the thin aiomqtt loop that feeds it and calls
`core.observe`. Z2M does not publish the OTA image type, so manufacturer code and image type come from the
payload when present (`manufacturer_code`/`image_type`) or from catalog images restricted to the device's
model id (`identify`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import PublishController
from gateway.core.interface import DeviceInfo, DeviceKey

log = logging.getLogger(__name__)

Identify = Callable[[str], tuple[int, int] | None]  # model id -> (manufacturer code, image type)


class BridgePayloadError(ValueError):
    """A bridge/devices or device-state payload that is not what Zigbee2MQTT publishes."""


def _ieee(text: str) -> str:
    """'0x00124b0012345678' -> '00:12:4b:00:12:34:56:78' (otagw's IEEE spelling)."""
    h = text[2:] if text.lower().startswith("0x") else text
    if len(h) != 16 or any(c not in "0123456789abcdefABCDEF" for c in h):
        raise BridgePayloadError(f"ieee_address {text!r}: expected 0x followed by 16 hex digits")
    h = h.lower()
    return ":".join(h[i : i + 2] for i in range(0, 16, 2))


@dataclass
class BridgeDevices:
    """Zigbee2MQTT device list + per-device installed OTA versions for one controller."""

    controller: str
    identify: Identify = field(default=lambda model: None)
    by_name: dict[str, dict[str, Any]] = field(default_factory=dict)  # friendly name -> bridge/devices item
    installed: dict[str, int] = field(default_factory=dict)  # friendly name -> OTA file version

    def on_devices(self, payload: bytes) -> list[DeviceInfo]:
        try:
            items = json.loads(payload)
        except ValueError as exc:
            raise BridgePayloadError(f"bridge/devices: not JSON: {exc}") from None
        if not isinstance(items, list):
            raise BridgePayloadError("bridge/devices: expected a JSON array of devices")
        out: list[DeviceInfo] = []
        names: dict[str, dict[str, Any]] = {}
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "ieee_address" not in item:
                raise BridgePayloadError(f"bridge/devices[{i}]: expected an object with ieee_address")
            if item.get("type") == "Coordinator":
                continue
            names[str(item.get("friendly_name") or item["ieee_address"])] = item
        self.by_name = names
        for name in names:
            info = self.info(name)
            if info is not None:
                out.append(info)
        return out

    def on_state(self, name: str, payload: bytes) -> DeviceInfo | None:
        """A device state message: records `update.installed_version` (ignored for unknown names)."""
        if name not in self.by_name:
            return None
        try:
            state = json.loads(payload)
        except ValueError:
            return None  # state payloads of some devices are plain strings: nothing for OTA in them
        upd = state.get("update") if isinstance(state, dict) else None
        ver = upd.get("installed_version") if isinstance(upd, dict) else None
        if not isinstance(ver, int) or ver < 0:
            return None
        self.installed[name] = ver
        return self.info(name)

    def info(self, name: str) -> DeviceInfo | None:
        item = self.by_name[name]
        where = f"bridge/devices {name!r}"
        ieee = _ieee(str(item["ieee_address"]))
        model = item.get("model_id") if isinstance(item.get("model_id"), str) else None
        vid, pid = item.get("manufacturer_code"), item.get("image_type")
        if not (isinstance(vid, int) and isinstance(pid, int)):
            ident = self.identify(model) if model else None
            vid, pid = ident if ident else (None, None)
        power = str(item.get("power_source") or "")
        log.debug("observed %s", where)
        return DeviceInfo(
            key=DeviceKey("zigbee", self.controller, ieee, 1),
            vendor_id=vid,
            product_id=pid,
            vendor_name=item.get("manufacturer") if isinstance(item.get("manufacturer"), str) else None,
            model=model,
            current_version=self.installed.get(name),
            current_version_string=(
                str(item["software_build_id"]) if item.get("software_build_id") is not None else None
            ),
            sleepy=(power == "Battery") if power else None,
            extra={"friendly_name": name, "via": "zigbee2mqtt"},
        )


async def run_bridge(
    controller: PublishController,
    observe: Callable[[DeviceInfo], Awaitable[None]],
    identify: Identify,
    *,
    password: str | None = None,
    reconnect_s: float = 5.0,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Subscribe to the controller's broker forever (reconnecting), feeding `observe`."""
    import aiomqtt

    cfg = controller.bridge
    assert cfg is not None
    state = BridgeDevices(controller.name, identify)
    base = cfg.base_topic.rstrip("/")
    while True:
        try:
            async with aiomqtt.Client(
                cfg.host,
                cfg.port,
                username=cfg.username,
                password=password,
                identifier=cfg.client_id or f"otagw-{controller.name}",
            ) as client:
                await client.subscribe(f"{base}/bridge/devices")
                # friendly names may contain '/' (kitchen/ceiling): take every topic, match known names only
                await client.subscribe(f"{base}/#")
                async for msg in client.messages:
                    topic = str(msg.topic)
                    payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                    try:
                        if topic == f"{base}/bridge/devices":
                            for info in state.on_devices(payload):
                                await observe(info)
                        elif topic.startswith(base + "/") and not topic.startswith(f"{base}/bridge/"):
                            changed = state.on_state(topic[len(base) + 1 :], payload)
                            if changed is not None:
                                await observe(changed)
                    except BridgePayloadError as exc:
                        log.warning("controller %s: %s", controller.name, exc)
        except aiomqtt.MqttError as exc:
            log.warning(
                "controller %s: MQTT broker %s:%d: %s; retrying in %.0fs",
                controller.name, cfg.host, cfg.port, exc, reconnect_s,
            )
            await sleep(reconnect_s)
