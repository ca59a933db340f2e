"""Adapters for the composition-root tests: one that runs, one whose radio is missing, one that crashes, one whose
radio appears after a few start attempts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.core.interface import DeviceInfo, DeviceKey

EVENTS: list[str] = []


class AdapterStartError(Exception):
    """Same name as the real adapters' error: the runner reports it without a traceback."""


class Good:
    def __init__(self, config: Any, core: Any, clock: Any, data_dir: Path) -> None:
        self.core = core
        self.data_dir = data_dir

    async def start(self) -> None:
        EVENTS.append("good.start")
        await self.core.observe(DeviceInfo(DeviceKey("zigbee", "pan:1", "00:00:00:00:00:00:00:01", 1)))

    async def stop(self) -> None:
        EVENTS.append(f"{type(self).__name__}.stop")


class NoRadio(Good):
    async def start(self) -> None:
        EVENTS.append("noradio.start")
        raise AdapterStartError("zigbee.radio.device /dev/ttyUSB0: no such device")


class Crashes(Good):
    async def start(self) -> None:
        raise RuntimeError("boom")


class FlakyRadio(Good):
    """Fails `failures_left` starts (the radio is plugged in later), then runs."""

    failures_left = 0

    async def start(self) -> None:
        EVENTS.append("flaky.start")
        if FlakyRadio.failures_left > 0:
            FlakyRadio.failures_left -= 1
            raise AdapterStartError(f"radio not plugged in ({FlakyRadio.failures_left} more failures)")

    def health(self) -> dict[str, Any]:
        return {"radio": "found"}
