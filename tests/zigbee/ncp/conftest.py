"""Fixtures for bellows-against-the-simulated-NCP tests: an NCP on loopback TCP (or a pty) with devices behind it.

bellows is unmodified. One bellows real-time wait is shortened: after its own resets on a `socket://` path it
waits 2 s for a zigbeed-style spontaneous reset before sending RST; the simulator resets only when a host
connects, as zigbeed does, so that wait would only slow the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bellows.ezsp
import bellows.zigbee.application
import pytest

from adapters.zigbee.sim.device import Behaviour, SimOtaDevice
from adapters.zigbee.sim.ncp.ncp import SimNcp
from adapters.zigbee.sim.ncp.network import RadioAir
from adapters.zigbee.sim.ncp.server import NcpServer
from gateway.clock import SystemClock

LOGGER = logging.getLogger(__name__)
NCP_EUI64 = "00:0b:57:ff:fe:00:aa:01"


@pytest.fixture(autouse=True)
def _short_bellows_reset_wait(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(bellows.ezsp, "NETWORK_COORDINATOR_STARTUP_RESET_WAIT", 0.05)
    yield


def bellows_config(path: str, db: Path | None) -> dict[str, Any]:
    return {
        "device": {"path": path},
        "use_thread": False,
        "database_path": str(db) if db is not None else None,
        "ota": {"providers": [], "broadcast_enabled": False},
    }


@dataclass
class Rig:
    """One air, NCPs on it with their servers, and the bellows applications started against them."""

    air: RadioAir
    clock: SystemClock
    servers: list[NcpServer] = field(default_factory=list)
    apps: list[Any] = field(default_factory=list)

    async def ncp(self, eui64: str = NCP_EUI64, *, pty: bool = False) -> NcpServer:
        loop = asyncio.get_running_loop()
        ncp = SimNcp(eui64, loop.time)
        self.air.attach(ncp)
        server = NcpServer(ncp, reset_on_connect=not pty)
        if pty:
            server.open_pty()
        else:
            await server.start_tcp()
        self.servers.append(server)
        return server

    def device(self, ieee: str, nwk: int, *, relays: list[int] | None = None, **kw: Any) -> SimOtaDevice:
        dev = SimOtaDevice(
            ieee,
            nwk,
            self.clock,
            manufacturer_code=kw.pop("manufacturer_code", 4476),
            image_type=1,
            file_version=kw.pop("file_version", 0x100),
            behaviour=kw.pop("behaviour", Behaviour()),
            **kw,
        )
        self.air.add(dev, relays=relays)
        dev.start()
        return dev

    async def app(
        self,
        server: NcpServer,
        db: Path | None = None,
        *,
        auto_form: bool = True,
        start: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> Any:
        cls = bellows.zigbee.application.ControllerApplication
        conf = {**bellows_config(server.path, db), **(extra or {})}
        app = await cls.new(conf, auto_form=auto_form, start_radio=False)
        self.apps.append(app)
        if start:
            async with asyncio.timeout(20):
                await app.startup(auto_form=auto_form)
        return app

    async def stop_app(self, app: Any) -> None:
        if app in self.apps:
            self.apps.remove(app)
        await app.shutdown()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    clock = SystemClock()
    air = RadioAir(clock)
    air.start()
    r = Rig(air=air, clock=clock)
    try:
        yield r
    finally:
        for app in list(r.apps):
            with contextlib.suppress(Exception):
                await app.shutdown()
        for server in r.servers:
            await server.close()
            if os.environ.get("OTAGW_NCP_COMMAND_LOG"):  # README facts: which commands bellows used
                with open(os.environ["OTAGW_NCP_COMMAND_LOG"], "a") as log:
                    log.write(" ".join(sorted(set(server.ncp.command_log))) + "\n")
        await air.stop()
    # a handler that raised is a simulator bug even if bellows coped with the refusal
    assert [s.ncp.errors for s in r.servers] == [[] for _ in r.servers]


async def wait_for(cond: Any, timeout_s: float = 5.0, what: str = "condition") -> None:
    """Poll a condition while the loopback I/O runs (real time: bellows and the sockets are real)."""
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.01)
