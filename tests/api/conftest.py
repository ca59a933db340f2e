"""Fixtures for the HTTP API tests: a real image store in a temp dir, the update core, the app under TestClient,
and `ApiHarness.call`, which checks every JSON answer against the served OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.api.app import ApiServices, create_app
from gateway.clock import ManualClock
from gateway.config import Config, parse_config
from gateway.core.service import UpdateCore
from gateway.formats import build_matter_image, build_zigbee_image
from gateway.store.store import ImageStore
from tests.api.schema import check, response_schema

TOKEN = "test-token-0123456789abcdef"


def zigbee_image(
    version: int = 0x100,
    manufacturer: int = 0x1135,
    image_type: int = 0x0001,
    payload: bytes = b"\x5a" * 3000,
) -> bytes:
    return build_zigbee_image(
        payload, manufacturer_code=manufacturer, image_type=image_type, file_version=version
    )


def matter_image(
    version: int = 2, vendor_id: int = 0xFFF1, product_id: int = 0x8000, payload: bytes = b"\xa5" * 2000
) -> bytes:
    return build_matter_image(
        payload,
        vendor_id=vendor_id,
        product_id=product_id,
        software_version=version,
        software_version_string=f"{version}.0",
    )


def _route_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$")


@dataclass
class ApiHarness:
    client: TestClient[Any, Any]
    app: web.Application
    store: ImageStore
    core: Any
    config: Config
    clock: ManualClock
    doc: dict[str, Any]

    def template(self, path: str) -> str:
        path = path.split("?", 1)[0]
        found = [t for t in self.doc["paths"] if _route_regex(t).match(path)]
        assert found, f"{path} matches no documented path"
        return min(found, key=lambda t: t.count("{"))

    async def call(
        self,
        method: str,
        path: str,
        expect: int,
        *,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        **kw: Any,
    ) -> Any:
        """Request, assert the status, validate a JSON body against the document; returns the body."""
        h = dict(headers or {})
        if auth:
            h.setdefault("Authorization", f"Bearer {TOKEN}")
        resp = await self.client.request(method, path, headers=h, allow_redirects=False, **kw)
        text = await resp.text()
        assert resp.status == expect, f"{method} {path}: {resp.status} {text}"
        if resp.content_type != "application/json":
            return text
        body = await resp.json()
        template = self.template(path)
        if method.lower() in self.doc["paths"][template]:
            schema = response_schema(self.doc, template, method, expect)
            if schema is not None:
                check(self.doc, schema, body)
        return body


def make_config(tmp_path: Path, **sections: Any) -> Config:
    data: dict[str, Any] = {"data_dir": str(tmp_path / "data"), "api": {"token": TOKEN}}
    data.update(sections)
    # API tests expect added images to be offered at once (approval is tested on its own).
    data["policy"] = {"auto_approve": True, **data.get("policy", {})}
    return parse_config(data)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[ApiHarness]:
    config = make_config(tmp_path, images={"max_upload_mib": 1})
    clock = ManualClock()
    store = ImageStore(config.data_dir, clock=clock)
    await store.open()
    core = UpdateCore(config, store, clock, auto_sweep=False)
    await core.start()
    app = create_app(
        ApiServices(
            core=core,
            store=store,
            config=config,
            token=TOKEN,
            clock=clock,
            health=lambda: {
                "core": "running",
                "adapters": {
                    "matter": {"state": "unavailable", "error": "not installed"},
                    "zigbee": {"state": "disabled", "error": None},
                },
            },
            progress_interval=0,
        )
    )
    client = TestClient(TestServer(app))
    await client.start_server()
    resp = await client.get("/api/v1/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    doc = await resp.json()
    try:
        yield ApiHarness(client, app, store, core, config, clock, doc)
    finally:
        await client.close()
        await core.stop()
        await store.close()
