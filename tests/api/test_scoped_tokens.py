"""Scoped device/integration tokens end to end: aiohttp's real client against the real app on a loopback port.

A device-bound token queries, follows `download_url` exactly as given (which makes the download the device's
transfer: progress, completion, the budget slot freed), reports status bound to its offer, and the record ends
`updated`; the same token cannot list or delete images (403), cannot act for another device (403), and once
revoked is refused (401). Tokens are created through the CLI and the admin-only API over the same store.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from gateway.api.app import ApiServices, create_app
from gateway.api.credentials import CREDENTIALS_FILE, CredentialStore, token_hash
from gateway.cli import main
from gateway.clock import ManualClock
from gateway.core.service import UpdateCore
from gateway.store.store import ImageStore
from tests.api.conftest import TOKEN, make_config, zigbee_image

IEEE = "00:11:22:33:44:55:66:77"
OTHER_IEEE = "00:11:22:33:44:55:66:88"


def device(ieee: str, version: int = 0x100) -> dict[str, Any]:
    return {
        "protocol": "zigbee",
        "network": "pan:1a2b",
        "address": ieee,
        "endpoint": 1,
        "vendor_id": 0x1135,
        "product_id": 1,
        "current_version": version,
    }


def device_id(ieee: str) -> str:
    return f"zigbee:pan:1a2b:{ieee}:1"


def key(ieee: str) -> dict[str, Any]:
    return {k: v for k, v in device(ieee).items() if k in ("protocol", "network", "address", "endpoint")}


class Gateway:
    """The real app on a loopback port and a real aiohttp client session."""

    def __init__(
        self, server: TestServer, session: aiohttp.ClientSession, core: UpdateCore, cfg_file: Path
    ) -> None:
        self.server, self.session, self.core, self.cfg_file = server, session, core, cfg_file

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def call(self, method: str, path: str, token: str, expect: int, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
        async with self.session.request(method, self.url(path), headers=headers, **kw) as resp:
            body = await resp.read()
            assert resp.status == expect, f"{method} {path}: {resp.status} {body[:300]!r}"
            return json.loads(body) if resp.content_type == "application/json" else body


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Gateway]:
    # one transfer at a time: the second device is Busy until the first download frees the slot
    config = make_config(tmp_path, policy={"budgets": {"global": 1}})
    cfg_file = tmp_path / "otagw.yaml"
    cfg_file.write_text(f"data_dir: {config.data_dir}\n")
    clock = ManualClock()
    store = ImageStore(config.data_dir, clock=clock)
    await store.open()
    core = UpdateCore(config, store, clock, auto_sweep=False)
    await core.start()
    app = create_app(
        ApiServices(core=core, store=store, config=config, token=TOKEN, clock=clock, progress_interval=0)
    )
    server = TestServer(app)
    await server.start_server()
    session = aiohttp.ClientSession()
    try:
        yield Gateway(server, session, core, cfg_file)
    finally:
        await session.close()
        await server.close()
        await core.stop()
        await store.close()


def cli_create(gw: Gateway, *args: str) -> str:
    result = CliRunner().invoke(main, ["-c", str(gw.cfg_file), "token", "create", *args, "--json"])
    assert result.exit_code == 0, result.output
    return str(json.loads(result.output)["token"])


async def test_device_token_full_flow_and_least_privilege(gw: Gateway, tmp_path: Path) -> None:
    image = zigbee_image(version=0x200, payload=bytes(range(256)) * 800)  # several 64 KiB download chunks
    img = (
        await gw.call(
            "POST",
            "/api/v1/images?file_name=fw.zigbee",
            TOKEN,
            201,
            data=image,
            headers={"Content-Type": "application/octet-stream"},
        )
    )["image"]
    lamp = cli_create(gw, "lamp", "--scope", "query,status,download", "--device", device_id(IEEE))
    other = cli_create(
        gw, "other-lamp", "--scope", "query,status,download", "--device", device_id(OTHER_IEEE)
    )

    # stored hashed, owner-only; the secret itself is nowhere in the file
    cred_file = tmp_path / "data" / CREDENTIALS_FILE
    assert stat.S_IMODE(os.stat(cred_file).st_mode) == 0o600
    text = cred_file.read_text()
    assert lamp not in text and token_hash(lamp) in text

    ans = await gw.call("POST", "/api/v1/query", lamp, 200, json={"device": device(IEEE)})
    assert ans["decision"] == "available" and ans["packages"][0]["sha256"] == img["sha256"]
    # the budget (1) is now held by this offer
    busy = await gw.call("POST", "/api/v1/query", other, 200, json={"device": device(OTHER_IEEE)})
    assert busy["decision"] == "busy"

    # least privilege: no catalog, no delete, no other device, no admin routes
    for method, path in (
        ("GET", "/api/v1/images"),
        ("DELETE", f"/api/v1/images/{img['image_id']}"),
        ("GET", "/api/v1/devices"),
        ("GET", "/api/v1/tokens"),
        ("GET", "/metrics"),
    ):
        body = await gw.call(method, path, lamp, 403)
        assert body["error"]["code"] == "forbidden" and "lamp" in body["error"]["message"]
    body = await gw.call("POST", "/api/v1/query", lamp, 403, json={"device": device(OTHER_IEEE)})
    assert device_id(IEEE) in body["error"]["message"]
    await gw.call("POST", "/api/v1/status", lamp, 403, json={"device": key(OTHER_IEEE), "status": "Notified"})
    # another device's token cannot download this device's transfer, nor report on its offer
    await gw.call("GET", ans["download_url"], other, 403)
    body = await gw.call(
        "POST",
        "/api/v1/status",
        other,
        403,
        json={"device": key(OTHER_IEEE), "status": "Downloading", "token": ans["token"]},
    )
    assert "belongs to another device" in body["error"]["message"]
    # a bound device token downloads only through its offer's transfer
    await gw.call("GET", f"/api/v1/images/{img['image_id']}/download", lamp, 403)

    # follow download_url exactly as given: the full image, and the transfer completes
    await gw.call(
        "POST",
        "/api/v1/status",
        lamp,
        200,
        json={"device": key(IEEE), "status": "Downloading", "token": ans["token"]},
    )
    assert await gw.call("GET", ans["download_url"], lamp, 200) == image
    rec = next(d for d in gw.core.list_devices() if d.device_id == device_id(IEEE))
    assert rec.state.value == "downloaded" and rec.bytes_sent == len(image)
    # the budget slot is free again: the other device gets its offer
    assert (await gw.call("POST", "/api/v1/query", other, 200, json={"device": device(OTHER_IEEE)}))[
        "decision"
    ] == "available"

    await gw.call(
        "POST",
        "/api/v1/status",
        lamp,
        200,
        json={"device": key(IEEE), "status": "Successfully Updated", "percent": 100, "token": ans["token"]},
    )
    after = await gw.call("POST", "/api/v1/query", lamp, 200, json={"device": device(IEEE, version=0x200)})
    assert after["decision"] == "not_available"
    rec = next(d for d in gw.core.list_devices() if d.device_id == device_id(IEEE))
    assert rec.state.value == "updated" and rec.current_version == 0x200

    # revoked (through the CLI while the gateway runs): 401 from the next request on
    result = CliRunner().invoke(main, ["-c", str(gw.cfg_file), "token", "revoke", "lamp"])
    assert result.exit_code == 0, result.output
    body = await gw.call("POST", "/api/v1/query", lamp, 401, json={"device": device(IEEE)})
    assert body["error"]["code"] == "unauthorized"
    # the admin token still deletes images; the other token still works
    await gw.call(
        "POST", "/api/v1/status", other, 200, json={"device": key(OTHER_IEEE), "status": "Notified"}
    )


async def test_token_api_is_admin_only_and_round_trips(gw: Gateway, tmp_path: Path) -> None:
    created = await gw.call(
        "POST", "/api/v1/tokens", TOKEN, 201, json={"name": "home-assistant", "scopes": ["query", "status"]}
    )
    assert created["scopes"] == ["query", "status"] and created["device"] is None
    secret = created["token"]
    listed = await gw.call("GET", "/api/v1/tokens", TOKEN, 200)
    assert [t["name"] for t in listed] == ["home-assistant"] and "token" not in listed[0]
    assert "sha256" not in json.dumps(listed)
    # an integration token may query for any device but holds no download scope and no admin route
    assert (await gw.call("POST", "/api/v1/query", secret, 200, json={"device": device(IEEE)}))["decision"]
    await gw.call("GET", "/api/v1/images/0123456789abcdef/download", secret, 403)
    await gw.call("POST", "/api/v1/tokens", secret, 403, json={"name": "x", "scopes": ["query"]})
    await gw.call("DELETE", "/api/v1/tokens/home-assistant", secret, 403)
    # bad input names the problem
    bad = await gw.call("POST", "/api/v1/tokens", TOKEN, 422, json={"name": "x", "scopes": ["metrics-ish"]})
    assert "unknown scope 'metrics-ish'" in bad["error"]["message"]
    await gw.call("POST", "/api/v1/tokens", TOKEN, 409, json={"name": "home-assistant", "scopes": ["query"]})
    await gw.call(
        "POST", "/api/v1/tokens", TOKEN, 422, json={"name": "d", "scopes": ["query"], "device": "lamp"}
    )
    await gw.call("DELETE", "/api/v1/tokens/home-assistant", TOKEN, 204)
    await gw.call("DELETE", "/api/v1/tokens/home-assistant", TOKEN, 404)
    await gw.call("POST", "/api/v1/query", secret, 401, json={"device": device(IEEE)})
    assert CredentialStore(tmp_path / "data").entries() == []


def test_cli_token_errors_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "otagw.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\n")
    for args in (
        ["create", "x", "--scope", "query,nope"],
        ["create", "x", "--scope", "query", "--device", "not-a-device"],
        ["revoke", "missing"],
    ):
        result = CliRunner().invoke(main, ["-c", str(cfg), "token", *args])
        assert result.exit_code == 2 and "Traceback" not in result.output, (args, result.output)
    result = CliRunner().invoke(main, ["-c", str(cfg), "token", "list"])
    assert result.exit_code == 0 and "no scoped tokens" in result.output


async def test_openapi_documents_scopes_and_the_flow(gw: Gateway) -> None:
    doc = await gw.call("GET", "/api/v1/openapi.json", TOKEN, 200)
    paths = doc["paths"]
    assert paths["/api/v1/query"]["post"]["x-otagw-scope"] == "query"
    assert paths["/api/v1/status"]["post"]["x-otagw-scope"] == "status"
    assert paths["/api/v1/images/{ref}/download"]["get"]["x-otagw-scope"] == "download"
    assert paths["/api/v1/images/{ref}"]["delete"]["x-otagw-scope"] is None
    assert "403" in paths["/api/v1/images/{ref}"]["delete"]["responses"]
    assert "token" in doc["components"]["schemas"]["StatusIn"]["properties"]
    assert "otagw token create" in doc["info"]["description"] and "?transfer=" in doc["info"]["description"]
