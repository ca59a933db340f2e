"""The Zigbee adapter's plugin registration (entry point `otagw.adapters: zigbee`): config section `zigbee`,
built lazily so that a gateway with Zigbee disabled never imports zigpy."""

from __future__ import annotations

from typing import Any

from gateway.plugins import LazyAdapterPlugin


def _enabled(config: Any) -> bool:
    return bool(config.zigbee.enabled)


plugin = LazyAdapterPlugin(
    name="zigbee",
    target="adapters.zigbee.adapter:ZigbeeAdapter",
    config_section="zigbee",
    is_enabled=_enabled,
    required_modules=("zigpy", "bellows"),
    simulator_target="adapters.zigbee.sim",
    cli_target="adapters.zigbee.cli:zigbee",
    routes_target="adapters.zigbee.routes:ROUTES",
    install_hint="pip install otagw (zigpy and bellows are core dependencies)",
)
