"""The sans-I/O MQTT publisher: what the broker should hold, what to publish now, and incoming commands.

The bridge keeps the desired retained payload of every topic (discovery configs, states, attributes) and what it
published on the current connection. Inputs are device views, gateway status and install results, each with the
time they happened (`now`, from the injected clock); outputs are `Publish` records the asyncio layer sends.

- No flood: while a device's transfer runs (the previous and the new view both `in_progress`), its state and
  attributes go out at most once per `state_interval_s`; the newest payload waits and `due(now)` releases it.
  Anything else (a transfer starting, a final state: updated, failed, cancelled) goes out at once, so the final
  state is never held back.
- Removal: a device that left gets empty retained payloads on its config, state and attribute topics, which is
  how Home Assistant deletes the entity; topics to empty survive a disconnect and go out on the next connection.
- Reconnect: `connected(now)` forgets what the broker had and returns everything (availability first, then
  configs, states, removals), so a broker restart without persistence loses no device's final state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gateway.integrations.mqtt.discovery import (
    OFFLINE,
    ONLINE,
    PAYLOAD_INSTALL,
    DeviceView,
    GatewayIdentity,
    Topics,
    dumps,
    gateway_configs,
    update_config,
    update_state,
)
from gateway.integrations.mqtt.discovery import (
    slug as make_slug,
)


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


@dataclass(frozen=True, slots=True)
class InstallCommand:
    """Home Assistant's install button for one device."""

    device_id: str


@dataclass(frozen=True, slots=True)
class UnknownInstall:
    """An install command for a topic that names no device otagw published (stale entity, typo)."""

    topic: str


@dataclass(frozen=True, slots=True)
class HomeAssistantOnline:
    """Home Assistant (re)started: republish discovery."""


Command = InstallCommand | UnknownInstall | HomeAssistantOnline


@dataclass(frozen=True, slots=True)
class InstallResult:
    result: str  # "accepted" | "deferred" | "refused"
    reason: str
    at: float
    rollout_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "reason": self.reason, "at": self.at, "rollout_id": self.rollout_id}


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    adapters: dict[str, str]  # adapter name -> state ("running", "failed", ...)
    transfers_active: int
    rollouts_active: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapters": dict(sorted(self.adapters.items())),
            "transfers_active": self.transfers_active,
            "rollouts_active": self.rollouts_active,
        }


class Bridge:
    def __init__(self, topics: Topics, gateway: GatewayIdentity, *, state_interval_s: float = 2.0) -> None:
        self.topics = topics
        self.gateway = gateway
        self.state_interval_s = state_interval_s
        self.connected = False
        self._views: dict[str, DeviceView] = {}
        self._by_slug: dict[str, str] = {}
        self._installs: dict[str, InstallResult] = {}
        self._desired: dict[str, bytes] = {}
        self._sent: dict[str, bytes] = {}
        self._sent_at: dict[str, float] = {}
        self._hold_until: dict[str, float] = {}  # rate-limited topics: not before this time
        self._clear: set[str] = set()
        self._order: dict[str, int] = {}  # configs before states, so HA knows an entity before its state

    # ---------------------------------------------------------------------------------------- inputs
    @property
    def devices(self) -> Mapping[str, DeviceView]:
        return MappingProxyType(self._views)

    def _want(self, topic: str, payload: bytes, order: int, now: float, limited: bool = False) -> None:
        self._clear.discard(topic)
        self._desired[topic] = payload
        self._order[topic] = order
        if limited and topic in self._sent_at:
            self._hold_until[topic] = self._sent_at[topic] + self.state_interval_s
        else:
            self._hold_until.pop(topic, None)

    def _state_payload(self, view: DeviceView) -> bytes:
        inst = self._installs.get(view.device_id)
        note = None
        if inst is not None and inst.result != "accepted" and inst.at >= view.state_since:
            note = f"Install {inst.result}: {inst.reason}"
        return dumps(update_state(view, note))

    def _attributes_payload(self, view: DeviceView) -> bytes:
        attrs = dict(view.attributes)
        inst = self._installs.get(view.device_id)
        attrs["install"] = inst.to_dict() if inst is not None else None
        return dumps(attrs)

    def set_device(self, view: DeviceView, now: float) -> None:
        """A device record appeared or changed."""
        old = self._views.get(view.device_id)
        self._views[view.device_id] = view
        self._by_slug[view.slug] = view.device_id
        s = view.slug
        limited = old is not None and old.in_progress and view.in_progress
        self._want(
            self.topics.update_config(s), dumps(update_config(self.topics, self.gateway, view)), 0, now
        )
        self._want(self.topics.device_state(s), self._state_payload(view), 1, now, limited)
        self._want(self.topics.device_attributes(s), self._attributes_payload(view), 1, now, limited)

    def remove_device(self, device_id: str) -> None:
        """The device left: its entity goes away (empty retained config), and its state with it."""
        view = self._views.pop(device_id, None)
        self._installs.pop(device_id, None)
        s = view.slug if view is not None else make_slug(device_id)
        self._by_slug.pop(s, None)
        for topic in (
            self.topics.update_config(s),
            self.topics.device_state(s),
            self.topics.device_attributes(s),
        ):
            self._desired.pop(topic, None)
            self._hold_until.pop(topic, None)
            self._clear.add(topic)

    def set_install_result(self, device_id: str, result: InstallResult) -> None:
        self._installs[device_id] = result
        view = self._views.get(device_id)
        if view is not None:
            s = view.slug
            self._want(self.topics.device_state(s), self._state_payload(view), 1, result.at)
            self._want(self.topics.device_attributes(s), self._attributes_payload(view), 1, result.at)

    def install_result(self, device_id: str) -> InstallResult | None:
        return self._installs.get(device_id)

    def set_gateway(self, status: GatewayStatus, now: float) -> None:
        for topic, cfg in gateway_configs(self.topics, self.gateway, sorted(status.adapters)).items():
            self._want(topic, dumps(cfg), 0, now)
        self._want(self.topics.gateway_state, dumps(status.to_dict()), 1, now, limited=True)

    # --------------------------------------------------------------------------------------- outputs
    def _emit(self, topics: list[str], now: float) -> list[Publish]:
        out: list[Publish] = []
        for topic in sorted(topics, key=lambda t: (self._order.get(t, 1), t)):
            payload = self._desired[topic]
            out.append(Publish(topic, payload))
            self._sent[topic] = payload
            self._sent_at[topic] = now
            self._hold_until.pop(topic, None)
        for topic in sorted(self._clear):
            out.append(Publish(topic, b""))
            self._sent.pop(topic, None)
        self._clear.clear()
        return out

    def connected_now(self, now: float) -> list[Publish]:
        """A (new) connection: the broker's retained state is unknown, publish everything."""
        self.connected = True
        self._sent.clear()
        return [Publish(self.topics.availability, ONLINE.encode()), *self._emit(list(self._desired), now)]

    def republish_discovery(self, now: float) -> list[Publish]:
        """Home Assistant restarted: configs again (then states, so its entities get their state at once)."""
        if not self.connected:
            return []
        return self._emit(list(self._desired), now)

    def disconnected(self) -> None:
        self.connected = False

    def due(self, now: float) -> list[Publish]:
        """What may be published now: changed topics whose rate limit has passed, and removals."""
        if not self.connected:
            return []
        ready = [
            t
            for t, p in self._desired.items()
            if self._sent.get(t) != p and self._hold_until.get(t, now) <= now
        ]
        if not ready and not self._clear:
            return []
        return self._emit(ready, now)

    def next_due(self) -> float | None:
        """When a held-back publish becomes due (None: nothing held)."""
        held = [
            until
            for t, until in self._hold_until.items()
            if t in self._desired and self._sent.get(t) != self._desired[t]
        ]
        return min(held) if held else None

    def goodbye(self) -> Publish:
        """Published on a clean stop (the last will says the same when the connection just dies)."""
        return Publish(self.topics.availability, OFFLINE.encode())

    def last_will(self) -> Publish:
        return self.goodbye()

    # --------------------------------------------------------------------------------------- commands
    def subscriptions(self) -> list[str]:
        return [self.topics.install_filter, self.topics.ha_status]

    def command(self, topic: str, payload: bytes) -> Command | None:
        """Interpret one incoming message (None: not for us / not a command)."""
        text = payload.decode("utf-8", "replace").strip()
        if topic == self.topics.ha_status:
            return HomeAssistantOnline() if text == ONLINE else None
        s = self.topics.install_slug(topic)
        if s is None or text != PAYLOAD_INSTALL:
            return None
        device_id = self._by_slug.get(s)
        return InstallCommand(device_id) if device_id is not None else UnknownInstall(topic)


def decode(payload: bytes) -> Any:
    """JSON payload of a published message (tests and tools)."""
    return json.loads(payload) if payload else None
