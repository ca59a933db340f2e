"""A real otagw API + publish routes on a loopback port, with a real image store, core and credentials, for the
consuming-controller tests (zigpy providers, zigbee-herdsman, python-matter-server)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import ApiServices, create_app
from gateway.api.credentials import CredentialStore
from gateway.clock import ManualClock
from gateway.config import Config, parse_config
from gateway.core.service import UpdateCore
from gateway.publish.routes import attach
from gateway.publish.service import Publisher
from gateway.store.store import ImageStore

ADMIN = "admin-token-0123456789abcdef"


@dataclass
class PublishHarness:
    client: TestClient[Any, Any]
    store: ImageStore
    core: UpdateCore
    config: Config
    clock: ManualClock
    publisher: Publisher
    tokens: dict[str, str]  # credential name -> secret

    @property
    def base(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    def root(self, controller: str, key: str | None = None) -> str:
        return f"{self.base}/publish/{controller}/{key or self.tokens[controller]}"

    async def add_zigbee(self, data: bytes, name: str, **extra: Any) -> str:
        res = await self.store.add_bytes(data, file_name=name, source="cli", extra=extra or None)
        await self.core.catalog_changed()
        return res.entry.image_id


CONTROLLERS = [
    {"name": "z2m-home", "kind": "z2m", "credential": "z2m-home"},
    {"name": "zha-garage", "kind": "zigpy", "credential": "zha-garage"},
    {"name": "mattersrv", "kind": "matter-server", "credential": "mattersrv"},
    {"name": "z2m-open", "kind": "z2m", "access": "open"},
]


@pytest.fixture
async def pub(tmp_path: Path) -> AsyncIterator[PublishHarness]:
    config = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "api": {"token": ADMIN},
            "publish": {"controllers": CONTROLLERS},
        }
    )
    clock = ManualClock()
    store = ImageStore(config.data_dir, clock=clock)
    await store.open()
    core = UpdateCore(config, store, clock, auto_sweep=False)
    await core.start()
    creds = CredentialStore(config.data_dir)
    tokens = {c["name"]: creds.create(c["name"], "catalog-read")[1] for c in CONTROLLERS if "credential" in c}
    tokens["z2m-open"] = "open"
    publisher = Publisher(config, store, core)
    svc = ApiServices(
        core=core, store=store, config=config, token=ADMIN, clock=clock, credentials=creds, progress_interval=0
    )
    svc.extra["publish"] = publisher
    app = create_app(svc)
    attach(app, publisher, creds)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield PublishHarness(client, store, core, config, clock, publisher, tokens)
    finally:
        await client.close()
        await core.stop()
        await store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[int]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = await asyncio.create_subprocess_exec(
        exe, "-c", str(conf), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        for _ in range(200):  # wait until it accepts connections (process start-up, not a timing assertion)
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("mosquitto did not start listening")
        yield port
    finally:
        proc.terminate()
        await proc.wait()
