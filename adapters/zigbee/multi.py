"""Several Zigbee radios in one gateway (`zigbee.radios`), each coordinator of its own network.

`build()` is what the plugin calls: with no `radios` list it is exactly one `ZigbeeAdapter` on `zigbee.radio` (the
single-radio form, unchanged); with a list, a `ZigbeeRadios` holding one `ZigbeeAdapter` per radio, each with its own zigpy database and backups
folder, all on the same update core. Devices are keyed by their network's extended PAN id, so each network has its
own per-network budget (`policy.budgets.per_network`) while rollouts and the global budget span all of them. A radio
that fails to start is reported in health and retried with backoff; the others serve meanwhile. Only when every
radio fails does start() fail (the gateway then retries the whole adapter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from adapters.zigbee.adapter import AdapterStartError, ZigbeeAdapter
from gateway.clock import Clock
from gateway.config import ZigbeeConfig, ZigbeeRadioConfig
from gateway.core.interface import UpdateCoreInterface

LOGGER = logging.getLogger(__name__)
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0


def radio_configs(config: ZigbeeConfig) -> list[tuple[str, ZigbeeConfig]]:
    """(radio name, the adapter config for that radio); one unnamed entry for the single-radio form."""
    if not config.radios:
        return [("", config)]
    out = []
    for entry in config.radios:
        radio = ZigbeeRadioConfig(**entry.model_dump(exclude={"name", "database"}))
        out.append(
            (
                entry.name,
                config.model_copy(
                    update={
                        "radio": radio,
                        "radios": [],
                        "database": entry.database or f"zigbee-{entry.name}.db",
                    }
                ),
            )
        )
    return out


class ZigbeeRadios:
    """One ZigbeeAdapter per configured radio (see the module docstring)."""

    def __init__(
        self, config: ZigbeeConfig, core: UpdateCoreInterface, clock: Clock, data_dir: Path | None
    ) -> None:
        self.config = config
        self.clock = clock
        self.radios: dict[str, ZigbeeAdapter] = {
            name: ZigbeeAdapter(cfg, core, clock, data_dir, backup_subdir=name or None)
            for name, cfg in radio_configs(config)
        }
        self.errors: dict[str, str] = {}
        self._retry: dict[str, asyncio.Task[None]] = {}

    def _where(self, name: str) -> str:
        return f"zigbee.radios[{name}]" if name else "zigbee.radio"

    async def start(self) -> None:
        results = await asyncio.gather(*(a.start() for a in self.radios.values()), return_exceptions=True)
        for (name, _adapter), result in zip(self.radios.items(), results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                self.errors[name] = str(result)
        if len(self.errors) == len(self.radios):
            await self.stop()
            raise AdapterStartError("; ".join(self.errors.values()))
        for name in self.errors:
            LOGGER.error(
                "%s failed to start (the other radios serve): %s", self._where(name), self.errors[name]
            )
            self._retry[name] = asyncio.get_running_loop().create_task(self._retry_radio(name))

    async def _retry_radio(self, name: str) -> None:
        delay = RETRY_FIRST_S
        adapter = self.radios[name]
        while True:
            await self.clock.sleep(delay)
            with contextlib.suppress(Exception):
                await adapter.stop()
            try:
                await adapter.start()
            except Exception as exc:
                self.errors[name] = str(exc)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            self.errors.pop(name, None)
            LOGGER.info("%s started", self._where(name))
            return

    async def stop(self) -> None:
        for task in self._retry.values():
            task.cancel()
        for task in self._retry.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._retry.clear()
        for adapter in self.radios.values():
            await adapter.stop()

    def running(self, name: str | None = None) -> ZigbeeAdapter:
        """The adapter of radio `name` (the only one when None); LookupError naming the radios otherwise."""
        if name in (None, "") and len(self.radios) == 1:
            return next(iter(self.radios.values()))
        if name not in self.radios:
            names = ", ".join(n for n in self.radios if n) or "(single radio)"
            raise LookupError(f"radio: {name!r} is not one of {names}")
        return self.radios[name]

    @property
    def network(self) -> Any:
        """The single radio's NetworkManager (multi-radio callers pick one with running(name))."""
        return self.running().network if len(self.radios) == 1 else None

    def health(self) -> dict[str, Any]:
        return {
            "radios": {
                name: {**a.health(), "error": self.errors.get(name)} for name, a in self.radios.items()
            }
        }


def build(config: ZigbeeConfig, core: UpdateCoreInterface, clock: Clock, data_dir: Path | None) -> Any:
    """The plugin's adapter factory: a ZigbeeAdapter for the single-radio form, ZigbeeRadios for `radios`."""
    if not config.radios:
        return ZigbeeAdapter(config, core, clock, data_dir)
    return ZigbeeRadios(config, core, clock, data_dir)
