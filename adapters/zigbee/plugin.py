"""The Zigbee adapter's plugin registration (entry point `otagw.adapters: zigbee`): config section `zigbee`,
built lazily so that a gateway with Zigbee disabled never imports zigpy. With `zigbee.radios` the gateway gets one
adapter per radio (adapters/zigbee/multi.py); `adapter_class()` stays the single-radio ZigbeeAdapter (the demo)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.plugins import LazyAdapterPlugin, RunningAdapter


def _enabled(config: Any) -> bool:
    return bool(config.zigbee.enabled)


@dataclass(frozen=True)
class ZigbeePlugin(LazyAdapterPlugin):
    def create(self, core: Any, config: Any, *, clock: Any, data_dir: Path) -> RunningAdapter:
        from adapters.zigbee.multi import build

        adapter: RunningAdapter = build(config.zigbee, core, clock, data_dir)
        return adapter


plugin = ZigbeePlugin(
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
