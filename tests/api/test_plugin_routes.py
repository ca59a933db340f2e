"""API operations contributed by adapter plugins (gateway.plugins.PluginRoute, gateway/api/routes_plugins.py).

Mounted at /api/v1/<adapter><path>, admin token only (a scoped token gets 403), 503 while the adapter is not
running, a plugin's RouteError/ValueError answered with its status and the usual error body, listed in OpenAPI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.api import auth
from gateway.api.credentials import CredentialStore
from gateway.clock import ManualClock
from gateway.config import load_config
from gateway.plugins import API_TOKEN_ENV, API_TOKEN_FILE, LazyAdapterPlugin, PluginRoute, RouteError
from gateway.service import Gateway
from tests.api.conftest import TOKEN


async def _echo(adapter: Any, params: dict[str, Any]) -> Any:
    if params.get("refuse"):
        raise RouteError(409, "refused on purpose", field="refuse")
    if params.get("bad"):
        raise ValueError("bad value")
    return {"adapter": type(adapter).__name__, "params": params}


ROUTES = [
    PluginRoute("POST", "/echo/{thing}", "echo", "Echo the parameters", _echo),
    PluginRoute("GET", "/echo", "echo_get", "Echo the query", _echo),
]

PLUGINS = (
    LazyAdapterPlugin(
        "good", "tests.api.fake_adapters:Good", routes_target="tests.api.test_plugin_routes:ROUTES"
    ),
    LazyAdapterPlugin(
        "down", "tests.api.fake_adapters:NoRadio", routes_target="tests.api.test_plugin_routes:ROUTES"
    ),
)


def test_token_locations_agree_with_the_api() -> None:
    assert (API_TOKEN_ENV, API_TOKEN_FILE) == (auth.TOKEN_ENV, auth.TOKEN_FILE)


async def test_plugin_routes_admin_only_503_when_down_and_errors_mapped(tmp_path: Path) -> None:
    cfg = tmp_path / "otagw.yaml"
    cfg.write_text(yaml.safe_dump({"data_dir": "data", "api": {"listen": "127.0.0.1:0", "token": TOKEN}}))
    gw = Gateway(load_config(cfg), plugins=PLUGINS, clock=ManualClock())
    await gw.start()
    try:
        _, scoped = CredentialStore(gw.config.data_dir).create("hub", ["query", "status"])
        admin = {"Authorization": f"Bearer {TOKEN}"}
        base = f"{gw.api_url}/api/v1"
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{base}/good/echo/x?a=1", json={"b": 2}, headers=admin) as resp:
                assert resp.status == 200
                assert await resp.json() == {"adapter": "Good", "params": {"a": "1", "thing": "x", "b": 2}}
            async with s.get(f"{base}/good/echo", headers={"Authorization": f"Bearer {scoped}"}) as resp:
                assert resp.status == 403
            async with s.get(f"{base}/good/echo") as resp:
                assert resp.status == 401
            async with s.post(f"{base}/good/echo/x", json={"refuse": True}, headers=admin) as resp:
                assert resp.status == 409
                assert (await resp.json())["error"]["message"] == "refused on purpose"
            async with s.post(f"{base}/good/echo/x", json={"bad": True}, headers=admin) as resp:
                assert resp.status == 400 and (await resp.json())["error"]["message"] == "bad value"
            async with s.post(f"{base}/good/echo/x", data=b"[1]", headers=admin) as resp:
                assert resp.status == 400
            async with s.get(f"{base}/down/echo", headers=admin) as resp:
                assert resp.status == 503
                assert "the down adapter is not running" in (await resp.json())["error"]["message"]
            async with s.get(f"{base}/openapi.json", headers=admin) as resp:
                assert resp.status == 200
                doc = await resp.json()
        assert "/api/v1/good/echo/{thing}" in doc["paths"]
    finally:
        await gw.stop()
